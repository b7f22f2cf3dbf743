"""Convert between the official FRCRN / MossFormer / MossFormer2 checkpoints and speechbrain-ext models.

The official checkpoints (ModelScope, ClearerVoice-Studio) name tensors after the reference
code's module tree. Our modules are organised differently, so each model has a name map
applied here, in one place. Loading is strict in both directions: every tensor the official
forward pass uses must be consumed and every parameter/buffer of ours filled, otherwise
:class:`CheckpointMismatchError` names what is missing or unexpected.
"""

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from speechbrain_ext.errors import SpeechBrainExtError
from speechbrain_ext.nnet.stft import analysis_basis


#: The checkpoint file name in the ClearerVoice-Studio folders we write (``last_best_checkpoint``
#: names it).
CLEARERVOICE_CHECKPOINT = "model.pt"


class CheckpointMismatchError(SpeechBrainExtError, ValueError):
    """An official checkpoint does not match the model it should fill."""


def read_state_dict(checkpoint):
    """Return a flat ``{name: tensor}`` dict from a checkpoint path or an in-memory dict.

    Accepts a plain state dict (ModelScope ``pytorch_model.bin``), a training checkpoint
    ``{'model': state_dict, ...}`` (ClearerVoice-Studio) or ``{'state_dict': ...}``, and strips
    the ``module.`` prefix that DataParallel/DDP training adds. Files are read with
    ``torch.load(weights_only=True)``: no pickled code is ever executed.

    Arguments
    ---------
    checkpoint : str, os.PathLike or Mapping
        Path of a ``.bin``/``.pt``/``.ckpt`` file, or an already loaded dict.

    Returns
    -------
    dict
        Tensor names to tensors.

    Example
    -------
    >>> sd = read_state_dict({"model": {"module.w": torch.ones(2)}, "epoch": 3})
    >>> list(sd)
    ['w']
    """
    if isinstance(checkpoint, (str, os.PathLike)):
        if not os.path.isfile(checkpoint):
            raise FileNotFoundError(f"checkpoint file not found: {checkpoint}")
        try:
            checkpoint = torch.load(checkpoint, map_location="cpu", weights_only=True)
        except Exception as error:
            raise CheckpointMismatchError(
                f"{checkpoint} is not a readable PyTorch checkpoint ({error.__class__.__name__}: "
                f"{str(error).splitlines()[0] if str(error) else ''})"
            ) from None
    if not isinstance(checkpoint, Mapping):
        raise CheckpointMismatchError(
            f"expected a state dict or a checkpoint dict, got {type(checkpoint).__name__}"
        )
    for wrapper in ("model", "state_dict"):
        if wrapper in checkpoint and isinstance(checkpoint[wrapper], Mapping):
            checkpoint = checkpoint[wrapper]
            break
    state = {}
    for name, value in checkpoint.items():
        if not torch.is_tensor(value):
            raise CheckpointMismatchError(f"checkpoint entry {name!r} is not a tensor")
        state[name[len("module.") :] if name.startswith("module.") else name] = value
    return state


def _raise_if_mismatched(model_name, missing, unexpected, shape_errors=()):
    """One error naming every missing/unexpected/mis-shaped tensor (sorted, truncated)."""
    if not (missing or unexpected or shape_errors):
        return

    def listed(names):
        names = sorted(names)
        shown = ", ".join(names[:12])
        return shown + (f", ... ({len(names) - 12} more)" if len(names) > 12 else "")

    problems = []
    if missing:
        problems.append(f"missing {len(missing)} tensor(s): {listed(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} tensor(s): {listed(unexpected)}")
    if shape_errors:
        problems.append(f"wrong shape: {listed(shape_errors)}")
    raise CheckpointMismatchError(f"{model_name} checkpoint does not match: " + "; ".join(problems))


# ----------------------------------------------------------------------------------------------
# FRCRN
# ----------------------------------------------------------------------------------------------

# The reference registers every UNet submodule twice (``encoder3`` and ``encoders.3``, ...).
# We read and write the indexed-attribute spelling and treat the list spelling as an alias.
_FRCRN_LIST_NAMES = (
    ("encoders", "encoder"),
    ("decoders", "decoder"),
    ("fsmn_enc", "fsmn_enc"),
    ("fsmn_dec", "fsmn_dec"),
    ("se_layers_enc", "se_layer_enc"),
    ("se_layers_dec", "se_layer_dec"),
)
# Modules the reference registers but whose output never reaches its result.
_FRCRN_UNUSED = re.compile(r"^unet2?\.(fsmn_enc0|fsmn_dec6|se_layer_dec5|se_layer_enc6)\.")
# Fixed STFT kernels stored in official checkpoints; we verify them instead of loading them.
_FRCRN_STFT_KEYS = ("stft.weight", "istft.weight", "istft.window", "istft.enframe")

_PART = {"real": "re", "imag": "im"}
_GATE = {"real": "r", "imag": "i"}

# (our name pattern, official name template(s)); groups: 1 = stage, then per pattern.
_FRCRN_RULES = [
    (r"encoders\.(\d+)\.conv\.(weight|bias)_(real|imag)", lambda i, p, c: f"encoder{i}.conv.conv_{_PART[c]}.{p}"),
    (r"decoders\.(\d+)\.conv\.(weight|bias)_(real|imag)", lambda i, p, c: f"decoder{i}.transconv.tconv_{_PART[c]}.{p}"),
    (r"encoders\.(\d+)\.norm\.(\w+)", lambda i, s: (f"encoder{i}.bn.bn_re.{s}", f"encoder{i}.bn.bn_im.{s}")),
    (r"decoders\.(\d+)\.norm\.(\w+)", lambda i, s: (f"decoder{i}.bn.bn_re.{s}", f"decoder{i}.bn.bn_im.{s}")),
    (r"encoder_fsmns\.(\d+)\.(real|imag)\.(.+)", lambda i, c, x: f"fsmn_enc{int(i) + 1}.fsmn_{_PART[c]}_L1.{x}"),
    (r"decoder_fsmns\.(\d+)\.(real|imag)\.(.+)", lambda i, c, x: f"fsmn_dec{i}.fsmn_{_PART[c]}_L1.{x}"),
    (r"bottleneck\.(\d+)\.(real|imag)\.(.+)", lambda i, c, x: f"fsmn.fsmn_{_PART[c]}_L{int(i) + 1}.{x}"),
    (r"skip_gates\.(\d+)\.gate_(real|imag)\.(.+)", lambda i, c, x: f"se_layer_enc{i}.fc_{_GATE[c]}.{x}"),
    (r"decoder_gates\.(\d+)\.gate_(real|imag)\.(.+)", lambda i, c, x: f"se_layer_dec{i}.fc_{_GATE[c]}.{x}"),
    (r"output_layer\.(weight|bias)_(real|imag)", lambda p, c: f"linear.conv_{_PART[c]}.{p}"),
]
_FRCRN_RULES = [(re.compile(rf"^stage([12])\.{pattern}$"), template) for pattern, template in _FRCRN_RULES]


