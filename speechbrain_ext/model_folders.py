"""Write a loaded model as a folder that a tool loads: SpeechBrain, ModelScope or ClearerVoice-Studio.

``speechbrain-ext convert --to LAYOUT`` and the recipes use these, so a model fine-tuned here
can be loaded by ``from_hparams``, ModelScope's own ``pipeline(...)`` or ClearVoice's loader:

============  =================================================================================
layout        files
============  =================================================================================
speechbrain   ``hyperparams.yaml`` (written from the model's own sizes) + ``<module>.ckpt`` +
              ``README.md``
modelscope    FRCRN: ``pytorch_model.bin``; MossFormer: ``encoder.bin``, ``masknet.bin``,
              ``decoder.bin``; both with a ``configuration.json`` that names the pipeline
clearervoice  ``last_best_checkpoint`` naming ``model.pt`` = ``{'model': state_dict}`` (FRCRN;
              ClearerVoice-Studio has no MossFormer (v1) model)
============  =================================================================================

Each folder is written beside its final name and renamed into place when complete; an
existing folder that holds anything is never written into.

Authors: speechbrain-ext contributors
"""

import json
import os
import shutil

import torch

from speechbrain_ext.errors import SpeechBrainExtError

LAYOUTS = ("speechbrain", "modelscope", "clearervoice")
#: The name of the checkpoint a ClearerVoice-Studio folder's ``last_best_checkpoint`` points to.
CLEARERVOICE_CHECKPOINT = "model.pt"
# FRCRN sizes of the official model: the only ones the reference code builds.
_OFFICIAL_FRCRN_WIDTHS = dict(channels=128, fsmn_hidden=128, fsmn_order=20, se_reduction=8, fft_len=640)
_OFFICIAL_FRCRN_FIXED = dict(complex=True, model_complexity=45, model_depth=14, log_amp=False)


class ModelFolderError(SpeechBrainExtError, ValueError):
    """A model that the requested layout cannot hold, or a folder that cannot be written."""


def _task(interface):
    return "enhancement" if "model" in interface.mods else "separation"


def _mossformer(interface):
    from speechbrain_ext.lobes.models.mossformer import MossFormer

    mods = interface.mods
    return MossFormer.from_modules(mods["encoder"], mods["masknet"], mods["decoder"])


def _yaml_value(value):
    if isinstance(value, bool):
        return "True" if value else "False"
    if value is None:
        return "null"
    return str(value)


def _yaml_block(name, target, kwargs):
    lines = [f"{name}: !new:{target}"]
    lines += [f"    {key}: {_yaml_value(value)}" for key, value in kwargs.items()]
    return "\n".join(lines)


def speechbrain_card(interface, source=None):
    """``hyperparams.yaml`` text that rebuilds exactly this model (its own sizes, not the defaults).

    Example
    -------
    >>> from speechbrain_ext.inference import EnhanceFRCRN
    >>> from speechbrain_ext.lobes.models.frcrn import FRCRN
    >>> enhancer = EnhanceFRCRN(modules={"model": FRCRN(channels=8, fsmn_hidden=8)}, hparams={"sample_rate": 16000})
    >>> print(speechbrain_card(enhancer).split("model: ")[1].splitlines()[5])
        channels: 8
    """
    header = "# Written by speechbrain-ext" + (f" from {source}" if source else "") + "\n"
    if _task(interface) == "enhancement":
        model = interface.mods["model"]
        body = [
            f"sample_rate: {interface.hparams.sample_rate}",
            f"normalize: {_yaml_value(getattr(interface.hparams, 'normalize', True))}",
            "",
            _yaml_block("model", "speechbrain_ext.lobes.models.frcrn.FRCRN", model.config),
        ]
        names = ["model"]
    else:
        config = _mossformer(interface).config
        body = [
            f"sample_rate: {interface.hparams.sample_rate}",
            f"num_spks: {config['num_spks']}",
            "",
            _yaml_block("encoder", "speechbrain_ext.lobes.models.mossformer.MossFormerEncoder",
                        {k: config[k] for k in ("kernel_size", "out_channels")}),
            "",
            _yaml_block("masknet", "speechbrain_ext.lobes.models.mossformer.MossFormerMaskNet",
                        {"in_channels": config["out_channels"], "out_channels": config["d_model"],
                         **{k: config[k] for k in ("num_blocks", "attn_dropout", "group_size", "query_key_dim",
                                                   "expansion_factor", "causal", "norm", "num_spks")}}),
            "",
            _yaml_block("decoder", "speechbrain_ext.lobes.models.mossformer.MossFormerDecoder",
                        {"in_channels": config["in_channels"], "out_channels": 1,
                         **{k: config[k] for k in ("kernel_size", "stride", "bias")}}),
        ]
        names = ["encoder", "masknet", "decoder"]
    modules = "\n".join(f"    {name}: !ref <{name}>" for name in names)
    loadables = "\n".join(f"        {name}: !ref <{name}>" for name in names)
    body += ["", "modules:", modules, "", "pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer",
             "    loadables:", loadables]
    return header + "\n".join(body) + "\n"


