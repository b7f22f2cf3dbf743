"""Complex-valued layers on real tensors.

A complex feature map with ``C`` channels is stored as one real tensor ``[B, 2C, F, T]``:
the ``C`` real channels first, then the ``C`` imaginary channels. Keeping both halves in the
channel axis means batch norm is an ordinary ``BatchNorm2d``, a complex convolution is a few
real ones, and no operation needs a trailing axis of size 2, which would make every
slice non-contiguous. The layers work in either memory format (FRCRN trains in the default
one, whose convolution backward is faster on CPU, and infers channels-last).

Causal layers and streaming
---------------------------
With ``causal=True`` the (transposed) convolutions and the squeeze-excitation use only the
current and past frames (time is the last axis). Such layers can then run a stream step by
step, for inference::

    weights = layer.fused_weights()  # once: the weights are fixed in eval
    y, state = layer.step(x, state, weights)

``x`` holds the new frames, ``state`` what the layer keeps of earlier frames (``None`` at the
start of a stream, meaning the silence the offline forward pads with). Feeding a signal step by
step gives what :meth:`forward` gives on the whole signal (up to float rounding: ``step``
evaluates the same function in a form suited to a frame at a time: one real convolution per
complex one, with the past frames stacked along channels).

Authors: speechbrain-ext contributors
"""

import functools
from typing import NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


def split_complex(x):
    """Return the real and imaginary halves of ``x`` [B, 2C, ...] as two views [B, C, ...].

    Example
    -------
    >>> real, imag = split_complex(torch.arange(4.0).view(1, 4, 1, 1))
    >>> real.flatten().tolist(), imag.flatten().tolist()
    ([0.0, 1.0], [2.0, 3.0])
    """
    return x.chunk(2, dim=1)


def complex_cat(tensors):
    """Concatenate complex maps along channels, keeping the real-then-imaginary layout.

    Arguments
    ---------
    tensors : sequence of torch.Tensor
        Each ``[B, 2C_i, F, T]``.

    Returns
    -------
    torch.Tensor
        ``[B, 2 * sum(C_i), F, T]``: all real channels, then all imaginary channels.

    Example
    -------
    >>> a, b = torch.zeros(1, 2, 3, 4), torch.ones(1, 4, 3, 4)
    >>> complex_cat([a, b]).shape
    torch.Size([1, 6, 3, 4])
    """
    halves = [split_complex(x) for x in tensors]
    return torch.cat([h[0] for h in halves] + [h[1] for h in halves], dim=1)


def complex_multiply(x, y):
    """Complex product of two maps in the real-then-imaginary channel layout.

    Example
    -------
    >>> x = torch.tensor([1.0, 2.0]).view(1, 2, 1, 1)  # 1 + 2j
    >>> y = torch.tensor([3.0, -1.0]).view(1, 2, 1, 1)  # 3 - 1j
    >>> complex_multiply(x, y).flatten().tolist()  # (1 + 2j)(3 - 1j) = 5 + 5j
    [5.0, 5.0]
    """
    x_re, x_im = split_complex(x)
    y_re, y_im = split_complex(y)
    return torch.cat([x_re * y_re - x_im * y_im, x_re * y_im + x_im * y_re], dim=1)


def join_halves(real_parts, imag_parts, like=None):
    """``cat([sum(real_parts), sum(imag_parts)])`` along channels, with signs.

    Each part is a ``(sign, tensor)`` pair, all tensors ``[B, C, ...]`` of one shape. Outside
    autograd, each half is accumulated directly in its place in the result, which takes the
    memory format of ``like`` (default: the first tensor): no temporary sums and no
    concatenation copy, which matter on large maps (a pass over one costs about as much as a
    small convolution).

    Example
    -------
    >>> a, b = torch.ones(1, 2, 3, 3), torch.full((1, 2, 3, 3), 2.0)
    >>> out = join_halves([(1, a), (-1, b)], [(1, a), (1, b)])
    >>> out.shape, out[0, :, 0, 0].tolist()
    (torch.Size([1, 4, 3, 3]), [-1.0, -1.0, 3.0, 3.0])
    """
    tensors = [t for _, t in real_parts + imag_parts]
    halves = [functools.partial(_signed_sum, parts) for parts in (real_parts, imag_parts)]
    return _write_halves(halves, tensors, like)