def _frcrn_official_names(our_name):
    """Official tensor name(s) behind one of our FRCRN tensors.

    Returns a tuple: one name, or (real, imag) batch-norm names whose tensors we concatenate.
    """
    for pattern, template in _FRCRN_RULES:
        match = pattern.match(our_name)
        if match:
            stage, *groups = match.groups()
            names = template(*groups)
            names = (names,) if isinstance(names, str) else names
            prefix = "unet." if stage == "1" else "unet2."
            # Our FSMN memory is a plain [C, taps] parameter; the reference's is a conv kernel.
            return tuple(prefix + n.replace(".memory", ".conv1.weight") for n in names)
    raise KeyError(f"no official name for FRCRN tensor {our_name!r}")


def _canonical_frcrn_name(name):
    """``unet.encoders.3.x`` -> ``unet.encoder3.x`` (other names unchanged)."""
    for plural, singular in _FRCRN_LIST_NAMES:
        name = re.sub(rf"^(unet2?)\.{plural}\.(\d+)\.", rf"\1.{singular}\2.", name)
    return name


def _frcrn_alias_name(name):
    """``unet.encoder3.x`` -> ``unet.encoders.3.x`` (other names unchanged)."""
    for plural, singular in _FRCRN_LIST_NAMES:
        name = re.sub(rf"^(unet2?)\.{singular}(\d+)\.", rf"\1.{plural}.\2.", name)
    return name


def _frcrn_stft_kernels(model):
    """The fixed STFT tensors an official checkpoint stores, computed for ``model``'s framing."""
    window = model.istft.window.double()
    basis = torch.from_numpy(analysis_basis(model.win_len, model.fft_len)).T  # [2F, win_len]
    synthesis = model.istft.synthesis.double()  # [2F, win_len]
    return {
        "stft.weight": (basis * window)[:, None, :].float(),
        "istft.weight": (synthesis * window)[:, None, :].float(),
        "istft.window": window[None, :, None].float(),
        "istft.enframe": torch.eye(model.win_len)[:, None, :],
    }


def frcrn_from_official(checkpoint, **model_kwargs):
    """Build an :class:`~speechbrain_ext.lobes.models.frcrn.FRCRN` from official FRCRN weights.

    Arguments
    ---------
    checkpoint : str, os.PathLike or dict
        ModelScope ``pytorch_model.bin`` (a plain state dict), a ClearerVoice-Studio checkpoint
        (``{'model': state_dict, ...}``), either in memory or as a path, or a folder holding one
        (see :func:`find_frcrn_checkpoint`); ``module.`` prefixes and the reference's duplicated
        alias names (``encoders.0`` / ``encoder0``) are accepted.
    **model_kwargs
        FRCRN constructor arguments (the official configuration by default).

    Returns
    -------
    FRCRN
        The model with every tensor filled, in eval mode.

    Raises
    ------
    CheckpointMismatchError
        If a tensor the official forward pass uses is missing, a tensor is unexpected or has the
        wrong shape, or the stored STFT kernels are not those of the configured framing.

    Example
    -------
    >>> from speechbrain_ext.lobes.models.frcrn import FRCRN
    >>> official = frcrn_to_official(FRCRN(channels=16, fsmn_hidden=16))
    >>> model = frcrn_from_official(official, channels=16, fsmn_hidden=16)
    """
    from speechbrain_ext.lobes.models.frcrn import FRCRN

    return load_frcrn_official(FRCRN(**model_kwargs), checkpoint)


def named_checkpoint(folder):
    """The checkpoint a ClearerVoice-Studio folder's ``last_best_checkpoint`` names, or None
    when the folder has no such file."""
    pointer = os.path.join(folder, "last_best_checkpoint")
    if not os.path.isfile(pointer):
        return None
    with open(pointer, encoding="utf-8") as stream:
        name = stream.readline().strip()
    path = os.path.join(folder, name)
    if not name or not os.path.isfile(path):
        raise CheckpointMismatchError(f"{pointer} names {name!r}, which is not in {folder}")
    return path


def named_checkpoint_names(folder):
    """The tensor names of the checkpoint a ClearerVoice-Studio folder names (``module.`` as
    stored), read memory-mapped: only the names, not the tensors; ``[]`` without one."""
    checkpoint = named_checkpoint(folder)
    if checkpoint is None:
        return []
    try:
        checkpoint = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        pass  # not a zip checkpoint: read_state_dict reads it (or says why it cannot)
    return list(read_state_dict(checkpoint))


def find_frcrn_checkpoint(folder):
    """The official FRCRN checkpoint file in a downloaded folder.

    ModelScope folders hold ``pytorch_model.bin``; ClearerVoice-Studio folders hold a text file
    ``last_best_checkpoint`` whose first line names the checkpoint file.
    """
    modelscope_file = os.path.join(folder, "pytorch_model.bin")
    if os.path.isfile(modelscope_file):
        return modelscope_file
    path = named_checkpoint(folder)
    if path is None:
        raise CheckpointMismatchError(
            f"{folder} holds no official FRCRN checkpoint (pytorch_model.bin or last_best_checkpoint)"
        )
    return path


def load_frcrn_official(model, checkpoint):
    """Fill an existing FRCRN ``model`` from official weights (strictly); returns it in eval mode.

    See :func:`frcrn_from_official` for the accepted checkpoints and the errors.
    """
    if isinstance(checkpoint, (str, os.PathLike)) and os.path.isdir(checkpoint):
        checkpoint = find_frcrn_checkpoint(checkpoint)
    official = {}
    for name, tensor in read_state_dict(checkpoint).items():
        canonical = _canonical_frcrn_name(name)
        if canonical in official and not torch.equal(official[canonical], tensor):
            raise CheckpointMismatchError(
                f"FRCRN checkpoint holds different tensors under the aliases {name!r} and {canonical!r}"
            )
        official[canonical] = tensor

    ours, used = {}, set()
    missing, shape_errors = [], []
    for our_name, our_tensor in model.state_dict().items():
        sources = _frcrn_official_names(our_name)
        absent = [s for s in sources if s not in official]
        if absent:
            missing.extend(absent)
            continue
        used.update(sources)
        parts = [official[s] for s in sources]
        if our_name.endswith("num_batches_tracked"):
            value = parts[0]
        else:
            value = torch.cat([p.reshape(-1, *our_tensor.shape[1:]) for p in parts]) if len(parts) > 1 else parts[0]
            if our_name.endswith(".memory"):
                value = value.reshape(value.shape[0], -1)
        if value.shape != our_tensor.shape:
            shape_errors.append(f"{'+'.join(sources)} {tuple(value.shape)} (expected {tuple(our_tensor.shape)})")
            continue
        ours[our_name] = value

    for key, expected in _frcrn_stft_kernels(model).items():
        if key in official:
            used.add(key)
            stored = official[key]
            if stored.shape != expected.shape or not torch.allclose(stored.float(), expected, atol=1e-4):
                raise CheckpointMismatchError(
                    f"FRCRN checkpoint's {key} does not match the STFT configured here "
                    f"(win_len={model.win_len}, win_inc={model.win_inc}, fft_len={model.fft_len}, "
                    "window): pass the checkpoint's own STFT settings"
                )
    unexpected = [n for n in official if n not in used and not _FRCRN_UNUSED.match(n)]
    _raise_if_mismatched("FRCRN", missing, unexpected, shape_errors)
    model.load_state_dict(ours, strict=True)
    return model.eval()


