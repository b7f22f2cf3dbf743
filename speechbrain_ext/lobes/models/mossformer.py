"""MossFormer time-domain speech separation as SpeechBrain encoder / masknet / decoder.

MossFormer (Zhao & Ma, ICASSP 2023, https://arxiv.org/abs/2302.11824) keeps the
encoder -> masknet -> decoder layout of SepFormer but replaces the dual-path transformer by
a stack of gated attention units in the style of FLASH (Hua et al., 2022): every unit mixes
the sequence with relu² attention that is *quadratic inside groups* of ``group_size`` frames
and *linear across the whole sequence*, and gates the result with a second projection.

The modules here follow the contract of :mod:`speechbrain.lobes.models.dual_path`, so that
the separation recipes of SpeechBrain drive them unchanged:

* :class:`MossFormerEncoder` maps the mixture [B, T] to a representation [B, N, L];
* :class:`MossFormerMaskNet` maps that to one mask per speaker, [num_spks, B, N, L];
* :class:`MossFormerDecoder` maps each masked representation [B, N, L] back to [B, T'].

:class:`MossFormer` bundles the three and returns [B, T, num_spks] at the input length.
Weights of the official ModelScope release load with
:func:`speechbrain_ext.convert.mossformer_from_official`.

Authors
 * speechbrain-ext contributors
"""

import functools
import math
import weakref

import torch
import torch.nn as nn
import torch.nn.functional as F
from speechbrain.lobes.models.dual_path import Decoder, Encoder, select_norm

from speechbrain_ext.lobes.models.masking import encode_mask_decode
from speechbrain_ext.memory import recycled_memory
from speechbrain_ext.nnet.dropout import Dropout

# Kernel of the depthwise convolutions inside every projection of a MossFormer block.
CONV_KERNEL_SIZE = 17

# Rotary position embedding covers at most this many query/key channels (partial RoPE).
MAX_ROTARY_DIM = 32


class MossFormerEncoder(Encoder):
    """Learned analysis filterbank: a strided 1-D convolution followed by ReLU.

    The hop is ``kernel_size // 2`` (50 % overlap), as in SpeechBrain's SepFormer encoder.

    Arguments
    ---------
    kernel_size : int
        Length of the filters, in samples.
    out_channels : int
        Number of filters N.
    in_channels : int
        Number of audio channels (1 for a waveform given as [B, T]).

    Example
    -------
    >>> encoder = MossFormerEncoder(kernel_size=16, out_channels=64)
    >>> encoder(torch.randn(2, 8000)).shape
    torch.Size([2, 64, 999])
    """

    def __init__(self, kernel_size=16, out_channels=512, in_channels=1):
        super().__init__(kernel_size, out_channels, in_channels)  # SpeechBrain's argument order


class MossFormerDecoder(Decoder):
    """Learned synthesis filterbank: a transposed 1-D convolution back to the waveform.

    Arguments
    ---------
    in_channels : int
        Number of filters N of the encoded representation.
    out_channels : int
        Number of output audio channels.
    kernel_size : int
        Length of the filters, in samples.
    stride : int
        Hop between frames, in samples; ``kernel_size // 2`` matches the encoder.
    bias : bool
        Whether the convolution has a bias.

    Example
    -------
    >>> decoder = MossFormerDecoder(in_channels=64, kernel_size=16, stride=8)
    >>> decoder(torch.randn(2, 64, 999)).shape
    torch.Size([2, 8000])
    """

    def __init__(self, in_channels=512, out_channels=1, kernel_size=16, stride=8, bias=False):
        # SpeechBrain's Decoder is a ConvTranspose1d: (in, out, kernel, stride), no padding.
        super().__init__(in_channels, out_channels, kernel_size, stride, bias=bias)

    def forward(self, x):
        """Decodes ``x`` [B, N, L] (or [N, L]) as SpeechBrain's ``Decoder`` does: [B, T] for one
        output channel. Without autograd, on float32 CPU tensors, the transposed convolution runs
        as one matrix product and an overlap-add (``F.fold``): 1 against 13 ms for [2, 512, 2999]
        on 2 threads (PyTorch's CPU transposed convolution is slow for one output channel), equal
        up to rounding."""
        if x.dim() != 3 or not _cpu_inference(x, self.weight):
            return super().forward(x)
        (kernel_size,), (stride,) = self.kernel_size, self.stride
        frames = x.shape[-1]
        columns = self.weight.flatten(1).t() @ x  # [B, out * K, L]: each frame's K output samples
        samples = (frames - 1) * stride + kernel_size
        out = F.fold(columns, (1, samples), (1, kernel_size), stride=(1, stride)).squeeze(2)  # [B, out, T]
        if self.bias is not None:
            out = out + self.bias[:, None]
        return out.squeeze(1) if out.shape[1] == 1 else out