def _write_halves(halves, inputs, like=None):
    """``cat([half() for half in halves])`` along channels, each half written in its place.

    ``halves`` are two functions taking ``out=`` (``None``: a new tensor). Outside autograd
    (which cannot track ``out=``) they write straight into one buffer, in the memory format of
    ``like`` (default: the first of ``inputs``, which the halves read): no concatenation copy.
    """
    if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
        return torch.cat([half(out=None) for half in halves], dim=1)
    first = inputs[0]
    shape = (first.shape[0], 2 * first.shape[1], *first.shape[2:])
    like = first if like is None else like
    channels_last = like.dim() == 4 and like.is_contiguous(memory_format=torch.channels_last)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.empty(shape, dtype=first.dtype, device=first.device, memory_format=layout)
    for index, half in enumerate(halves):
        half(out=out.narrow(1, index * first.shape[1], first.shape[1]))
    return out


def _signed_sum(parts, out=None):
    """``sum(sign * tensor)`` over ``(sign, tensor)`` pairs (the first sign must be +1), into ``out``."""
    (_, first), (sign, second) = parts[:2]
    total = (torch.add if sign > 0 else torch.sub)(first, second, out=out)
    for sign, tensor in parts[2:]:
        (total.add_ if sign > 0 else total.sub_)(tensor)
    return total


class RealKernel(NamedTuple):
    """A complex (transposed) convolution written as one real one, the form ``step`` runs.

    weight : the block kernel ``[[W_re, -W_im], [W_im, W_re]]`` (acting on ``[x_re; x_im]``
        channels), with its time taps moved into the input channels: input channel block ``k``
        (oldest first) is the frame ``kernel_t - 1 - k`` frames back, as
        :func:`stack_past_frames` lays them out, and the time kernel is 1.
    bias : ``[b_re - b_im; b_re + b_im]``, or None.
    """

    weight: torch.Tensor
    bias: Optional[torch.Tensor]


def causal_context(kernel_size, stride, padding, causal, padding_mode="zeros"):
    """Past frames a (transposed) convolution needs per step: ``kernel_t - 1`` if causal, else 0.

    A causal layer provides its own past context (zeros at the start), so its time padding
    must be 0; the time stride must be 1 and the padding zeros (other modes read the future).

    Example
    -------
    >>> causal_context((5, 2), (2, 1), (0, 0), causal=True)
    1
    >>> causal_context((5, 2), (2, 1), (0, 1), causal=True)
    Traceback (most recent call last):
    ...
    ValueError: a causal convolution needs time stride 1, time padding 0 and zero padding ...
    """
    if not causal:
        return 0
    if stride[1] != 1 or padding[1] != 0 or padding_mode != "zeros":
        raise ValueError(
            "a causal convolution needs time stride 1, time padding 0 and zero padding (it pads the "
            f"past itself), got stride {tuple(stride)}, padding {tuple(padding)}, padding_mode {padding_mode!r}"
        )
    return kernel_size[1] - 1


def with_past_frames(x, state, context_frames):
    """Prepend the ``context_frames`` frames before ``x`` (zeros at stream start) along time.

    Returns ``(frames, new_state)``; ``new_state`` is the last ``context_frames`` frames.

    Example
    -------
    >>> frames, state = with_past_frames(torch.ones(1, 1, 1, 2), None, 1)
    >>> frames.flatten().tolist(), state.shape
    ([0.0, 1.0, 1.0], torch.Size([1, 1, 1, 1]))
    """
    if context_frames == 0:
        return x, None
    if state is None:
        state = torch.zeros_like(x[..., :1]).expand(*x.shape[:-1], context_frames)
    frames = torch.cat([state, x], dim=-1)
    # A copy, so the state does not keep the whole concatenation alive.
    return frames, frames[..., -context_frames:].clone()