def frcrn_to_official(model):
    """Export an FRCRN model as an official (ModelScope / ClearerVoice) state dict.

    The result loads with ``strict=True`` into the reference implementation: it carries both
    alias spellings of every UNet tensor, the fixed STFT kernels, and zeros for the modules the
    reference registers but never uses (``fsmn_enc0``, ``fsmn_dec6``, ``se_layer_enc6``,
    ``se_layer_dec5``).

    Arguments
    ---------
    model : FRCRN

    Returns
    -------
    dict
        Official tensor names to tensors (save it with ``torch.save`` as ``pytorch_model.bin``,
        or wrap it as ``{'model': ...}`` for ClearerVoice-Studio).

    Example
    -------
    >>> from speechbrain_ext.lobes.models.frcrn import FRCRN
    >>> official = frcrn_to_official(FRCRN(channels=16, fsmn_hidden=16))
    >>> official["unet.encoder0.conv.conv_re.weight"].shape
    torch.Size([16, 1, 5, 2])
    """
    official = {}
    for our_name, tensor in model.state_dict().items():
        tensor = tensor.detach().clone()
        sources = _frcrn_official_names(our_name)
        if our_name.endswith(".memory"):
            tensor = tensor[:, None, :, None]  # back to a [C, 1, taps, 1] conv kernel
        if len(sources) == 1:
            official[sources[0]] = tensor
        elif our_name.endswith("num_batches_tracked"):
            official.update({s: tensor.clone() for s in sources})
        else:
            official.update(zip(sources, tensor.chunk(len(sources))))

    # Unused modules get zeros shaped like their used siblings.
    siblings = {"fsmn_enc0": "fsmn_enc1", "fsmn_dec6": "fsmn_dec5", "se_layer_enc6": "se_layer_enc5",
                "se_layer_dec5": "se_layer_dec4"}
    for name in list(official):
        for stage in ("unet.", "unet2."):
            for unused, sibling in siblings.items():
                if name.startswith(f"{stage}{sibling}."):
                    official[name.replace(f"{stage}{sibling}.", f"{stage}{unused}.", 1)] = torch.zeros_like(official[name])

    official.update(_frcrn_stft_kernels(model))
    official.update({_frcrn_alias_name(name): tensor for name, tensor in official.items()})
    return official


# ----------------------------------------------------------------------------------------------
# MossFormer
# ----------------------------------------------------------------------------------------------

# The official release stores three state dicts, one per module of the separator.
_MOSSFORMER_PARTS = ("encoder", "masknet", "decoder")
# Prefixes of the same three in one merged state dict (the reference's ``MossFormer``
# registers them as ``enc``, ``mask_net`` and ``dec`` in ClearerVoice-Studio's MossFormer2).
_MOSSFORMER_MERGED_PREFIXES = {
    "encoder.": "encoder", "enc.": "encoder",
    "masknet.": "masknet", "mask_net.": "masknet",
    "decoder.": "decoder", "dec.": "decoder",
}  # fmt: skip


def _masknet_names(stack, blocks_norm, post_norm):
    """(official masknet name, our MossFormerMaskNet name) pairs; ``stack`` is the official prefix of
    the block stack. "{i}" is a block index; a name ending in "." is a prefix, the rest of the
    tensor name (weight, bias) carries over unchanged."""
    block = stack + "mossformerM.layers.{i}."
    return [
        ("norm.", "input_norm."),
        ("conv1d_encoder.", "bottleneck."),
        ("pos_enc.", "pos_encoding."),
        (blocks_norm, "blocks_norm."),
        (post_norm, "post_norm."),
        ("prelu.", "prelu."),
        ("conv1d_out.", "speaker_split."),
        ("output.0.", "mask_value."),
        ("output_gate.0.", "mask_gate."),
        ("conv1_decoder.", "mask_proj."),
        (block + "qk_offset_scale.gamma", "blocks.{i}.qk_gain"),
        (block + "qk_offset_scale.beta", "blocks.{i}.qk_bias"),
        *(
            (f"{block}{projection}.mdl.{official}", f"blocks.{{i}}.{projection}.{ours}")
            for projection in ("to_hidden", "to_qk", "to_out")
            for official, ours in (("0.g", "gain"), ("1.", "linear."), ("3.sequential.1.conv.", "conv."))
        ),
    ]


_MOSSFORMER_STACK = "mdl.att_mdl."
_MOSSFORMER_BLOCK = _MOSSFORMER_STACK + "mossformerM.layers.{i}."
_MOSSFORMER_MASKNET_NAMES = _masknet_names(_MOSSFORMER_STACK, "mdl.att_mdl.norm.norm.", "mdl.att_norm.")
# Every official block stores the rotary frequencies, one tensor shared by all blocks; ours
# keeps it once, as ``rotary.freqs``.
_MOSSFORMER_ROTARY = re.compile(r"^mdl\.att_mdl\.mossformerM\.layers\.(\d+)\.rotary_pos_emb\.freqs$")
_MOSSFORMER_OUR_ROTARY = "rotary.freqs"


def _mossformer_name_rules(pairs):
    """[(regex of a source name, target template)] for ``(source, target)`` name pairs."""
    rules = []
    for source, target in pairs:
        pattern = r"(\d+)".join(re.escape(piece) for piece in source.split("{i}"))
        rules.append((re.compile(f"^{pattern}" + ("" if source.endswith(".") else "$")), target))
    return rules


_MOSSFORMER_TO_OURS = _mossformer_name_rules(_MOSSFORMER_MASKNET_NAMES)
_MOSSFORMER_TO_OFFICIAL = _mossformer_name_rules((ours, official) for official, ours in _MOSSFORMER_MASKNET_NAMES)


def _mossformer_rename(name, rules):
    """``name`` translated by the first matching rule, or None if no rule matches."""
    for pattern, template in rules:
        match = pattern.match(name)
        if match:
            index = match.group(1) if pattern.groups else ""
            return template.format(i=index) + name[match.end():]
    return None


def _separator_modules(model):
    """``{"encoder": ..., "masknet": ..., "decoder": ...}`` of a model or of a ``modules`` mapping."""
    return {part: model[part] if isinstance(model, Mapping) else getattr(model, part) for part in _MOSSFORMER_PARTS}


def read_official_configuration(path, model_class=None):
    """Constructor arguments of ``model_class`` from a ModelScope ``configuration.json`` ({} if absent).

    ModelScope passes the ``model`` section (less its ``type``) to the model constructor; we
    also accept a nested ``model_config`` section and keep only the keys ``model_class`` takes
    (every key of the section when ``model_class`` is None: e.g. the ``sample_rate`` we write).

    Example
    -------
    >>> read_official_configuration("/nonexistent/configuration.json")
    {}
    """
    import inspect
    import json

    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as file:
            configuration = json.load(file)
    except (OSError, ValueError) as error:
        raise CheckpointMismatchError(f"cannot read {path}: {error}") from None
    section = configuration.get("model", configuration) if isinstance(configuration, Mapping) else {}
    if not isinstance(section, Mapping):
        return {}
    if isinstance(section.get("model_config"), Mapping):
        section = {**section, **section["model_config"]}
    if model_class is None:
        return dict(section)
    accepted = inspect.signature(model_class).parameters
    return {key: value for key, value in section.items() if key in accepted}