def _check_reference_frcrn(model, layout):
    config = model.config
    different = {k: config[k] for k, v in _OFFICIAL_FRCRN_WIDTHS.items() if config[k] != v}
    if config["causal"]:
        different["causal"] = True
    if different:
        raise ModelFolderError(
            f"the {layout} FRCRN code builds only the official model ({_OFFICIAL_FRCRN_WIDTHS}, not causal); "
            f"this one has {different}: write it --to speechbrain instead"
        )


def _write_speechbrain(interface, folder, source):
    with open(os.path.join(folder, "hyperparams.yaml"), "w", encoding="utf-8") as stream:
        stream.write(speechbrain_card(interface, source))
    for name, module in interface.mods.items():
        torch.save(module.state_dict(), os.path.join(folder, f"{name}.ckpt"))
    kind = "EnhanceFRCRN" if _task(interface) == "enhancement" else "SeparateMossFormer"
    _write_readme(folder, source, f"from speechbrain_ext.inference import {kind}\n"
                                  f"model = {kind}.from_hparams(source=\"path/to/this/folder\")")


def _write_modelscope(interface, folder, source):
    from speechbrain_ext.convert import frcrn_to_official, modelscope_configuration, mossformer_to_official

    if _task(interface) == "enhancement":
        model = interface.mods["model"]
        _check_reference_frcrn(model, "ModelScope")
        torch.save(frcrn_to_official(model), os.path.join(folder, "pytorch_model.bin"))
        kwargs = {**_OFFICIAL_FRCRN_FIXED, "padding_mode": model.config["padding_mode"],
                  **{k: model.config[k] for k in ("win_len", "win_inc", "fft_len", "win_type")}}
        with open(os.path.join(folder, "configuration.json"), "w", encoding="utf-8") as stream:
            json.dump(modelscope_configuration("enhancement", kwargs), stream, indent=4)
        task = "Tasks.acoustic_noise_suppression"
    else:  # the three .bin files and configuration.json
        mossformer_to_official(_mossformer(interface), folder, sample_rate=interface.hparams.sample_rate)
        task = "Tasks.speech_separation"
    _write_readme(folder, source, "from modelscope.pipelines import pipeline\nfrom modelscope.utils.constant import Tasks\n"
                                  f"model = pipeline({task}, model=\"path/to/this/folder\")")


def _write_clearervoice(interface, folder, source):
    from speechbrain_ext.convert import frcrn_to_official

    if _task(interface) != "enhancement":
        raise ModelFolderError(
            "ClearerVoice-Studio has no MossFormer (v1, 8 kHz) model to load this into: write it --to modelscope "
            "or --to speechbrain instead"
        )
    model = interface.mods["model"]
    _check_reference_frcrn(model, "ClearerVoice-Studio")
    torch.save({"model": frcrn_to_official(model)}, os.path.join(folder, CLEARERVOICE_CHECKPOINT))
    with open(os.path.join(folder, "last_best_checkpoint"), "w", encoding="utf-8") as stream:
        stream.write(CLEARERVOICE_CHECKPOINT + "\n")
    _write_readme(folder, source, "# ClearVoice(task='speech_enhancement', model_names=['FRCRN_SE_16K']) with its\n"
                                  "# checkpoint_dir (config/inference/FRCRN_SE_16K.yaml) pointing to this folder")


