"""ONNX export: graphs that take a waveform of any length and give the model's waveform back.

:func:`export_onnx` writes one of three graphs for anything ``from_hparams`` loads:

- an **enhancer** (FRCRN, causal FRCRN, MossFormer2 48 kHz, MossFormerGAN): input ``noisy``
  ``[batch, time]`` (at least one frame, ``win_len`` samples), output ``enhanced`` ``[batch, time]``.
  The graph pads to whole frames and crops back, and holds the STFT and its inverse. Models whose
  interface normalises the level (FRCRN) take a second input ``gain`` ``[batch]``: the input is
  multiplied by it and the output divided by it; ``0`` measures it inside the graph as the
  official pipeline does (RMS of the louder samples brought to -25 dBFS). Leaving that level
  out is the usual way exported FRCRNs lose their quality.
- a **separator** (MossFormer, MossFormer2): input ``mix`` ``[batch, time]``, output ``sources``
  ``[batch, time, speakers]``.
- a **stream step** (causal FRCRN, ``streaming=True``): one hop in, one hop out, the state as
  explicit inputs and outputs (see :class:`FRCRNStepGraph`).

Time and batch axes are dynamic: lengths are symbolic through the whole graph (the models avoid
Python branches on a length while exporting: :func:`torch.compiler.is_exporting`), so the graph
computes at every length what the model computes, not only at the traced one. The graph carries
what an interface needs to run it (sample rate, frame sizes, level normalisation, speakers) in
its metadata, so :func:`speechbrain_ext.inference.onnx.load_onnx` needs nothing else.

Authors: speechbrain-ext contributors
"""

import contextlib
import json
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

import speechbrain_ext
from speechbrain_ext.audio import level_scale, remove_temporaries, temporary_paths
from speechbrain_ext.errors import SpeechBrainExtError
from speechbrain_ext.lobes.models.masking import encode_mask_decode
from speechbrain_ext.nnet.complex import complex_multiply

#: ONNX opset of the exported graphs (onnxruntime >= 1.14 runs it).
OPSET = 18
#: Metadata key under which a graph keeps what the interfaces need (a JSON object).
METADATA_KEY = "speechbrain_ext"
#: Version of that metadata's layout.
METADATA_FORMAT = 1


class ExportError(SpeechBrainExtError, ValueError):
    """A model or option that cannot be exported; the message says why."""


class EnhancerGraph(nn.Module):
    """What an enhancer's graph computes: ``noisy`` [B, T] (and ``gain`` [B]) -> ``enhanced`` [B, T].

    Arguments
    ---------
    model : torch.nn.Module
        ``[B, T] -> [B, T]`` model analysing frames of ``win_len`` samples every ``win_inc``.
    normalize : bool
        Take a ``gain`` input (see the module docstring).

    Example
    -------
    >>> from speechbrain_ext.lobes.models.frcrn import FRCRN
    >>> model = FRCRN(channels=8, fsmn_hidden=8).eval()
    >>> graph = EnhancerGraph(model, normalize=True)
    >>> noisy = 0.1 * torch.randn(2, 1000)  # not whole frames: padded, enhanced, cropped
    >>> enhanced = graph(noisy, torch.zeros(2))  # 0: measure the level
    >>> enhanced.shape
    torch.Size([2, 1000])
    """

    def __init__(self, model, normalize):
        super().__init__()
        self.model, self.normalize = model, normalize
        self.win_len, self.win_inc = model.win_len, model.win_inc

    def forward(self, noisy, gain=None):
        if self.normalize:
            gain = torch.where(gain > 0, gain, level_scale([noisy]).to(noisy))[:, None]
            noisy = noisy * gain
        length = noisy.shape[-1]
        padding = (self.win_len - length) % self.win_inc  # to whole frames
        enhanced = self.model(F.pad(noisy, (0, padding)))[:, :length]
        return enhanced / gain if self.normalize else enhanced


class SeparatorGraph(nn.Module):
    """What a separator's graph computes: ``mix`` [B, T] -> ``sources`` [B, T, speakers].

    Example
    -------
    >>> from speechbrain_ext.lobes.models.mossformer import MossFormer
    >>> small = MossFormer(in_channels=32, out_channels=32, num_blocks=1, d_model=32, group_size=16,
    ...                    query_key_dim=16).eval()
    >>> SeparatorGraph(small.encoder, small.masknet, small.decoder)(torch.randn(2, 999)).shape
    torch.Size([2, 999, 2])
    """

    def __init__(self, encoder, masknet, decoder):
        super().__init__()
        self.encoder, self.masknet, self.decoder = encoder, masknet, decoder

    def forward(self, mix):
        return encode_mask_decode(self.encoder, self.masknet, self.decoder, mix)