def modelscope_configuration(task, model_kwargs, **extra):
    """The ``configuration.json`` content with which ModelScope's own ``pipeline(task, model=folder)``
    builds the model and its pipeline (``task``: ``"enhancement"`` or ``"separation"``).

    Example
    -------
    >>> modelscope_configuration("separation", {"num_spks": 2})["pipeline"]
    {'type': 'speech_mossformer_separation_temporal_8k'}
    """
    # ModelScope registers both the model and the pipeline under these names (metainfo).
    task_name, model_type = {
        "enhancement": ("acoustic-noise-suppression", "speech_frcrn_ans_cirm_16k"),
        "separation": ("speech-separation", "speech_mossformer_separation_temporal_8k"),
    }[task]
    return {
        "framework": "pytorch",
        "task": task_name,
        "pipeline": {"type": model_type},
        "model": {"type": model_type, **model_kwargs, **extra},
        "preprocessor": {},
    }


def _official_mossformer_parts(checkpoint):
    """``({part: state dict}, configuration kwargs, unexpected names)`` from any official layout."""
    if isinstance(checkpoint, (str, os.PathLike)) and os.path.isdir(checkpoint):
        parts = {part: read_state_dict(os.path.join(checkpoint, f"{part}.bin")) for part in _MOSSFORMER_PARTS}
        from speechbrain_ext.lobes.models.mossformer import MossFormer

        return parts, read_official_configuration(os.path.join(checkpoint, "configuration.json"), MossFormer), []
    if isinstance(checkpoint, (tuple, list)):
        if len(checkpoint) != len(_MOSSFORMER_PARTS):
            raise CheckpointMismatchError(
                f"expected the (encoder, masknet, decoder) state dicts, got {len(checkpoint)} item(s)"
            )
        return dict(zip(_MOSSFORMER_PARTS, map(read_state_dict, checkpoint))), {}, []
    if isinstance(checkpoint, Mapping) and checkpoint and not any(torch.is_tensor(v) for v in checkpoint.values()):
        by_part = {"mask_net" if part == "masknet" and "mask_net" in checkpoint else part: part for part in _MOSSFORMER_PARTS}
        if set(checkpoint) == set(by_part):
            return {part: read_state_dict(checkpoint[key]) for key, part in by_part.items()}, {}, []

    parts, unexpected = {part: {} for part in _MOSSFORMER_PARTS}, []
    for name, tensor in read_state_dict(checkpoint).items():
        prefix = next((p for p in _MOSSFORMER_MERGED_PREFIXES if name.startswith(p)), None)
        if prefix is None:
            unexpected.append(name)
        else:
            parts[_MOSSFORMER_MERGED_PREFIXES[prefix]][name[len(prefix):]] = tensor
    return parts, {}, unexpected


def mossformer_from_official(checkpoint, **model_kwargs):
    """Build a :class:`~speechbrain_ext.lobes.models.mossformer.MossFormer` from official weights.

    Arguments
    ---------
    checkpoint : str, os.PathLike, dict, tuple or list
        One of

        * a ModelScope model directory holding ``encoder.bin``, ``masknet.bin`` and
          ``decoder.bin`` (and optionally ``configuration.json``, whose ``model`` section
          overrides the default constructor arguments);
        * ``{"encoder": ..., "masknet": ..., "decoder": ...}`` (``mask_net`` accepted) or an
          ``(encoder, masknet, decoder)`` sequence, of state dicts or paths;
        * one merged state dict, in memory or as a path, with the prefixes ``encoder.``,
          ``decoder.`` and ``mask_net.`` or ``masknet.`` (the reference ``MossFormer``'s own
          ``state_dict()``).

        Files are read with ``torch.load(weights_only=True)``.
    **model_kwargs
        MossFormer constructor arguments; they override ``configuration.json``.

    Returns
    -------
    MossFormer
        The model with every tensor filled, in eval mode.

    Raises
    ------
    CheckpointMismatchError
        If a tensor is missing, unexpected or of the wrong shape, or if the blocks' copies of
        the rotary frequencies differ.

    Example
    -------
    >>> from speechbrain_ext.lobes.models.mossformer import MossFormer
    >>> tiny = dict(in_channels=32, out_channels=32, d_model=32, num_blocks=2, group_size=8, query_key_dim=16)
    >>> official = mossformer_to_official(MossFormer(**tiny))
    >>> len(official["masknet"])
    47
    >>> model = mossformer_from_official(official, **tiny)
    """
    from speechbrain_ext.lobes.models.mossformer import MossFormer

    parts, configuration, unexpected = _official_mossformer_parts(checkpoint)
    model = MossFormer(**{**configuration, **model_kwargs})
    return _fill_separator("MossFormer", model, parts, unexpected, _MOSSFORMER_NAMES)


@dataclass(frozen=True)
class _SeparatorNames:
    """How one official separator (MossFormer, MossFormer2) names its masknet's tensors."""

    to_ours: list  # rules: official masknet name -> ours
    to_official: list  # rules: ours -> official
    block: str  # official prefix of attention block {i}
    rotary: re.Pattern  # official per-block copies of the rotary frequencies (group 1: block)
    # Our tensors the official code stores with one more, trailing, dimension of size 1
    # (1x1 convolutions where we use linear layers, 2-D convolutions over [time, 1]); None: none.
    squeezed: re.Pattern = None
    # How errors name each part's tensors: the checkpoint's own prefix (default "<part>/").
    shown_as: tuple = ()

    def shown(self, part, name):
        """``name`` of ``part`` as the checkpoint spells it, for error messages."""
        return dict(self.shown_as).get(part, f"{part}/") + name

    def is_squeezed(self, our_name):
        return self.squeezed is not None and self.squeezed.match(our_name) is not None


_MOSSFORMER_NAMES = _SeparatorNames(
    _MOSSFORMER_TO_OURS, _MOSSFORMER_TO_OFFICIAL, _MOSSFORMER_BLOCK, _MOSSFORMER_ROTARY
)


def _fill_separator(model_name, model, parts, unexpected, names):
    """``model`` (encoder / masknet / decoder) filled strictly from official ``parts``, in eval mode."""
    expected = model.state_dict()
    num_blocks = len(model.masknet.blocks)
    rotary_name = f"masknet.{_MOSSFORMER_OUR_ROTARY}"

    ours, shape_errors, rotary = {}, [], {}
    for part, state in parts.items():
        for name, tensor in state.items():
            rotary_match = names.rotary.match(name) if part == "masknet" else None
            if rotary_match and int(rotary_match.group(1)) < num_blocks:
                rotary[int(rotary_match.group(1))] = tensor
                continue
            our_name = _mossformer_rename(name, names.to_ours) if part == "masknet" else name
            our_name = f"{part}.{our_name}" if our_name is not None else None
            if our_name not in expected or our_name == rotary_name:
                unexpected.append(names.shown(part, name))
                continue
            target = expected[our_name].shape
            if names.is_squeezed(our_name) and tensor.shape == (*target, 1):
                tensor = tensor.squeeze(-1)
            if tensor.shape != target:
                shape_errors.append(f"{names.shown(part, name)} {tuple(tensor.shape)} (expected {tuple(target)})")
            else:
                ours[our_name] = tensor

    missing = [names.shown("masknet", f"{names.block.format(i=i)}rotary_pos_emb.freqs") for i in range(num_blocks)
               if i not in rotary]
    if rotary:
        first = next(iter(rotary.values()))
        if any(not torch.equal(first, other) for other in rotary.values()):
            raise CheckpointMismatchError(
                f"{model_name} checkpoint stores different rotary frequencies in different blocks; "
                "the model shares one set between all blocks"
            )
        if first.shape != expected[rotary_name].shape:
            shape_errors.append(f"{names.shown('masknet', '...rotary_pos_emb.freqs')} {tuple(first.shape)} "
                                f"(expected {tuple(expected[rotary_name].shape)})")
        else:
            ours[rotary_name] = first
    for our_name in expected:
        if our_name not in ours and our_name != rotary_name:
            part, name = our_name.split(".", 1)
            official_name = _mossformer_rename(name, names.to_official) if part == "masknet" else name
            missing.append(names.shown(part, official_name))

    _raise_if_mismatched(model_name, missing, unexpected, shape_errors)
    model.load_state_dict(ours, strict=True)
    return model.eval()


