"""MossFormer2 fullband speech enhancement (48 kHz): a MossFormer2 masknet on mel features that
predicts a real mask over the STFT.

The official ``MossFormer2_SE_48K`` (ClearerVoice-Studio) computes, per 40 ms hamming frame
(8 ms hop), 60 Kaldi log-mel filterbank energies and their first and second deltas (180
features), maps them with a :class:`~speechbrain_ext.lobes.models.mossformer2.MossFormer2MaskNet`
(24 blocks of 512 channels; recurrent modules with a plain FSMN memory) to a mask over the 961
bins of a 1920-point STFT with the same frames, and resynthesises the masked STFT. The features
see the waveform at int16 scale (times 32768), as the official pipeline feeds them.

Authors
 * speechbrain-ext contributors
"""

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from speechbrain_ext.lobes.models.mossformer2 import MossFormer2MaskNet, recurrence_config
from speechbrain_ext.nnet.stft import FramedISTFT, FramedSTFT

#: The official pipeline scales float waveforms to int16 range before computing features.
INT16_SCALE = 32768.0


def fbank_with_deltas(wave, sample_rate, win_len, win_inc, num_mels, dither=0.0):
    """Kaldi log-mel filterbank energies and their first and second deltas, ``[B, 3 * num_mels, S]``.

    ``wave`` [B, T] is at the scale the features expect (int16 range for the official model).
    Kaldi's defaults otherwise (pre-emphasis 0.97, DC removal, FFT rounded up to a power of two,
    frames within the signal only: ``S = 1 + (T - win_len) // win_inc``), with a hamming window;
    deltas over 5 frames (torchaudio's ``compute_deltas``).

    Example
    -------
    >>> fbank_with_deltas(1000 * torch.randn(2, 48000), 48000, 1920, 384, 60).shape
    torch.Size([2, 180, 121])
    """
    from torchaudio.compliance.kaldi import fbank
    from torchaudio.functional import compute_deltas

    frame_ms, hop_ms = 1000.0 * win_len / sample_rate, 1000.0 * win_inc / sample_rate
    mels = torch.stack([
        fbank(item[None], dither=dither, frame_length=frame_ms, frame_shift=hop_ms, num_mel_bins=num_mels,
              sample_frequency=sample_rate, window_type="hamming").T
        for item in wave
    ])  # [B, num_mels, S]
    deltas = compute_deltas(mels)
    return torch.cat((mels, deltas, compute_deltas(deltas)), dim=1)


def kaldi_frame_spectrum_basis(win_len, pre_emphasis=0.97):
    """``[2 * (P // 2 + 1), win_len]`` float64: a raw frame to the (real, imag) spectrum of the
    frame Kaldi's fbank transforms, ``P`` the next power of two above ``win_len``.

    Kaldi's steps before the FFT are linear in the frame (DC removal, pre-emphasis with the first
    sample as its own predecessor, a symmetric hamming window, zero-padding to ``P``), so with the
    DFT they make one matrix: the kernel of one strided convolution.

    Example
    -------
    >>> kaldi_frame_spectrum_basis(400).shape  # P = 512: 257 bins
    (514, 400)
    """
    eye = np.eye(win_len)
    remove_dc = eye - 1.0 / win_len
    emphasise = eye - pre_emphasis * np.eye(win_len, k=-1)
    emphasise[0, 0] -= pre_emphasis
    window = 0.54 - 0.46 * np.cos(2 * np.pi * np.arange(win_len) / (win_len - 1))
    frame_map = window[:, None] * (emphasise @ remove_dc)  # processed = frame_map @ raw
    padded = 1 << (win_len - 1).bit_length()
    dft = np.fft.rfft(np.eye(padded), axis=1)[:win_len]  # rows: samples, columns: bins
    spectrum = frame_map.T @ dft  # [win_len, bins]
    return np.concatenate([spectrum.real, spectrum.imag], axis=1).T


