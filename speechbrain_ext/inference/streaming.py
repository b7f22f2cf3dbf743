"""Real-time FRCRN: a causal model run one hop at a time on audio that arrives in blocks.

:class:`FRCRNStreamer` wraps a causal :class:`~speechbrain_ext.lobes.models.frcrn.FRCRN`
(``FRCRN(causal=True)``) and enhances a stream fed in blocks of any size, holding a fixed
amount of state however long the stream runs. Each hop runs the model's own layers on the new
frame (through their ``step`` methods, with the past frames each layer remembers), so the
stream computes what the offline causal forward computes, up to float rounding.

Latency
-------
The algorithmic latency is one window, ``L = win_len`` samples (640 = 40 ms at the default
640/320 framing): the output stream is the offline causal output delayed by ``L`` samples.
Precisely, with ``x`` the concatenated input blocks (``T`` samples) and ``y`` the concatenated
outputs of :meth:`FRCRNStreamer.process` followed by :meth:`FRCRNStreamer.flush`
(``T + L`` samples)::

    y[:L] == 0
    y[L + n] == model(x followed by L zeros)[n]        for 0 <= n < T

``process`` returns as many samples as it receives, so ``y[L + n]`` is returned by the call
that delivers input sample ``L + n``. Enhanced sample ``n`` depends on the input up to sample
``floor(n / win_inc) * win_inc + win_len - 1 <= n + L - 1`` (the end of the last frame that
covers it; equality when ``n`` starts a hop), so no constant delay shorter than ``L - 1``
samples is possible; the streamer uses the whole window. Compute time comes on top: the frame
that completes is enhanced inside the call that completes it.

Authors: speechbrain-ext contributors
"""

import contextlib
import os
import time

import torch

from speechbrain_ext.errors import InvalidOptionError
from speechbrain_ext.nnet.complex import complex_multiply


class _LayerSteps:
    """Per-layer streaming state and precomputed weights of one stream.

    ``apply(layer, x)`` is the hook :meth:`FrequencyRecurrentUNet.forward` calls for every
    layer when it runs as a stream: it runs ``layer.step`` on the new frame with the layer's
    state, and keeps the new state. Weights are fused once per layer (they are fixed in eval).
    """

    def __init__(self):
        self.weights = {}
        self.states = {}

    def apply(self, layer, x):
        if layer not in self.weights:
            self.weights[layer] = layer.fused_weights()
        y, self.states[layer] = layer.step(x, self.states.get(layer), self.weights[layer])
        return y


class BlockStreamer:
    """What every FRCRN streamer shares: blocks of any size in, as many samples out, delayed by
    :attr:`latency` (one window, ``win_len``), and :meth:`flush` at the end.

    Subclasses set ``win_len`` and ``device``, implement ``process(block)`` (calling
    :meth:`_as_batch` first) and ``reset()`` (calling :meth:`_forget_shape`).
    """

    #: FRCRN's sample rate.
    sample_rate = 16000

    @property
    def latency(self):
        """Algorithmic latency in samples: one window (``win_len``)."""
        return self.win_len

    @property
    def latency_seconds(self):
        """Algorithmic latency in seconds."""
        return self.latency / self.sample_rate

    def _forget_shape(self):
        self._one_dimensional = None  # whether the stream's blocks are [n] (else [B, n])
        self._channels = None  # B

    def _as_batch(self, block):
        """``block`` as a float32 ``[B, n]`` tensor on :attr:`device`, checked against the stream's
        earlier blocks (same number of dimensions, same ``B``)."""
        block = torch.as_tensor(block, dtype=torch.float32, device=self.device)
        if block.dim() not in (1, 2):
            raise ValueError(f"expected a block [n] or [B, n], got shape {tuple(block.shape)}")
        if self._one_dimensional is None:
            self._one_dimensional = block.dim() == 1
        elif self._one_dimensional != (block.dim() == 1):
            raise ValueError("every block of a stream must have the same number of dimensions")
        block = block[None] if block.dim() == 1 else block
        if self._channels is None:
            self._channels = block.shape[0]
        elif block.shape[0] != self._channels:
            raise ValueError(f"this stream has {self._channels} channels, got a block of {block.shape[0]}")
        return block

    def _as_given(self, out):
        """``out`` [B, n] in the shape the stream's blocks have."""
        return out[0] if self._one_dimensional else out

    def flush(self):
        """End the stream: return its last :attr:`latency` enhanced samples and reset.

        The stream is completed with :attr:`latency` samples of silence, so the last window
        of real input is enhanced as if the speaker had stopped.

        Returns
        -------
        torch.Tensor
            ``[latency]`` (or ``[B, latency]``); empty if nothing was processed.
        """
        if self._channels is None:
            self.reset()
            return torch.zeros(0, device=self.device)
        tail = self.process(self._as_given(torch.zeros(self._channels, self.latency, device=self.device)))
        self.reset()
        return tail


