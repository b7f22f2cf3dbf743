"""Inference-only fused kernels: what a trained FRCRN runs once its weights are fixed.

The layers of :mod:`speechbrain_ext.nnet.complex` compute the math one way (a complex
convolution is a Gauss product of real convolutions; batch norm and activation follow as
separate layers), which is the way they train. For inference with fixed weights the same
function can be computed faster, and :func:`speechbrain_ext.lobes.models.frcrn.FRCRN.fuse_for_inference`
swaps these modules in, explicitly and visibly:

- :class:`FusedComplexFSMN`: the complex FSMN with each output half summed in its place and,
  along frequency, long maps in pieces of frames;
- :class:`FusedComplexConvBlock`: complex (transposed) convolution, eval-mode batch norm and
  leaky ReLU in one module. The batch norm is folded into the convolution weights once, when
  fused; thin layers (FRCRN's first encoder reads one complex channel, its last decoder emits
  one) run as one dense matrix product over patches instead of three thin convolutions; the
  others run the Gauss product with the batch norm's scale folded into two of the three
  convolutions and each output half written in place; long decoder inputs go through in
  pieces of frames (:func:`in_time_pieces`) whose intermediates stay in cache.

Fused modules hold the same parameters (their state dict is the original block's) plus
precomputed, non-persistent buffers; they are for inference only (``train()`` refuses: train
the unfused model, then fuse again). The equality of the fused and the plain routes is tested.

Authors: speechbrain-ext contributors
"""

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

from speechbrain_ext.nnet.complex import ComplexConvTranspose2d, _write_halves, split_complex
from speechbrain_ext.nnet.fsmn import _memory_residual


#: Long maps go through the largest frame-local layers in pieces of about this many input
#: elements (whole frames), see :func:`in_time_pieces`.
PIECE_ELEMENTS = 1 << 21