def fbank_with_deltas_as_convolution(wave, sample_rate, win_len, win_inc, num_mels):
    """:func:`fbank_with_deltas` (no dither) as a convolution, for ONNX export: the batch is not
    looped over in Python and no FFT is exported (onnxruntime's DFT is 6e-5 of the peak off).

    Example
    -------
    >>> wave = 1000 * torch.randn(2, 9600)
    >>> direct = fbank_with_deltas(wave, 48000, 1920, 384, 60)
    >>> (fbank_with_deltas_as_convolution(wave, 48000, 1920, 384, 60) - direct).abs().max() < 1e-3
    tensor(True)
    """
    from torchaudio.compliance.kaldi import get_mel_banks

    basis = torch.from_numpy(kaldi_frame_spectrum_basis(win_len)).to(wave)
    spectrum = F.conv1d(wave[:, None], basis[:, None], stride=win_inc)  # [B, 2 * bins, S]
    real, imag = spectrum.chunk(2, dim=1)
    padded = 2 * (real.shape[1] - 1)  # the FFT size the basis was made for
    banks, _ = get_mel_banks(num_mels, padded, float(sample_rate), 20.0, 0.0, 100.0, -500.0, 1.0)
    banks = F.pad(banks, (0, 1)).to(wave)  # [num_mels, bins]: Kaldi gives the Nyquist bin no band
    energies = F.conv1d(real.square() + imag.square(), banks[:, :, None])  # [B, num_mels, S]
    mels = energies.clamp_min(torch.finfo(torch.float32).eps).log()
    deltas = _deltas(mels)
    return torch.cat((mels, deltas, _deltas(deltas)), dim=1)


def _deltas(x, reach=2):
    """torchaudio's ``compute_deltas`` (5 frames, edges repeated) as slices: its reshape pins an
    exported graph's length."""
    padded = F.pad(x, (reach, reach), mode="replicate")
    length = x.shape[-1]
    total = sum(k * (padded[..., reach + k: reach + k + length] - padded[..., reach - k: reach - k + length])
                for k in range(1, reach + 1))
    return total / (2 * sum(k * k for k in range(1, reach + 1)))