class FRCRNStreamer(BlockStreamer):
    """Enhance an audio stream in real time with a causal FRCRN, block by block.

    Feed blocks of any size (a hop of ``win_inc`` samples, an audio callback's buffer, a single
    sample, a whole file) to :meth:`process`, which returns as many enhanced samples, delayed
    by :attr:`latency` samples (see the module docstring for the exact definition). At the end
    of the stream, :meth:`flush` returns the last :attr:`latency` samples.

    The state is a fixed set of tensors: the input samples of the frame being filled, the
    previous input frame of every causal (transposed) convolution, the last
    ``fsmn_order - 1`` projections of the two time FSMNs of each bottleneck, the running sums
    and frame count of every squeeze-excitation gate, and the overlap-add tail of the inverse
    STFT. Its size does not grow with the stream.

    Arguments
    ---------
    model : FRCRN
        A causal model (``FRCRN(causal=True)``). It is put in eval mode; its weights are read
        once per layer at the first frame, so build a new streamer after changing them.
    num_threads : int or None
        Intra-op threads while :meth:`process` runs (the global setting is restored after it).
        A frame's tensors are small: with more threads, synchronisation costs more than the
        parallel work saves, and on a busy machine far more. ``None`` leaves the setting alone.

    Example
    -------
    >>> from speechbrain_ext.lobes.models.frcrn import FRCRN
    >>> _ = torch.manual_seed(0)
    >>> model = FRCRN(channels=8, fsmn_hidden=8, fsmn_order=4, causal=True)
    >>> streamer = FRCRNStreamer(model)
    >>> streamer.latency, streamer.latency_seconds  # one 40 ms window
    (640, 0.04)
    >>> noisy = 0.1 * torch.randn(8000)
    >>> out = [streamer.process(block) for block in noisy.split(320)]  # 20 ms hops, as live
    >>> out.append(streamer.flush())  # the stream ends: the last `latency` samples
    >>> stream = torch.cat(out)
    >>> stream.shape  # input length + latency, starting with `latency` zeros
    torch.Size([8640])
    >>> with torch.no_grad():  # the offline causal forward, on the input plus `latency` zeros
    ...     offline = model(torch.nn.functional.pad(noisy, (0, 640))[None])[0, :8000]
    >>> bool((stream[640:] - offline).abs().max() < 1e-5 * max(1.0, offline.abs().max()))
    True

    A live loop (not run here) with the ``sounddevice`` package: the callback gets and must
    return a block of the same size, which :meth:`process` does.

    >>> import sounddevice  # doctest: +SKIP
    >>> streamer = FRCRNStreamer(model)  # doctest: +SKIP
    >>> def callback(indata, outdata, frames, time, status):  # doctest: +SKIP
    ...     outdata[:, 0] = streamer.process(torch.from_numpy(indata[:, 0])).numpy()
    >>> with sounddevice.Stream(samplerate=16000, blocksize=320, channels=1,
    ...                         dtype="float32", callback=callback):  # doctest: +SKIP
    ...     input("Enhancing the microphone to the speakers; press Enter to stop.")
    """

    def __init__(self, model, num_threads=1):
        if not getattr(model, "causal", False):
            raise ValueError(
                "FRCRNStreamer needs a causal model, FRCRN(causal=True) (e.g. hparams/frcrn.yaml with causal: True): the "
                "official FRCRN pools its attention over the whole utterance and looks one frame ahead per "
                "decoder level, so it cannot stream. Official weights load into a causal model as a starting "
                "point for fine-tuning."
            )
        if model.win_len < model.win_inc:
            raise ValueError(f"streaming needs win_len >= win_inc, got {model.win_len} < {model.win_inc}")
        self.model = model.eval()
        self.win_len, self.hop = model.win_len, model.win_inc
        self.device = next(model.parameters()).device
        self.num_threads = num_threads
        self._layers = _LayerSteps()
        self.reset()

    def reset(self):
        """Forget the stream: the next block starts a new one (weights stay precomputed)."""
        self._layers.states = {}
        self._input = None  # [B, win_len]: the frame being filled; allocated by the first block
        self._filled = 0  # samples of it received
        self._ready = None  # [B, hop]: enhanced samples completed by the last frame
        self._ready_read = 0  # how many of them have been returned
        self._istft_state = None  # overlap-add tail of the inverse STFT
        self._started = False  # whether a frame has been enhanced yet
        self._forget_shape()

    def state_tensors(self):
        """Every tensor the stream state holds (for inspecting its memory)."""
        tensors = [t for t in (self._input, self._ready) if t is not None]
        pending = [self._istft_state, list(self._layers.states.values())]
        while pending:
            item = pending.pop()
            if torch.is_tensor(item):
                tensors.append(item)
            elif isinstance(item, (tuple, list)):
                pending.extend(item)
        return tensors

    def process(self, block):
        """Enhance the next block of the stream.

        Arguments
        ---------
        block : torch.Tensor
            ``[n]`` samples (or ``[B, n]`` for ``B`` independent streams, e.g. channels), any
            ``n >= 0``, float in [-1, 1] at 16 kHz. Every block of a stream has the same number
            of dimensions (and ``B``).

        Returns
        -------
        torch.Tensor
            ``[n]`` (or ``[B, n]``) enhanced samples on the model's device: the enhanced
            stream delayed by :attr:`latency` samples (zeros until the first window is in).
        """
        block = self._as_batch(block)
        batch, length = block.shape
        if self._input is None:
            self._input = block.new_zeros(batch, self.win_len)

        out = block.new_empty(batch, length)
        with torch.inference_mode(), self._threads():
            position = 0
            while position < length:
                # Take samples up to the end of the current frame; each input sample releases
                # one output sample (the one `latency` samples earlier).
                take = min(length - position, self.win_len - self._filled)
                self._input[:, self._filled : self._filled + take] = block[:, position : position + take]
                self._emit(out[:, position : position + take])
                self._filled += take
                position += take
                if self._filled == self.win_len:
                    self._enhance_frame()
        return self._as_given(out)

    @contextlib.contextmanager
    def _threads(self):
        """Run with ``num_threads`` intra-op threads, restoring the previous number after."""
        previous = torch.get_num_threads()
        if self.num_threads is not None and self.num_threads != previous:
            torch.set_num_threads(self.num_threads)
        try:
            yield
        finally:
            if torch.get_num_threads() != previous:
                torch.set_num_threads(previous)

    def _emit(self, out):
        """Fill ``out`` [B, k] with the next ``k`` output samples (k <= what is ready)."""
        if not self._started:  # the first `latency` output samples precede any enhanced one
            out.zero_()
            return
        count = out.shape[-1]
        out.copy_(self._ready[:, self._ready_read : self._ready_read + count])
        self._ready_read += count

    def _enhance_frame(self):
        """Enhance the full frame in the input buffer; its first hop of output is complete."""
        model = self.model
        spec = model.stft(self._input)  # [B, 2, F, 1]
        _, mask = model.estimate_masks(spec, stream=self._layers)
        self._ready, self._istft_state = model.istft.step(complex_multiply(spec, mask), self._istft_state)
        self._ready_read = 0
        self._started = True
        # The next frame starts one hop later: keep the overlap.
        overlap = self.win_len - self.hop
        self._input[:, :overlap] = self._input[:, self.hop :].clone()
        self._filled = overlap


