"""The onnxruntime backend: the interfaces and the CLI running an exported graph.

A graph written by :func:`speechbrain_ext.export.export_onnx` carries what its interface needs
(sample rate, frame sizes, level normalisation, speakers), so ``EnhanceFRCRN.from_onnx(path)``
or :func:`load_onnx` builds the same interface as ``from_hparams`` with the graph in place of
the PyTorch model: the same chunking of long files, resampling, level handling, speaker
alignment and atomic file writing, only the network runs in onnxruntime.
:class:`OnnxFRCRNStreamer` runs a stream-step graph with the interface of
:class:`~speechbrain_ext.inference.streaming.FRCRNStreamer`.

onnxruntime is an optional dependency: ``pip install speechbrain-ext[onnx]``.

Authors: speechbrain-ext contributors
"""

import os

import numpy as np
import torch

from speechbrain_ext.errors import SpeechBrainExtError
from speechbrain_ext.inference.streaming import BlockStreamer


class BackendError(SpeechBrainExtError, RuntimeError):
    """The onnxruntime backend cannot run (not installed, or a graph that does not fit)."""


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise BackendError("the onnxruntime backend needs onnxruntime: pip install speechbrain-ext[onnx] "
                           "(or pip install onnxruntime)") from None
    return onnxruntime


def _graph_metadata(path):
    from speechbrain_ext.export import ExportError, read_metadata

    if not os.path.isfile(os.fspath(path)):
        raise BackendError(f"{path}: no such ONNX file")
    try:
        return read_metadata(path)
    except ExportError as error:
        raise BackendError(str(error)) from None
    except ImportError:
        raise BackendError("reading an ONNX graph needs the onnx package: pip install speechbrain-ext[onnx]") from None