class MossFormer2SE(nn.Module):
    """MossFormer2 speech enhancement: noisy waveform [B, T] -> enhanced waveform [B, T].

    Defaults are those of the official ``MossFormer2_SE_48K`` (48 kHz, 55,262,170 parameters).
    The masknet predicts masks for ``num_spks`` streams (2 in the official model, whose
    weights hold both); the first is the speech mask.

    Arguments
    ---------
    sample_rate : int
        Rate the features are computed for.
    win_len, win_inc, fft_len : int
        Frame length, hop and FFT size of both the features and the STFT, in samples.
    num_mels : int
        Mel bands of the features (the masknet sees three times as many channels).
    dither : float
        Kaldi dithering of the features (ClearVoice uses 1.0: random noise of one int16 step,
        which makes its output differ between runs); 0 keeps the model deterministic.
    d_model, num_blocks, group_size, query_key_dim, expansion_factor, attn_dropout, norm,
    fsmn_channels, memory_order, num_spks
        The masknet's (see :class:`~speechbrain_ext.lobes.models.mossformer2.MossFormer2MaskNet`).

    Example
    -------
    >>> model = MossFormer2SE(d_model=32, num_blocks=1, group_size=16, query_key_dim=16,
    ...                       fsmn_channels=16).eval()
    >>> model(0.1 * torch.randn(2, 9601)).shape
    torch.Size([2, 9601])
    """

    def __init__(
        self,
        # features and STFT
        sample_rate=48000, win_len=1920, win_inc=384, fft_len=1920, num_mels=60, dither=0.0,
        # the masknet
        d_model=512, num_blocks=24, group_size=256, query_key_dim=128, expansion_factor=4.0,
        attn_dropout=0.1, norm="ln", fsmn_channels=256, memory_order=20, num_spks=2,
    ):  # fmt: skip
        super().__init__()
        if fft_len != win_len:
            raise ValueError(f"fft_len must equal win_len (the features and the STFT share their frames), "
                             f"got {fft_len} and {win_len}")
        self.sample_rate, self.win_len, self.win_inc, self.fft_len = sample_rate, win_len, win_inc, fft_len
        self.num_mels, self.dither = num_mels, dither
        self.masknet = MossFormer2MaskNet(
            3 * num_mels, d_model, num_spks=num_spks, num_blocks=num_blocks, group_size=group_size,
            query_key_dim=query_key_dim, expansion_factor=expansion_factor, attn_dropout=attn_dropout,
            norm=norm, fsmn_channels=fsmn_channels, memory_order=memory_order, memory="plain",
            mask_channels=fft_len // 2 + 1,
        )  # fmt: skip
        # The symmetric (not periodic) hamming window of the official STFT; not a parameter.
        self.register_buffer("window", torch.hamming_window(win_len, periodic=False), persistent=False)

    @property
    def config(self):
        """The constructor arguments that rebuild this model (for ``configuration.json``)."""
        masknet = self.masknet
        block = masknet.blocks[0]
        d_model = masknet.bottleneck.out_channels
        recurrence = recurrence_config(masknet)
        recurrence.pop("memory")
        return dict(
            sample_rate=self.sample_rate, win_len=self.win_len, win_inc=self.win_inc, fft_len=self.fft_len,
            num_mels=self.num_mels, dither=self.dither, d_model=d_model, num_blocks=len(masknet.blocks),
            group_size=block.group_size, query_key_dim=block.qk_gain.shape[-1],
            expansion_factor=block.to_hidden.linear.out_features / d_model, attn_dropout=block.attention_dropout.p,
            norm=masknet.norm_type, num_spks=masknet.num_spks, **recurrence,
        )  # fmt: skip

    def fuse_for_inference(self):
        """See :meth:`~speechbrain_ext.lobes.models.mossformer.MossFormerMaskNet.fuse_for_inference`;
        returns self."""
        self.eval()
        self.masknet.fuse_for_inference()
        return self

    def features(self, noisy):
        """The masknet's input for ``noisy`` [B, T] (float waveforms): [B, 3 * num_mels, S]."""
        if torch.compiler.is_exporting():  # dither is random: not part of a graph
            return fbank_with_deltas_as_convolution(noisy * INT16_SCALE, self.sample_rate, self.win_len,
                                                    self.win_inc, self.num_mels)
        return fbank_with_deltas(noisy * INT16_SCALE, self.sample_rate, self.win_len, self.win_inc, self.num_mels,
                                 self.dither)

    def mask(self, noisy):
        """The speech mask [B, fft_len // 2 + 1, S] for ``noisy`` [B, T]."""
        return self.masknet(self.features(noisy), speakers=1)[0]  # the second stream is never used

    def forward(self, noisy):
        """Enhances ``noisy`` [B, T] (at least ``win_len`` samples); returns [B, T].

        Only whole frames are analysed: samples after the last frame come back as zeros (the
        interfaces pad the input to whole frames first).
        """
        if torch.compiler.is_exporting():  # real-valued convolutions: complex STFTs do not export
            frames = dict(win_len=self.win_len, win_inc=self.win_inc, fft_len=self.fft_len, window=self.window)
            masked = FramedSTFT(**frames).as_convolution(noisy) * self.mask(noisy)[:, None]
            return FramedISTFT(**frames).as_convolution(masked)
        if noisy.shape[-1] < self.win_len:
            raise ValueError(f"input of {noisy.shape[-1]} samples is shorter than one frame ({self.win_len})")
        spectrum = torch.stft(noisy, self.fft_len, self.win_inc, self.win_len, self.window, center=False,
                              return_complex=True)
        masked = spectrum * self.mask(noisy)
        return torch.istft(masked, self.fft_len, self.win_inc, self.win_len, self.window, center=False,
                           length=noisy.shape[-1])
