"""The short-time Fourier transform pair of FRCRN, framed exactly as the official model.

FRCRN frames the waveform without centre padding (frame ``n`` covers samples
``n*hop ... n*hop + win_len - 1``), uses the square root of the window for both analysis and
synthesis, and inverts with a least-squares inverse of the analysis basis followed by
overlap-add normalised by the summed squared window (plus 1e-8, so edge samples where the
window vanishes come back as ~0 instead of NaN).

Why not ``torch.stft``/``torch.istft``: ``torch.stft`` centres a shorter window inside an
``n_fft`` frame (FRCRN zero-pads it at the end), and ``torch.istft`` refuses windows whose
overlap-added square vanishes at the edges, which the uncentred sqrt-Hann framing does. We
therefore frame with ``Tensor.unfold`` and transform with ``torch.fft.rfft``.

Authors: speechbrain-ext contributors
"""

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy.signal import get_window

_WINDOW_ALIASES = {"hanning": "hann"}  # the official configuration.json says "hanning"


def canonical_window_name(win_type):
    """The scipy name of a window: ``'hanning'`` (the official spelling, which scipy >= 1.13
    rejects) becomes ``'hann'``.

    Example
    -------
    >>> canonical_window_name("hanning"), canonical_window_name("hamming")
    ('hann', 'hamming')
    """
    return _WINDOW_ALIASES.get(win_type, win_type)


def analysis_window(win_type, win_len):
    """Square root of a periodic window, as FRCRN applies it on both sides of the STFT.

    Arguments
    ---------
    win_type : str or None
        Any window name scipy knows (``'hann'``, ``'hamming'``, ...); ``'hanning'`` is read as
        ``'hann'``; ``None``/``'None'`` means rectangular.
    win_len : int
        Window length in samples.

    Example
    -------
    >>> w = analysis_window("hanning", 640)
    >>> w.shape, float(w[0]), round(float(w[320]), 6)
    (torch.Size([640]), 0.0, 1.0)
    """
    if win_type is None or win_type == "None":
        window = np.ones(win_len)
    else:
        window = get_window(canonical_window_name(win_type), win_len, fftbins=True)
    return torch.from_numpy(np.sqrt(window)).float()


def analysis_basis(win_len, fft_len):
    """``[win_len, 2F]`` float64 matrix mapping a frame to its (real, imag) spectrum, unwindowed.

    Row ``n`` holds the spectrum of a unit impulse at sample ``n`` of an ``fft_len``-point frame.

    Example
    -------
    >>> analysis_basis(640, 640).shape
    (640, 642)
    """
    basis = np.fft.rfft(np.eye(fft_len))[:win_len]
    return np.concatenate([basis.real, basis.imag], axis=1)


