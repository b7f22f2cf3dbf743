"""FRCRN: frequency-recurrent complex convolutional recurrent network for speech enhancement.

FRCRN (Zhao et al., ICASSP 2022) estimates a complex ideal ratio mask (cIRM) for a 16 kHz
noisy spectrum with two complex UNets in cascade. Each UNet has seven complex convolution
levels; frequency-recurrent complex FSMN blocks run along the frequency axis between levels,
a two-layer complex FSMN runs along time in the bottleneck, and complex squeeze-excitation
gates the skip connections. The second UNet refines the first one's output, and its mask is
added to the first mask.

This implementation computes exactly what the official (ModelScope / ClearerVoice-Studio)
model computes, so official checkpoints load through
:func:`speechbrain_ext.convert.frcrn_from_official`.

``FRCRN(causal=True)`` is a causal variant with the same parameters (official weights can
initialise it for fine-tuning): the output at frame ``t`` depends on frames ``<= t`` only, and
:class:`speechbrain_ext.inference.streaming.FRCRNStreamer` runs it in real time, one hop at a
time. It changes four things: the encoder convolutions pad the past only (so every level keeps
the input's frame count instead of gaining a frame), the decoders' transposed convolutions
read the current and previous frame instead of the current and next one, the
squeeze-excitation gates pool a running mean over the frames so far instead of the whole
utterance, and the FSMN memories, already left-context only, are unchanged.

Authors: speechbrain-ext contributors
"""

from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from speechbrain_ext.evaluation import metrics
from speechbrain_ext.memory import recycled_memory
from speechbrain_ext.nnet.complex import (
    ComplexBatchNorm2d,
    ComplexConv2d,
    ComplexConvTranspose2d,
    ComplexSqueezeExcitation,
    complex_cat,
    complex_multiply,
    keep_frames,
)
from speechbrain_ext.nnet.fsmn import ComplexFSMN
from speechbrain_ext.nnet.fused import FusedComplexConvBlock, FusedComplexFSMN
from speechbrain_ext.nnet.stft import FramedISTFT, FramedSTFT, canonical_window_name

# Frequency kernel sizes of the depth-14 UNet (time kernels are all 2, frequency strides 2).
# They take the 321 bins of a 640-point FFT down to 1 and back:
# 321 -> 159 -> 78 -> 37 -> 17 -> 7 -> 2 -> 1 -> 2 -> 7 -> 17 -> 37 -> 78 -> 159 -> 321.
_ENCODER_FREQ_KERNELS = (5, 5, 5, 5, 5, 5, 2)
_DECODER_FREQ_KERNELS = (2, 5, 5, 5, 6, 5, 5)


class FRCRNStage(NamedTuple):
    """What one UNet stage of FRCRN produces.

    spec : [B, 2, F, N] enhanced complex spectrum (real, imaginary).
    wav : [B, L] enhanced waveform, ``L = (N - 1) * win_inc + win_len``.
    mask : [B, 2, F, N] complex ratio mask (real, imaginary) applied to the noisy spectrum.
    """

    spec: torch.Tensor
    wav: torch.Tensor
    mask: torch.Tensor


# Of the leaky ReLU after every (transposed) convolution block.
NEGATIVE_SLOPE = 0.01