def _as_model(enhancer_or_model):
    """The FRCRN inside an ``EnhanceFRCRN``, or the model itself."""
    mods = getattr(enhancer_or_model, "mods", None)
    return mods.model if mods is not None else enhancer_or_model


def stream_file(enhancer_or_model, input_path, output_path, block_size=320, align=True, input_gain=1.0,
                channels="mix", output_rate=None, subtype="PCM_16"):
    """Enhance an audio file block by block, exactly as a live input would be.

    The file is read (and resampled to 16 kHz) incrementally and cut into blocks of
    ``block_size`` samples, each passed through :meth:`FRCRNStreamer.process`; memory stays
    bounded however long the file is. Unlike offline enhancement, no whole-file loudness
    normalisation is possible: a fixed ``input_gain`` is applied instead (and undone on output).

    Arguments
    ---------
    enhancer_or_model : EnhanceFRCRN or FRCRN or FRCRNStreamer or OnnxFRCRNStreamer
        Holding a causal FRCRN, or a streamer (a stream-step graph's, for onnxruntime).
    input_path, output_path : str
        Audio files (the output is written atomically: complete or not at all).
    block_size : int
        Samples per block at 16 kHz (320: a 20 ms hop; any size works).
    align : bool
        True: drop the first :attr:`~FRCRNStreamer.latency` samples (the silence the stream
        starts with) and append :meth:`~FRCRNStreamer.flush`, so the output lines up with the
        input sample for sample. False: write exactly what a live device would play, the
        input's length delayed by the latency.
    input_gain : float
        Gain applied before the model (the official weights expect speech around -25 dBFS).
    channels : str or int
        ``'mix'`` (average to mono), ``'all'`` (enhance each channel), or a channel index.
    output_rate : int or str, optional
        Sample rate of the output: the model's (16 kHz) by default, ``'input'`` for the input's.
        Input and output are resampled incrementally, as a live device would.
    subtype : str
        Output sample format (``'PCM_16'``, clipped, or ``'FLOAT'``).

    Returns
    -------
    dict
        ``path``, ``seconds`` (of audio), ``sample_rate`` (of the output), ``latency_seconds``,
        ``compute_seconds`` (spent in the model), ``real_time_factor`` (compute / audio
        duration), ``max_block_seconds`` (slowest block) and ``clipped_samples``.

    Example
    -------
    >>> import tempfile, soundfile
    >>> from speechbrain_ext.lobes.models.frcrn import FRCRN
    >>> folder = tempfile.mkdtemp()
    >>> soundfile.write(os.path.join(folder, "noisy.wav"), 0.1 * torch.randn(4000).numpy(), 16000)
    >>> model = FRCRN(channels=8, fsmn_hidden=8, fsmn_order=4, causal=True)
    >>> info = stream_file(model, os.path.join(folder, "noisy.wav"), os.path.join(folder, "out.wav"), 77)
    >>> info["seconds"], info["latency_seconds"], soundfile.info(info["path"]).frames
    (0.25, 0.04, 4000)
    """
    from speechbrain_ext.audio import AtomicAudioWriter, AudioReader, StreamResampler
    from speechbrain_ext.inference.options import check_channels, check_output_rate

    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise InvalidOptionError(f"block_size must be a positive number of samples, got {block_size!r}")
    channels, output_rate = check_channels(channels), check_output_rate(output_rate)
    if hasattr(enhancer_or_model, "process"):  # a streamer: ours, or OnnxFRCRNStreamer
        streamer = enhancer_or_model
        streamer.reset()
    else:
        streamer = FRCRNStreamer(_as_model(enhancer_or_model))
    reader = AudioReader(input_path, streamer.sample_rate, channels, block_seconds=1.0)
    rate = reader.sample_rate if output_rate == "input" else (output_rate or streamer.sample_rate)
    resampler = StreamResampler(streamer.sample_rate, rate)
    to_skip = streamer.latency if align else 0
    compute, slowest = 0.0, 0.0

    def write(writer, samples):  # [C, n] enhanced, before the gain is undone
        nonlocal to_skip
        skip = min(to_skip, samples.shape[-1])
        to_skip -= skip
        writer.write(resampler.push((samples[:, skip:] / input_gain).cpu()).T)

    with AtomicAudioWriter(output_path, rate, reader.num_channels, subtype, source=input_path) as writer:
        for chunk in reader:  # [C, n], about a second at a time
            for block in chunk.split(block_size, dim=-1):
                start = time.perf_counter()
                enhanced = streamer.process(block * input_gain)
                elapsed = time.perf_counter() - start
                compute += elapsed
                slowest = max(slowest, elapsed)
                write(writer, enhanced)
        if align:
            write(writer, streamer.flush())
        else:
            streamer.reset()
        writer.write(resampler.flush().T)
    seconds = reader.num_samples / streamer.sample_rate
    return {
        "path": os.fspath(output_path),
        "seconds": seconds,
        "sample_rate": rate,
        "latency_seconds": streamer.latency_seconds,
        "compute_seconds": compute,
        "real_time_factor": compute / seconds if seconds else 0.0,
        "max_block_seconds": slowest,
        "clipped_samples": writer.clipped,
    }