class ScaledSinusoidalEmbedding(nn.Module):
    """Absolute sinusoidal positions with one learned gain.

    The first half of the channels holds ``sin(t * f)``, the second half ``cos(t * f)``
    (concatenated, not interleaved), all multiplied by the learned scalar ``scale``.

    Arguments
    ---------
    dim : int
        Number of channels of the embedding.
    theta : float
        Base of the geometric progression of frequencies.

    Example
    -------
    >>> embedding = ScaledSinusoidalEmbedding(8)
    >>> embedding(5).shape
    torch.Size([5, 8])
    """

    def __init__(self, dim, theta=10000.0):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))
        inv_freq = 1.0 / theta ** (torch.arange(0, dim, 2).float() / dim)
        self.register_buffer("inv_freq", inv_freq)

    def forward(self, length):
        """Returns the [length, dim] embedding of frames ``0 .. length - 1``."""
        frames = torch.arange(length, device=self.inv_freq.device, dtype=self.inv_freq.dtype)
        angles = torch.outer(frames, self.inv_freq)
        return torch.cat((angles.sin(), angles.cos()), dim=-1) * self.scale


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (RoPE, Su et al., 2021) of the leading channels.

    Channels ``2i`` and ``2i + 1`` of the first ``dim`` channels are rotated together by the
    angle ``t * freqs[i]`` (GPT-J style pairing); the remaining channels pass unchanged.
    Computing the angles once per sequence length and sharing them between all blocks
    saves the trigonometry that a per-block rotary module would redo.

    Arguments
    ---------
    dim : int
        Number of rotated channels (even).
    theta : float
        Base of the geometric progression of frequencies.

    Example
    -------
    >>> rotary = RotaryEmbedding(dim=4)
    >>> cos, sin = rotary(10)
    >>> x = torch.randn(2, 10, 6)
    >>> y = rotary.rotate_(x.clone(), cos, sin)
    >>> torch.allclose(y.norm(dim=-1), x.norm(dim=-1))  # rotations keep the length
    True
    >>> torch.equal(y[..., 4:], x[..., 4:])
    True
    """

    def __init__(self, dim=MAX_ROTARY_DIM, theta=10000.0):
        super().__init__()
        freqs = 1.0 / theta ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim)
        # A parameter (frozen) rather than a buffer, as in the official checkpoints.
        self.freqs = nn.Parameter(freqs, requires_grad=False)

    def forward(self, length):
        """Returns ``(cos, sin)`` of the rotation angles, each [length, dim // 2]."""
        frames = torch.arange(length, device=self.freqs.device, dtype=self.freqs.dtype)
        angles = torch.outer(frames, self.freqs)
        return angles.cos(), angles.sin()

    @staticmethod
    def rotate_(x, cos, sin):
        """Rotates the leading channels of ``x`` [..., length, channels] in place; returns x."""
        rotated_dim = 2 * cos.shape[-1]
        even, odd = x[..., 0:rotated_dim:2], x[..., 1:rotated_dim:2]
        rotated_even = even * cos - odd * sin
        odd.mul_(cos).add_(even * sin)
        even.copy_(rotated_even)
        return x


def _time_major_depthwise(x, weight):
    """The "same" depthwise convolution of ``x`` [B, L, C] with ``weight`` [C, 1, K], K odd.

    Viewed as a channels-last [B, C, 1, L] image, the time-major memory goes straight to the
    fast depthwise 2-D kernel, with no copy on either side (the transposed view [B, C, L]
    makes oneDNN copy and run a slow kernel).
    """
    autocast_bfloat16 = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    if x.device.type == "cpu" and (x.dtype == torch.bfloat16 or autocast_bfloat16):
        # oneDNN's bfloat16 depthwise kernel for channels-last maps did not return on an AMD
        # EPYC (torch 2.11): channel-major copies instead.
        out = F.conv1d(x.transpose(1, 2).contiguous(), weight, padding=weight.shape[-1] // 2, groups=weight.shape[0])
        return out.transpose(1, 2).contiguous()
    image = x.transpose(1, 2).unsqueeze(2)  # [B, C, 1, L], channels-last
    out = F.conv2d(image, weight.unsqueeze(2), padding=(0, weight.shape[-1] // 2), groups=weight.shape[0])
    return out.squeeze(2).transpose(1, 2)


#: Elements (batch x frames x channels) per time chunk of the depthwise weight gradient: its
#: operands stay in cache (4 MB each in float32).
WEIGHT_GRADIENT_CHUNK = 1 << 20


class _TimeMajorDepthwiseConv(torch.autograd.Function):
    """:func:`_time_major_depthwise` with a backward that keeps the time-major layout.

    On CPU the depthwise convolution's own backward costs up to a hundred times its forward
    (its weight gradient above all). The input's gradient is the same convolution of the
    output gradient with the kernel reversed. The weight's, for channel ``c`` and tap ``k``
    (offset ``s = k - K // 2``), is ``sum_{b, t} grad[b, t, c] x[b, t + s, c]``: one
    elementwise product of two time-shifted views per tap, summed over batch and time, taken
    chunk of frames by chunk (:data:`WEIGHT_GRADIENT_CHUNK`) so that both stay in cache. No
    transposed or padded copies: for [1, 1999, 2048] maps 14.7 ms, against 34.8 ms with
    channel-major copies and a grouped convolution and 42.3 ms unchunked (2 threads).
    """

    @staticmethod
    def forward(ctx, x, weight):
        ctx.save_for_backward(x, weight)
        return _time_major_depthwise(x, weight)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x = grad_weight = None
        # Under autocast the saved tensors and the gradient may differ in precision.
        if ctx.needs_input_grad[0]:
            grad_x = _time_major_depthwise(grad, weight.flip(-1).to(grad.dtype)).to(x.dtype)
        if ctx.needs_input_grad[1]:
            x = x.to(grad.dtype)
            batch, length, channels = x.shape
            half = weight.shape[-1] // 2
            # Sums in at least float32 (autocast's half-precision gradients would lose the sum).
            taps = grad.new_zeros(2 * half + 1, channels, dtype=torch.promote_types(grad.dtype, torch.float32))
            rows = max(1, WEIGHT_GRADIENT_CHUNK // (batch * channels))
            for first in range(0, length, rows):
                last = min(length, first + rows)
                for tap, shift in enumerate(range(-half, half + 1)):
                    # Frames t of this chunk with t + shift inside the input.
                    start, stop = max(first, -shift), min(last, length - shift)
                    if start < stop:
                        products = x[:, start + shift : stop + shift] * grad[:, start:stop]
                        taps[tap] += products.sum((0, 1), dtype=taps.dtype)
            grad_weight = taps.t().unsqueeze(1).to(weight.dtype)  # [C, 1, K]
        return grad_x, grad_weight


class DepthwiseTimeConv(nn.Conv1d):
    """Depthwise "same" convolution along time for time-major inputs [B, L, C].

    The weights are those of an ordinary depthwise :class:`torch.nn.Conv1d`; the time-major
    memory is convolved in place, forward and backward (see :class:`_TimeMajorDepthwiseConv`:
    on CPU its backward is one to two orders of magnitude faster than autograd's).

    Arguments
    ---------
    channels : int
        Number of channels C.
    kernel_size : int
        Odd filter length.

    Example
    -------
    >>> conv = DepthwiseTimeConv(8, kernel_size=5)
    >>> x = torch.randn(2, 50, 8)
    >>> expected = F.conv1d(x.transpose(1, 2), conv.weight, padding=2, groups=8)
    >>> torch.allclose(conv(x), expected.transpose(1, 2), atol=1e-6)
    True
    >>> small = (x[:, :9, :2].double().requires_grad_(), conv.weight[:2].detach().double().requires_grad_())
    >>> torch.autograd.gradcheck(_TimeMajorDepthwiseConv.apply, small)  # the hand-written backward
    True
    """

    def __init__(self, channels, kernel_size=CONV_KERNEL_SIZE):
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd for 'same' padding, got {kernel_size}")
        super().__init__(
            channels,
            channels,
            kernel_size,
            padding=kernel_size // 2,
            groups=channels,
            bias=False,
        )

    def forward(self, x, residual=False):
        """Returns the [B, L, C] convolution of ``x`` [B, L, C] (plus ``x`` if ``residual``).

        The residual is the identity added to the centre tap: one convolution, no extra pass.
        """
        weight = self.weight
        if residual:
            centre = F.one_hot(torch.tensor(weight.shape[-1] // 2), weight.shape[-1]).to(weight)
            weight = weight + centre
        return _TimeMajorDepthwiseConv.apply(x, weight)


class ConvFeedForward(nn.Module):
    """Norm -> Linear -> SiLU -> depthwise temporal convolution (residual) -> dropout.

    The norm is ScaleNorm (Nguyen & Salazar, 2019), which divides every frame by its root mean
    square (at least ``eps``) and multiplies it by one learned gain, or a LayerNorm (as in the
    gated FSMN of MossFormer2).

    Arguments
    ---------
    input_size : int
        Channels of the input.
    output_size : int
        Channels of the output.
    kernel_size : int
        Length of the depthwise convolution.
    dropout : float
        Dropout on the output.
    eps : float
        Smallest root mean square ScaleNorm divides by (the LayerNorm's epsilon otherwise).
    norm : str
        ``"scale"`` (ScaleNorm, one learned ``gain``) or ``"layer"`` (LayerNorm over the
        channels, learned ``layer_norm.weight`` and ``.bias``).

    Example
    -------
    >>> ffn = ConvFeedForward(16, 32)
    >>> ffn(torch.randn(2, 40, 16)).shape
    torch.Size([2, 40, 32])
    >>> ConvFeedForward(16, 16, norm="layer")(torch.randn(2, 40, 16)).shape
    torch.Size([2, 40, 16])
    """

    def __init__(
        self, input_size, output_size, kernel_size=CONV_KERNEL_SIZE, dropout=0.1, eps=1e-5, norm="scale"
    ):
        super().__init__()
        if norm == "scale":
            self.gain = nn.Parameter(torch.ones(1))
            self.layer_norm = None
        elif norm == "layer":
            self.layer_norm = nn.LayerNorm(input_size, eps=eps)
        else:
            raise ValueError(f"norm must be 'scale' or 'layer', got {norm!r}")
        self.eps = eps
        self.linear = nn.Linear(input_size, output_size)
        self.conv = DepthwiseTimeConv(output_size, kernel_size)
        self.dropout = Dropout(dropout)
        #: Set when fused for inference (:func:`prepack_linear_weights`): oneDNN products read a
        #: copy of the linear weight kept in oneDNN's own layout (see :func:`_prepacked`).
        self.prepacked = False

    def train(self, mode=True):
        if mode:
            self.prepacked = False
        return super().train(mode)

    def forward(self, x):
        """Maps [B, L, input_size] to [B, L, output_size]."""
        weight, bias, packed = self.linear.weight, self.linear.bias, self.prepacked
        if self.layer_norm is not None:
            hidden = _linear(self.layer_norm(x), weight, bias, "swish", packed)
            return self.dropout(self.conv(hidden, residual=True))
        root = math.sqrt(x.shape[-1])
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
        scale = self.gain * root / norm.clamp_min(self.eps * root)  # ScaleNorm, per frame
        # A per-frame factor commutes with the linear map: apply it on the narrower side.
        if self.linear.in_features <= self.linear.out_features:
            hidden = _linear(x * scale, weight, bias, "swish", packed)
        else:
            hidden = _silu(torch.addcmul(bias, _linear(x, weight, None, prepacked=packed), scale))
        return self.dropout(self.conv(hidden, residual=True))


@functools.lru_cache(maxsize=1)
def _onednn_linear_available():
    """Whether oneDNN's fused linear (``torch.ops.mkldnn._linear_pointwise``, what Inductor
    compiles CPU linear layers to) runs here and agrees with ``F.linear``."""
    try:
        x, weight, bias = torch.randn(3, 5, 8), torch.randn(4, 8), torch.randn(4)
        fused = torch.ops.mkldnn._linear_pointwise(x, weight, bias, "swish", [], "")
        return torch.backends.mkldnn.is_available() and torch.allclose(fused, F.silu(F.linear(x, weight, bias)), atol=1e-5)
    except (AttributeError, RuntimeError):
        return False


@functools.lru_cache(maxsize=1)
def _onednn_binary_available():
    """Whether oneDNN's linear with an "add" post-op (``torch.ops.mkldnn._linear_pointwise.binary``)
    runs here and agrees with ``F.linear`` plus the addend."""
    try:
        x, weight, other = torch.randn(3, 8), torch.randn(4, 8), torch.randn(3, 4)
        fused = torch.ops.mkldnn._linear_pointwise.binary(x, other, weight, None, "add")
        return _onednn_linear_available() and torch.allclose(fused, F.linear(x, weight) + other, atol=1e-5)
    except (AttributeError, RuntimeError):
        return False


#: oneDNN-layout copies of the weights of fused models: ``id(weight) -> (data_ptr, version,
#: copy)``, outside the modules (an opaque oneDNN tensor can be neither copied nor saved);
#: an entry goes with its weight.
_PREPACKED_WEIGHTS = {}


def _prepacked(weight):
    """``weight`` [out, in] reordered once into oneDNN's blocked layout, for
    ``torch.ops.mkldnn._linear_pointwise`` (which otherwise reorders it at every call; Inductor's
    frozen CPU graphs avoid that the same way): 1-3 % of a MossFormer pass at 3 s, for a second
    copy of the blocks' linear weights (168 MB at the official size) while the model lives.
    Reordered again if the weight was replaced or changed in place; ``weight`` itself where the
    reorder is unavailable."""
    key = (weight.data_ptr(), weight._version)
    cached = _PREPACKED_WEIGHTS.get(id(weight))
    if cached is not None and cached[:2] == key:
        return cached[2]
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None)
    except (AttributeError, RuntimeError):
        return weight
    if cached is None:
        weakref.finalize(weight, _PREPACKED_WEIGHTS.pop, id(weight), None)
    _PREPACKED_WEIGHTS[id(weight)] = (*key, packed)
    return packed


#: The activations :func:`_linear` applies, by oneDNN's names.
_ACTIVATIONS = {"swish": F.silu, "relu": F.relu}


def prepack_linear_weights(model):
    """Lets every submodule of ``model`` that reads its linear weights through :func:`_linear`
    (those with a ``prepacked`` flag: :class:`ConvFeedForward`, MossFormer2's gated FSMN blocks)
    read oneDNN-layout copies of them (:func:`_prepacked`); for models fused for inference
    (``train()`` clears the flags)."""
    for module in model.modules():
        if hasattr(module, "prepacked"):
            module.prepacked = True


def _linear(x, weight, bias, activation="none", prepacked=False):
    """``activation(F.linear(x, weight, bias))``, ``activation`` one of ``"none"``, ``"swish"``
    (SiLU) and ``"relu"``; with ``prepacked``, oneDNN reads its copy of ``weight`` in its own
    layout (see :func:`_prepacked`; for modules fused for inference).

    Without autograd, float32 CPU inputs go to oneDNN's linear with the activation fused in:
    at MossFormer's sizes its product took 0.65-0.8 of the time of ``addmm`` (MKL) on an AVX2-rate
    AMD EPYC (31.6 against 47.3 ms for [2999, 512] x [512, 2048] on 2 threads), and on one with
    AVX-512, which MKL does not use on AMD, under half; the activation needs no pass of its
    own. Its rounding differs from MKL's by a few 1e-7 of the output's scale. Elsewhere the
    activation runs in place when no graph is built (see :func:`_silu`).
    """
    if activation != "none" and activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be 'none' or one of {sorted(_ACTIVATIONS)}, got {activation!r}")
    if _use_onednn(x, weight, *([] if bias is None else [bias])):
        weight = _prepacked(weight) if prepacked else weight
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, activation, [], "")
    out = F.linear(x, weight, bias)
    if activation == "none":
        return out
    return _ACTIVATIONS[activation](out, inplace=not _builds_graph(out))


def _builds_graph(*tensors):
    """Whether autograd records operations on any of ``tensors`` (then no in-place shortcuts)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _cpu_inference(*tensors):
    """Whether ``tensors`` are float32 CPU tensors used with no graph being built, outside export:
    where our inference-only CPU routes apply."""
    return (
        all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
        and not _builds_graph(*tensors)
        and not torch.compiler.is_exporting()
    )


def _use_onednn(*tensors):
    """Whether products of ``tensors`` go to oneDNN: :func:`_cpu_inference`, oneDNN enabled and
    its linear available, and no CPU autocast (which asked for another precision)."""
    return (
        _cpu_inference(*tensors)
        and torch.backends.mkldnn.enabled
        and not torch.is_autocast_enabled("cpu")
        and _onednn_linear_available()
    )


def _batched_product(a, b):
    """``a @ b`` for [B, M, K] and [B, K, N]; without autograd, item by item through oneDNN's
    linear (``a[i] @ b[i] = linear(a[i], b[i]^T)``, the transposed views taken as they are):
    at the linear attention's sizes 0.7-0.9 of the time of ``bmm`` (MKL) on this CPU."""
    if not _use_onednn(a, b):
        return a @ b
    products = [torch.ops.mkldnn._linear_pointwise(x, y.t(), None, "none", [], "") for x, y in zip(a, b)]
    return products[0].unsqueeze(0) if len(products) == 1 else torch.stack(products)


def _silu(x):
    """SiLU, in place when no graph is built. Under autograd, ``silu_`` on a linear layer's
    output (a view of its 2-D product) would clone the input to keep it for the backward, and
    the backward would clone and copy the whole gradient back through the view."""
    return F.silu(x, inplace=not _builds_graph(x))


def _local_segments(length, group_size):
    """``(start, stop, size)`` of the whole groups (one segment) and of a shorter last group."""
    full = length - length % group_size
    return [(start, stop, size) for start, stop, size in ((0, full, group_size), (full, length, length - full))
            if start < stop]


def _add_grouped_products_(out, weights, values, start, stop, size):
    """``out[b, group] += weights[b, group] @ values[b, group]`` for the groups of ``size``
    frames in ``start:stop``, in place, one batch item at a time: per item the rows are
    contiguous, so the groups are plain views and ``baddbmm_`` writes the sum without a
    temporary of the size of ``values``."""
    for b in range(out.shape[0]):
        grouped_values = values[b, start:stop].unflatten(0, (-1, size))
        out[b, start:stop].unflatten(0, (-1, size)).baddbmm_(weights[b], grouped_values)


def relu2_local_global_attention(
    quad_q, quad_k, lin_q, lin_k, values, group_size, causal=False, dropout=None, padded=None
):
    """Joint relu² attention: quadratic inside groups of frames, linear over the sequence.

    The sequence is cut into groups of ``group_size`` frames. Inside a group, every query
    attends to every key with weights ``relu(q . k / group_size) ** 2``. Across the whole
    sequence, linear attention lets every query read one [Q, E] summary
    ``sum_t lin_k[t]^T values[t] / L`` (causal: only the summaries of earlier groups, each
    divided by ``group_size``). The output is the sum of the two.

    A last group shorter than ``group_size`` is attended on its own, with the same
    ``1 / group_size`` scaling. This is exactly what zero-padding the sequence to a multiple
    of ``group_size`` and masking the padded keys computes (zero keys score
    ``relu(0) ** 2 = 0`` and padded queries are cut off), without padding the wide
    ``values`` or materialising a mask.

    Arguments
    ---------
    quad_q, quad_k : torch.Tensor
        Queries and keys of the local attention, [B, L, Q].
    lin_q, lin_k : torch.Tensor
        Queries and keys of the global attention, [B, L, Q].
    values : torch.Tensor
        Values, [B, L, E].
    group_size : int
        Frames per group of the local attention.
    causal : bool
        If True, no frame attends to a later frame.
    dropout : callable, optional
        Applied to the local attention weights (training regulariser).
    padded : bool or None
        Compute it the padded way: zero-pad to whole groups and run every group in one
        product, the same numbers with no branch on the length. ``torch.export`` (ONNX
        export) needs that for a graph that takes any length; ``None``: only while exporting.

    Returns
    -------
    torch.Tensor
        [B, L, E].

    Example
    -------
    >>> q, k = torch.randn(2, 2, 10, 4).unbind(0)
    >>> values = torch.randn(2, 10, 6)
    >>> out = relu2_local_global_attention(q, k, q, k, values, group_size=4)
    >>> out.shape
    torch.Size([2, 10, 6])
    >>> padded = relu2_local_global_attention(q, k, q, k, values, group_size=4, padded=True)
    >>> torch.allclose(out, padded, atol=1e-5)
    True
    """
    if padded is None:
        padded = torch.compiler.is_exporting()
    if padded:
        return _padded_local_global_attention(quad_q, quad_k, lin_q, lin_k, values, group_size, causal, dropout)
    out = _linear_attention(lin_q, lin_k, values, group_size, causal)
    for start, stop, size in _local_segments(values.shape[1], group_size):
        q = quad_q[:, start:stop].unflatten(1, (-1, size))  # [B, groups, size, Q]
        k = quad_k[:, start:stop].unflatten(1, (-1, size))
        weights = _relu2_weights(q, k, group_size)
        if causal:
            weights = weights.tril()
        if dropout is not None:
            weights = dropout(weights)
        _add_grouped_products_(out, weights, values, start, stop, size)  # into the linear part
    return out


def _relu2_weights(q, k, group_size):
    """The local attention weights ``relu(q . k / group_size) ** 2`` of queries and keys
    [..., size, Q] of the same groups: [..., size, size]."""
    return F.relu(q @ k.transpose(-1, -2) / group_size, inplace=True).square()


def _padded_local_global_attention(quad_q, quad_k, lin_q, lin_k, values, group_size, causal, dropout):
    """:func:`relu2_local_global_attention` on inputs zero-padded to whole groups.

    Padded keys are zero and score ``relu(0) ** 2 = 0``, padded values are zero, padded
    queries are cut off: the same result for any length, with one batched product per
    attention and no Python branch on the length.
    """
    length = values.shape[1]
    padding = (0, 0, 0, (-length) % group_size)

    def grouped(x):  # [B, L, C] -> [B, groups, group_size, C]
        return F.pad(x, padding).unflatten(1, (-1, group_size))

    linear = _linear_attention(lin_q, lin_k, values, group_size, causal)
    weights = F.relu(grouped(quad_q) @ grouped(quad_k).transpose(-1, -2) / group_size).square()
    if causal:
        weights = weights.tril()
    if dropout is not None:
        weights = dropout(weights)
    attended = grouped(linear) + weights @ grouped(values)  # [B, groups, group_size, E]
    # Back to [B, padded length, E] with the length written as the padding made it, which lets
    # the exporter prove that cutting it to ``length`` keeps a symbolic (not data-dependent) size.
    return attended.reshape(attended.shape[0], length + padding[-1], attended.shape[-1])[:, :length]


def _linear_attention(lin_q, lin_k, values, group_size, causal):
    """The global linear attention [B, L, E]: every query reads ``sum_t lin_k[t]^T values[t] / L``;
    causal: a group reads the summaries of earlier groups only, each divided by ``group_size``."""
    length = values.shape[1]
    if not causal:
        summary = _batched_product(lin_k.transpose(1, 2), values).div_(length)  # [B, Q, E]
        return _batched_product(lin_q, summary)
    # Zero-padded to whole groups (no branch on the length); the summary of a last, partial
    # group is never read.
    padding = (0, 0, 0, (-length) % group_size)
    keys, grouped_values, queries = (F.pad(x, padding).unflatten(1, (-1, group_size)) for x in (lin_k, values, lin_q))
    summaries = keys.transpose(-1, -2) @ grouped_values / group_size  # [B, groups, Q, E]
    # Exclusive running sum: group g sees groups 0 .. g - 1.
    earlier = torch.cat((torch.zeros_like(summaries[:, :1]), summaries[:, :-1].cumsum(dim=1)), dim=1)
    return (queries @ earlier).flatten(1, 2)[:, :length]


class _GatedJointAttention(torch.autograd.Function):
    """``a_u * v * sigmoid(a_v * u)`` with ``[a_v | a_u]`` the non-causal joint attention of
    ``hidden = [v | u]``, forward and backward written out (CPU training).

    The forward runs the same products as :func:`relu2_local_global_attention` and the block's
    gating. Autograd's backward of those would slice, select and accumulate in place on views
    of [B, L, E] maps, and each of those views costs a zero-filled [B, L, E] gradient, a copy
    or a concatenation; here every gradient is written once into its own tensor. The local
    attention's dropout multiplier comes from ``sample_mask`` (``None``: no dropout).
    """

    @staticmethod
    def forward(ctx, quad_q, quad_k, lin_q, lin_k, hidden, group_size, sample_mask):
        length = hidden.shape[1]
        summary = _batched_product(lin_k.transpose(1, 2), hidden).div_(length)  # [B, Q, E]
        attended = _batched_product(lin_q, summary)  # [B, L, E]
        relus, masks = [], []
        for start, stop, size in _local_segments(length, group_size):
            q = quad_q[:, start:stop].unflatten(1, (-1, size))  # [B, groups, size, Q]
            k = quad_k[:, start:stop].unflatten(1, (-1, size))
            relu = F.relu(q @ k.transpose(-1, -2) / group_size)
            weights = relu.square()
            mask = None if sample_mask is None else sample_mask(weights.shape, weights.dtype)
            if mask is not None:
                weights.mul_(mask)
            _add_grouped_products_(attended, weights, hidden, start, stop, size)
            relus.append(relu)
            masks.append(mask)
        v, u = hidden.chunk(2, dim=-1)
        attended_v, attended_u = attended.chunk(2, dim=-1)
        gate = torch.sigmoid(attended_v * u)
        gated = attended_u * v * gate
        ctx.group_size = group_size
        ctx.has_masks = masks[0] is not None
        ctx.save_for_backward(
            quad_q, quad_k, lin_q, lin_k, hidden, summary, attended, gate, *relus, *(masks if ctx.has_masks else ())
        )
        return gated

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        quad_q, quad_k, lin_q, lin_k, hidden, summary, attended, gate, *rest = ctx.saved_tensors
        segments = _local_segments(hidden.shape[1], ctx.group_size)
        relus = rest[: len(segments)]
        masks = rest[len(segments) :] if ctx.has_masks else [None] * len(segments)
        batch, length, _ = hidden.shape
        v, u = hidden.chunk(2, dim=-1)
        attended_v, attended_u = attended.chunk(2, dim=-1)

        # Gating: gated = a_u * v * s with s = sigmoid(a_v * u).
        grad_attended = torch.empty_like(attended)
        grad_attended_v, grad_attended_u = grad_attended.chunk(2, dim=-1)
        grad_gated = grad * gate
        torch.mul(grad_gated, v, out=grad_attended_u)  # d/da_u
        grad_v_gating = grad_gated.mul_(attended_u)  # d/dv
        grad_gate_times_gate = grad_attended_u * attended_u  # d/ds * s = grad * a_u * v * s
        # d/d(a_v * u) = d/ds * s * (1 - s)
        grad_logit = torch.addcmul(grad_gate_times_gate, grad_gate_times_gate, gate, value=-1.0)
        torch.mul(grad_logit, u, out=grad_attended_v)  # d/da_v
        grad_u_gating = grad_logit.mul_(attended_v)  # d/du

        # Linear attention: attended = lin_q @ (lin_k^T @ hidden / L).
        grad_summary = _batched_product(lin_q.transpose(1, 2), grad_attended).div_(length)  # [B, Q, E] / L
        grad_lin_q = _batched_product(grad_attended, summary.transpose(1, 2))
        grad_lin_k = _batched_product(hidden, grad_summary.transpose(1, 2))
        grad_hidden = _batched_product(lin_k, grad_summary)

        # Local attention: attended[group] += (relu(q k^T / g)^2 * mask) @ hidden[group].
        grad_quad_q = torch.empty_like(quad_q)
        grad_quad_k = torch.empty_like(quad_k)
        for (start, stop, size), relu, mask in zip(segments, relus, masks):
            weights = relu.square()
            if mask is not None:
                weights.mul_(mask)

            def grouped(x, b):
                return x[b, start:stop].unflatten(0, (-1, size))

            for b in range(batch):
                grad_out = grouped(grad_attended, b)  # [groups, size, E]
                grouped(grad_hidden, b).baddbmm_(weights[b].transpose(-1, -2), grad_out)
                grad_weights = grad_out @ grouped(hidden, b).transpose(-1, -2)  # [groups, size, size]
                if mask is not None:
                    grad_weights.mul_(mask[b])
                grad_scores = grad_weights.mul_(relu[b]).mul_(2.0 / ctx.group_size)  # d/d(q k^T)
                torch.matmul(grad_scores, grouped(quad_k, b), out=grouped(grad_quad_q, b))
                torch.matmul(grad_scores.transpose(-1, -2), grouped(quad_q, b), out=grouped(grad_quad_k, b))

        grad_v, grad_u = grad_hidden.chunk(2, dim=-1)
        grad_v.add_(grad_v_gating)
        grad_u.add_(grad_u_gating)
        return grad_quad_q, grad_quad_k, grad_lin_q, grad_lin_k, grad_hidden, None, None


class MossFormerBlock(nn.Module):
    """One gated attention unit of MossFormer (FLASH-style, with convolutions).

    The first half of the channels is delayed by one frame (token shift). Two projections
    follow: ``to_hidden`` gives values ``v`` and gates ``u`` (each ``expansion_factor / 2``
    times ``d_model``), ``to_qk`` a shared query/key vector from which per-channel scales
    and offsets derive four variants (local q, global q, local k, global k), all rotated by
    RoPE. The joint attention of ``[v | u]`` gives ``[a_v | a_u]``; the block returns
    ``x + to_out(a_u * v * sigmoid(a_v * u))``.

    Arguments
    ---------
    d_model : int
        Channels of the input and output.
    group_size : int
        Frames per group of the local (quadratic) attention.
    query_key_dim : int
        Channels of queries and keys.
    expansion_factor : float
        Width of ``[v | u]`` relative to ``d_model``.
    causal : bool
        If True, attention never looks ahead.
    dropout : float
        Dropout on the attention weights and after each projection.

    Example
    -------
    >>> block = MossFormerBlock(d_model=32, group_size=8, query_key_dim=16)
    >>> rotary = RotaryEmbedding(dim=16)
    >>> x = torch.randn(2, 20, 32)
    >>> block(x, rotary(20)).shape
    torch.Size([2, 20, 32])
    """

    def __init__(
        self,
        d_model,
        group_size=256,
        query_key_dim=128,
        expansion_factor=4.0,
        causal=False,
        dropout=0.1,
    ):
        super().__init__()
        hidden_size = int(d_model * expansion_factor)
        self.group_size = group_size
        self.causal = causal
        self.to_hidden = ConvFeedForward(d_model, hidden_size, dropout=dropout)
        self.to_qk = ConvFeedForward(d_model, query_key_dim, dropout=dropout)
        # Per-channel scale and offset of the four query/key variants, in the order
        # (local query, global query, local key, global key).
        self.qk_gain = nn.Parameter(torch.empty(4, query_key_dim))
        self.qk_bias = nn.Parameter(torch.zeros(4, query_key_dim))
        nn.init.normal_(self.qk_gain, std=0.02)
        self.to_out = ConvFeedForward(hidden_size // 2, d_model, dropout=dropout)
        self.attention_dropout = Dropout(dropout)
        #: Set by :meth:`MossFormerMaskNet.fuse_for_inference`: gate in place (no autograd then).
        self.inplace_gating = False

    def train(self, mode=True):
        if mode:
            self.inplace_gating = False  # autograd needs the attention output intact
        return super().train(mode)

    def forward(self, x, rotation):
        """Returns the [B, L, d_model] output for the input ``x`` [B, L, d_model].

        Arguments
        ---------
        x : torch.Tensor
            Input sequence, [B, L, d_model].
        rotation : tuple of torch.Tensor
            ``(cos, sin)`` from :class:`RotaryEmbedding` for length L.

        Returns
        -------
        torch.Tensor
            [B, L, d_model].
        """
        shifted = _token_shift(x)
        hidden = self.to_hidden(shifted)  # [B, L, E] = [v | u]
        qk = self.to_qk(shifted)  # [B, L, Q]
        # [4, B, L, Q]: each variant contiguous, all rotated in one call.
        heads = torch.addcmul(self.qk_bias[:, None, None], qk, self.qk_gain[:, None, None])
        quad_q, lin_q, quad_k, lin_k = RotaryEmbedding.rotate_(heads, *rotation).unbind(0)

        if _use_gated_joint_attention(hidden, self.causal):
            dropout = self.attention_dropout
            sample_mask = dropout.sample_mask if dropout.training and dropout.p > 0 else None
            gated = _GatedJointAttention.apply(quad_q, quad_k, lin_q, lin_k, hidden, self.group_size, sample_mask)
            return self.to_out(gated) + x
        if (self.inplace_gating and not self.causal and hidden.is_contiguous()
                and _use_onednn(hidden, quad_q, lin_q) and _onednn_binary_available()):
            gated = _gated_attention_by_groups(quad_q, quad_k, lin_q, lin_k, hidden, self.group_size)
            return self.to_out(gated) + x
        attended = relu2_local_global_attention(
            quad_q,
            quad_k,
            lin_q,
            lin_k,
            hidden,
            self.group_size,
            causal=self.causal,
            dropout=self.attention_dropout,
        )
        if self.inplace_gating and not torch.compiler.is_exporting():
            gated = _gate_in_place_(attended, hidden)
        else:
            v, u = hidden.chunk(2, dim=-1)
            attended_v, attended_u = attended.chunk(2, dim=-1)
            gated = attended_u * v * torch.sigmoid(attended_v * u)
        return self.to_out(gated) + x


#: Elements of ``[a_v | a_u]`` gated per piece by :func:`_gate_in_place_` (2 MB in float32).
GATING_PIECE_ELEMENTS = 1 << 19


def _gate_in_place_(attended, hidden):
    """``a_u * v * sigmoid(a_v * u)`` computed inside ``attended`` = ``[a_v | a_u]`` [B, L, E]
    (which nothing else reads; no new tensors) for ``hidden`` = ``[v | u]``; returns the
    ``a_u`` half. Frames are gated a piece at a time so that the four passes find their
    operands in cache on CPU: for [1, 2999, 2048] 3.2 against 7.9 ms on 2 threads (other
    devices take the whole tensor). The same elementwise operations, so the same numbers."""
    if attended.device.type != "cpu":
        return _gate_into_(attended.chunk(2, dim=-1)[1], attended, hidden)
    rows = max(1, GATING_PIECE_ELEMENTS // attended.shape[-1])
    for item, values in zip(attended, hidden):  # [L, E] each
        for start in range(0, item.shape[0], rows):
            piece = item[start : start + rows]
            _gate_into_(piece.chunk(2, dim=-1)[1], piece, values[start : start + rows])
    return attended.chunk(2, dim=-1)[1]


def _gate_into_(out, attended, hidden):
    """Writes ``a_u * v * sigmoid(a_v * u)`` into ``out`` (which may be the ``a_u`` half itself)
    for ``attended`` = ``[a_v | a_u]`` and ``hidden`` = ``[v | u]``; overwrites ``a_v``.
    Returns ``out``."""
    v, u = hidden.chunk(2, dim=-1)
    attended_v, attended_u = attended.chunk(2, dim=-1)
    return torch.mul(attended_u, v, out=out).mul_(attended_v.mul_(u).sigmoid_())


def _gated_attention_by_groups(quad_q, quad_k, lin_q, lin_k, hidden, group_size):
    """``a_u * v * sigmoid(a_v * u)`` for ``hidden`` = ``[v | u]`` [B, L, E] and its non-causal
    joint attention ``[a_v | a_u]``, one group of frames at a time through oneDNN's linear
    (float32 CPU inference; see :func:`_use_onednn`). Returns a new contiguous [B, L, E / 2].

    Each group's local product ``weights @ values`` and its sum with the group's rows of the
    linear attention are one oneDNN product with an "add" post-op (0.85 of ``baddbmm_``'s time
    on this CPU), and the group's [group_size, E] result is gated while it is in cache, into a
    contiguous output that ``to_out`` reads without a copy. The same formula as
    :func:`relu2_local_global_attention` and the block's gating, up to the products' rounding.
    ``hidden`` must be contiguous: oneDNN reads each group's values as a transposed weight, and
    with other strides it falls back to a reference kernel hundreds of times slower.
    """
    batch, length, width = hidden.shape
    linear = _linear_attention(lin_q, lin_k, hidden, group_size, causal=False)  # [B, L, E]
    gated = hidden.new_empty(batch, length, width // 2)
    for b in range(batch):
        for start, stop, size in _local_segments(length, group_size):
            q = quad_q[b, start:stop].unflatten(0, (-1, size))  # [groups, size, Q]
            k = quad_k[b, start:stop].unflatten(0, (-1, size))
            all_weights = _relu2_weights(q, k, group_size)
            for first, weights in zip(range(start, stop, size), all_weights):
                rows = slice(first, first + size)
                values = hidden[b, rows]
                attended = torch.ops.mkldnn._linear_pointwise.binary(weights, linear[b, rows], values.t(), None, "add")
                _gate_into_(gated[b, rows], attended, values)
    return gated


def _use_gated_joint_attention(hidden, causal):
    """Whether a block takes :class:`_GatedJointAttention`: CPU training (a graph is being
    built) outside autocast, non-causal, outside export; other routes keep autograd's."""
    return (
        _builds_graph(hidden)
        and hidden.device.type == "cpu"
        and not causal
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_exporting()
    )


def _token_shift(x):
    """Delays the first half of the channels of ``x`` [B, L, C] by one frame."""
    half = (x.shape[-1] + 1) // 2
    shifted = torch.empty_like(x)
    shifted[:, :1, :half] = 0.0
    shifted[:, 1:, :half] = x[:, :-1, :half]
    shifted[:, :, half:] = x[:, :, half:]
    return shifted


class MossFormerMaskNet(nn.Module):
    """MossFormer masking network: one mask per speaker over the encoded mixture.

    Norm -> 1x1 bottleneck -> + scaled sinusoidal positions -> ``num_blocks``
    :class:`MossFormerBlock` (time-major, shared rotary angles) -> LayerNorm -> norm ->
    + skip -> PReLU -> 1x1 conv to ``num_spks`` streams -> tanh/sigmoid gated 1x1 convs ->
    1x1 conv back to ``in_channels`` -> ReLU.

    Arguments
    ---------
    in_channels : int
        Channels N of the encoder output (and of the masks).
    out_channels : int
        Channels inside the network (the model dimension of the blocks).
    mask_channels : int, optional
        Channels of the masks when they are not ``in_channels`` (e.g. the frequency bins of a
        spectral mask computed from other features).
    num_spks : int
        Number of speakers (masks).
    num_blocks : int
        Number of MossFormer blocks.
    d_model : int, optional
        Model dimension of the blocks; must equal ``out_channels`` (default).
    group_size : int
        Frames per group of the local attention.
    query_key_dim : int
        Channels of queries and keys.
    expansion_factor : float
        Width of the value/gate projection relative to ``d_model``.
    attn_dropout : float
        Dropout inside the blocks.
    causal : bool
        If True, the attention never looks ahead.
    norm : str
        Normalisation of the input and of the block-stack output: ``"ln"`` (GroupNorm with
        one group), ``"gln"``, ``"cln"`` or anything else for BatchNorm, as
        :func:`speechbrain.lobes.models.dual_path.select_norm`; None skips the latter.
    skip_connection : bool
        Add the block-stack input to its output.
    use_global_pos_enc : bool
        Add scaled sinusoidal positions before the blocks.

    Example
    -------
    >>> masknet = MossFormerMaskNet(
    ...     in_channels=64, out_channels=64, num_blocks=2, group_size=16, query_key_dim=32
    ... )
    >>> masknet(torch.randn(3, 64, 100)).shape
    torch.Size([2, 3, 64, 100])
    """

    def __init__(
        self,
        in_channels=512, out_channels=512, num_spks=2,
        # the block stack
        num_blocks=24, d_model=None, group_size=256, query_key_dim=128, expansion_factor=4.0,
        attn_dropout=0.1, causal=False,
        # around it
        norm="ln", skip_connection=True, use_global_pos_enc=True, mask_channels=None,
    ):  # fmt: skip
        super().__init__()
        if d_model is not None and d_model != out_channels:
            raise ValueError(
                f"the blocks run on out_channels={out_channels} channels, got d_model={d_model}"
            )
        self.num_spks = num_spks
        self.norm_type = norm
        self.skip_connection = skip_connection
        self.input_norm = select_norm(norm, in_channels, 3)
        self.bottleneck = nn.Conv1d(in_channels, out_channels, 1, bias=False)
        self.pos_encoding = ScaledSinusoidalEmbedding(out_channels) if use_global_pos_enc else None

        self.rotary = RotaryEmbedding(min(MAX_ROTARY_DIM, query_key_dim))
        self.blocks = nn.ModuleList(
            MossFormerBlock(
                out_channels,
                group_size=group_size,
                query_key_dim=query_key_dim,
                expansion_factor=expansion_factor,
                causal=causal,
                dropout=attn_dropout,
            )
            for _ in range(num_blocks)
        )
        self.blocks_norm = nn.LayerNorm(out_channels, eps=1e-6)
        self.post_norm = select_norm(norm, out_channels, 3) if norm is not None else None

        self.prelu = nn.PReLU()
        self.speaker_split = nn.Conv1d(out_channels, out_channels * num_spks, 1)
        self.mask_value = nn.Conv1d(out_channels, out_channels, 1)
        self.mask_gate = nn.Conv1d(out_channels, out_channels, 1)
        self.mask_proj = nn.Conv1d(out_channels, mask_channels or in_channels, 1, bias=False)
        self.recycles_memory = False  # see fuse_for_inference

    def fuse_for_inference(self):
        """Inference only: the blocks gate in place (no new tensors; autograd must be off) and
        :meth:`forward` runs in :func:`speechbrain_ext.memory.recycled_memory`. Puts the
        masknet in eval mode; ``train()`` undoes it. Returns self.

        Example
        -------
        >>> masknet = MossFormerMaskNet(32, 32, num_blocks=1, group_size=8, query_key_dim=16).eval()
        >>> x = torch.randn(1, 32, 40)
        >>> with torch.no_grad():
        ...     plain = masknet(x)
        ...     fused = masknet.fuse_for_inference()(x)
        >>> torch.allclose(plain, fused, atol=1e-6)
        True
        """
        self.eval()
        self.recycles_memory = True
        for block in self.blocks:
            block.inplace_gating = True
        prepack_linear_weights(self)
        return self

    def train(self, mode=True):
        if mode:
            self.recycles_memory = False
        return super().train(mode)

    def forward(self, x, speakers=None):
        """Returns the masks [num_spks, B, N, L] for the encoded mixture ``x`` [B, N, L]; with
        ``speakers``, only the first ``speakers`` masks (e.g. 1 when only the first is used)."""
        if speakers is None:
            speakers = self.num_spks
        elif not 1 <= speakers <= self.num_spks:
            raise ValueError(f"speakers must be between 1 and num_spks={self.num_spks}, got {speakers}")
        with recycled_memory(self.recycles_memory):
            return self._masks(x, speakers)

    def _block_stack(self, h, rotation):
        """The blocks in turn on the time-major sequence ``h`` [B, L, C]."""
        for block in self.blocks:
            h = block(h, rotation)
        return h

    def _masks(self, x, speakers):
        batch, _, frames = x.shape
        x = self.bottleneck(self.input_norm(x))
        if self.pos_encoding is not None:
            x = x + self.pos_encoding(frames).transpose(0, 1)

        h = x.transpose(1, 2).contiguous()  # the blocks run time-major: [B, L, C]
        h = self.blocks_norm(self._block_stack(h, self.rotary(frames))).transpose(1, 2)
        if self.post_norm is not None:
            h = self.post_norm(h)
        if self.skip_connection:
            h = h + x

        split = self.speaker_split
        channels = split.out_channels // self.num_spks
        streams = channels * speakers  # the leading speakers' channels
        h = F.conv1d(self.prelu(h), split.weight[:streams], split.bias[:streams])  # [B, speakers * C, L]
        h = h.reshape(batch * speakers, channels, frames)  # (no -1: export keeps the length symbolic)
        h = torch.tanh(self.mask_value(h)) * torch.sigmoid(self.mask_gate(h))
        masks = F.relu(self.mask_proj(h))  # [B * speakers, N, L]
        return masks.unflatten(0, (batch, speakers)).transpose(0, 1)


class MossFormer(nn.Module):
    """MossFormer separator: encoder, masknet and decoder in one module.

    The keyword arguments and their defaults are those of the official 8 kHz model
    (42,101,850 parameters). The encoder hop is ``kernel_size // 2``; ``stride`` sets the
    decoder hop and should equal it.

    Arguments
    ---------
    kernel_size : int
        Filter length of encoder and decoder, in samples.
    stride : int
        Decoder hop, in samples.
    in_channels : int
        Channels N of the encoded mixture as seen by masknet and decoder.
    out_channels : int
        Channels of the encoder output and inside the masknet.
    bias : bool
        Whether the decoder has a bias.
    num_spks : int
        Number of speakers to separate.
    num_blocks : int
        Number of MossFormer blocks.
    d_model : int
        Model dimension of the blocks (equal to ``out_channels``).
    group_size, query_key_dim, expansion_factor, attn_dropout, causal, norm
        The masknet's (see :class:`MossFormerMaskNet`).

    Example
    -------
    >>> model = MossFormer(
    ...     in_channels=64, out_channels=64, num_blocks=2, d_model=64,
    ...     group_size=16, query_key_dim=32,
    ... ).eval()
    >>> model(torch.randn(2, 1001)).shape
    torch.Size([2, 1001, 2])
    """

    def __init__(
        self,
        # the waveform <-> frames convolutions
        kernel_size=16, stride=8, in_channels=512, out_channels=512, bias=False,
        # the masknet
        num_spks=2, num_blocks=24, d_model=512, group_size=256, query_key_dim=128,
        expansion_factor=4.0, attn_dropout=0.1, causal=False, norm="ln",
    ):  # fmt: skip
        super().__init__()
        self._assemble(
            lambda: MossFormerMaskNet(
                in_channels, out_channels, num_spks=num_spks, num_blocks=num_blocks, d_model=d_model,
                group_size=group_size, query_key_dim=query_key_dim, expansion_factor=expansion_factor,
                attn_dropout=attn_dropout, causal=causal, norm=norm,
            ),
            kernel_size, stride, in_channels, out_channels, bias,
        )  # fmt: skip

    def _assemble(self, make_masknet, kernel_size, stride, in_channels, out_channels, bias):
        """The encoder, the masknet ``make_masknet()`` builds, and the decoder, initialised in this
        order (shared by the MossFormer2 separator)."""
        self.encoder = MossFormerEncoder(kernel_size=kernel_size, out_channels=out_channels)
        self.masknet = make_masknet()
        # One output channel: the decoder turns each masked representation into a waveform.
        self.decoder = MossFormerDecoder(in_channels, out_channels=1, kernel_size=kernel_size, stride=stride, bias=bias)

    @classmethod
    def from_modules(cls, encoder, masknet, decoder):
        """Wraps existing encoder, masknet and decoder modules (weights shared, not copied).

        Arguments
        ---------
        encoder : MossFormerEncoder
        masknet : MossFormerMaskNet
        decoder : MossFormerDecoder

        Returns
        -------
        MossFormer

        Example
        -------
        >>> encoder = MossFormerEncoder(out_channels=32)
        >>> masknet = MossFormerMaskNet(32, 32, num_blocks=1, group_size=8, query_key_dim=16)
        >>> decoder = MossFormerDecoder(in_channels=32)
        >>> model = MossFormer.from_modules(encoder, masknet, decoder)
        >>> model.masknet is masknet
        True
        """
        model = cls.__new__(cls)
        nn.Module.__init__(model)
        model.encoder, model.masknet, model.decoder = encoder, masknet, decoder
        return model

    @property
    def num_spks(self):
        """Number of separated sources."""
        return self.masknet.num_spks

    @property
    def config(self):
        """The constructor arguments that rebuild this model (for ``configuration.json``)."""
        block = self.masknet.blocks[0]
        d_model = self.masknet.bottleneck.out_channels
        return dict(
            num_spks=self.num_spks,
            kernel_size=self.encoder.conv1d.kernel_size[0],
            in_channels=self.decoder.in_channels,
            out_channels=self.encoder.conv1d.out_channels,
            stride=self.decoder.stride[0],
            bias=self.decoder.bias is not None,
            num_blocks=len(self.masknet.blocks),
            d_model=d_model,
            attn_dropout=block.attention_dropout.p,
            group_size=block.group_size,
            query_key_dim=block.qk_gain.shape[-1],
            expansion_factor=block.to_hidden.linear.out_features / d_model,
            causal=block.causal,
            norm=self.masknet.norm_type,
        )

    def fuse_for_inference(self):
        """See :meth:`MossFormerMaskNet.fuse_for_inference`; returns self."""
        self.eval()
        self.masknet.fuse_for_inference()
        return self

    def forward(self, mix):
        """Separates the mixtures ``mix`` [B, T] into sources [B, T, num_spks]."""
        return encode_mask_decode(self.encoder, self.masknet, self.decoder, mix)