def stack_past_frames(x, state, context_frames):
    """Stack every new frame with its ``context_frames`` predecessors along channels.

    Arguments
    ---------
    x : torch.Tensor
        ``[B, C, F, T]`` new frames.
    state : torch.Tensor or None
        ``[B, C, F, context_frames]``, the frames before ``x`` (``None``: zeros).
    context_frames : int

    Returns
    -------
    tuple
        ``[B, (context_frames + 1) * C, F, T]`` (oldest frame first) and the new state.

    Example
    -------
    >>> x = torch.arange(3.0).view(1, 1, 1, 3)
    >>> stacked, state = stack_past_frames(x, None, 1)
    >>> stacked[0, :, 0].tolist(), state.flatten().tolist()  # (previous, current) per frame
    ([[0.0, 0.0, 1.0], [0.0, 1.0, 2.0]], [2.0])
    """
    if context_frames == 0:
        return x, None
    length = x.shape[-1]
    if length == 1 and context_frames == 1 and state is not None:  # streaming a frame at a time
        return torch.cat([state, x], dim=1), x.clone()
    frames, state = with_past_frames(x, state, context_frames)
    return torch.cat([frames[..., k : k + length] for k in range(context_frames + 1)], dim=1), state


class _ComplexConvBase(nn.Module):
    """Holds the real and imaginary kernels of a complex (transposed) convolution.

    ``W = W_re + j W_im`` applied to ``x = x_re + j x_im`` is
    ``(W_re x_re - W_im x_im) + j (W_re x_im + W_im x_re)``. The two kernels are separate
    parameters (the natural parameterisation, and the one official checkpoints use). The
    product is evaluated with Gauss's trick, three real convolutions instead of four:
    ``k1 = W_re (x_re + x_im)``, ``k2 = (W_im - W_re) x_re``, ``k3 = (W_re + W_im) x_im``,
    ``real = k1 - k3``, ``imag = k1 + k2`` (a quarter fewer operations, forward and backward).
    A layer with one complex output channel instead runs one real convolution of
    ``[x_re; x_im]`` with the block kernel ``[[W_re, -W_im], [W_im, W_re]]``
    (:meth:`_block_kernel`): three one-channel convolutions would cost more than the four
    products in one call. Each real convolution of the reference carries its own bias, so the
    complex output gets ``b_re - b_im`` (real) and ``b_re + b_im`` (imaginary).

    For streaming ``step`` runs the same block kernel, rearranged by :meth:`fused_weights`.
    """

    #: The kernel axis of output channels: 0 for a convolution ([out, in, ...]), 1 for a
    #: transposed one ([in, out, ...]).
    out_axis = 0

    def __init__(self, weight_shape, out_channels, bias):
        super().__init__()
        self.weight_real = nn.Parameter(torch.empty(weight_shape))
        self.weight_imag = nn.Parameter(torch.empty(weight_shape))
        if bias:
            self.bias_real = nn.Parameter(torch.empty(out_channels))
            self.bias_imag = nn.Parameter(torch.empty(out_channels))
        else:
            self.register_parameter("bias_real", None)
            self.register_parameter("bias_imag", None)
        self.reset_parameters()

    def reset_parameters(self):
        """Initialise both kernels like ``torch.nn.Conv2d`` does for one kernel."""
        for weight, bias in ((self.weight_real, self.bias_real), (self.weight_imag, self.bias_imag)):
            nn.init.kaiming_uniform_(weight, a=5**0.5)
            if bias is not None:
                bound = 1 / weight[0].numel() ** 0.5  # torch's fan-in for conv and tconv kernels
                nn.init.uniform_(bias, -bound, bound)

    def _block_kernel(self, out_scale=None, out_shift=None):
        """``(weight, bias)`` of the real convolution on ``[x_re; x_im]`` equal to this layer,
        followed by ``y * out_scale + out_shift`` per real output channel when given."""
        w_re, w_im = self.weight_real, self.weight_imag
        # Rows are output channels of a convolution kernel, input channels of a transposed one.
        out, inp = self.out_axis, 1 - self.out_axis
        real_out = torch.cat([w_re, -w_im], dim=inp)  # out_re = W_re x_re - W_im x_im
        imag_out = torch.cat([w_im, w_re], dim=inp)  # out_im = W_im x_re + W_re x_im
        weight = torch.cat([real_out, imag_out], dim=out)
        bias = None
        if self.bias_real is not None:
            bias = torch.cat([self.bias_real - self.bias_imag, self.bias_real + self.bias_imag])
        if out_scale is not None:
            shape = [1] * weight.dim()
            shape[out] = -1
            weight = weight * out_scale.view(shape)
            bias = out_shift if bias is None else bias * out_scale + out_shift
        return weight, bias

    def _complex_product(self, x, conv):
        """Apply ``conv(input, weight, bias)`` as this complex convolution to ``x``."""
        w_re, w_im = self.weight_real, self.weight_imag
        if w_re.shape[self.out_axis] == 1:
            return conv(x, *self._block_kernel())
        x_re, x_im = split_complex(x)
        k1 = conv(x_re + x_im, w_re, self.bias_real)
        k2 = conv(x_re, w_im - w_re, self.bias_imag)
        k3 = conv(x_im, w_re + w_im, self.bias_imag)
        return torch.cat([k1 - k3, k1 + k2], dim=1)

    def _check_steppable(self):
        if not self.causal and (self.kernel_size[1] > 1 or self.padding[1]):
            raise RuntimeError("only a causal convolution (or one with a 1-frame kernel) can run step by step")