class ComplexConvBlock(nn.Module):
    """Complex (transposed) convolution -> complex batch norm -> leaky ReLU.

    Arguments
    ---------
    in_channels, out_channels : int
        Complex channels.
    kernel_size, stride, padding : tuple
        Convolution geometry over (frequency, time).
    transposed : bool
        Use a transposed convolution (decoder) instead of a convolution (encoder).
    padding_mode : str
        Padding of the (non-transposed) convolution.
    causal : bool
        Causal in time (the time padding must then be 0; see
        :class:`~speechbrain_ext.nnet.complex.ComplexConv2d`).

    Example
    -------
    >>> block = ComplexConvBlock(1, 8, (5, 2), (2, 1), (0, 1))
    >>> block(torch.randn(2, 2, 321, 10)).shape
    torch.Size([2, 16, 159, 11])
    >>> causal = ComplexConvBlock(1, 8, (5, 2), (2, 1), (0, 0), causal=True).eval()
    >>> x = torch.randn(2, 2, 321, 10)
    >>> y, state = causal.step(x[..., :1])  # streaming: one frame at a time
    >>> causal(x).shape, torch.allclose(y, causal(x)[..., :1], atol=1e-6)
    (torch.Size([2, 16, 159, 10]), True)
    """

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        stride,
        padding,
        transposed=False,
        padding_mode="zeros",
        causal=False,
    ):
        super().__init__()
        if transposed:
            self.conv = ComplexConvTranspose2d(in_channels, out_channels, kernel_size, stride, padding, causal=causal)
        else:
            self.conv = ComplexConv2d(
                in_channels, out_channels, kernel_size, stride, padding, padding_mode, causal=causal
            )
        self.norm = ComplexBatchNorm2d(out_channels)

    def forward(self, x):
        """``x`` [B, 2*in, F, T] -> [B, 2*out, F', T']."""
        return F.leaky_relu(self.norm(self.conv(x)), negative_slope=NEGATIVE_SLOPE)

    def fused(self):
        """This block for inference: :class:`~speechbrain_ext.nnet.fused.FusedComplexConvBlock`
        (batch norm folded into the convolution, same parameters)."""
        return FusedComplexConvBlock(self.conv, self.norm.eval(), NEGATIVE_SLOPE, original=self)

    def _norm_affine(self):
        """``(scale, shift)`` of the eval-mode batch norm."""
        norm = self.norm
        scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
        return scale, norm.bias - norm.running_mean * scale

    def fused_weights(self):
        """The convolution's step kernel with the batch norm folded in (running statistics)."""
        return self.conv.fused_weights(*self._norm_affine())

    def step(self, x, state=None, weights=None):
        """Run the block on the next frames ``x`` of a stream, for inference (causal blocks).

        Batch norm uses its running statistics (folded into :meth:`fused_weights`), as in eval
        mode. Returns ``(y, state)``; see :meth:`ComplexConv2d.step
        <speechbrain_ext.nnet.complex.ComplexConv2d.step>`.
        """
        y, state = self.conv.step(x, state, self.fused_weights() if weights is None else weights)
        return F.leaky_relu(y, negative_slope=NEGATIVE_SLOPE, inplace=True), state