class FramedSTFT(nn.Module):
    """Waveform ``[B, T]`` to complex spectrum ``[B, 2, F, N]`` (real, imag) with FRCRN framing.

    Arguments
    ---------
    win_len : int
        Frame (and window) length in samples.
    win_inc : int
        Hop between frames.
    fft_len : int
        FFT size; frames are zero-padded at the end up to it. ``F = fft_len // 2 + 1``.
    win_type : str or None
        See :func:`analysis_window`.
    window : torch.Tensor, optional
        ``[win_len]``: this analysis window instead of ``win_type``'s.

    Example
    -------
    >>> stft = FramedSTFT(640, 320, 640, "hann")
    >>> stft(torch.randn(3, 16000)).shape  # N = (16000 - 640) // 320 + 1
    torch.Size([3, 2, 321, 49])
    """

    def __init__(self, win_len=640, win_inc=320, fft_len=640, win_type="hann", window=None):
        super().__init__()
        if win_len > fft_len:
            raise ValueError(f"win_len ({win_len}) must not exceed fft_len ({fft_len})")
        self.win_len, self.win_inc, self.fft_len = win_len, win_inc, fft_len
        window = analysis_window(win_type, win_len) if window is None else window
        self.register_buffer("window", window, persistent=False)

    def num_frames(self, num_samples):
        """Frames produced for ``num_samples`` input samples (0 when shorter than a window)."""
        return max(0, (num_samples - self.win_len) // self.win_inc + 1)

    def forward(self, wav):
        """Transform ``wav`` [B, T] (T >= win_len) into [B, 2, F, N]."""
        if torch.compiler.is_exporting():
            return self.as_convolution(wav)
        frames = wav.unfold(-1, self.win_len, self.win_inc) * self.window  # [B, N, win_len]
        spec = torch.fft.rfft(frames, n=self.fft_len)  # [B, N, F]
        return torch.stack([spec.real, spec.imag], dim=1).transpose(2, 3)

    def as_convolution(self, wav):
        """:meth:`forward` as one strided convolution with the windowed DFT basis.

        What ONNX export uses: exported, ``torch.fft.rfft`` becomes a DFT that onnxruntime computes
        with errors of about 6e-5 of the spectrum's peak; this convolution stays near 1e-7.

        Example
        -------
        >>> stft = FramedSTFT()
        >>> wav = torch.randn(2, 4000)
        >>> torch.allclose(stft.as_convolution(wav), stft(wav), atol=1e-3)
        True
        """
        basis = torch.from_numpy(analysis_basis(self.win_len, self.fft_len)).to(wav)  # [win_len, 2F]
        kernel = (self.window[:, None] * basis).T[:, None]  # [2F, 1, win_len]
        return F.conv1d(wav[:, None], kernel, stride=self.win_inc).unflatten(1, (2, -1))


class FramedISTFT(nn.Module):
    """Complex spectrum ``[B, 2, F, N]`` back to a waveform ``[B, (N - 1) * win_inc + win_len]``.

    Each frame is mapped to ``win_len`` samples by the least-squares inverse (pseudo-inverse)
    of the analysis basis, windowed, overlap-added, and divided by the overlap-added squared
    window. For ``win_len == fft_len`` the pseudo-inverse equals the inverse real FFT; for
    shorter windows it is the FRCRN definition, which differs from a truncated inverse FFT.

    Arguments
    ---------
    win_len, win_inc, fft_len, win_type, window :
        As in :class:`FramedSTFT`.

    Example
    -------
    >>> stft, istft = FramedSTFT(), FramedISTFT()
    >>> wav = torch.randn(2, 16000)
    >>> # Perfect reconstruction wherever two frames overlap (the edges divide by a tiny window).
    >>> torch.allclose(istft(stft(wav))[:, 320:-320], wav[:, 320:-320], atol=1e-4)
    True
    """

    def __init__(self, win_len=640, win_inc=320, fft_len=640, win_type="hann", window=None):
        super().__init__()
        self.win_len, self.win_inc, self.fft_len = win_len, win_inc, fft_len
        window = analysis_window(win_type, win_len) if window is None else window
        self.register_buffer("window", window, persistent=False)
        self.register_buffer("synthesis", self._synthesis_basis(win_len, fft_len), persistent=False)

    @staticmethod
    def _synthesis_basis(win_len, fft_len):
        """``[2F, win_len]`` pseudo-inverse of the analysis basis (computed in float64)."""
        return torch.from_numpy(np.linalg.pinv(analysis_basis(win_len, fft_len))).float()

    def synthesize(self, spec):
        """Windowed frames ``[B, N, win_len]`` of ``spec`` [B, 2, F, N], before overlap-add."""
        batch, _, n_freq, n_frames = spec.shape
        flat = spec.reshape(batch, 2 * n_freq, n_frames).transpose(1, 2)  # [B, N, 2F]
        return (flat @ self.synthesis) * self.window  # [B, N, win_len]

    def forward(self, spec):
        """Invert ``spec`` [B, 2, F, N]; returns [B, (N - 1) * win_inc + win_len]."""
        if torch.compiler.is_exporting():
            return self.as_convolution(spec)
        frames = self.synthesize(spec)
        n_frames = frames.shape[1]
        length = (n_frames - 1) * self.win_inc + self.win_len

        def overlap_add(framed):  # [B, win_len, N] -> [B, length]
            return F.fold(
                framed, output_size=(1, length), kernel_size=(1, self.win_len), stride=(1, self.win_inc)
            ).view(framed.shape[0], length)

        wav = overlap_add(frames.transpose(1, 2))
        envelope = overlap_add((self.window**2)[None, :, None].expand(1, -1, n_frames))
        return wav / (envelope + 1e-8)

    def as_convolution(self, spec):
        """:meth:`forward` as transposed convolutions: synthesis and overlap-add in one.

        What ONNX export uses: the ``F.fold`` overlap-add does not export with a dynamic batch axis.

        Example
        -------
        >>> istft = FramedISTFT()
        >>> spec = torch.randn(2, 2, 321, 12)
        >>> torch.allclose(istft.as_convolution(spec), istft(spec), atol=1e-4)
        True
        """
        kernel = (self.synthesis * self.window)[:, None]  # [2F, 1, win_len]
        wav = F.conv_transpose1d(spec.flatten(1, 2), kernel, stride=self.win_inc)[:, 0]
        frames = spec.new_ones(1, 1, spec.shape[-1])
        envelope = F.conv_transpose1d(frames, (self.window**2)[None, None], stride=self.win_inc)[:, 0]
        return wav / (envelope + 1e-8)

    def step(self, spec, state=None):
        """Invert the next frames of a stream by overlap-adding them onto the earlier ones.

        Frame ``n`` completes samples ``n * win_inc ... (n + 1) * win_inc - 1``: no later frame
        overlaps them. Feeding a spectrum frame by frame therefore returns the waveform of
        :meth:`forward`, ``win_inc`` samples per frame, except for the last
        ``win_len - win_inc`` samples, which wait for frames that may still come.

        Arguments
        ---------
        spec : torch.Tensor
            ``[B, 2, F, N]``, the frames after those the ``state`` has seen.
        state : tuple or None
            ``(signal, envelope)``: the overlap-added signal ``[B, win_len - win_inc]`` and squared
            window ``[win_len - win_inc]`` of the earlier frames over the samples still open
            (``None``: start of stream).

        Returns
        -------
        tuple
            ``[B, N * win_inc]`` completed samples and the new state.

        Example
        -------
        >>> stft, istft = FramedSTFT(), FramedISTFT()
        >>> spec = stft(torch.randn(2, 16000))
        >>> state, pieces = None, []
        >>> for frame in spec.split(1, dim=-1):
        ...     samples, state = istft.step(frame, state)
        ...     pieces.append(samples)
        >>> streamed, whole = torch.cat(pieces, dim=-1), istft(spec)
        >>> # Equal up to float rounding (amplified near the start, where the window vanishes).
        >>> streamed.shape, torch.allclose(streamed, whole[:, : streamed.shape[-1]], atol=1e-4)
        (torch.Size([2, 15680]), True)
        """
        hop, overlap = self.win_inc, self.win_len - self.win_inc
        if overlap < 0:
            raise RuntimeError(f"streaming needs win_len >= win_inc, got {self.win_len} < {self.win_inc}")
        frames = self.synthesize(spec)
        if state is None:
            state = (frames.new_zeros(frames.shape[0], overlap), frames.new_zeros(overlap))
        signal_tail, envelope_tail = state
        squared_window = self.window**2
        completed = []
        for frame in frames.unbind(dim=1):
            signal = frame.clone()
            signal[:, :overlap] += signal_tail
            envelope = squared_window.clone()
            envelope[:overlap] += envelope_tail
            completed.append(signal[:, :hop] / (envelope[:hop] + 1e-8))
            signal_tail, envelope_tail = signal[:, hop:], envelope[hop:]
        return torch.cat(completed, dim=-1), (signal_tail, envelope_tail)