class ComplexConv2d(_ComplexConvBase):
    """2-D complex convolution on real-then-imaginary channel maps.

    Arguments
    ---------
    in_channels : int
        Complex input channels (the tensor has twice as many real channels).
    out_channels : int
        Complex output channels.
    kernel_size, stride, padding : int or tuple
        As in ``torch.nn.Conv2d`` (padding is applied to both halves alike).
    padding_mode : str
        ``'zeros'``, ``'reflect'``, ``'replicate'`` or ``'circular'``.
    bias : bool
        Whether the real and imaginary kernels each have a bias.
    causal : bool
        Convolve causally along time (the last axis): output frame ``t`` reads input frames
        ``t - kernel_t + 1 ... t``, the missing past being zeros, so there are as many output
        frames as input frames. Needs time stride 1, time padding 0 and ``'zeros'`` padding.

    Example
    -------
    >>> conv = ComplexConv2d(3, 4, kernel_size=(5, 2), stride=(2, 1), padding=(0, 1))
    >>> conv(torch.randn(2, 6, 21, 10)).shape  # [B, 2*in, F, T] -> [B, 2*out, F', T']
    torch.Size([2, 8, 9, 11])
    >>> causal = ComplexConv2d(3, 4, kernel_size=(5, 2), stride=(2, 1), causal=True)
    >>> x = torch.randn(2, 6, 21, 10)
    >>> causal(x).shape
    torch.Size([2, 8, 9, 10])
    >>> # Frame by frame, carrying the previous input frame as state, gives the same output.
    >>> weights, state, frames = causal.fused_weights(), None, []
    >>> for frame in x.split(1, dim=-1):
    ...     y, state = causal.step(frame, state, weights)
    ...     frames.append(y)
    >>> torch.allclose(torch.cat(frames, dim=-1), causal(x), atol=1e-5)
    True
    """

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        stride=1,
        padding=0,
        padding_mode="zeros",
        bias=True,
        causal=False,
    ):
        self.kernel_size = nn.modules.utils._pair(kernel_size)
        self.stride = nn.modules.utils._pair(stride)
        self.padding = nn.modules.utils._pair(padding)
        self.padding_mode = padding_mode
        self.causal = causal
        #: Past input frames each step needs besides the new ones.
        self.context_frames = causal_context(self.kernel_size, self.stride, self.padding, causal, padding_mode)
        super().__init__((out_channels, in_channels, *self.kernel_size), out_channels, bias)

    def forward(self, x):
        """Convolve ``x`` [B, 2*in, F, T] into [B, 2*out, F', T'] (``T' = T`` if causal)."""
        pad_f, pad_t = self.padding
        if self.causal:  # the missing past is zeros: pad the left end of time only
            x, padding = F.pad(x, (self.context_frames, 0)), (pad_f, 0)
        elif self.padding_mode != "zeros" and any(self.padding):
            x, padding = F.pad(x, (pad_t, pad_t, pad_f, pad_f), mode=self.padding_mode), (0, 0)
        else:
            padding = self.padding
        return self._complex_product(x, lambda x, weight, bias: F.conv2d(x, weight, bias, self.stride, padding))

    def fused_weights(self, out_scale=None, out_shift=None):
        """The :class:`RealKernel` that :meth:`step` convolves with (a function of the parameters).

        ``out_scale`` and ``out_shift`` (``[2 * out]``) fold a per-channel affine map of the
        output into it, such as an eval-mode batch norm.
        """
        weight, bias = self._block_kernel(out_scale, out_shift)
        # [out, in, kf, kt] -> [out, kt * in, kf, 1]: tap k reads the frame kt - 1 - k back,
        # which is input block k of the stacked frames.
        out_channels, in_channels, kernel_f, kernel_t = weight.shape
        weight = weight.permute(0, 3, 1, 2).reshape(out_channels, kernel_t * in_channels, kernel_f, 1)
        # Channels-last, like the maps: otherwise every call reorders the kernel first.
        return RealKernel(weight.contiguous(memory_format=torch.channels_last), bias)

    def step(self, x, state=None, weights=None):
        """Convolve the new frames of a stream (a causal layer, or one with a 1-frame kernel).

        Arguments
        ---------
        x : torch.Tensor
            ``[B, 2*in, F, T]``, the frames after those the ``state`` remembers.
        state : torch.Tensor or None
            The last ``context_frames`` input frames before ``x`` (``None``: start of stream).
        weights : RealKernel, optional
            :meth:`fused_weights`, precomputed (computed here when ``None``).

        Returns
        -------
        tuple
            ``[B, 2*out, F', T]``, the frames of :meth:`forward` on the whole stream that
            belong to ``x``, and the new state.
        """
        self._check_steppable()
        if self.padding_mode != "zeros" and self.padding[0]:
            raise RuntimeError(f"step() supports zero padding only, got padding_mode {self.padding_mode!r}")
        weights = self.fused_weights() if weights is None else weights
        stacked, state = stack_past_frames(x, state, self.context_frames)
        return F.conv2d(stacked, weights.weight, weights.bias, self.stride, (self.padding[0], 0)), state


