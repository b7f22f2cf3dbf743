"""Feedforward sequential memory networks (FSMN) on ``[B, C, F, T]`` feature maps.

An FSMN block (Zhang et al., 2015) is a small feed-forward layer plus a learnable
per-channel FIR "memory" over the previous ``memory_order`` steps of a sequence. FRCRN runs it
along the frequency axis (its "frequency recurrence": each bin sees the bins below it) and
along time in the UNet bottleneck. Working directly on ``[B, C, F, T]`` maps, with the linear
layers applied as 1x1 convolutions, avoids transposing the map to ``[..., seq, C]`` and back.

The memory sees only past steps, so along time the blocks are causal and can run a stream step
by step (``step(x, state, weights) -> (y, state)``, the protocol of
:mod:`speechbrain_ext.nnet.complex`); the state is the last ``memory_order - 1`` projections.
The step runs the feed-forward layers as matrix products on channel rows, which costs much less
than convolution calls on a single frame.

Authors: speechbrain-ext contributors
"""

from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from speechbrain_ext.nnet.complex import join_halves, split_complex

_AXES = {"freq": 2, "time": 3}


class FSMN(nn.Module):
    """Unidirectional FSMN block: ``y = x + p + memory(p)``, ``p = project(relu(linear(x)))``.

    Arguments
    ---------
    channels : int
        Feature size ``C`` (input and output, the block is residual).
    hidden_size : int
        Size of the hidden feed-forward layer.
    memory_order : int
        Taps of the memory filter: step ``s`` sees steps ``s - memory_order + 1 ... s``.
    axis : str
        ``'freq'`` (dim 2) or ``'time'`` (dim 3): the sequence the memory runs along.

    Example
    -------
    >>> block = FSMN(16, 32, memory_order=5, axis="freq")
    >>> block(torch.randn(2, 16, 40, 7)).shape
    torch.Size([2, 16, 40, 7])
    >>> # Along time the block streams: one step at a time, carrying the memory as state.
    >>> block = FSMN(16, 32, memory_order=5, axis="time")
    >>> x, state, steps = torch.randn(2, 16, 3, 7), None, []
    >>> for frame in x.split(1, dim=-1):
    ...     y, state = block.step(frame, state)
    ...     steps.append(y)
    >>> torch.allclose(torch.cat(steps, dim=-1), block(x), atol=1e-5), state.shape  # [B, F, taps, C]
    (True, torch.Size([2, 3, 4, 16]))
    """

    def __init__(self, channels, hidden_size, memory_order=20, axis="freq"):
        super().__init__()
        if axis not in _AXES:
            raise ValueError(f"axis must be one of {sorted(_AXES)}, got {axis!r}")
        self.axis = axis
        self.memory_order = memory_order
        self.linear = nn.Linear(channels, hidden_size)
        self.project = nn.Linear(hidden_size, channels, bias=False)
        # Tap k weighs the step (memory_order - 1 - k) positions back: the last tap is "now".
        self.memory = nn.Parameter(torch.empty(channels, memory_order))
        nn.init.uniform_(self.memory, -(memory_order**-0.5), memory_order**-0.5)

    def forward(self, x):
        """Apply the block to ``x`` [B, C, F, T]."""
        return x + _memory_residual(x, [self], parts=1)

    def fused_weights(self):
        """The :class:`FSMNWeights` :meth:`step` runs with (a function of the parameters)."""
        return _fuse_step_weights([self], parts=1)

    def step(self, x, state=None, weights=None):
        """Apply the block to the next steps ``x`` [B, C, F, T] of a stream.

        ``state`` holds the last ``memory_order - 1`` projections along time, ``[B, F,
        memory_order - 1, C]`` (``None`` at the start; along frequency, where each frame is
        complete, it stays ``None``); ``weights`` are :meth:`fused_weights`, precomputed.
        Returns ``(y, state)``.
        """
        weights = self.fused_weights() if weights is None else weights
        residual, state = _step_residual(x, weights, 1, self.axis, state)
        return x + residual, state