def in_time_pieces(block, x, overlap=0):
    """``block(x)`` computed on consecutive pieces of frames (for inference).

    For a layer whose output frame ``t`` reads input frames ``t ... t + overlap`` only (a
    frequency FSMN: ``overlap = 0``; a transposed convolution with time kernel ``k`` and time
    padding ``k - 1``: ``overlap = k - 1``), the output is assembled from pieces of about
    :data:`PIECE_ELEMENTS` input elements, overlapping by ``overlap`` frames. The pieces'
    intermediate maps then stay in cache and are recycled by the allocator instead of being
    fresh pages: FRCRN's pass over a long input runs about a fifth faster. A short input runs
    whole.

    Example
    -------
    >>> x = torch.randn(1, 64, 64, 1000)  # 512 frames per piece
    >>> with torch.no_grad():
    ...     y = in_time_pieces(lambda piece: piece[..., 1:] - piece[..., :-1], x, overlap=1)
    >>> torch.equal(y, x.diff())
    True
    """
    frames = x.shape[-1]
    step = max(1, PIECE_ELEMENTS // (x.shape[0] * x.shape[1] * x.shape[2]))
    if frames <= step + overlap:
        return block(x)
    out_frames, out, buffer = frames - overlap, None, None
    for start in range(0, out_frames, step):
        stop = min(start + step, out_frames)
        window = x[..., start : stop + overlap]
        # One buffer for every whole piece: a fresh piece-sized allocation each time would
        # come back as new pages (page faults cost more than the copy itself).
        if buffer is None or buffer.shape != window.shape:
            buffer = torch.empty_like(window, memory_format=torch.channels_last)
        piece = block(buffer.copy_(window))
        if out is None:
            shape = (*piece.shape[:-1], out_frames)
            out = torch.empty(shape, dtype=piece.dtype, device=piece.device, memory_format=torch.channels_last)
        out[..., start:stop] = piece
    return out


class FusedComplexConvBlock(nn.Module):
    """Complex (transposed) convolution -> batch norm (running statistics) -> leaky ReLU, fused.

    Arguments
    ---------
    conv : ComplexConv2d or ComplexConvTranspose2d
    norm : ComplexBatchNorm2d
        Its running statistics and affine parameters are folded into the convolution.
    negative_slope : float
        Of the leaky ReLU.
    original : torch.nn.Module, optional
        The unfused block (``step`` and ``fused_weights``, for streaming, are delegated to it).

    Example
    -------
    >>> from speechbrain_ext.nnet.complex import ComplexBatchNorm2d, ComplexConv2d
    >>> conv, norm = ComplexConv2d(3, 4, (5, 2), (2, 1), (0, 1)), ComplexBatchNorm2d(4).eval()
    >>> x = torch.randn(2, 6, 21, 10)
    >>> plain = F.leaky_relu(norm(conv(x)), 0.01)
    >>> fused = FusedComplexConvBlock(conv, norm)
    >>> torch.allclose(fused(x), plain, atol=1e-5)
    True
    """

    def __init__(self, conv, norm, negative_slope=0.01, original=None):
        super().__init__()
        self.conv, self.norm = conv, norm  # the same children: the same state dict
        self.negative_slope = negative_slope
        object.__setattr__(self, "original", original)  # not a child: no second copy in the state dict
        self.transposed = isinstance(conv, ComplexConvTranspose2d)
        with torch.no_grad():
            scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
            shift = norm.bias - norm.running_mean * scale
            in_channels, out_channels, kernel_f, kernel_t = self._channels(conv)
            # Thin layers: one dense product over patches (conv) or an overlap-add (tconv).
            if self.transposed:
                self.thin = out_channels * kernel_f * kernel_t <= in_channels
            else:
                self.thin = 2 * in_channels * kernel_f * kernel_t <= 2 * out_channels
            if self.thin:
                weight, bias = conv._block_kernel(scale, shift)
                self._buffer("block_weight", weight)
                self._buffer("block_bias", bias)
                return
            # The Gauss product with the batch norm folded in: real = s_re (k1 - k3) + t_re and
            # imag = s_im (k1 + k2) + t_im; the scales, shifts and the minus sign go into k2 and
            # k3, leaving one multiply-add per half for k1 (whose kernel is W_re itself).
            w_re, w_im = conv.weight_real, conv.weight_imag
            scale_re, scale_im = scale.chunk(2)
            shift_re, shift_im = shift.chunk(2)
            per_out = [1] * w_re.dim()
            per_out[conv.out_axis] = -1
            bias_im = 0 if conv.bias_imag is None else conv.bias_imag
            self._buffer("k23_weight", torch.cat([(w_im - w_re) * scale_im.view(per_out),
                                                  (w_re + w_im) * -scale_re.view(per_out)]))
            self._buffer("k23_bias", torch.cat([bias_im * scale_im + shift_im, shift_re - bias_im * scale_re]))
            self._buffer("scale_re", scale_re.view(1, -1, 1, 1))
            self._buffer("scale_im", scale_im.view(1, -1, 1, 1))

    @staticmethod
    def _channels(conv):
        """``(in, out, kernel_f, kernel_t)`` in complex channels, for either kind of layer."""
        if isinstance(conv, ComplexConvTranspose2d):
            return tuple(conv.weight_real.shape)
        out_channels, in_channels, kernel_f, kernel_t = conv.weight_real.shape
        return in_channels, out_channels, kernel_f, kernel_t

    def _buffer(self, name, tensor):
        self.register_buffer(name, None if tensor is None else tensor.detach().clone(), persistent=False)

    def train(self, mode=True):
        if mode:
            raise RuntimeError("a fused block is for inference only: train the unfused model, then fuse it again")
        return super().train(False)

    def forward(self, x):
        """``x`` [B, 2*in, F, T] -> [B, 2*out, F', T'], as the unfused block in eval mode."""
        if self.transposed:
            y = self._fold(x) if self.thin else self._transposed(x)
        else:
            y = self._unfold(x) if self.thin else self._convolution(x)
        return F.leaky_relu(y, negative_slope=self.negative_slope, inplace=True)

    # ---- convolutions ----------------------------------------------------------------------

    def _gauss(self, x, conv):
        """The complex product with the folded batch norm; each half written in its place."""
        x_re, x_im = split_complex(x)
        k1 = conv(x_re + x_im, self.conv.weight_real, self.conv.bias_real, groups=1)
        k2, k3 = split_complex(conv(x, self.k23_weight, self.k23_bias, groups=2))
        halves = [functools.partial(torch.addcmul, k, k1, scale) for k, scale in ((k3, self.scale_re),
                                                                                   (k2, self.scale_im))]
        return _write_halves(halves, [k1, k2, k3])

    def _convolution(self, x):
        conv = self.conv
        if conv.causal:
            # Zero-pad both ends of time and drop the outputs that read the right padding: the
            # same as padding the left end only, without copying the input.
            padding = (conv.padding[0], conv.context_frames)

            def causal_conv(inputs, weight, bias, groups):
                return F.conv2d(inputs, weight, bias, conv.stride, padding, groups=groups)

            return self._gauss(x, causal_conv)[..., : x.shape[-1]]
        padding = conv.padding
        if conv.padding_mode != "zeros" and any(padding):
            pad_f, pad_t = padding
            x = F.pad(x, (pad_t, pad_t, pad_f, pad_f), mode=conv.padding_mode)
            padding = (0, 0)

        def plain_conv(inputs, weight, bias, groups):
            return F.conv2d(inputs, weight, bias, conv.stride, padding, groups=groups)

        return self._gauss(x, plain_conv)

    def _unfold(self, x):
        """The convolution as one matrix product of the input's patches with the block kernel."""
        conv = self.conv
        pad_f, pad_t = conv.padding
        time_pad = (conv.context_frames, 0) if conv.causal else (pad_t, pad_t)
        if any(time_pad) or pad_f:
            mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
            x = F.pad(x, (*time_pad, pad_f, pad_f), mode=mode)
        batch, out_bins = x.shape[0], (x.shape[2] - conv.kernel_size[0]) // conv.stride[0] + 1
        out_frames = (x.shape[3] - conv.kernel_size[1]) // conv.stride[1] + 1
        patches = F.unfold(x, conv.kernel_size, stride=conv.stride)  # [B, 2*in * kf * kt, F' * T']
        rows = patches.transpose(1, 2) @ self.block_weight.flatten(1).t()  # [B, F' * T', 2*out]
        if self.block_bias is not None:
            rows = rows + self.block_bias
        return rows.view(batch, out_bins, out_frames, -1).permute(0, 3, 1, 2)  # a channels-last map

    # ---- transposed convolutions -----------------------------------------------------------

    def _transposed(self, x):
        conv = self.conv
        kernel_t = conv.kernel_size[1]

        def tconv(inputs, weight, bias, groups):
            return F.conv_transpose2d(inputs, weight, bias, conv.stride, conv.padding, groups=groups)

        if conv.causal:
            return self._gauss(x, tconv)[..., : x.shape[-1]]
        if conv.stride[1] == 1 and conv.padding[1] == kernel_t - 1:
            # Output frame t reads input frames t ... t + kernel_t - 1 (the reference's
            # look-ahead), so a long input can run in pieces (FRCRN's decoders: ~25 % faster).
            return in_time_pieces(lambda piece: self._gauss(piece, tconv), x, overlap=kernel_t - 1)
        return self._gauss(x, tconv)

    def _fold(self, x):
        """The transposed convolution as a matrix product followed by an overlap-add."""
        conv = self.conv
        batch, channels, bins, frames = x.shape
        rows = x.permute(0, 2, 3, 1).reshape(batch, bins * frames, channels)  # a view if channels-last
        contributions = rows @ self.block_weight.flatten(1)  # [B, F * T, 2*out * kf * kt]
        (kernel_f, kernel_t), (stride_f, stride_t) = conv.kernel_size, conv.stride
        time_padding = 0 if conv.causal else conv.padding[1]
        size = (
            (bins - 1) * stride_f + kernel_f - 2 * conv.padding[0],
            (frames - 1) * stride_t + kernel_t - 2 * time_padding,
        )
        out = F.fold(contributions.transpose(1, 2), size, conv.kernel_size, stride=conv.stride,
                     padding=(conv.padding[0], time_padding))
        if conv.causal:  # drop the frames that only exist because of the kernel's overhang
            out = out[..., :frames]
        return out if self.block_bias is None else out + self.block_bias[:, None, None]

    # ---- streaming: the unfused block's -----------------------------------------------------

    def fused_weights(self):
        return self.original.fused_weights()

    def step(self, x, state=None, weights=None):
        return self.original.step(x, state, weights)


class FusedComplexFSMN(nn.Module):
    """A :class:`~speechbrain_ext.nnet.fsmn.ComplexFSMN` for inference: the output halves summed
    in place and, along frequency (where every frame is independent), long maps in pieces.

    Arguments
    ---------
    fsmn : ComplexFSMN
        Its ``real`` and ``imag`` blocks are shared (the same state dict).

    Example
    -------
    >>> from speechbrain_ext.nnet.fsmn import ComplexFSMN
    >>> fsmn = ComplexFSMN(16, 32, memory_order=5, axis="freq")
    >>> x = torch.randn(2, 32, 40, 7)
    >>> with torch.no_grad():
    ...     torch.allclose(FusedComplexFSMN(fsmn)(x), fsmn(x), atol=1e-6)
    True
    """

    def __init__(self, fsmn):
        super().__init__()
        self.real, self.imag = fsmn.real, fsmn.imag
        object.__setattr__(self, "original", fsmn)  # for streaming; not a second copy in the state dict

    def train(self, mode=True):
        if mode:
            raise RuntimeError("a fused block is for inference only: train the unfused model, then fuse it again")
        return super().train(False)

    def _block(self, x):
        return self.original._combine(x, _memory_residual(x, [self.real, self.imag], parts=2, matrix_filter=False))

    def forward(self, x):
        """``x`` [B, 2C, F, T] -> [B, 2C, F, T], as the unfused block."""
        return in_time_pieces(self._block, x) if self.real.axis == "freq" else self._block(x)

    def fused_weights(self):
        return self.original.fused_weights()

    def step(self, x, state=None, weights=None):
        return self.original.step(x, state, weights)