class ExportGroupNorm(nn.Module):
    """``nn.GroupNorm`` (or an affine ``nn.InstanceNorm1d/2d``: one group per channel) written as
    plain means, for export: ``norm``'s parameters, its output.

    The exporter turns these norms into ONNX InstanceNormalization, and onnxruntime's CPU kernel
    for it loses float32 precision as a group grows: for MossFormer's one group over 512 channels
    x the frames of a 10 s input its error was 3e-3 (PyTorch: 2e-6), which put the official-size
    separator at 65 dB from the model. Here each group's statistics are means over one axis at a
    time (each reduction short and well conditioned), and the variance is that of the centred
    values.

    Arguments
    ---------
    norm : torch.nn.GroupNorm or torch.nn.InstanceNorm1d or torch.nn.InstanceNorm2d
        The norm whose parameters (weight, bias, eps, groups) are used.

    Example
    -------
    >>> norm = torch.nn.GroupNorm(2, 8)
    >>> x = torch.randn(3, 8, 50)
    >>> torch.allclose(ExportGroupNorm(norm)(x), norm(x), atol=1e-5)
    True
    >>> norm = torch.nn.InstanceNorm2d(8, affine=True)
    >>> x = torch.randn(3, 8, 20, 30)
    >>> torch.allclose(ExportGroupNorm(norm)(x), norm(x), atol=1e-5)
    True
    """

    def __init__(self, norm):
        super().__init__()
        self.norm = norm
        self.groups = norm.num_groups if isinstance(norm, nn.GroupNorm) else norm.num_features

    def forward(self, x):
        shape = x.shape
        grouped = x.reshape(shape[0], self.groups, shape[1] // self.groups, *shape[2:])
        axes = range(grouped.dim() - 1, 1, -1)  # the last axis first, down to the group's channels

        def mean(values):
            for axis in axes:
                values = values.mean(dim=axis, keepdim=True)
            return values

        centred = grouped - mean(grouped)
        y = (centred * torch.rsqrt(mean(centred.square()) + self.norm.eps)).reshape(shape)
        if self.norm.affine:
            channel_axis = (1, -1) + (1,) * (x.dim() - 2)
            y = y * self.norm.weight.reshape(channel_axis) + self.norm.bias.reshape(channel_axis)
        return y


def _exported_as_means(module):
    if type(module) is nn.GroupNorm:
        return True
    return (type(module) in (nn.InstanceNorm1d, nn.InstanceNorm2d) and module.affine
            and not module.track_running_stats)


@contextlib.contextmanager
def export_numerics(module):
    """Within the block, ``module``'s GroupNorms and InstanceNorms are :class:`ExportGroupNorm`
    (same parameters); restored afterwards, whatever happens."""
    swapped = []
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if _exported_as_means(child):
                setattr(parent, name, ExportGroupNorm(child))
                swapped.append((parent, name, child))
    try:
        yield module
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)


class _RecordedSteps:
    """Runs every layer's ``step`` (the ``stream`` hook of ``FRCRN.estimate_masks``) with the
    states given in call order, and collects the new ones in the same order."""

    def __init__(self, states=None):  # None: every layer at the start of a stream
        self.states, self.new_states = states, []

    def apply(self, layer, x):
        state = None if self.states is None else self.states[len(self.new_states)]
        y, new_state = layer.step(x, state, layer.fused_weights())
        self.new_states.append(new_state)
        return y