def _memory_residual(x, blocks, parts, matrix_filter=True):
    """``p + memory(p)`` of each FSMN block in ``blocks`` applied to each of ``parts`` inputs.

    ``x`` stacks the ``parts`` inputs along channels (``parts * C``). The blocks' linear layers
    become one grouped 1x1 convolution (a group per input part), their projections one grouped
    1x1 convolution and their memories one :func:`causal_filter`, so all
    ``parts * len(blocks)`` applications cost three calls and no reshape.

    Returns ``[B, parts * len(blocks) * C, F, T]``, ordered part-major: (part 0, block 0),
    (part 0, block 1), ..., (part 1, block 0), ...
    """
    first = blocks[0]
    linear_w = torch.cat([b.linear.weight for b in blocks] * parts)[:, :, None, None]
    linear_b = torch.cat([b.linear.bias for b in blocks] * parts)
    project_w = torch.cat([b.project.weight for b in blocks] * parts)[:, :, None, None]
    hidden = torch.relu_(F.conv2d(x, linear_w, linear_b, groups=parts))
    projected = F.conv2d(hidden, project_w, groups=parts * len(blocks))
    return causal_filter(projected, _fuse_memory(blocks, parts)[:, 0], _AXES[first.axis], matrix_filter)


#: Sequences up to this many times the filter length are filtered as a matrix product, longer
#: ones by a depthwise convolution (see :func:`causal_filter`).
MATRIX_FILTER_FACTOR = 4


def _banded_toeplitz(filters, length):
    """``[C, L, L]`` with ``[c, i, j] = filters[c, j - i + K - 1]`` for ``i - K < j <= i``, else 0.

    Row ``i`` is row ``i - 1`` moved one column right: one period ``[filters, L zeros]``
    repeated and read with a row length one shorter than the period shifts every row by one.
    Repeat, view and slice have cheap backwards (a sum over the repeats); building the matrix
    by indexing would scatter its gradient back element by element (FRCRN's [512, 78, 78]
    matrices, forward + backward with their product: 21 against 33 ms).
    """
    channels, order = filters.shape
    period = F.pad(filters, (0, length))  # [C, K + L]
    rows = period.repeat(1, length)[:, : length * (order + length - 1)]
    shifted = rows.view(channels, length, order + length - 1)  # row i: i zeros, filters, zeros
    return shifted[:, :, order - 1 :]


def causal_filter(x, filters, dim, matrix_filter=True):
    """Filter every channel of ``x`` [B, C, F, T] along ``dim`` (2 or 3) with its causal FIR.

    ``y[s] = sum_k filters[c, k] x[s - K + 1 + k]`` (``filters`` ``[C, K]``; zeros before the
    start). Short sequences (up to ``MATRIX_FILTER_FACTOR * K`` steps: FRCRN's lower frequency
    levels and training segments' time axis) are multiplied by each channel's banded Toeplitz
    matrix, one batched matrix product; longer ones are a depthwise convolution. Both compute
    the same; the matrix product is several times faster on short sequences, above all in
    backward, where the CPU depthwise convolution's weight gradient is slow. ``matrix_filter=False``
    always convolves (the fused inference module: on channels-last maps the matrix product
    would need copies).

    Example
    -------
    >>> x, filters = torch.randn(2, 3, 10, 200), torch.randn(3, 4)
    >>> short, long = causal_filter(x, filters, dim=2), causal_filter(x, filters, dim=3)
    >>> expected = filters[1, 3] * x[0, 1, 5] + filters[1, 2] * x[0, 1, 4] + filters[1, 1] * x[0, 1, 3]
    >>> bool(torch.allclose(short[0, 1, 5], expected + filters[1, 0] * x[0, 1, 2], atol=1e-6))
    True
    >>> bool(torch.allclose(long[0, 1, :, 0], filters[1, 3] * x[0, 1, :, 0], atol=1e-6))
    True
    """
    channels, order = filters.shape
    length = x.shape[dim]
    # (Exporting, the length may be symbolic: no branch on it.)
    if matrix_filter and not torch.compiler.is_exporting() and length <= MATRIX_FILTER_FACTOR * order:
        toeplitz = _banded_toeplitz(filters, length)
        return torch.matmul(toeplitz, x) if dim == 2 else torch.matmul(x, toeplitz.transpose(1, 2))
    taps = order - 1
    kernel = filters[:, None, :, None] if dim == 2 else filters[:, None, None, :]
    if torch.is_grad_enabled() and (x.requires_grad or filters.requires_grad):
        # Training: pad the past only and convolve without padding. The copy costs less than
        # the backward of a convolution padded on both ends (2x slower on CPU: 102 against
        # 48 ms for FRCRN's [2, 512, 159, 50] at 1 s).
        return F.conv2d(F.pad(x, (0, 0, taps, 0) if dim == 2 else (taps, 0)), kernel, groups=channels)
    # Inference: pad both ends inside the convolution (cheaper than F.pad, which copies the
    # map) and keep the first outputs, which saw only left context.
    padding = (taps, 0) if dim == 2 else (0, taps)
    return F.conv2d(x, kernel, padding=padding, groups=channels).narrow(dim, 0, length)


