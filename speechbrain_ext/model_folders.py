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
              (ModelScope has no MossFormer2 model)
clearervoice  ``last_best_checkpoint`` naming ``model.pt`` = ``{'model': state_dict}`` (FRCRN and
              both MossFormer2 models, official sizes; ClearerVoice-Studio has no MossFormer (v1))
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
# FRCRN sizes of the official model: the only ones the reference code builds.
_OFFICIAL_FRCRN_WIDTHS = dict(channels=128, fsmn_hidden=128, fsmn_order=20, se_reduction=8, fft_len=640)
_OFFICIAL_FRCRN_FIXED = dict(complex=True, model_complexity=45, model_depth=14, log_amp=False)
# MossFormer2 sizes of the official model: ClearVoice builds only these (and skips, without an
# error, every tensor of another shape).
_OFFICIAL_MOSSFORMER2 = dict(
    num_spks=2, kernel_size=16, stride=8, in_channels=512, out_channels=512, bias=False, num_blocks=24,
    d_model=512, group_size=256, query_key_dim=128, expansion_factor=4.0, causal=False, norm="ln",
    fsmn_channels=256, memory_order=20, memory_depth=2,
)
_OFFICIAL_MOSSFORMER2_SE = dict(
    sample_rate=48000, win_len=1920, win_inc=384, fft_len=1920, num_mels=60, d_model=512, num_blocks=24,
    group_size=256, query_key_dim=128, expansion_factor=4.0, norm="ln", fsmn_channels=256, memory_order=20,
    num_spks=2,
)


class ModelFolderError(SpeechBrainExtError, ValueError):
    """A model that the requested layout cannot hold, or a folder that cannot be written."""


def _task(interface):
    return "enhancement" if "model" in interface.mods else "separation"


def _mossformer(interface):
    """The interface's separator as a MossFormer or MossFormer2 (weights shared)."""
    from speechbrain_ext.lobes.models.mossformer import MossFormer
    from speechbrain_ext.lobes.models.mossformer2 import MossFormer2, MossFormer2MaskNet

    mods = interface.mods
    model_class = MossFormer2 if isinstance(mods["masknet"], MossFormer2MaskNet) else MossFormer
    return model_class.from_modules(mods["encoder"], mods["masknet"], mods["decoder"])


_OFFICIAL_MOSSFORMER_GAN = dict(sample_rate=16000, win_len=400, win_inc=100, compression=0.3, channels=64, num_blocks=6,
                                hidden_channels=128, query_key_dim=128, heads=4, qk_channels=6)


def _is_mossformer_gan(interface):
    from speechbrain_ext.lobes.models.mossformer_gan import MossFormerGANSE

    return "model" in interface.mods and isinstance(interface.mods["model"], MossFormerGANSE)


def _is_mossformer2_se(interface):
    from speechbrain_ext.lobes.models.mossformer2_se import MossFormer2SE

    return "model" in interface.mods and isinstance(interface.mods["model"], MossFormer2SE)


def _check_official_sizes(config, official, name):
    different = {k: v for k, v in config.items() if k in official and v != official[k]}
    if different:
        raise ModelFolderError(
            f"ClearVoice builds only the official {name} ({official}); this one has {different}: "
            "write it --to speechbrain instead"
        )


def _is_mossformer2(interface):
    from speechbrain_ext.lobes.models.mossformer2 import MossFormer2MaskNet

    return "masknet" in interface.mods and isinstance(interface.mods["masknet"], MossFormer2MaskNet)


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
            f"normalize: {_yaml_value(interface.normalize)}",
            "",
            _yaml_block("model", f"{type(model).__module__}.{type(model).__name__}", model.config),
        ]
        names = ["model"]
    else:
        config = _mossformer(interface).config
        masknet, recurrence = "speechbrain_ext.lobes.models.mossformer.MossFormerMaskNet", ()
        if _is_mossformer2(interface):
            masknet = "speechbrain_ext.lobes.models.mossformer2.MossFormer2MaskNet"
            recurrence = ("fsmn_channels", "memory_order", "memory_depth")
        chunk = getattr(interface.hparams, "chunk_seconds", None)
        body = [
            f"sample_rate: {interface.hparams.sample_rate}",
            f"num_spks: {config['num_spks']}",
            *([f"chunk_seconds: {float(chunk)}"] if chunk is not None else []),
            "",
            _yaml_block("encoder", "speechbrain_ext.lobes.models.mossformer.MossFormerEncoder",
                        {k: config[k] for k in ("kernel_size", "out_channels")}),
            "",
            _yaml_block("masknet", masknet,
                        {"in_channels": config["out_channels"], "out_channels": config["d_model"],
                         **{k: config[k] for k in ("num_blocks", "attn_dropout", "group_size", "query_key_dim",
                                                   "expansion_factor", "causal", "norm", *recurrence, "num_spks")}}),
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
    kind = "SeparateMossFormer" if _task(interface) == "separation" else (
        "EnhanceMossFormer2" if _is_mossformer2_se(interface) else
        "EnhanceMossFormerGAN" if _is_mossformer_gan(interface) else "EnhanceFRCRN")
    _write_readme(folder, source, f"from speechbrain_ext.inference import {kind}\n"
                                  f"model = {kind}.from_hparams(source=\"path/to/this/folder\")")


def _write_modelscope(interface, folder, source):
    from speechbrain_ext.convert import frcrn_to_official, modelscope_configuration, mossformer_to_official

    if _is_mossformer2_se(interface) or _is_mossformer2(interface) or _is_mossformer_gan(interface):
        raise ModelFolderError("ModelScope has no MossFormer2 or MossFormerGAN model to load this into: write it "
                               "--to clearervoice or --to speechbrain instead")
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
    from speechbrain_ext.convert import (
        frcrn_to_official,
        mossformer_gan_to_official,
        mossformer2_se_to_official,
        mossformer2_to_official,
        write_clearervoice_folder,
    )

    if _is_mossformer_gan(interface):
        model = interface.mods["model"]
        _check_official_sizes(model.config, _OFFICIAL_MOSSFORMER_GAN, "MossFormerGAN_SE_16K")
        mossformer_gan_to_official(model, folder)
        name, task = "MossFormerGAN_SE_16K", "speech_enhancement"
    elif _is_mossformer2_se(interface):
        model = interface.mods["model"]
        _check_official_sizes(model.config, _OFFICIAL_MOSSFORMER2_SE, "MossFormer2_SE_48K")
        mossformer2_se_to_official(model, folder, sample_rate=interface.hparams.sample_rate)
        name, task = "MossFormer2_SE_48K", "speech_enhancement"
    elif _task(interface) == "enhancement":
        model = interface.mods["model"]
        _check_reference_frcrn(model, "ClearerVoice-Studio")
        write_clearervoice_folder(folder, frcrn_to_official(model))
        name, task = "FRCRN_SE_16K", "speech_enhancement"
    elif _is_mossformer2(interface):
        model = _mossformer(interface)
        _check_official_sizes(model.config, _OFFICIAL_MOSSFORMER2, "MossFormer2")
        mossformer2_to_official(model, folder, sample_rate=interface.hparams.sample_rate)
        name, task = "MossFormer2_SS_16K", "speech_separation"
    else:
        raise ModelFolderError(
            "ClearerVoice-Studio has no MossFormer (v1, 8 kHz) model to load this into: write it --to modelscope "
            "or --to speechbrain instead"
        )
    _write_readme(folder, source, f"# ClearVoice(task='{task}', model_names=['{name}']) with its\n"
                                  f"# checkpoint_dir (config/inference/{name}.yaml) pointing to this folder")


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