def _official_separator_parts(modules, names):
    """``{part: official state dict}`` of our ``{part: module}`` (inverse of :func:`_fill_separator`;
    the parts other than ``masknet`` keep their names)."""
    official = {part: {name: t.detach().clone() for name, t in modules[part].state_dict().items()}
                for part in modules if part != "masknet"}
    official["masknet"] = {}
    for name, tensor in modules["masknet"].state_dict().items():
        tensor = tensor.detach().clone()
        if name == _MOSSFORMER_OUR_ROTARY:
            # One tensor written under every block's name, as the reference shares it.
            for i in range(len(modules["masknet"].blocks)):
                official["masknet"][f"{names.block.format(i=i)}rotary_pos_emb.freqs"] = tensor
            continue
        official_name = _mossformer_rename(name, names.to_official)
        if official_name is None:
            raise KeyError(f"no official name for masknet tensor {name!r}")
        official["masknet"][official_name] = tensor[..., None] if names.is_squeezed(f"masknet.{name}") else tensor
    return official


def load_mossformer_official(model, checkpoint):
    """Fill an existing MossFormer ``model`` (or anything holding its ``encoder``, ``masknet``
    and ``decoder`` as attributes or keys) from official weights, converted for this model's configuration; returns it.

    See :func:`mossformer_from_official` for the accepted checkpoints and the errors.
    """
    from speechbrain_ext.lobes.models.mossformer import MossFormer

    parts = MossFormer.from_modules(*_separator_modules(model).values())
    parts.load_state_dict(mossformer_from_official(checkpoint, **parts.config).state_dict())
    return model


def mossformer_to_official(model, directory=None, sample_rate=None):
    """Export a MossFormer as the official three state dicts (and optionally files).

    Each state dict loads with ``strict=True`` into the matching module of the reference
    implementation (``encoder``, ``mask_net``, ``decoder``).

    Arguments
    ---------
    model : MossFormer or Mapping
        The convenience :class:`~speechbrain_ext.lobes.models.mossformer.MossFormer`, or anything
        holding ``encoder``, ``masknet`` and ``decoder`` modules as attributes or keys (e.g. the
        ``modules`` of ``hparams/mossformer.yaml``).
    directory : str or os.PathLike, optional
        If given, ``encoder.bin``, ``masknet.bin``, ``decoder.bin`` and a ModelScope
        ``configuration.json`` (which ModelScope's own ``pipeline`` accepts) are written there.
    sample_rate : int, optional
        Written into ``configuration.json`` (our interfaces read it back; ModelScope ignores it).

    Returns
    -------
    dict
        ``{"encoder": state dict, "masknet": state dict, "decoder": state dict}`` with the
        official tensor names.

    Example
    -------
    >>> from speechbrain_ext.lobes.models.mossformer import MossFormer
    >>> official = mossformer_to_official(MossFormer(num_blocks=1))
    >>> official["encoder"]["conv1d.weight"].shape
    torch.Size([512, 1, 16])
    >>> official["masknet"]["mdl.att_mdl.mossformerM.layers.0.qk_offset_scale.gamma"].shape
    torch.Size([4, 128])
    """
    modules = _separator_modules(model)
    official = _official_separator_parts(modules, _MOSSFORMER_NAMES)
    if directory is not None:
        import json

        from speechbrain_ext.lobes.models.mossformer import MossFormer

        os.makedirs(directory, exist_ok=True)
        for part, state in official.items():
            torch.save(state, os.path.join(directory, f"{part}.bin"))
        config = MossFormer.from_modules(modules["encoder"], modules["masknet"], modules["decoder"]).config
        with open(os.path.join(directory, "configuration.json"), "w", encoding="utf-8") as file:
            extra = {} if sample_rate is None else {"sample_rate": int(sample_rate)}
            json.dump(modelscope_configuration("separation", config, **extra), file, indent=4)
    return official


# ----------------------------------------------------------------------------------------------
# MossFormer2 separation (ClearerVoice-Studio's MossFormer2_SS_16K)
# ----------------------------------------------------------------------------------------------

_MOSSFORMER2_STACK = "mdl.intra_mdl."
_MOSSFORMER2_BLOCK = _MOSSFORMER2_STACK + "mossformerM.layers.{i}."
_MOSSFORMER2_RECURRENCE = _MOSSFORMER2_STACK + "mossformerM.fsmn.{i}."
_MOSSFORMER2_ROTARY = re.compile(r"^mdl\.intra_mdl\.mossformerM\.layers\.(\d+)\.rotary_pos_emb\.freqs$")


#: The prefixes of the official MossFormer2 separator's parts in its state dict.
_MOSSFORMER2_PREFIXES = (("encoder", "enc."), ("masknet", "mask_net."), ("decoder", "dec."))
#: The prefix of the masknet in the official enhancer's state dict (its ``TestNet.mossformer``).
_MOSSFORMER2_SE_PREFIX = "mossformer."


def _mossformer2_names(memory_depth, memory="dense"):
    """The MossFormer2 masknet's names: MossFormer's, under another prefix, and the recurrent
    modules' (whose ``"dense"`` memory has ``memory_depth`` layers; the ``"plain"`` one is a
    single convolution)."""
    if memory == "plain":
        memory_names = [("gated_fsmn.fsmn.conv1.", "memory.conv.")]
    else:
        memory_names = [
            (f"gated_fsmn.fsmn.conv.{official}{k + 1}.", f"memory.{ours}.{k}.")
            for k in range(memory_depth)
            for official, ours in (("conv", "convs"), ("norm", "norms"), ("prelu", "activations"))
        ]
    recurrence = [
        ("conv1.0.", "input_proj."),
        ("conv1.1.", "input_activation."),
        ("norm1.", "input_norm."),
        *(
            (f"gated_fsmn.{branch}.mdl.{official}", f"{ours}.{our_part}")
            for branch, ours in (("to_u", "to_memory"), ("to_v", "to_gate"))
            for official, our_part in (("0.", "layer_norm."), ("1.", "linear."), ("3.sequential.1.conv.", "conv."))
        ),
        ("gated_fsmn.fsmn.linear.", "memory_hidden."),
        ("gated_fsmn.fsmn.project.", "memory_project."),
        *memory_names,
        ("norm2.", "output_norm."),
        ("conv2.", "output_proj."),
    ]
    pairs = _masknet_names(_MOSSFORMER2_STACK, "mdl.intra_mdl.norm.", "mdl.intra_norm.")
    pairs += [(_MOSSFORMER2_RECURRENCE + official, "recurrences.{i}." + ours) for official, ours in recurrence]
    return _SeparatorNames(
        _mossformer_name_rules(pairs),
        _mossformer_name_rules((ours, official) for official, ours in pairs),
        _MOSSFORMER2_BLOCK,
        _MOSSFORMER2_ROTARY,
        # 1x1 Conv1d there, Linear here; Conv2d over [time, 1] there, Conv1d here.
        squeezed=re.compile(r"^masknet\.recurrences\.\d+\.(input_proj|output_proj|memory\.convs\.\d+|memory\.conv)\.weight$"),
        shown_as=(("masknet", _MOSSFORMER2_SE_PREFIX),) if memory == "plain" else _MOSSFORMER2_PREFIXES,
    )