class FRCRNStepGraph(nn.Module):
    """One hop of a causal FRCRN stream, with the state as explicit inputs and outputs.

    Inputs: ``audio`` ``[B, win_inc]`` (the next hop of the stream, 16 kHz, the level the model
    expects), then the state, all zeros at the start of a stream: ``frame`` ``[B, win_len -
    win_inc]`` (the latest input samples), ``received`` ``[1]`` (samples received, up to a
    window), ``istft_signal`` ``[B, win_len - win_inc]`` and ``istft_envelope`` ``[win_len -
    win_inc]`` (the open overlap-add), and ``state_0`` ... (each causal layer's: its previous
    input frame, FSMN memories, squeeze-excitation running sums and frame counts in float64).
    Outputs: ``enhanced`` ``[B, win_inc]``, then ``next_<name>`` for every state input, to feed
    back at the next hop.

    The output of hop ``k`` is the enhanced hop ``k - (win_len / win_inc - 1)``: zeros until a
    whole window is in, then, at the default framing (640 / 320), each call returns the hop
    before the one it received. Played out at once, that is one window (40 ms) of algorithmic
    latency, as :class:`~speechbrain_ext.inference.streaming.FRCRNStreamer` (whose
    ``process`` delays the same stream by one more hop, so that any block size works).

    Arguments
    ---------
    model : FRCRN
        A causal FRCRN in eval mode.

    Example
    -------
    >>> from speechbrain_ext.lobes.models.frcrn import FRCRN
    >>> step = FRCRNStepGraph(FRCRN(channels=8, fsmn_hidden=8, fsmn_order=4, causal=True).eval())
    >>> state = step.initial_state(batch=1)
    >>> with torch.no_grad():
    ...     enhanced, *state = step(0.1 * torch.randn(1, 320), *state)
    >>> enhanced.shape, len(state) == len(step.state_names)
    (torch.Size([1, 320]), True)
    """

    def __init__(self, model):
        super().__init__()
        if not getattr(model, "causal", False):
            raise ExportError("a streaming graph needs a causal FRCRN (FRCRN(causal=True)); this one is not causal")
        if model.win_len < model.win_inc:
            raise ExportError(f"streaming needs win_len >= win_inc, got {model.win_len} < {model.win_inc}")
        self.model = model
        self.win_len, self.hop = model.win_len, model.win_inc
        # The layers' states, in the order the masks call them: learnt from a dry run, twice, to
        # tell the batch axis of each state from its fixed axes.
        templates = [self._layer_states(batch) for batch in (2, 3)]
        self._layer_templates = []  # [(shape with -1 for the batch axis, dtype)] per state tensor
        self._structure = []  # per call: None, "tensor", or "pair" (sum, count)
        for two, three in zip(*templates):
            if two is None:
                self._structure.append(None)
                continue
            pair = isinstance(two, tuple)
            self._structure.append("pair" if pair else "tensor")
            for a, b in zip(two if pair else (two,), three if pair else (three,)):
                a, b = torch.as_tensor(a), torch.as_tensor(b)
                shape = tuple(-1 if x != y else x for x, y in zip(a.shape, b.shape))
                self._layer_templates.append((shape, torch.float64 if pair else a.dtype))
        overlap = self.win_len - self.hop
        self._fixed_templates = [((-1, overlap), torch.float32), ((1,), torch.float32),
                                 ((-1, overlap), torch.float32), ((overlap,), torch.float32)]
        #: Names of the state inputs (outputs are ``next_`` + name).
        self.state_names = ["frame", "received", "istft_signal", "istft_envelope"] + [
            f"state_{i}" for i in range(len(self._layer_templates))
        ]

    def _layer_states(self, batch):
        spec = self.model.stft(torch.zeros(batch, self.win_len))
        steps = _RecordedSteps()
        with torch.no_grad():
            self.model.estimate_masks(spec, stream=steps)
        return steps.new_states

    def initial_state(self, batch=1):
        """The zero state of a new stream of ``batch`` channels (a list, in input order)."""
        return [torch.zeros([batch if n == -1 else n for n in shape], dtype=dtype)
                for shape, dtype in self._fixed_templates + self._layer_templates]

    def state_batch_axes(self):
        """For each state input, whether its first axis is the batch axis."""
        return [bool(shape) and shape[0] == -1 for shape, _ in self._fixed_templates + self._layer_templates]

    def forward(self, audio, frame, received, istft_signal, istft_envelope, *layer_states):
        window = torch.cat([frame, audio], dim=-1)  # [B, win_len]: the latest window
        received = torch.clamp(received + self.hop, max=self.win_len)
        run = received >= self.win_len  # a whole window is in

        states, flat = [], list(layer_states)
        for kind in self._structure:
            if kind is None:
                states.append(None)
            elif kind == "tensor":
                states.append(flat.pop(0))
            else:
                states.append((flat.pop(0), flat.pop(0)))
        spec = self.model.stft(window)  # [B, 2, F, 1]
        steps = _RecordedSteps(states)
        _, mask = self.model.estimate_masks(spec, stream=steps)
        enhanced, (signal, envelope) = self.model.istft.step(complex_multiply(spec, mask),
                                                             (istft_signal, istft_envelope))
        new_flat = []
        for state in steps.new_states:
            if state is not None:
                new_flat.extend(state if isinstance(state, tuple) else (state,))

        def keep_until_run(new, old):  # the state moves only once the stream has started
            return torch.where(run, new.to(old.dtype), old)

        return (
            enhanced * run,
            window[:, self.hop :],
            received,
            keep_until_run(signal, istft_signal),
            keep_until_run(envelope, istft_envelope),
            *(keep_until_run(new, old) for new, old in zip(new_flat, layer_states)),
        )