class FrequencyRecurrentUNet(nn.Module):
    """One FRCRN stage: a complex UNet with frequency-recurrent FSMN and SE-gated skips.

    Input and output are one complex channel, ``[B, 2, F, N]`` with ``F = 321``. Every encoder
    level adds one frame (time kernel 2, padding 1) and every decoder level removes it again,
    so the output has as many frames as the input. The causal variant keeps ``N`` frames at
    every level and can run frame by frame (see :meth:`forward`).

    Arguments
    ---------
    channels : int
        Complex channels of every hidden level (128 in the official model).
    fsmn_hidden : int
        Hidden size of the FSMN blocks (128 officially).
    fsmn_order : int
        Memory taps of the FSMN blocks (20 officially).
    se_reduction : int
        Bottleneck factor of the squeeze-excitation gates (8 officially).
    padding_mode : str
        Padding of the encoder convolutions (``'zeros'`` officially; the causal model needs it).
    causal : bool
        Use past and current frames only: causal (transposed) convolutions and running-mean
        squeeze-excitation. The parameters are the same as without it.

    Example
    -------
    >>> unet = FrequencyRecurrentUNet(channels=8, fsmn_hidden=8)
    >>> unet(torch.randn(2, 2, 321, 5)).shape
    torch.Size([2, 2, 321, 5])
    >>> causal = FrequencyRecurrentUNet(channels=8, fsmn_hidden=8, causal=True)
    >>> causal.load_state_dict(unet.state_dict())  # the same parameters
    <All keys matched successfully>
    """

    def __init__(
        self, channels=128, fsmn_hidden=128, fsmn_order=20, se_reduction=8, padding_mode="zeros", causal=False
    ):
        super().__init__()
        self.causal = causal
        #: Layout of the feature maps; FRCRN.fuse_for_inference sets channels-last.
        self.memory_format = torch.contiguous_format
        # Official: time padding 1 on both sides (a frame more per encoder level, and a frame
        # of look-ahead per decoder level); causal layers pad the past themselves.
        time_padding = 0 if causal else 1
        levels = len(_ENCODER_FREQ_KERNELS)
        enc_in = [1] + [channels] * (levels - 1)
        # Decoder inputs are the previous decoder's output concatenated with a skip, except the
        # first, which reads the bottleneck; the last decoder emits one complex channel.
        dec_in = [channels] + [2 * channels] * (levels - 1)
        dec_out = [channels] * (levels - 1) + [1]

        self.encoders = nn.ModuleList(
            ComplexConvBlock(
                enc_in[i], channels, (k, 2), (2, 1), (0, time_padding), padding_mode=padding_mode, causal=causal
            )
            for i, k in enumerate(_ENCODER_FREQ_KERNELS)
        )
        # The FSMN before encoder level i (i >= 1) and after decoder level i (i < levels - 1).
        self.encoder_fsmns = nn.ModuleList(
            ComplexFSMN(channels, fsmn_hidden, fsmn_order, "freq") for _ in range(levels - 1)
        )
        # Gates of the skips from encoder levels 0..5 (the deepest level has no skip).
        self.skip_gates = nn.ModuleList(
            ComplexSqueezeExcitation(channels, se_reduction, causal) for _ in range(levels - 1)
        )
        self.bottleneck = nn.Sequential(
            ComplexFSMN(channels, fsmn_hidden, fsmn_order, "time"),
            ComplexFSMN(channels, fsmn_hidden, fsmn_order, "time"),
        )
        self.decoders = nn.ModuleList(
            ComplexConvBlock(dec_in[i], dec_out[i], (k, 2), (2, 1), (0, time_padding), transposed=True, causal=causal)
            for i, k in enumerate(_DECODER_FREQ_KERNELS)
        )
        self.decoder_fsmns = nn.ModuleList(
            ComplexFSMN(channels, fsmn_hidden, fsmn_order, "freq") for _ in range(levels - 1)
        )
        # The official model gates all decoder outputs but the last two.
        self.decoder_gates = nn.ModuleList(
            ComplexSqueezeExcitation(channels, se_reduction, causal) for _ in range(levels - 2)
        )
        self.output_layer = ComplexConv2d(1, 1, kernel_size=1)

    def forward(self, x, stream=None, frames=None):
        """``x`` [B, 2, F, N] -> [B, 2, F, N] (unbounded; FRCRN applies tanh to get a mask).

        Arguments
        ---------
        x : torch.Tensor
            ``[B, 2, F, N]`` complex spectrum.
        stream : object, optional
            Causal model only: run ``x`` as the next frames of a stream. ``stream.apply(layer,
            x)`` must run ``layer.step`` with that layer's state and return its output (see
            :class:`speechbrain_ext.inference.streaming.FRCRNStreamer`, which also keeps the
            weights precomputed); every layer goes through it, in the order of the offline pass.
        frames : torch.Tensor, optional
            ``[B]`` valid frames of each item of a batch padded to ``N`` frames: each item's
            first ``frames[b]`` output frames are then those of the item run alone.
        """
        if stream is None:
            run = _run_whole
        elif self.causal:
            run = stream.apply
        else:
            raise RuntimeError("only a causal FrequencyRecurrentUNet can run as a stream")
        if frames is not None and stream is not None:
            raise ValueError("a stream runs one item's frames: it takes no frames")
        # Padded items: only the encoders look at a later frame (time kernel 2 after one frame of
        # padding: the frame an encoder adds at the end sees the padding, which must be zero as
        # it is for the item alone) and the gates pool over all frames. Decoders look one frame
        # ahead only inside the item; the time FSMNs and causal layers look back only.
        padded = frames is not None and not self.causal
        total = x.shape[-1]

        def item_frames(x):  # each level adds (encoders) or removes (decoders) one frame
            return frames + (x.shape[-1] - total)

        def encode(encoder, x):
            return run(encoder, keep_frames(x, item_frames(x)) if padded else x)

        def gate(layer, x):
            return layer(x, frames=item_frames(x)) if padded else run(layer, x)

        # Every layer keeps the memory format it is given: the default one trains faster on
        # CPU (convolution backward), channels-last infers faster (fuse_for_inference, streams).
        x = x.contiguous(memory_format=torch.channels_last if stream is not None else self.memory_format)
        skips = []
        for level, encoder in enumerate(self.encoders):
            if level > 0:
                x = run(self.encoder_fsmns[level - 1], x)
            x = encode(encoder, x)
            if level < len(self.skip_gates):
                skips.append(gate(self.skip_gates[level], x))

        for fsmn in self.bottleneck:  # the frequency axis is 1 here: the memory runs over time
            x = run(fsmn, x)

        last = len(self.decoders) - 1
        for level, decoder in enumerate(self.decoders):
            x = run(decoder, x)
            if level == last:
                break
            x = run(self.decoder_fsmns[level], x)
            if level < len(self.decoder_gates):
                x = gate(self.decoder_gates[level], x)
            # Pair with the gated encoder output of the same resolution.
            x = complex_cat([x, skips[last - 1 - level]])
        return run(self.output_layer, x).contiguous()