def _clearervoice_checkpoint(checkpoint, model_class):
    """``(checkpoint, constructor kwargs)``: a ClearerVoice-Studio folder becomes the file its
    ``last_best_checkpoint`` names and the kwargs of its ``configuration.json`` (the folders we
    write have one); anything else is returned as is, with no kwargs."""
    if not (isinstance(checkpoint, (str, os.PathLike)) and os.path.isdir(checkpoint)):
        return checkpoint, {}
    path = named_checkpoint(checkpoint)
    if path is None:
        raise CheckpointMismatchError(f"{checkpoint} holds no last_best_checkpoint naming a {model_class.__name__} checkpoint")
    return path, read_official_configuration(os.path.join(checkpoint, "configuration.json"), model_class)


def mossformer2_from_official(checkpoint, **model_kwargs):
    """Build a :class:`~speechbrain_ext.lobes.models.mossformer2.MossFormer2` from official weights.

    Arguments
    ---------
    checkpoint : str, os.PathLike or dict
        One of

        * a ClearerVoice-Studio folder (``alibabasglab/MossFormer2_SS_16K``): a text file
          ``last_best_checkpoint`` naming the checkpoint, and optionally a ``configuration.json``
          (the folders :func:`mossformer2_to_official` writes) whose ``model`` section overrides
          the default constructor arguments;
        * that checkpoint file, or its content: ``{'model': state_dict, ...}`` or the state dict
          itself, with the prefixes ``enc.``, ``mask_net.``, ``dec.`` (``module.`` stripped);
        * ``{"encoder": ..., "masknet": ..., "decoder": ...}`` state dicts of the three parts.

        Files are read with ``torch.load(weights_only=True)``.
    **model_kwargs
        MossFormer2 constructor arguments; they override ``configuration.json``.

    Returns
    -------
    MossFormer2
        The model with every tensor filled, in eval mode.

    Raises
    ------
    CheckpointMismatchError
        If a tensor is missing, unexpected or of the wrong shape, or if the blocks' copies of
        the rotary frequencies differ.

    Example
    -------
    >>> from speechbrain_ext.lobes.models.mossformer2 import MossFormer2
    >>> tiny = dict(in_channels=32, out_channels=32, d_model=32, num_blocks=1, group_size=8,
    ...             query_key_dim=16, fsmn_channels=16, memory_order=4)
    >>> official = mossformer2_to_official(MossFormer2(**tiny))
    >>> official["mask_net.mdl.intra_mdl.mossformerM.fsmn.0.conv1.0.weight"].shape
    torch.Size([16, 32, 1])
    >>> model = mossformer2_from_official({"model": official}, **tiny)
    """
    from speechbrain_ext.lobes.models.mossformer2 import MossFormer2

    checkpoint, configuration = _clearervoice_checkpoint(checkpoint, MossFormer2)
    parts, _, unexpected = _official_mossformer_parts(checkpoint)
    model = MossFormer2(**{**configuration, **model_kwargs})
    names = _mossformer2_names(len(model.masknet.recurrences[0].memory.convs))
    return _fill_separator("MossFormer2", model, parts, unexpected, names)


def load_mossformer2_official(model, checkpoint):
    """Fill an existing MossFormer2 ``model`` (or anything holding its ``encoder``, ``masknet``
    and ``decoder`` as attributes or keys) from official weights, converted for this model's configuration; returns it.

    See :func:`mossformer2_from_official` for the accepted checkpoints and the errors.
    """
    from speechbrain_ext.lobes.models.mossformer2 import MossFormer2

    parts = MossFormer2.from_modules(*_separator_modules(model).values())
    parts.load_state_dict(mossformer2_from_official(checkpoint, **parts.config).state_dict())
    return model


def mossformer2_to_official(model, directory=None, sample_rate=None):
    """Export a MossFormer2 as the official (ClearerVoice-Studio) state dict, and optionally a folder.

    The state dict loads with ``strict=True`` into the reference ``MossFormer2_SS_16K(args).model``.

    Arguments
    ---------
    model : MossFormer2 or Mapping
        The :class:`~speechbrain_ext.lobes.models.mossformer2.MossFormer2`, or anything holding
        its ``encoder``, ``masknet`` and ``decoder`` as attributes or keys.
    directory : str or os.PathLike, optional
        If given, written there: ``model.pt`` (``{'model': state dict}``), the
        ``last_best_checkpoint`` file naming it (ClearVoice's loader reads both) and a
        ``configuration.json`` with the constructor arguments (read back by
        :func:`mossformer2_from_official`; ClearVoice ignores it).
    sample_rate : int, optional
        Written into ``configuration.json``.

    Returns
    -------
    dict
        Official tensor names (``enc.``, ``mask_net.``, ``dec.``) to tensors.

    Example
    -------
    >>> from speechbrain_ext.lobes.models.mossformer2 import MossFormer2
    >>> official = mossformer2_to_official(MossFormer2(num_blocks=1))
    >>> official["mask_net.mdl.intra_mdl.mossformerM.fsmn.0.gated_fsmn.fsmn.conv.conv2.weight"].shape
    torch.Size([256, 2, 39, 1])
    """
    from speechbrain_ext.lobes.models.mossformer2 import MossFormer2

    modules = _separator_modules(model)
    config = MossFormer2.from_modules(modules["encoder"], modules["masknet"], modules["decoder"]).config
    parts = _official_separator_parts(modules, _mossformer2_names(config["memory_depth"]))
    official = {f"{prefix}{name}": tensor for part, prefix in _MOSSFORMER2_PREFIXES for name, tensor in parts[part].items()}
    if directory is not None:
        extra = {} if sample_rate is None else {"sample_rate": int(sample_rate)}
        write_clearervoice_folder(directory, official, "MossFormer2_SS_16K", {**config, **extra})
    return official


# ----------------------------------------------------------------------------------------------
# MossFormer2 enhancement (ClearerVoice-Studio's MossFormer2_SE_48K)
# ----------------------------------------------------------------------------------------------