def interface_for_export(source, task=None):
    """The interface class that loads ``source`` for ``task`` (``'enhancement'``,
    ``'separation'`` or None: guessed from the source; see :func:`guess_task`)."""
    from speechbrain_ext.inference import SeparateMossFormer, enhancer_for

    task = task or guess_task(source)
    return SeparateMossFormer if task == "separation" else enhancer_for(source)


def guess_task(source):
    """``'separation'`` or ``'enhancement'``, from what ``source`` holds (an official id, a
    SpeechBrain folder with or without a ``masknet``, official files); raises :class:`ExportError`
    when it cannot tell.

    Example
    -------
    >>> guess_task("alibabasglab/MossFormer2_SS_16K"), guess_task("alibabasglab/FRCRN_SE_16K")
    ('separation', 'enhancement')
    """
    from speechbrain_ext.inference import SeparateMossFormer
    from speechbrain_ext.inference.sources import OFFICIAL_REPOS

    source = os.fspath(source)
    if source in OFFICIAL_REPOS:
        return "separation" if OFFICIAL_REPOS[source].card in SeparateMossFormer.CARDS else "enhancement"
    yaml_file = os.path.join(source, "hyperparams.yaml")
    if os.path.isfile(yaml_file):
        with open(yaml_file, encoding="utf-8") as stream:
            text = stream.read()
        return "separation" if "\nmasknet:" in "\n" + text else "enhancement"
    if os.path.exists(os.path.join(source, "masknet.bin")):  # ModelScope's MossFormer
        return "separation"
    if os.path.exists(os.path.join(source, "pytorch_model.bin")):  # ModelScope's FRCRN
        return "enhancement"
    if os.path.exists(os.path.join(source, "last_best_checkpoint")):
        from speechbrain_ext.convert import named_checkpoint_names

        # ClearerVoice-Studio's MossFormer2 separator registers its masknet as mask_net; its
        # enhancers (FRCRN, MossFormer2, MossFormerGAN) have none.
        names = named_checkpoint_names(source)
        separator = any(name.removeprefix("module.").split(".")[0] in ("mask_net", "masknet") for name in names)
        return "separation" if separator else "enhancement"
    raise ExportError(f"cannot tell whether {source} holds an enhancer or a separator: name the task "
                      "(speechbrain-ext export enhancement|separation ..., or task= in Python)")


def _metadata(interface, kind, extra):
    hparams = {"sample_rate": int(interface.sample_rate)}
    if hasattr(interface, "normalize"):
        hparams["normalize"] = bool(interface.normalize)
    for name in ("chunk_seconds", "num_spks"):
        value = getattr(interface.hparams, name, None)
        if value is not None:
            hparams[name] = value
    return {"format": METADATA_FORMAT, "kind": kind, "interface": type(interface).__name__, "hparams": hparams,
            "speechbrain_ext": speechbrain_ext.__version__, "torch": torch.__version__, **extra}


def _graph_of(interface, streaming):
    """``(module, example inputs, input names, output names, dynamic shapes, metadata)``."""
    rate = int(interface.sample_rate)
    batch = torch.export.Dim("batch", min=1)
    if "masknet" in interface.mods:  # a separator
        if streaming:
            raise ExportError("streaming graphs are for causal FRCRN enhancers; this is a separator")
        encoder = interface.mods.encoder
        kernel, stride = encoder.conv1d.kernel_size[0], encoder.conv1d.stride[0]
        graph = SeparatorGraph(encoder, interface.mods.masknet, interface.mods.decoder)
        time = torch.export.Dim("time", min=kernel)
        example = (0.1 * torch.randn(2, 2 * rate),)
        meta = {"model": {"kernel_size": kernel, "stride": stride, "num_spks": int(interface.hparams.num_spks)}}
        return graph, example, ["mix"], ["sources"], ({0: batch, 1: time},), _metadata(interface, "separator", meta)

    model = interface.mods.model
    frames = {"win_len": int(model.win_len), "win_inc": int(model.win_inc)}
    if streaming:
        graph = FRCRNStepGraph(model)
        states = graph.initial_state(batch=2)
        example = (0.1 * torch.randn(2, graph.hop), *states)
        names = ["audio", *graph.state_names]
        axes = [{0: batch} if batched else None for batched in [True, *graph.state_batch_axes()]]
        dynamic = (*axes[:5], tuple(axes[5:]))  # forward's arguments: five, then *layer_states
        meta = {"model": {**frames, "causal": True}, "states": graph.state_names}
        return (graph, example, names, ["enhanced", *(f"next_{n}" for n in graph.state_names)], dynamic,
                _metadata(interface, "stream", meta))
    normalize = bool(interface.normalize)
    graph = EnhancerGraph(model, normalize)
    time = torch.export.Dim("time", min=model.win_len)
    example = (0.1 * torch.randn(2, 2 * rate),) + ((torch.ones(2),) if normalize else ())
    names = ["noisy"] + (["gain"] if normalize else [])
    dynamic = ({0: batch, 1: time},) + (({0: batch},) if normalize else ())
    meta = {"model": {**frames, "causal": bool(getattr(model, "causal", False))}}
    return graph, example, names, ["enhanced"], dynamic, _metadata(interface, "enhancer", meta)