def _fuse_memory(blocks, parts):
    """``[parts * len(blocks) * C, 1, memory_order]`` memory filters, part-major."""
    order = blocks[0].memory_order
    memory = torch.cat([b.memory for b in blocks] * parts)
    # p + memory(p) as one filter: add the identity to the tap of the current step.
    return (memory + F.one_hot(torch.tensor(order - 1), order).to(memory))[:, None]


class FSMNWeights(NamedTuple):
    """FSMN blocks as :meth:`FSMN.step` runs them, on rows of channels (channels-last maps).

    linear, linear_bias : ``[blocks * H, C]``, every block's first layer (shared by the parts).
    project : ``[blocks * C, blocks * H]``, block-diagonal: each block's projection.
    memory : ``[parts * blocks * C, 1, memory_order, 1]`` (frequency) or ``[..., 1, memory_order]``
        (time) depthwise filters, part-major, with the identity added to the tap of the current
        step (``p + memory(p)`` as one filter).
    """

    linear: torch.Tensor
    linear_bias: torch.Tensor
    project: torch.Tensor
    memory: torch.Tensor


def _fuse_step_weights(blocks, parts):
    memory = _fuse_memory(blocks, parts)  # [P, 1, order]: a (freq, time) kernel of the axis
    memory = memory[..., None] if blocks[0].axis == "freq" else memory[:, :, None, :]
    return FSMNWeights(
        torch.cat([b.linear.weight for b in blocks]),
        torch.cat([b.linear.bias for b in blocks]),
        torch.block_diag(*[b.project.weight for b in blocks]),
        memory.contiguous(),
    )


#: Up to this many window elements (bins x frames x channels x taps), :func:`_step_residual`
#: filters as a product of unfolded windows: cheaper than a convolution call's fixed cost.
_SMALL_MEMORY_WINDOWS = 1 << 16