def mossformer2_se_from_official(checkpoint, **model_kwargs):
    """Build a :class:`~speechbrain_ext.lobes.models.mossformer2_se.MossFormer2SE` from official weights.

    Arguments
    ---------
    checkpoint : str, os.PathLike or dict
        A ClearerVoice-Studio folder (``alibabasglab/MossFormer2_SE_48K``: ``last_best_checkpoint``
        naming the checkpoint, optionally our ``configuration.json``), that checkpoint file, or
        its content (``{'model': state_dict, ...}`` or the state dict, names ``mossformer.*``,
        ``module.`` stripped). Files are read with ``torch.load(weights_only=True)``.
    **model_kwargs
        MossFormer2SE constructor arguments; they override ``configuration.json``.

    Returns
    -------
    MossFormer2SE
        The model with every tensor filled, in eval mode.

    Raises
    ------
    CheckpointMismatchError
        If a tensor is missing, unexpected or of the wrong shape.

    Example
    -------
    >>> from speechbrain_ext.lobes.models.mossformer2_se import MossFormer2SE
    >>> tiny = dict(d_model=32, num_blocks=1, group_size=8, query_key_dim=16, fsmn_channels=16)
    >>> official = mossformer2_se_to_official(MossFormer2SE(**tiny))
    >>> official["mossformer.conv1_decoder.weight"].shape
    torch.Size([961, 32, 1])
    >>> model = mossformer2_se_from_official({"model": official}, **tiny)
    """
    from speechbrain_ext.lobes.models.mossformer2_se import MossFormer2SE

    checkpoint, configuration = _clearervoice_checkpoint(checkpoint, MossFormer2SE)
    masknet, unexpected = {}, []
    for name, tensor in read_state_dict(checkpoint).items():
        if name.startswith(_MOSSFORMER2_SE_PREFIX):
            masknet[name[len(_MOSSFORMER2_SE_PREFIX):]] = tensor
        else:
            unexpected.append(name)
    model = MossFormer2SE(**{**configuration, **model_kwargs})
    return _fill_separator("MossFormer2_SE", model, {"masknet": masknet}, unexpected,
                           _mossformer2_names(0, memory="plain"))


def load_mossformer2_se_official(model, checkpoint):
    """Fill an existing MossFormer2SE ``model`` from official weights (strictly); returns it."""
    model.load_state_dict(mossformer2_se_from_official(checkpoint, **model.config).state_dict())
    return model


def mossformer2_se_to_official(model, directory=None, sample_rate=None):
    """Export a MossFormer2SE as the official (ClearerVoice-Studio) state dict, and optionally a folder.

    The state dict loads with ``strict=True`` into the reference ``MossFormer2_SE_48K(args).model``.
    With ``directory``: ``model.pt`` (``{'model': state dict}``), ``last_best_checkpoint`` naming
    it, and a ``configuration.json`` with the constructor arguments (its ``sample_rate``
    included), which :func:`mossformer2_se_from_official` reads back and ClearVoice ignores.
    ``sample_rate``, if given, must be the model's own (a check for callers that pass the rate
    of their data).

    Example
    -------
    >>> from speechbrain_ext.lobes.models.mossformer2_se import MossFormer2SE
    >>> official = mossformer2_se_to_official(MossFormer2SE(num_blocks=1))
    >>> official["mossformer.mdl.intra_mdl.mossformerM.fsmn.0.gated_fsmn.fsmn.conv1.weight"].shape
    torch.Size([256, 1, 39, 1])
    """
    masknet = _official_separator_parts({"masknet": model.masknet}, _mossformer2_names(0, memory="plain"))["masknet"]
    official = {_MOSSFORMER2_SE_PREFIX + name: tensor for name, tensor in masknet.items()}
    if directory is not None:
        if sample_rate is not None and int(sample_rate) != model.sample_rate:
            raise ValueError(f"this model computes its features at {model.sample_rate} Hz, not {sample_rate}")
        write_clearervoice_folder(directory, official, "MossFormer2_SE_48K", model.config)
    return official


def write_clearervoice_folder(directory, official, model_type=None, config=None):
    """Write a ClearerVoice-Studio model folder: ``model.pt`` = ``{'model': official}`` and the
    ``last_best_checkpoint`` naming it (what ClearVoice's loader reads), plus, with ``config``,
    a ``configuration.json`` of our constructor arguments (what our converters read back;
    ClearVoice ignores it).

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> write_clearervoice_folder(folder, {"w": torch.zeros(1)})
    >>> sorted(os.listdir(folder)), named_checkpoint(folder).endswith("model.pt")
    (['last_best_checkpoint', 'model.pt'], True)
    """
    import json

    os.makedirs(directory, exist_ok=True)
    torch.save({"model": official}, os.path.join(directory, CLEARERVOICE_CHECKPOINT))
    with open(os.path.join(directory, "last_best_checkpoint"), "w", encoding="utf-8") as stream:
        stream.write(CLEARERVOICE_CHECKPOINT + "\n")
    if config is not None:
        with open(os.path.join(directory, "configuration.json"), "w", encoding="utf-8") as file:
            json.dump({"model": {"type": model_type, **config}}, file, indent=4)


# ----------------------------------------------------------------------------------------------
# MossFormerGAN enhancement (ClearerVoice-Studio's MossFormerGAN_SE_16K)
# ----------------------------------------------------------------------------------------------


def _dense_block_prefixes(official, ours, depth=4):
    """(official, ours) prefixes of a dense block's layers (official layers count from 1)."""
    pairs = []
    for i in range(depth):
        k = i + 1
        pairs += [
            (f"{official}.conv{k}.", f"{ours}.convs.{i}."),
            (f"{official}.norm{k}.", f"{ours}.norms.{i}."),
            (f"{official}.prelu{k}.", f"{ours}.activations.{i}."),
            (f"{official}.fsmn{k}.fsmn.linear.", f"{ours}.memories.{i}.hidden."),
            (f"{official}.fsmn{k}.fsmn.project.", f"{ours}.memories.{i}.project."),
            (f"{official}.fsmn{k}.fsmn.conv1.", f"{ours}.memories.{i}.conv."),
        ]
    return pairs


def _feed_forward_prefixes(official, ours):
    return [(f"{official}.mdl.0.", f"{ours}.layer_norm."), (f"{official}.mdl.1.", f"{ours}.linear."),
            (f"{official}.mdl.3.sequential.1.conv.", f"{ours}.conv.")]