def read_metadata(path):
    """The speechbrain-ext metadata of an exported graph (a dict); :class:`ExportError` if it has none."""
    import onnx

    try:
        model = onnx.load(os.fspath(path), load_external_data=False)
    except Exception as error:
        raise ExportError(f"{path}: not an ONNX model ({str(error).splitlines()[0] if str(error) else error})") from None
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            return json.loads(prop.value)
    raise ExportError(f"{path}: an ONNX model that speechbrain-ext did not export (no {METADATA_KEY} metadata)")


def export_onnx(source, path, task=None, streaming=False, overwrite=False, revision=None):
    """Export a model to an ONNX graph that takes any input length (see the module docstring).

    Arguments
    ---------
    source : str or Pretrained
        Anything ``from_hparams`` loads (an official id, a SpeechBrain-format or official folder,
        a Hugging Face repo), or an interface loaded with ``freeze_params=False`` (the fused
        inference kernels of a frozen one do not export).
    path : str
        The ``.onnx`` file to write (written under a temporary name and renamed when complete).
    task : str, optional
        ``'enhancement'`` or ``'separation'``; guessed from ``source`` by default.
    streaming : bool
        Export the one-hop stream step of a causal FRCRN (:class:`FRCRNStepGraph`).
    overwrite : bool
        Replace ``path`` if it is a graph speechbrain-ext exported (never any other file).
    revision : str, optional
        Hub revision of ``source``.

    Returns
    -------
    dict
        The metadata written into the graph.

    Example
    -------
    >>> import tempfile
    >>> from speechbrain_ext.inference import EnhanceFRCRN
    >>> from speechbrain_ext.lobes.models.frcrn import FRCRN
    >>> model = FRCRN(channels=4, fsmn_hidden=4, fsmn_order=2)
    >>> enhancer = EnhanceFRCRN(modules={"model": model}, hparams={"sample_rate": 16000}, freeze_params=False)
    >>> path = os.path.join(tempfile.mkdtemp(), "frcrn.onnx")
    >>> export_onnx(enhancer, path)["kind"]  # doctest: +SKIP
    'enhancer'
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ExportError(f"{path} is a folder: name the .onnx file to write")
    if os.path.exists(path):
        if not overwrite:
            raise ExportError(f"{path} exists: nothing was written (choose a new name, or --overwrite to replace a "
                              "graph speechbrain-ext exported)")
        read_metadata(path)  # only our own graphs are replaced
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ExportError(f"{folder} does not exist: nothing was written")
    interface = source
    if isinstance(source, (str, os.PathLike)):
        cls = interface_for_export(source, task)
        interface = cls.from_hparams(source=os.fspath(source), revision=revision, freeze_params=False,
                                     run_opts={"device": "cpu"})  # traced on the CPU, runs anywhere
    elif any(getattr(module, "recycles_memory", False) for module in interface.mods.modules()):  # fuse_for_inference's mark
        raise ExportError("this interface runs fused inference kernels, which do not export: load it with "
                          "freeze_params=False, or pass its source")
    interface.mods.eval()
    module, example, input_names, output_names, dynamic, metadata = _graph_of(interface, streaming)
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    if isinstance(source, (str, os.PathLike)):
        metadata["source"] = os.fspath(source)

    import warnings

    temporary = temporary_paths(path)[0]
    remove_temporaries(path)
    try:
        with warnings.catch_warnings(), torch.no_grad(), export_numerics(module):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module, example, dynamo=True, input_names=input_names, output_names=output_names,
                dynamic_shapes=dynamic, opset_version=OPSET, verbose=False,
                # The onnxscript optimiser drops "+ 1e-8" from the inverse STFT's normalisation (the
                # edges then divide 0 by 0); onnxruntime optimises the graph when it loads it.
                optimize=False,
            )
        program.model.metadata_props[METADATA_KEY] = json.dumps(metadata)
        program.save(temporary, external_data=False)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
    return metadata