def inference_session(path, num_threads=None, device="cpu"):
    """An onnxruntime session of ``path`` with ``num_threads`` intra-op threads (default: torch's),
    on the CPU, or CUDA for a ``cuda`` ``device`` (which needs the onnxruntime-gpu package)."""
    ort = _onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = num_threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    # Without the arena, maps are freed as they die: with lengths that change from call to call the
    # arena keeps the largest maps of every length (FRCRN at 10 s: peak 5.2 GB with it, 3.1 without).
    options.enable_cpu_mem_arena = False
    providers = ["CPUExecutionProvider"]
    if str(device or "cpu").startswith("cuda"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise BackendError(f"device {device}: this onnxruntime has no CUDA provider (install onnxruntime-gpu, "
                               "or run on the CPU)")
        index = str(device).partition(":")[2] or "0"
        providers = [("CUDAExecutionProvider", {"device_id": int(index)}), "CPUExecutionProvider"]
    try:
        return ort.InferenceSession(os.fspath(path), sess_options=options, providers=providers)
    except Exception as error:
        raise BackendError(f"{path}: onnxruntime cannot load it ({str(error).splitlines()[0]})") from None


class OnnxGraph(torch.nn.Module):
    """An exported enhancer or separator graph in place of the PyTorch model of an interface.

    Called like the model it replaces: an enhancer's ``[B, T] -> [B, T]`` (the interface has
    already brought the level, so the graph's ``gain`` input is fed 1), a separator's
    ``[B, T] -> [B, T, speakers]``. It has the model's frame attributes (``win_len``,
    ``win_inc``; a separator's ``kernel_size``, ``stride``, ``num_spks``) from the metadata.

    Arguments
    ---------
    path : str
        Graph written by :func:`~speechbrain_ext.export.export_onnx`.
    num_threads : int, optional
        onnxruntime intra-op threads (default: ``torch.get_num_threads()``).
    device : str
        ``'cpu'``, or ``'cuda[:i]'`` with onnxruntime-gpu.
    """

    def __init__(self, path, num_threads=None, device="cpu"):
        super().__init__()
        self.path = os.fspath(path)
        self.metadata = _graph_metadata(path)
        for name, value in self.metadata.get("model", {}).items():
            setattr(self, name, value)
        self.session = inference_session(path, num_threads, device)
        self.input_names = [i.name for i in self.session.get_inputs()]

    def forward(self, x):
        feeds = {self.input_names[0]: x.detach().to("cpu", torch.float32).contiguous().numpy()}
        if "gain" in self.input_names:
            feeds["gain"] = np.ones(len(x), dtype=np.float32)
        return torch.from_numpy(self.session.run(None, feeds)[0]).to(x.device)


def _interfaces():
    from speechbrain_ext.inference.enhancement import EnhanceFRCRN, EnhanceMossFormer2, EnhanceMossFormerGAN
    from speechbrain_ext.inference.separation import SeparateMossFormer

    return {c.__name__: c for c in (EnhanceFRCRN, EnhanceMossFormer2, EnhanceMossFormerGAN, SeparateMossFormer)}


def load_onnx(path, interface=None, num_threads=None, run_opts=None):
    """The interface of an exported graph, running it in onnxruntime.

    Arguments
    ---------
    path : str
        An enhancer or separator graph (:func:`~speechbrain_ext.export.export_onnx`); stream-step
        graphs run in :class:`OnnxFRCRNStreamer`.
    interface : type, optional
        The interface class expected (an error names the graph's otherwise).
    num_threads : int, optional
        onnxruntime intra-op threads (default: torch's).
    run_opts : dict, optional
        As for ``from_hparams`` (``{"device": "cuda:0"}`` needs onnxruntime-gpu).

    Example
    -------
    >>> import tempfile
    >>> from speechbrain_ext.export import export_onnx
    >>> from speechbrain_ext.inference import EnhanceFRCRN
    >>> from speechbrain_ext.lobes.models.frcrn import FRCRN
    >>> enhancer = EnhanceFRCRN(modules={"model": FRCRN(channels=4, fsmn_hidden=4, fsmn_order=2)},
    ...                         hparams={"sample_rate": 16000}, freeze_params=False)
    >>> path = os.path.join(tempfile.mkdtemp(), "frcrn.onnx")
    >>> _ = export_onnx(enhancer, path)  # doctest: +SKIP
    >>> onnx_enhancer = EnhanceFRCRN.from_onnx(path)  # doctest: +SKIP
    >>> onnx_enhancer.enhance_batch(0.1 * torch.randn(1, 16000)).shape  # doctest: +SKIP
    torch.Size([1, 16000])
    """
    metadata = _graph_metadata(path)
    if metadata.get("kind") == "stream":
        raise BackendError(f"{path} is a stream-step graph: run it with OnnxFRCRNStreamer (or --stream)")
    classes = _interfaces()
    cls = classes.get(metadata.get("interface"))
    if cls is None:
        raise BackendError(f"{path} was exported for an interface this version does not have: {metadata.get('interface')}")
    if interface is not None and not issubclass(cls, interface):
        raise BackendError(f"{path} holds a {cls.__name__} model, not a {interface.__name__} one")
    device = (run_opts or {}).get("device") or "cpu"
    graph = OnnxGraph(path, num_threads, device)
    return cls(modules={"model": graph}, hparams=dict(metadata["hparams"]), run_opts=run_opts)


class OnnxLoadMixin:
    """Adds ``from_onnx(path)`` to an interface: the interface running an exported graph."""

    @classmethod
    def from_onnx(cls, path, num_threads=None, run_opts=None):
        """Load an exported graph of this interface's model; see :func:`load_onnx`."""
        return load_onnx(path, cls, num_threads, run_opts)


class OnnxFRCRNStreamer(BlockStreamer):
    """:class:`~speechbrain_ext.inference.streaming.FRCRNStreamer`'s interface over a stream-step graph.

    :meth:`process` takes blocks of any size and returns as many samples, the enhanced stream
    delayed by :attr:`latency` (one window) exactly as ``FRCRNStreamer`` does; :meth:`step` runs
    the graph on one hop and returns what it returns (see
    :class:`~speechbrain_ext.export.FRCRNStepGraph`: one hop less delay, for an audio callback
    that hands hops of ``win_inc`` samples).

    Arguments
    ---------
    path : str
        A graph exported with ``streaming=True``.
    num_threads : int
        onnxruntime intra-op threads (1: a hop's tensors are small).
    """

    device = "cpu"

    def __init__(self, path, num_threads=1):
        metadata = _graph_metadata(path)
        if metadata.get("kind") != "stream":
            raise BackendError(f"{path} is not a stream-step graph (export it with --streaming)")
        self.metadata = metadata
        self.win_len, self.hop = metadata["model"]["win_len"], metadata["model"]["win_inc"]
        self.session = inference_session(path, num_threads)
        self._inputs = self.session.get_inputs()
        self.reset()

    def reset(self):
        """Forget the stream: the next block starts a new one."""
        self._state = None
        self._pending = self._ready = None
        self._forget_shape()

    def initial_state(self, batch):
        """The zero state of a new stream of ``batch`` channels, as the graph's inputs want it."""
        dtypes = {"tensor(float)": np.float32, "tensor(double)": np.float64}
        return [np.zeros([batch if not isinstance(n, int) else n for n in i.shape], dtype=dtypes[i.type])
                for i in self._inputs[1:]]

    def step(self, hop):
        """Run one hop ``[B, win_inc]`` (numpy or tensor) through the graph; returns ``[B, win_inc]`` (numpy)."""
        hop = np.ascontiguousarray(np.asarray(hop, dtype=np.float32))
        if self._state is None:
            self._state = self.initial_state(hop.shape[0])
        feeds = dict(zip((i.name for i in self._inputs), [hop, *self._state]))
        enhanced, *self._state = self.session.run(None, feeds)
        return enhanced

    def process(self, block):
        """Enhance the next block (``[n]`` or ``[B, n]``, any ``n``); returns as many samples (a tensor)."""
        block = self._as_batch(block).numpy()
        if self._pending is None:
            self._pending = np.zeros((block.shape[0], 0), np.float32)
            # One hop of silence ahead of the graph's output: the delay of FRCRNStreamer.process.
            self._ready = np.zeros((block.shape[0], self.hop), np.float32)
        pending = np.concatenate([self._pending, block], axis=1)
        done = [self._ready]
        whole = pending.shape[1] // self.hop * self.hop
        for start in range(0, whole, self.hop):
            done.append(self.step(pending[:, start : start + self.hop]))
        self._pending = pending[:, whole:]
        ready = np.concatenate(done, axis=1)
        out, self._ready = ready[:, : block.shape[1]], ready[:, block.shape[1] :]
        return self._as_given(torch.from_numpy(np.ascontiguousarray(out)))