_README_TITLE = "# Model written by speechbrain-ext"


def _write_readme(folder, source, usage):
    with open(os.path.join(folder, "README.md"), "w", encoding="utf-8") as stream:
        stream.write(_README_TITLE + "\n\n"
                     + (f"Converted from `{source}`.\n\n" if source else "")
                     + f"Load it with:\n\n```python\n{usage}\n```\n")


_WRITERS = {"speechbrain": _write_speechbrain, "modelscope": _write_modelscope, "clearervoice": _write_clearervoice}


def is_own_model_folder(folder):
    """True for a folder that :func:`write_model_folder` wrote (its README says so)."""
    try:
        with open(os.path.join(folder, "README.md"), encoding="utf-8") as stream:
            return stream.readline().strip() == _README_TITLE
    except OSError:
        return False


def check_new_folder(folder, replace_own=False):
    """Raise :class:`ModelFolderError` unless ``folder`` may receive a model: absent, empty, or
    (``replace_own``) one :func:`write_model_folder` wrote. Returns whether it will be replaced.

    Example
    -------
    >>> import tempfile
    >>> check_new_folder(os.path.join(tempfile.mkdtemp(), "new"))
    False
    """
    replacing = replace_own and is_own_model_folder(folder)
    if os.path.exists(folder) and (not os.path.isdir(folder) or os.listdir(folder)) and not replacing:
        raise ModelFolderError(f"{folder} is not empty: nothing was written (choose a new folder)")
    return replacing


def write_model_folder(interface, folder, layout="speechbrain", source=None, replace_own=False):
    """Write a loaded interface's model as a ``layout`` folder (see the module docstring).

    Arguments
    ---------
    interface : EnhanceFRCRN or SeparateMossFormer
        The loaded model (any source ``from_hparams`` accepts, or one built in memory).
    folder : str
        A new (or empty) folder; written under a temporary name and renamed when complete.
    layout : str
        ``'speechbrain'``, ``'modelscope'`` or ``'clearervoice'``.
    source : str, optional
        Where the model came from, for the README.
    replace_own : bool
        Replace ``folder`` if it is one this function wrote before (a recipe's exported model);
        any other non-empty folder is still refused.

    Returns
    -------
    list of str
        The files written.

    Example
    -------
    >>> import tempfile
    >>> from speechbrain_ext.inference import EnhanceFRCRN
    >>> from speechbrain_ext.lobes.models.frcrn import FRCRN
    >>> enhancer = EnhanceFRCRN(modules={"model": FRCRN(channels=8, fsmn_hidden=8)}, hparams={"sample_rate": 16000})
    >>> folder = os.path.join(tempfile.mkdtemp(), "small")
    >>> [os.path.basename(f) for f in write_model_folder(enhancer, folder)]
    ['README.md', 'hyperparams.yaml', 'model.ckpt']
    >>> again = EnhanceFRCRN.from_hparams(source=folder, savedir=folder)
    >>> write_model_folder(enhancer, folder, "modelscope")
    Traceback (most recent call last):
    ...
    speechbrain_ext.model_folders.ModelFolderError: ... is not empty: nothing was written (choose a new folder)
    """
    if layout not in _WRITERS:
        raise ModelFolderError(f"unknown layout {layout!r}: choose one of {', '.join(LAYOUTS)}")
    folder = os.path.abspath(os.fspath(folder))
    replacing = check_new_folder(folder, replace_own)
    staging, previous = (os.path.join(os.path.dirname(folder), f".{os.path.basename(folder)}.{kind}.sbext-partial")
                         for kind in ("new", "old"))
    for left_over in (staging, previous):  # left by an interrupted conversion
        shutil.rmtree(left_over, ignore_errors=True)
    os.makedirs(staging)
    try:
        _WRITERS[layout](interface, staging, source)
        if replacing:
            os.replace(folder, previous)
        os.replace(staging, folder)  # replaces an empty folder; atomic on one file system
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if replacing and os.path.isdir(previous) and not os.path.exists(folder):
            os.replace(previous, folder)
        raise
    shutil.rmtree(previous, ignore_errors=True)
    return sorted(os.path.join(folder, name) for name in os.listdir(folder))
