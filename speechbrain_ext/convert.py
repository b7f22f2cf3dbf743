"""Convert between the official FRCRN / MossFormer checkpoints and speechbrain-ext models.

The official checkpoints (ModelScope, ClearerVoice-Studio) name tensors after the reference
code's module tree. Our modules are organised differently, so each model has a name map
applied here, in one place. Loading is strict in both directions: every tensor the official
forward pass uses must be consumed and every parameter/buffer of ours filled, otherwise
:class:`CheckpointMismatchError` names what is missing or unexpected.
"""

import os
import re
from collections.abc import Mapping

import torch

from speechbrain_ext.nnet.stft import analysis_basis


class CheckpointMismatchError(ValueError):
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
        (``{'model': state_dict, ...}``), either in memory or as a path; ``module.`` prefixes and
        the reference's duplicated alias names (``encoders.0`` / ``encoder0``) are accepted.
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

    official = {}
    for name, tensor in read_state_dict(checkpoint).items():
        canonical = _canonical_frcrn_name(name)
        if canonical in official and not torch.equal(official[canonical], tensor):
            raise CheckpointMismatchError(
                f"FRCRN checkpoint holds different tensors under the aliases {name!r} and {canonical!r}"
            )
        official[canonical] = tensor

    model = FRCRN(**model_kwargs)
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
