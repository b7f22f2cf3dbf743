"""Complex-valued layers on real tensors.

A complex feature map with ``C`` channels is stored as one real tensor ``[B, 2C, F, T]``:
the ``C`` real channels first, then the ``C`` imaginary channels. Keeping both halves in the
channel axis means batch norm is an ordinary ``BatchNorm2d``, complex products are a few
grouped convolutions, and no operation needs a trailing axis of size 2, which would make every
slice non-contiguous. The layers work in either memory format; channels-last is faster on CPU.

Authors: speechbrain-ext contributors
"""

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


class _ComplexConvBase(nn.Module):
    """Holds the real and imaginary kernels of a complex (transposed) convolution.

    ``W = W_re + j W_im`` applied to ``x = x_re + j x_im`` is
    ``(W_re x_re - W_im x_im) + j (W_re x_im + W_im x_re)``. The two kernels are separate
    parameters (the natural parameterisation, and the one official checkpoints use). The
    product is evaluated with Gauss's trick, three real convolutions instead of four:
    ``k1 = W_re (x_re + x_im)``, ``k2 = (W_im - W_re) x_re``, ``k3 = (W_re + W_im) x_im``,
    ``real = k1 - k3``, ``imag = k1 + k2``; ``k2`` and ``k3`` run as one grouped convolution.
    Each real convolution of the reference carries its own bias, so the complex output gets
    ``b_re - b_im`` (real) and ``b_re + b_im`` (imaginary).
    """

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

    def _complex_product(self, x, conv):
        """Apply ``conv(input, weight, bias, groups=...)`` as a complex convolution to ``x``."""
        x_re, x_im = split_complex(x)
        w_re, w_im = self.weight_real, self.weight_imag
        # Input-channel groups are dim 0 of both conv ([out, in]) and tconv ([in, out]) kernels
        # as far as a 2-group convolution is concerned: k2 reads x_re, k3 reads x_im.
        k1 = conv(x_re + x_im, w_re, self.bias_real, groups=1)
        shared_bias = None if self.bias_imag is None else self.bias_imag.repeat(2)
        k2, k3 = split_complex(conv(x, torch.cat([w_im - w_re, w_re + w_im]), shared_bias, groups=2))
        out = torch.cat([k1, k1], dim=1)
        channels = k1.shape[1]
        # In place on the two halves of one buffer: fewer passes over large maps.
        out.narrow(1, 0, channels).sub_(k3)
        out.narrow(1, channels, channels).add_(k2)
        return out


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

    Example
    -------
    >>> conv = ComplexConv2d(3, 4, kernel_size=(5, 2), stride=(2, 1), padding=(0, 1))
    >>> conv(torch.randn(2, 6, 21, 10)).shape  # [B, 2*in, F, T] -> [B, 2*out, F', T']
    torch.Size([2, 8, 9, 11])
    """

    def __init__(
        self, in_channels, out_channels, kernel_size, stride=1, padding=0, padding_mode="zeros", bias=True
    ):
        kernel_size = nn.modules.utils._pair(kernel_size)
        self.stride = nn.modules.utils._pair(stride)
        self.padding = nn.modules.utils._pair(padding)
        self.padding_mode = padding_mode
        super().__init__((out_channels, in_channels, *kernel_size), out_channels, bias)

    def forward(self, x):
        """Convolve ``x`` [B, 2*in, F, T] into [B, 2*out, F', T']."""
        padding = self.padding
        if self.padding_mode != "zeros" and any(padding):
            pad_f, pad_t = padding
            x = F.pad(x, (pad_t, pad_t, pad_f, pad_f), mode=self.padding_mode)
            padding = (0, 0)

        def conv(inputs, weight, bias, groups):
            return F.conv2d(inputs, weight, bias, self.stride, padding, groups=groups)

        return self._complex_product(x, conv)


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

    Example
    -------
    >>> tconv = ComplexConvTranspose2d(4, 3, kernel_size=(5, 2), stride=(2, 1), padding=(0, 1))
    >>> tconv(torch.randn(2, 8, 9, 11)).shape
    torch.Size([2, 6, 21, 10])
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True):
        kernel_size = nn.modules.utils._pair(kernel_size)
        self.stride = nn.modules.utils._pair(stride)
        self.padding = nn.modules.utils._pair(padding)
        super().__init__((in_channels, out_channels, *kernel_size), out_channels, bias)

    def forward(self, x):
        """Upsample ``x`` [B, 2*in, F, T] into [B, 2*out, F', T']."""

        def conv(inputs, weight, bias, groups):
            return F.conv_transpose2d(inputs, weight, bias, self.stride, self.padding, groups=groups)

        return self._complex_product(x, conv)


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


class ComplexSqueezeExcitation(nn.Module):
    """Complex squeeze-and-excitation: channel gates from utterance-level averages.

    The real and imaginary parts are averaged over frequency and time, passed through two
    small gating networks combined like a complex product, and the resulting real gate scales
    the real part and the imaginary gate the imaginary part (an element-wise, not a complex,
    product, as FRCRN does).

    Note that the average covers the whole input: every output frame depends on every input
    frame, so this layer is not causal and padding the input changes the result.

    Arguments
    ---------
    channels : int
        Complex channels.
    reduction : int
        Bottleneck factor of the gating networks.

    Example
    -------
    >>> se = ComplexSqueezeExcitation(16, reduction=8)
    >>> se(torch.randn(2, 32, 7, 5)).shape
    torch.Size([2, 32, 7, 5])
    """

    def __init__(self, channels, reduction=8):
        super().__init__()

        def gate():
            return nn.Sequential(
                nn.Linear(channels, channels // reduction),
                nn.ReLU(),
                nn.Linear(channels // reduction, channels),
                nn.Sigmoid(),
            )

        self.gate_real = gate()
        self.gate_imag = gate()

    def forward(self, x):
        """Gate ``x`` [B, 2C, F, T]; returns the same shape."""
        mean_re, mean_im = split_complex(x.mean(dim=(2, 3)))
        scale_re = self.gate_real(mean_re) - self.gate_imag(mean_im)
        scale_im = self.gate_real(mean_im) + self.gate_imag(mean_re)
        return x * torch.cat([scale_re, scale_im], dim=1)[:, :, None, None]
