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
        return x + _memory_residual(x, [self], parts=1)


def _memory_residual(x, blocks, parts):
    """``p + memory(p)`` of each FSMN block in ``blocks`` applied to each of ``parts`` inputs.

    ``x`` stacks the ``parts`` inputs along channels (``parts * C``). The blocks' linear layers
    become one grouped 1x1 convolution (a group per input part), their projections one grouped
    1x1 convolution and their memories one depthwise convolution, so all
    ``parts * len(blocks)`` applications cost three convolution calls and no reshape (which
    keeps channels-last tensors channels-last).

    Returns ``[B, parts * len(blocks) * C, F, T]``, ordered part-major: (part 0, block 0),
    (part 0, block 1), ..., (part 1, block 0), ...
    """
    first = blocks[0]
    per_part = len(blocks)
    linear_w = torch.cat([b.linear.weight for b in blocks] * parts)[:, :, None, None]
    linear_b = torch.cat([b.linear.bias for b in blocks] * parts)
    project_w = torch.cat([b.project.weight for b in blocks] * parts)[:, :, None, None]
    hidden = F.relu(F.conv2d(x, linear_w, linear_b, groups=parts))
    projected = F.conv2d(hidden, project_w, groups=parts * per_part)

    memory = torch.cat([b.memory for b in blocks] * parts)
    # p + memory(p) as one filter: add the identity to the tap of the current step.
    memory = (memory + F.one_hot(torch.tensor(first.memory_order - 1), first.memory_order).to(memory))[:, None]
    # Causal filtering: pad both ends inside the convolution (cheaper than F.pad, which copies
    # the map) and keep the first outputs, which saw only left context.
    taps = first.memory_order - 1
    length = projected.shape[_AXES[first.axis]]
    if first.axis == "freq":
        filtered = F.conv2d(projected, memory[..., None], padding=(taps, 0), groups=memory.shape[0])
        return filtered[:, :, :length]
    filtered = F.conv2d(projected, memory[:, :, None, :], padding=(0, taps), groups=memory.shape[0])
    return filtered[:, :, :, :length]


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
        x_re, x_im = split_complex(x)
        # (x_re | x_im) through (real | imag) blocks, in the residual's part-major order.
        re_real, re_imag, im_real, im_imag = _memory_residual(x, [self.real, self.imag], parts=2).chunk(4, dim=1)
        real = (x_re - x_im).add_(re_real).sub_(im_imag)  # in place: no extra large buffers
        imag = (x_im + x_re).add_(im_real).add_(re_imag)
        return torch.cat([real, imag], dim=1)