def _step_residual(x, weights, parts, axis, history):
    """:func:`_memory_residual` for the next steps ``x`` of a stream; returns ``(residual, history)``.

    The feed-forward layers run as matrix products on the rows of the channels-last map
    (``[B, F, T, parts, C]``): on a frame or two, a matrix product costs a fraction of a
    convolution call. Their output, ``[B, F, T, parts * blocks * C]``, is already in the
    part-major channel order of :func:`_memory_residual`. The memory filters then run over
    windows of it, or as the same depthwise convolution when the windows are large. Along
    time, ``history`` holds the last ``memory_order - 1`` projections ``[B, F, taps, P]``
    (``None``: zeros).
    """
    batch, channels, bins, frames = x.shape
    rows = x.permute(0, 2, 3, 1).reshape(batch, bins, frames, parts, channels // parts)
    hidden = torch.relu_(F.linear(rows, weights.linear, weights.linear_bias))
    projected = F.linear(hidden, weights.project).view(batch, bins, frames, -1)  # [B, F, T, P]
    memory = weights.memory
    outputs, order = memory.shape[0], max(memory.shape[2:])
    taps = order - 1
    if axis == "time":
        if history is None:
            history = projected.new_zeros(batch, bins, taps, outputs)
        with_past = torch.cat([history, projected], dim=2)
        history = with_past[:, :, with_past.shape[2] - taps :].clone()
        windows = with_past.unfold(2, order, 1)  # [B, F, T, P, order]
    elif bins * frames * outputs * order > _SMALL_MEMORY_WINDOWS:
        channels_last = projected.permute(0, 3, 1, 2)
        filtered = F.conv2d(channels_last, memory, padding=(taps, 0), groups=outputs)
        return filtered.narrow(2, 0, bins), history
    else:
        windows = torch.constant_pad_nd(projected, (0, 0, 0, 0, taps, 0)).unfold(1, order, 1)  # [B, F, T, P, order]
    filtered = (windows * memory.view(outputs, order)).sum(-1)
    return filtered.permute(0, 3, 1, 2), history


class ComplexFSMN(nn.Module):
    """Complex FSMN block: two real FSMN blocks combined like a complex product.

    With real blocks ``R`` and ``I``, the output is ``(R(x_re) - I(x_im)) + j (R(x_im) + I(x_re))``.
    Input and output use the real-then-imaginary channel layout of
    :mod:`speechbrain_ext.nnet.complex`.

    Arguments
    ---------
    channels : int
        Complex channels ``C`` (the tensor has ``2C``).
    hidden_size : int
        Hidden size of each real block.
    memory_order : int
        Memory taps (left context, including the current step).
    axis : str
        ``'freq'`` or ``'time'``.

    Example
    -------
    >>> block = ComplexFSMN(16, 32, memory_order=5, axis="freq")
    >>> block(torch.randn(2, 32, 40, 7)).shape
    torch.Size([2, 32, 40, 7])
    >>> # Along time the block streams: one step at a time, carrying the memory as state.
    >>> block = ComplexFSMN(16, 32, memory_order=5, axis="time")
    >>> x, weights, state, steps = torch.randn(2, 32, 1, 7), block.fused_weights(), None, []
    >>> for frame in x.split(1, dim=-1):
    ...     y, state = block.step(frame, state, weights)
    ...     steps.append(y)
    >>> torch.allclose(torch.cat(steps, dim=-1), block(x), atol=1e-5), state.shape  # [B, F, taps, 4C]
    (True, torch.Size([2, 1, 4, 64]))
    """

    def __init__(self, channels, hidden_size, memory_order=20, axis="freq"):
        super().__init__()
        self.real = FSMN(channels, hidden_size, memory_order, axis)
        self.imag = FSMN(channels, hidden_size, memory_order, axis)

    def forward(self, x):
        """Apply the complex block to ``x`` [B, 2C, F, T]."""
        # (x_re | x_im) through (real | imag), in the residual's part-major order.
        re_real, re_imag, im_real, im_imag = _memory_residual(x, [self.real, self.imag], parts=2).chunk(4, dim=1)
        x_re, x_im = split_complex(x)
        return torch.cat([x_re - x_im + re_real - im_imag, x_im + x_re + im_real + re_imag], dim=1)

    def fused_weights(self):
        """Both blocks as one :class:`FSMNWeights`, for :meth:`step`."""
        return _fuse_step_weights([self.real, self.imag], parts=2)

    def step(self, x, state=None, weights=None):
        """Apply the complex block to the next steps ``x`` of a stream; see :meth:`FSMN.step`."""
        weights = self.fused_weights() if weights is None else weights
        residual, state = _step_residual(x, weights, 2, self.real.axis, state)
        return self._combine(x, residual), state

    @staticmethod
    def _combine(x, residual):
        """``(R(x_re) - I(x_im)) + j (R(x_im) + I(x_re))`` from ``x`` and the part-major residuals,
        each half summed in its place (inference: streaming steps and the fused module)."""
        x_re, x_im = split_complex(x)
        re_real, re_imag, im_real, im_imag = residual.chunk(4, dim=1)
        return join_halves(
            [(1, x_re), (-1, x_im), (1, re_real), (-1, im_imag)],
            [(1, x_im), (1, x_re), (1, im_real), (1, re_imag)],
            like=x,
        )