def _mossformer_gan_prefixes(num_blocks, heads):
    """Every (official prefix, our prefix) pair of a MossFormerGAN generator of this size: the
    official names are ``SyncANet``'s, ours the :class:`MossFormerGANSE`'s (``generator.`` ...)."""
    g = "generator"
    pairs = [
        ("dense_encoder.conv_1.", f"{g}.encoder_in."),
        ("dense_encoder.conv_2.", f"{g}.encoder_down."),
        *_dense_block_prefixes("dense_encoder.dilated_dense", f"{g}.encoder_dense"),
        *_dense_block_prefixes("mask_decoder.dense_block", f"{g}.mask_dense"),
        ("mask_decoder.sub_pixel.conv.", f"{g}.mask_up.conv."),
        ("mask_decoder.conv_1.", f"{g}.mask_out.0."),
        ("mask_decoder.norm.", f"{g}.mask_out.1."),
        ("mask_decoder.prelu.", f"{g}.mask_out.2."),
        ("mask_decoder.final_conv.", f"{g}.mask_out.3."),
        ("mask_decoder.prelu_out.", f"{g}.mask_slopes."),
        *_dense_block_prefixes("complex_decoder.dense_block", f"{g}.complex_dense"),
        ("complex_decoder.sub_pixel.conv.", f"{g}.complex_up.conv."),
        ("complex_decoder.norm.", f"{g}.complex_norm."),
        ("complex_decoder.prelu.", f"{g}.complex_act."),
        ("complex_decoder.conv.", f"{g}.complex_out."),
    ]
    for b in range(num_blocks):
        block, ours = f"blocks.{b}", f"{g}.blocks.{b}"
        pairs.append((f"{block}.Fconv.", f"{ours}.intra.pairs."))
        for axis in ("intra", "inter"):
            path, moss = f"{ours}.{axis}", f"{block}.{axis}_mossformer"
            pairs += [
                (f"{block}.{axis}_norm.", f"{path}.norm."),
                *_feed_forward_prefixes(f"{block}.{axis}_to_u", f"{path}.to_memory"),
                *_feed_forward_prefixes(f"{block}.{axis}_to_v", f"{path}.to_gate"),
                (f"{block}.{axis}_rnn.0.linear.", f"{path}.memory.hidden."),
                (f"{block}.{axis}_rnn.0.project.", f"{path}.memory.project."),
                (f"{block}.{axis}_rnn.0.conv1.", f"{path}.memory.conv."),
                (f"{moss}.rotary_pos_emb.", f"{path}.attention.rotary."),
                *_feed_forward_prefixes(f"{moss}.to_hidden", f"{path}.attention.to_hidden"),
                *_feed_forward_prefixes(f"{moss}.to_qk", f"{path}.attention.to_qk"),
                *_feed_forward_prefixes(f"{moss}.to_out", f"{path}.attention.to_out"),
                (f"{moss}.qk_offset_scale.gamma", f"{path}.attention.qk_gain"),
                (f"{moss}.qk_offset_scale.beta", f"{path}.attention.qk_bias"),
                (f"{block}.{axis}_linear.", f"{path}.merge."),
                (f"{block}.{axis}_se.avg_pool_layer.", f"{path}.excitation.mean_gate."),
                (f"{block}.{axis}_se.max_pool_layer.", f"{path}.excitation.max_gate."),
            ]
        for h in range(heads):
            for kind, ours_kind in (("Q", "queries"), ("K", "keys"), ("V", "values")):
                pairs.append((f"{block}.attn_conv_{kind}_{h}.", f"{ours}.fullband.{ours_kind}.{h}."))
        pairs.append((f"{block}.attn_concat_proj.", f"{ours}.fullband.output."))
    return pairs


def _rename_by_prefix(name, prefixes):
    """``name`` with its longest matching prefix replaced, or None."""
    best = max((p for p in prefixes if name.startswith(p)), key=len, default=None)
    return None if best is None else prefixes[best] + name[len(best):]


# FSMN memories: Conv2d kernels [C, 1, K, 1] there, Conv1d [C, 1, K] here.
_MOSSFORMER_GAN_SQUEEZED = re.compile(r".*\.(memories\.\d+|memory)\.conv\.weight$")


def mossformer_gan_from_official(checkpoint, **model_kwargs):
    """Build a :class:`~speechbrain_ext.lobes.models.mossformer_gan.MossFormerGANSE` from official weights.

    Arguments
    ---------
    checkpoint : str, os.PathLike or dict
        A ClearerVoice-Studio folder (``alibabasglab/MossFormerGAN_SE_16K``: ``last_best_checkpoint``
        naming the checkpoint, optionally our ``configuration.json``), that file, or its content
        (``{'model': state_dict, ...}`` or the generator's state dict; ``module.`` stripped).
    **model_kwargs
        MossFormerGANSE constructor arguments; they override ``configuration.json``.

    Returns
    -------
    MossFormerGANSE
        In eval mode, every tensor filled.

    Raises
    ------
    CheckpointMismatchError
        If a tensor is missing, unexpected or of the wrong shape.

    Example
    -------
    >>> from speechbrain_ext.lobes.models.mossformer_gan import MossFormerGANSE
    >>> tiny = dict(win_len=40, win_inc=10, channels=16, num_blocks=1, hidden_channels=32, query_key_dim=16,
    ...             qk_channels=3)
    >>> official = mossformer_gan_to_official(MossFormerGANSE(**tiny))
    >>> official["blocks.0.intra_rnn.0.conv1.weight"].shape
    torch.Size([32, 1, 39, 1])
    >>> model = mossformer_gan_from_official({"model": official}, **tiny)
    """
    from speechbrain_ext.lobes.models.mossformer_gan import MossFormerGANSE

    checkpoint, configuration = _clearervoice_checkpoint(checkpoint, MossFormerGANSE)
    model = MossFormerGANSE(**{**configuration, **model_kwargs})
    config = model.config
    prefixes = dict(_mossformer_gan_prefixes(config["num_blocks"], config["heads"]))
    expected = model.state_dict()
    ours, unexpected, shape_errors = {}, [], []
    for name, tensor in read_state_dict(checkpoint).items():
        our_name = _rename_by_prefix(name, prefixes)
        if our_name not in expected:
            unexpected.append(name)
            continue
        target = expected[our_name].shape
        if _MOSSFORMER_GAN_SQUEEZED.match(our_name) and tensor.shape == (*target, 1):
            tensor = tensor.squeeze(-1)
        if tensor.shape != target:
            shape_errors.append(f"{name} {tuple(tensor.shape)} (expected {tuple(target)})")
        else:
            ours[our_name] = tensor
    inverse = {v: k for k, v in prefixes.items()}
    missing = [_rename_by_prefix(name, inverse) or name for name in expected if name not in ours]
    _raise_if_mismatched("MossFormerGAN", missing, unexpected, shape_errors)
    model.load_state_dict(ours, strict=True)
    return model.eval()


def mossformer_gan_to_official(model, directory=None):
    """Export a MossFormerGANSE as the official generator state dict (loads with ``strict=True``
    into the reference ``MossFormerGAN_SE_16K(args).model``), and optionally a ClearerVoice-Studio
    folder (see :func:`write_clearervoice_folder`).

    Example
    -------
    >>> from speechbrain_ext.lobes.models.mossformer_gan import MossFormerGANSE
    >>> len(mossformer_gan_to_official(MossFormerGANSE()))
    1065
    """
    config = model.config
    inverse = {ours: official for official, ours in _mossformer_gan_prefixes(config["num_blocks"], config["heads"])}
    official = {}
    for name, tensor in model.state_dict().items():
        official_name = _rename_by_prefix(name, inverse)
        if official_name is None:
            raise KeyError(f"no official name for MossFormerGAN tensor {name!r}")
        tensor = tensor.detach().clone()
        official[official_name] = tensor[..., None] if _MOSSFORMER_GAN_SQUEEZED.match(name) else tensor
    if directory is not None:
        write_clearervoice_folder(directory, official, "MossFormerGAN_SE_16K", config)
    return official


def load_mossformer_gan_official(model, checkpoint):
    """Fill an existing MossFormerGANSE ``model`` from official weights (strictly); returns it."""
    model.load_state_dict(mossformer_gan_from_official(checkpoint, **model.config).state_dict())
    return model
