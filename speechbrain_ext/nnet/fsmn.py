"""Feedforward sequential memory networks (FSMN) on ``[B, C, F, T]`` feature maps.

An FSMN block (Zhang et al., 2015) is a small feed-forward layer plus a learnable
per-channel FIR "memory" over the previous ``memory_order`` steps of a sequence. FRCRN runs it
along the frequency axis (its "frequency recurrence": each bin sees the bins below it) and
along time in the UNet bottleneck. Working directly on ``[B, C, F, T]`` maps, with the linear
layers applied as 1x1 convolutions, avoids transposing the map to ``[..., seq, C]`` and back.

Authors: speechbrain-ext contributors
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from speechbrain_ext.nnet.complex import split_complex

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
        return x + _memory_residual(x, [self], self.axis, self.memory_order)


def _memory_residual(x, blocks, axis, memory_order):
    """``p + memory(p)`` of several FSMN blocks applied to the same input, in three convolutions.

    The blocks' linear layers are stacked into one 1x1 convolution, their projections into one
    grouped 1x1 convolution and their memories into one depthwise convolution, so applying
    ``len(blocks)`` blocks costs about as much as applying one wide block.

    Returns ``[B, len(blocks) * C, F, T]``: block 0's result in the first ``C`` channels, etc.
    """
    linear_w = torch.cat([b.linear.weight for b in blocks])[:, :, None, None]
    linear_b = torch.cat([b.linear.bias for b in blocks])
    project_w = torch.cat([b.project.weight for b in blocks])[:, :, None, None]
    hidden = F.relu(F.conv2d(x, linear_w, linear_b))
    projected = F.conv2d(hidden, project_w, groups=len(blocks))

    memory = torch.cat([b.memory for b in blocks])[:, None, :]
    if axis == "freq":  # filter along dim 2, left (lower-index) context only
        kernel, padding = memory[..., None], (0, 0, memory_order - 1, 0)
    else:
        kernel, padding = memory[:, :, None, :], (memory_order - 1, 0, 0, 0)
    remembered = F.conv2d(F.pad(projected, padding), kernel, groups=kernel.shape[0])
    return projected + remembered


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
    """

    def __init__(self, channels, hidden_size, memory_order=20, axis="freq"):
        super().__init__()
        self.real = FSMN(channels, hidden_size, memory_order, axis)
        self.imag = FSMN(channels, hidden_size, memory_order, axis)

    def forward(self, x):
        """Apply the complex block to ``x`` [B, 2C, F, T]."""
        batch, channels2, n_freq, n_time = x.shape
        x_re, x_im = split_complex(x)
        # Both parts go through both real blocks at once: parts are stacked on the batch axis,
        # blocks on the channel axis.
        parts = x.reshape(batch * 2, channels2 // 2, n_freq, n_time)
        residual = _memory_residual(parts, [self.real, self.imag], self.real.axis, self.real.memory_order)
        residual = residual.view(batch, 2, 2, channels2 // 2, n_freq, n_time)  # [B, part, block, C, F, T]
        real = x_re - x_im + residual[:, 0, 0] - residual[:, 1, 1]
        imag = x_im + x_re + residual[:, 1, 0] + residual[:, 0, 1]
        return torch.cat([real, imag], dim=1)