def _run_whole(layer, x):
    """Apply ``layer`` to a whole signal (the offline pass)."""
    return layer(x)


class FRCRN(nn.Module):
    """FRCRN speech enhancement model (16 kHz), at parity with the official implementation.

    The constructor takes the official configuration's keyword arguments, with the official
    values as defaults, plus a few width settings (``channels``, ``fsmn_hidden``,
    ``fsmn_order``, ``se_reduction``) for smaller models; at their defaults the model is the
    official one (13,141,844 trainable parameters).

    Arguments
    ---------
    win_len, win_inc, fft_len : int
        STFT framing (640 / 320 / 640 officially: 40 ms frames, 20 ms hop at 16 kHz). The UNet
        is built for ``fft_len = 640`` (321 frequency bins).
    win_type : str
        STFT window; ``'hanning'`` (the official configuration's spelling) means ``'hann'``.
    channels, fsmn_hidden, fsmn_order, se_reduction : int
        Width of the UNets; see :class:`FrequencyRecurrentUNet`.
    padding_mode : str
        Padding of the encoder convolutions (``'zeros'`` officially).
    causal : bool
        Build the causal variant (see the module docstring): enhanced sample ``s`` depends on
        input samples before ``(s // win_inc) * win_inc + win_len`` only. Same parameters as the
        non-causal model; needs ``padding_mode='zeros'``.
    complex, model_complexity, model_depth, log_amp
        Official configuration keys, accepted so that a ``configuration.json`` builds the
        model: ``complex`` must be True and ``model_depth`` 14 (the only configuration in which
        the reference runs), ``log_amp`` False; ``model_complexity`` has no effect at depth 14.

    Example
    -------
    >>> model = FRCRN(channels=8, fsmn_hidden=8).eval()
    >>> noisy = torch.randn(2, 16000)
    >>> model(noisy).shape
    torch.Size([2, 16000])
    >>> first, second = model.forward_stages(noisy)
    >>> second.mask.shape  # [B, (real, imag), F, frames]
    torch.Size([2, 2, 321, 49])
    >>> causal = FRCRN(channels=8, fsmn_hidden=8, causal=True).eval()
    >>> causal.load_state_dict(model.state_dict())  # e.g. official weights, to fine-tune
    <All keys matched successfully>
    >>> noisy = noisy[:1, :6400]
    >>> later = noisy.clone()
    >>> later[:, 4000:] = 0  # change the future: the past of the output stays the same
    >>> torch.equal(causal(noisy)[:, : 4000 - 640], causal(later)[:, : 4000 - 640])
    True
    """

    def __init__(
        self,
        # STFT framing
        win_len=640, win_inc=320, fft_len=640, win_type="hann",
        # the two UNets
        channels=128, fsmn_hidden=128, fsmn_order=20, se_reduction=8, padding_mode="zeros", causal=False,
        # official configuration keys with one value that runs (checked here)
        complex=True, model_complexity=45, model_depth=14, log_amp=False,
    ):  # fmt: skip
        super().__init__()
        if not complex or model_depth != 14:
            raise ValueError(
                "FRCRN supports complex=True with model_depth=14, the official configuration "
                f"(got complex={complex}, model_depth={model_depth}); the reference's other "
                "depths do not run because their channel counts do not match the FSMN width"
            )
        if fft_len != 640:
            raise ValueError(f"the FRCRN UNet is built for fft_len=640 (321 bins), got fft_len={fft_len}")
        if log_amp:
            raise ValueError("log_amp=True is not part of FRCRN (the reference ignores it as well)")
        self.win_len, self.win_inc, self.fft_len = win_len, win_inc, fft_len
        self.causal = causal
        # What rebuilds this model (model cards, configuration.json); the fixed official
        # arguments (complex, model_complexity, model_depth, log_amp) are implied.
        self.config = dict(
            win_len=win_len, win_inc=win_inc, fft_len=fft_len, win_type=canonical_window_name(win_type),
            channels=channels, fsmn_hidden=fsmn_hidden, fsmn_order=fsmn_order, se_reduction=se_reduction,
            padding_mode=padding_mode, causal=causal,
        )
        self.stft = FramedSTFT(win_len, win_inc, fft_len, win_type)
        self.istft = FramedISTFT(win_len, win_inc, fft_len, win_type)
        unet_kwargs = dict(
            channels=channels,
            fsmn_hidden=fsmn_hidden,
            fsmn_order=fsmn_order,
            se_reduction=se_reduction,
            padding_mode=padding_mode,
            causal=causal,
        )
        self.stage1 = FrequencyRecurrentUNet(**unet_kwargs)
        self.stage2 = FrequencyRecurrentUNet(**unet_kwargs)
        #: Whether :meth:`forward` runs in :func:`speechbrain_ext.memory.recycled_memory` (set
        #: by fuse_for_inference: its maps of up to hundreds of MB per layer then reuse pages).
        self.recycles_memory = False

    def fuse_for_inference(self):
        """Swap in the fused inference kernels (:mod:`speechbrain_ext.nnet.fused`); returns self.

        Every convolution block becomes a :class:`~speechbrain_ext.nnet.fused.FusedComplexConvBlock`
        (batch norm folded in from the current weights and running statistics, faster routes)
        and every complex FSMN a :class:`~speechbrain_ext.nnet.fused.FusedComplexFSMN`:
        the same function, about twice as fast on CPU, and the same state dict; :meth:`forward`
        then runs in :func:`speechbrain_ext.memory.recycled_memory`. For inference:
        the model is put in eval mode and ``train()`` then refuses; fuse again after changing
        the weights. ``EnhanceFRCRN`` fuses the models it loads.

        Example
        -------
        >>> model = FRCRN(channels=8, fsmn_hidden=8).eval()
        >>> noisy, keys = torch.randn(1, 16000), sorted(model.state_dict())
        >>> with torch.no_grad():
        ...     plain = model(noisy)
        ...     fused = model.fuse_for_inference()(noisy)
        >>> torch.allclose(plain, fused, atol=1e-4), sorted(model.state_dict()) == keys
        (True, True)
        """
        self.eval()
        self.recycles_memory = True
        for unet in (self.stage1, self.stage2):
            unet.memory_format = torch.channels_last  # what the fused kernels are tuned for
        for module in list(self.modules()):
            for name, child in module.named_children():
                if isinstance(child, ComplexConvBlock):
                    module._modules[name] = child.fused()
                elif isinstance(child, ComplexFSMN):
                    module._modules[name] = FusedComplexFSMN(child)
        return self

    def forward_stages(self, noisy):
        """Run both stages; returns two :class:`FRCRNStage` (what training needs).

        Arguments
        ---------
        noisy : torch.Tensor
            ``[B, T]`` waveform at 16 kHz, ``T >= win_len``.

        Returns
        -------
        tuple of FRCRNStage
            First-stage and final (second-stage) spectra, waveforms and masks.
        """
        self._check_input(noisy)
        spec = self.stft(noisy)
        mask1, mask2 = self.estimate_masks(spec)
        return self._apply_mask(spec, mask1), self._apply_mask(spec, mask2)

    def _check_input(self, noisy):
        if noisy.dim() != 2:
            raise ValueError(f"FRCRN expects a [batch, time] waveform, got shape {tuple(noisy.shape)}")
        if noisy.shape[-1] < self.win_len:
            raise ValueError(
                f"FRCRN needs at least one frame ({self.win_len} samples), got {noisy.shape[-1]}"
            )

    def estimate_masks(self, spec, stream=None, frames=None):
        """The first-stage and final complex masks ``[B, 2, F, N]`` for a spectrum ``[B, 2, F, N]``.

        ``stream`` (causal model only) runs ``spec`` as the next frames of a stream; ``frames``
        (``[B]``) are the valid frames of padded items; see :meth:`FrequencyRecurrentUNet.forward`.
        """
        unet1_out = self.stage1(spec, stream, frames)
        mask1 = torch.tanh(unet1_out)
        # Stage 2 refines stage 1's raw output; its mask is a correction added to mask 1.
        mask2 = torch.tanh(self.stage2(unet1_out, stream, frames)) + mask1
        return mask1, mask2

    def _apply_mask(self, spec, mask, frames=None):
        est_spec = complex_multiply(spec, mask)
        if frames is None:
            wav = self.istft(est_spec)
        else:  # each item's own frames: its inverse STFT's overlap-add ends where the item ends
            wavs = [self.istft(est_spec[index : index + 1, ..., :count])[0] for index, count in enumerate(frames.tolist())]
            wav = nn.utils.rnn.pad_sequence(wavs, batch_first=True)
        return FRCRNStage(spec=est_spec, wav=wav, mask=mask)

    def forward(self, noisy, lengths=None):
        """Enhance ``noisy`` [B, T] -> [B, T] (the final stage's waveform).

        The model reconstructs samples up to the end of the last whole frame; the remaining
        ``(T - win_len) % win_inc`` samples at the end are returned as zeros. Pad the input to a
        whole number of hops (as :class:`speechbrain_ext.inference.EnhanceFRCRN` does) to get
        every sample back.

        ``lengths`` (``[B]`` samples, optional) runs a batch of items of different lengths padded
        to ``T``: each item's output is the one it gets alone, ``model(noisy[b:b+1, :lengths[b]])``,
        followed by zeros (its frames are kept apart from the padding, which the utterance-level
        gates would otherwise average in).

        Example
        -------
        >>> _ = torch.manual_seed(0)
        >>> model = FRCRN(channels=8, fsmn_hidden=8).eval()
        >>> short, long = torch.randn(1, 3000), torch.randn(1, 5000)
        >>> batch = torch.cat([torch.nn.functional.pad(short, (0, 2000)), long])
        >>> with torch.no_grad():
        ...     together = model(batch, lengths=torch.tensor([3000, 5000]))
        ...     alone = model(short)
        >>> bool((together[:1, :3000] - alone).abs().max() <= 1e-5 * alone.abs().max()), together[0, 3000:].abs().max().item()
        (True, 0.0)
        """
        self._check_input(noisy)
        frames = None if lengths is None else self._item_frames(noisy, lengths)
        with recycled_memory(self.recycles_memory):
            spec = self.stft(noisy)
            mask = self.estimate_masks(spec, frames=frames)[1]  # stage 1's waveform is not needed
            enhanced = self._apply_mask(spec, mask, frames).wav
        return F.pad(enhanced, (0, noisy.shape[-1] - enhanced.shape[-1]))

    def _item_frames(self, noisy, lengths):
        """``[B]`` frames of each item (``lengths`` in samples); None when every item fills the batch."""
        lengths = torch.as_tensor(lengths, device=noisy.device).long().view(-1)
        if len(lengths) != len(noisy) or (lengths > noisy.shape[-1]).any() or (lengths < self.win_len).any():
            raise ValueError(f"lengths must give each of the {len(noisy)} items {self.win_len} to "
                             f"{noisy.shape[-1]} samples, got {lengths.tolist()}")
        frames = (lengths - self.win_len) // self.win_inc + 1
        return None if (frames == (noisy.shape[-1] - self.win_len) // self.win_inc + 1).all() else frames


def ideal_complex_mask(stft, noisy, clean):
    """Complex ideal ratio mask ``S / Y`` (real, imag) with the official model's clamp.

    Entries above 2 are set to 1 and entries below -2 to -1 (not clipped to +-2): this is the
    target the official weights were trained against, kept as is.

    Arguments
    ---------
    stft : FramedSTFT
        The model's STFT.
    noisy, clean : torch.Tensor
        ``[B, T]`` waveforms.

    Returns
    -------
    torch.Tensor
        ``[B, 2, F, N]``.
    """
    noisy_spec, clean_spec = stft(noisy), stft(clean)
    y_re, y_im = noisy_spec[:, 0], noisy_spec[:, 1]
    s_re, s_im = clean_spec[:, 0], clean_spec[:, 1]
    power = y_re**2 + y_im**2 + 1e-8
    mask = torch.stack([(s_re * y_re + s_im * y_im) / power, (s_im * y_re - s_re * y_im) / power], dim=1)
    mask = torch.where(mask > 2, torch.ones_like(mask), mask)
    return torch.where(mask < -2, -torch.ones_like(mask), mask)


def frcrn_loss(model, stages, noisy, clean, mask_weight=1.0):
    """The official FRCRN training loss (mode 'Mix'), on the final stage.

    ``loss = -SI-SNR(wav, clean) + w * d * (MSE(mask_re, cIRM_re) + MSE(mask_im, cIRM_im))`` with
    ``d = 2F`` (642), the feature size the official code multiplies by, and ``w`` =
    ``mask_weight`` (1 in the official loss). The SI-SNR is
    :func:`speechbrain_ext.evaluation.metrics.si_snr` without removing the signals' means, as
    the official loss defines it (no difference for speech without a DC offset).

    With ``w = 1`` the mask terms dominate: for a small FRCRN (16 channels) on 2 s batches
    their gradient was ten times the SI-SNR's in norm. A smaller ``w`` trains more directly for
    the waveform (SI-SNR).

    Arguments
    ---------
    model : FRCRN
        The model (its STFT computes the target mask).
    stages : tuple of FRCRNStage
        Output of :meth:`FRCRN.forward_stages`.
    noisy, clean : torch.Tensor
        ``[B, T]`` input and target waveforms, ``T`` a whole number of frames (the enhanced
        waveform and the target must have the same length).
    mask_weight : float
        Weight of the two mask terms (the official loss: 1).

    Returns
    -------
    dict
        ``loss`` (to minimise), and its parts ``sisnr_loss``, ``amp_loss``, ``phase_loss``
        (unweighted); each a scalar averaged over the batch.

    Example
    -------
    >>> model = FRCRN(channels=8, fsmn_hidden=8)
    >>> noisy, clean = torch.randn(2, 16000), torch.randn(2, 16000)
    >>> losses = frcrn_loss(model, model.forward_stages(noisy), noisy, clean)
    >>> sorted(losses)
    ['amp_loss', 'loss', 'phase_loss', 'sisnr_loss']
    """
    final = stages[-1]
    if final.wav.shape != clean.shape:
        raise ValueError(
            f"enhanced {tuple(final.wav.shape)} and clean {tuple(clean.shape)} differ in length: "
            "use waveforms of (N - 1) * win_inc + win_len samples"
        )
    target = ideal_complex_mask(model.stft, noisy, clean)
    feature_dim = 2 * target.shape[2]
    amp_loss = F.mse_loss(final.mask[:, 0], target[:, 0]) * feature_dim
    phase_loss = F.mse_loss(final.mask[:, 1], target[:, 1]) * feature_dim
    sisnr_loss = -metrics.si_snr(final.wav, clean, zero_mean=False).mean()  # the official loss does not remove the mean
    return {
        "loss": sisnr_loss + mask_weight * (amp_loss + phase_loss),
        "sisnr_loss": sisnr_loss,
        "amp_loss": amp_loss,
        "phase_loss": phase_loss,
    }


class FRCRNStages(nn.Module):
    """Training view of an FRCRN: ``forward`` returns both stages (:meth:`FRCRN.forward_stages`).

    The loss needs the final stage's mask, which ``FRCRN.forward`` does not return, and DDP
    synchronises gradients only for what runs through the wrapped module's ``forward``. The
    enhancement Brain trains this module (``enhancer`` in the DNS recipe's yaml) with
    :class:`FRCRNLoss`; the weights are the wrapped model's.

    Example
    -------
    >>> stages = FRCRNStages(FRCRN(channels=8, fsmn_hidden=8))(torch.randn(1, 16000))
    >>> final_waveform(stages).shape
    torch.Size([1, 16000])
    """

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, noisy):
        return self.model.forward_stages(noisy)


def final_waveform(stages):
    """The enhanced waveform ``[B, T]`` of :meth:`FRCRN.forward_stages`'s output (its last stage)."""
    return stages[-1].wav


class FRCRNLoss:
    """:func:`frcrn_loss` as a training objective: ``loss(stages, noisy, clean)`` -> dict with ``loss``.

    Arguments
    ---------
    model : FRCRN
        The model trained.
    mask_weight : float
        Weight of the mask terms (1: the official loss; see :func:`frcrn_loss`).

    Example
    -------
    >>> model = FRCRN(channels=8, fsmn_hidden=8)
    >>> noisy, clean = torch.randn(2, 16000), torch.randn(2, 16000)
    >>> FRCRNLoss(model)(model.forward_stages(noisy), noisy, clean)["loss"].shape
    torch.Size([])
    """

    def __init__(self, model, mask_weight=1.0):
        self.model = model
        self.mask_weight = mask_weight

    def __call__(self, stages, noisy, clean):
        return frcrn_loss(self.model, stages, noisy, clean, mask_weight=self.mask_weight)