class ComplexConvTranspose2d(_ComplexConvBase):
    """2-D complex transposed convolution on real-then-imaginary channel maps.

    Arguments
    ---------
    in_channels : int
        Complex input channels.
    out_channels : int
        Complex output channels.
    kernel_size, stride, padding : int or tuple
        As in ``torch.nn.ConvTranspose2d``.
    bias : bool
        Whether the real and imaginary kernels each have a bias.
    causal : bool
        Causal along time: output frame ``t`` is ``sum_k W[..., k] x[t - k]`` (the reference's
        time padding 1 instead gives ``W[..., 0] x[t + 1] + W[..., 1] x[t]``, a frame of
        look-ahead), with as many output frames as input frames. Needs time stride 1 and time
        padding 0.

    Example
    -------
    >>> tconv = ComplexConvTranspose2d(4, 3, kernel_size=(5, 2), stride=(2, 1), padding=(0, 1))
    >>> tconv(torch.randn(2, 8, 9, 11)).shape
    torch.Size([2, 6, 21, 10])
    >>> causal = ComplexConvTranspose2d(4, 3, kernel_size=(5, 2), stride=(2, 1), causal=True)
    >>> x = torch.randn(2, 8, 9, 11)
    >>> y = causal(x)
    >>> y.shape
    torch.Size([2, 6, 21, 11])
    >>> # The causal output is the look-ahead output of the same weights, one frame later.
    >>> tconv.load_state_dict(causal.state_dict())
    <All keys matched successfully>
    >>> torch.allclose(y[..., 1:], tconv(x), atol=1e-6)
    True
    >>> # Streamed in two pieces:
    >>> first, state = causal.step(x[..., :4])
    >>> rest, state = causal.step(x[..., 4:], state)
    >>> torch.allclose(torch.cat([first, rest], dim=-1), y, atol=1e-5)
    True
    """

    out_axis = 1

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True, causal=False):
        self.kernel_size = nn.modules.utils._pair(kernel_size)
        self.stride = nn.modules.utils._pair(stride)
        self.padding = nn.modules.utils._pair(padding)
        self.causal = causal
        #: Past input frames each step needs besides the new ones.
        self.context_frames = causal_context(self.kernel_size, self.stride, self.padding, causal)
        super().__init__((in_channels, out_channels, *self.kernel_size), out_channels, bias)

    def forward(self, x):
        """Upsample ``x`` [B, 2*in, F, T] into [B, 2*out, F', T'] (``T' = T`` if causal)."""
        y = self._complex_product(
            x, lambda x, weight, bias: F.conv_transpose2d(x, weight, bias, self.stride, self.padding)
        )
        # Causal: unpadded in time, output frame t receives x[t - k] through tap k; the last
        # kernel_t - 1 frames only exist because of the kernel's overhang past the end.
        return y[..., : x.shape[-1]] if self.causal else y

    def fused_weights(self, out_scale=None, out_shift=None):
        """The kernel :meth:`step` runs: a :class:`RealKernel` for an ordinary convolution.

        A transposed convolution with frequency stride ``s`` is ``s`` ordinary convolutions,
        one per output phase (output bin ``s * j + r`` only receives taps ``r, r + s, ...``),
        and ordinary convolutions run much faster than transposed ones on a frame or two. The
        weight is ``[s * 2 * out, kernel_t * 2 * in, ceil(kernel_f / s), 1]``, phase-major.
        ``out_scale`` and ``out_shift`` fold a per-channel affine map of the output into it.
        """
        weight, bias = self._block_kernel(out_scale, out_shift)
        in_channels, out_channels, kernel_f, kernel_t = weight.shape
        stride, taps = self.stride[0], -(-kernel_f // self.stride[0])
        # Time: tap k weighs the frame k back, which is input block kt - 1 - k of the stacked
        # frames (oldest first). Frequency: tap s * m + r of phase r lands m bins after its
        # input, so as a correlation over taps - 1 bins of left context it is read reversed.
        weight = weight.flip(-1).permute(3, 0, 1, 2).reshape(kernel_t * in_channels, out_channels, kernel_f)
        weight = F.pad(weight, (0, stride * taps - kernel_f)).view(-1, out_channels, taps, stride)
        weight = weight.flip(2).permute(3, 1, 0, 2).reshape(stride * out_channels, -1, taps, 1)
        weight = weight.contiguous(memory_format=torch.channels_last)  # as the maps (no reorder per call)
        return RealKernel(weight, None if bias is None else bias.repeat(stride))

    def step(self, x, state=None, weights=None):
        """Upsample the new frames of a stream (causal layers only).

        Arguments and returns as :meth:`ComplexConv2d.step`.
        """
        self._check_steppable()
        weights = self.fused_weights() if weights is None else weights
        stacked, state = stack_past_frames(x, state, self.context_frames)
        stride, taps = self.stride[0], weights.weight.shape[2]
        phases = F.conv2d(stacked, weights.weight, weights.bias, padding=(taps - 1, 0))  # [B, s*out, F', T]
        # Interleave the phases along frequency (a view for channels-last maps) and drop the
        # padding: output bin s * j + r is bin j of phase r.
        batch, channels, bins, frames = phases.shape
        out_channels = channels // stride
        upsampled = (
            phases.permute(0, 3, 2, 1)  # [B, T, F', (phase, channel)]
            .reshape(batch, frames, bins * stride, out_channels)
            .permute(0, 3, 2, 1)
        )
        length = (x.shape[2] - 1) * stride + self.kernel_size[0] - 2 * self.padding[0]
        upsampled = upsampled[:, :, self.padding[0] : self.padding[0] + length]
        # A dense channels-last copy: with odd strides (even on size-1 axes) later layers
        # would fall back to the default layout and to slower kernels.
        return upsampled.clone(memory_format=torch.channels_last), state


class ComplexBatchNorm2d(nn.BatchNorm2d):
    """Batch norm applied to the real and imaginary parts independently.

    This is "naive" complex batch norm (two real batch norms), not the whitening variant of
    Trabelsi et al.: it is what FRCRN was trained with. Statistics of the real channels are the
    first ``num_features`` entries, those of the imaginary channels the last ``num_features``.

    Arguments
    ---------
    num_features : int
        Complex channels.
    eps, momentum : float
        As in ``torch.nn.BatchNorm2d``.

    Example
    -------
    >>> norm = ComplexBatchNorm2d(4)
    >>> norm(torch.randn(2, 8, 5, 3)).shape
    torch.Size([2, 8, 5, 3])
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        super().__init__(2 * num_features, eps=eps, momentum=momentum)


def keep_frames(x, frames):
    """``x`` [B, ..., T] with each item's frames from ``frames[b]`` on set to zero.

    What a batch of padded items needs before a layer that looks across frames: the layer then
    sees each item's frames followed by zeros, as it does when the item runs alone.

    Example
    -------
    >>> keep_frames(torch.ones(2, 1, 4), torch.tensor([4, 2]))
    tensor([[[1., 1., 1., 1.]],
    <BLANKLINE>
            [[1., 1., 0., 0.]]])
    """
    valid = torch.arange(x.shape[-1], device=x.device) < frames.to(x.device)[:, None]
    return x * valid.view(len(x), *([1] * (x.dim() - 2)), x.shape[-1]).to(x.dtype)


class ComplexSqueezeExcitation(nn.Module):
    """Complex squeeze-and-excitation: channel gates from utterance-level averages.

    The real and imaginary parts are averaged over frequency and time, passed through two
    small gating networks combined like a complex product, and the resulting real gate scales
    the real part and the imaginary gate the imaginary part (an element-wise, not a complex,
    product, as FRCRN does).

    Note that the average covers the whole input: every output frame depends on every input
    frame, so this layer is not causal and padding the input changes the result. With
    ``causal=True`` frame ``t`` is instead gated from the running mean of frames ``0 ... t``
    (each frame averaged over frequency first): the same parameters, and a stream keeps only
    the running sum and the frame count.

    Arguments
    ---------
    channels : int
        Complex channels.
    reduction : int
        Bottleneck factor of the gating networks.
    causal : bool
        Pool over the past and current frames only (a cumulative mean over time).

    Example
    -------
    >>> se = ComplexSqueezeExcitation(16, reduction=8)
    >>> se(torch.randn(2, 32, 7, 5)).shape
    torch.Size([2, 32, 7, 5])
    >>> causal = ComplexSqueezeExcitation(16, reduction=8, causal=True)
    >>> x = torch.randn(2, 32, 7, 5)
    >>> first, state = causal.step(x[..., :2])  # the first two frames of a stream
    >>> rest, state = causal.step(x[..., 2:], state)
    >>> torch.allclose(torch.cat([first, rest], dim=-1), causal(x), atol=1e-6), state[1]
    (True, 5)
    """

    def __init__(self, channels, reduction=8, causal=False):
        super().__init__()
        self.causal = causal

        def gate():
            return nn.Sequential(
                nn.Linear(channels, channels // reduction),
                nn.ReLU(),
                nn.Linear(channels // reduction, channels),
                nn.Sigmoid(),
            )

        self.gate_real = gate()
        self.gate_imag = gate()

    def forward(self, x, frames=None):
        """Gate ``x`` [B, 2C, F, T]; returns the same shape.

        ``frames`` (``[B]``, optional): each item's valid frames, when shorter items of a batch
        are padded; the average then covers those only (a causal gate needs none: its running
        mean never reaches later frames).
        """
        if self.causal:  # the whole signal is one step of a stream that starts with it
            return self.step(x)[0]
        if frames is None:
            mean = x.mean(dim=(2, 3))
        else:
            mean = (keep_frames(x.sum(dim=2), frames).sum(dim=-1) / (x.shape[2] * frames)[:, None]).to(x.dtype)
        mean_re, mean_im = split_complex(mean)
        scale_re = self.gate_real(mean_re) - self.gate_imag(mean_im)
        scale_im = self.gate_real(mean_im) + self.gate_imag(mean_re)
        return x * torch.cat([scale_re, scale_im], dim=1)[:, :, None, None]

    def fused_weights(self):
        """Both gating networks as one: stacked first layers, block-diagonal second layers.

        Returns ``(hidden_weight [2h, C], hidden_bias, out_weight [2C, 2h], out_bias, signs)``,
        ``signs`` being the ``[[-1], [1]]`` that combines the gates into a complex product.
        """
        real_in, real_out = self.gate_real[0], self.gate_real[2]
        imag_in, imag_out = self.gate_imag[0], self.gate_imag[2]
        return (
            torch.cat([real_in.weight, imag_in.weight]),
            torch.cat([real_in.bias, imag_in.bias]),
            torch.block_diag(real_out.weight, imag_out.weight),
            torch.cat([real_out.bias, imag_out.bias]),
            torch.tensor([[-1.0], [1.0]], dtype=real_in.weight.dtype, device=real_in.weight.device),
        )

    def step(self, x, state=None, weights=None):
        """Gate the new frames of a stream by the running mean (causal layers only).

        Arguments
        ---------
        x : torch.Tensor
            ``[B, 2C, F, T]``.
        state : tuple or None
            ``(sum, count)``: the float64 sum ``[B, 2C, 1]`` of the frequency-averaged frames so
            far and their number (``None``: start of stream).
        weights : tuple, optional
            :meth:`fused_weights`, precomputed.

        Returns
        -------
        tuple
            The gated ``x`` and the new state.
        """
        if not self.causal:
            raise RuntimeError("only a causal squeeze-excitation can run step by step")
        batch, channels2, _, length = x.shape
        half = channels2 // 2
        # Summed in float64: a stream of hours adds up ~10^5 frames per channel.
        pooled = x.mean(dim=2, dtype=torch.float64)  # [B, 2C, T]
        previous_sum, seen = (None, 0) if state is None else state
        if length == 1:  # a stream's next frame: one addition, no cumulative sum
            sums = pooled if previous_sum is None else pooled + previous_sum
            means = (sums / (seen + 1)).to(x.dtype)
        else:
            if previous_sum is not None:
                pooled.narrow(-1, 0, 1).add_(previous_sum)
            sums = pooled.cumsum(dim=-1)
            counts = torch.arange(seen + 1, seen + length + 1, dtype=sums.dtype, device=sums.device)
            means = (sums / counts).to(x.dtype)  # [B, 2C, T]

        # Rows (b, t, real part) and (b, t, imaginary part), each through both gates at once.
        hidden_w, hidden_b, out_w, out_b, signs = self.fused_weights() if weights is None else weights
        rows = means.transpose(1, 2).reshape(batch * length * 2, half)
        gates = torch.sigmoid_(F.linear(torch.relu_(F.linear(rows, hidden_w, hidden_b)), out_w, out_b))
        # [B, T, part of the mean (re, im), C] for each gate: R(m_re), R(m_im) and I(m_re), I(m_im)
        real_gate, imag_gate = gates.view(batch, length, 2, 2, half).unbind(3)
        # (R(m_re) - I(m_im), R(m_im) + I(m_re)): one fused multiply-add, signs = (-1, +1)
        scale = torch.addcmul(real_gate, imag_gate.flip(2), signs).view(batch, length, channels2)
        return x * scale.permute(0, 2, 1).unsqueeze(2), (sums.narrow(-1, length - 1, 1), seen + length)
