"""MossFormerGAN speech enhancement (16 kHz): the generator of ClearerVoice-Studio's
``MossFormerGAN_SE_16K`` on a power-compressed STFT.

The waveform is brought to unit mean power, its STFT (hamming 400 / hop 100, 201 bins)
power-compressed (magnitude ** 0.3, phase kept), and the generator predicts from it a magnitude
mask and a complex residual, both in the compressed domain; the result is uncompressed and
resynthesised. The generator: a dense encoder (causal dilated convolutions along time, an FSMN
memory along frequency after each, then a stride-2 convolution to 101 bins), six time-frequency
blocks (a MossFormer unit along frequency, one along time, each between gated FSMN features and a
squeeze-excitation gate, then a full-band multi-head attention over frames), and a mask decoder and
a complex decoder (dense blocks and sub-pixel convolutions back to 201 bins).

* :class:`SequenceFSMN`: FSMN memory on time-major sequences;
* :class:`CausalDenseBlock`: the dense stack of dilated convolutions;
* :class:`GridMossFormer`: the MossFormer unit of these blocks (attention along a sequence and
  across the other axis);
* :class:`AxisPath`, :class:`FullBandAttention`, :class:`TimeFrequencyBlock`;
* :class:`MossFormerGANGenerator` (spectra in, spectra out) and :class:`MossFormerGANSE`
  (waveforms in, waveforms out), defaults of the official model (3,128,639 parameters).

Official weights load with :func:`speechbrain_ext.convert.mossformer_gan_from_official`.

Authors
 * speechbrain-ext contributors
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from speechbrain_ext.lobes.models.mossformer import (
    ConvFeedForward,
    DepthwiseTimeConv,
    RotaryEmbedding,
    _batched_product,
    _builds_graph,
    _linear,
    _token_shift,
    _use_onednn,
    prepack_linear_weights,
)
from speechbrain_ext.memory import recycled_memory
from speechbrain_ext.nnet.dropout import Dropout
from speechbrain_ext.nnet.stft import FramedISTFT, FramedSTFT

#: The official model's STFT and compression.
COMPRESSION = 0.3


class SequenceFSMN(nn.Module):
    """FSMN memory on time-major sequences [N, L, D] -> [N, L, D]: ``x + p + conv(p)`` with
    ``p = project(relu(hidden(x)))`` and a "same" depthwise convolution of ``2 * order - 1`` taps.

    Arguments
    ---------
    channels : int
        Channels D.
    hidden_size : int
        Width of the hidden projection.
    order : int
        Half the kernel length, plus one.

    Example
    -------
    >>> SequenceFSMN(8, 16, order=3)(torch.randn(2, 20, 8)).shape
    torch.Size([2, 20, 8])
    """

    def __init__(self, channels, hidden_size, order):
        super().__init__()
        self.hidden = nn.Linear(channels, hidden_size)
        self.project = nn.Linear(hidden_size, channels, bias=False)
        self.conv = DepthwiseTimeConv(channels, 2 * order - 1)

    def forward(self, x):
        hidden = _linear(x, self.hidden.weight, self.hidden.bias, "relu")  # oneDNN without a graph
        return x + self.conv(_linear(hidden, self.project.weight, None), residual=True)


class CausalDenseBlock(nn.Module):
    """Dense stack of convolutions on [B, C, T, F] maps, causal in time: layer ``i`` (dilation
    ``2 ** i`` in time, 2 x 3 taps) reads ``[out_{i-1}, ..., out_0, x]``, then InstanceNorm, PReLU
    and an FSMN memory along frequency; the last layer's output is the block's.

    Arguments
    ---------
    channels : int
        Channels C.
    depth : int
        Number of layers.
    memory_order : int
        Order of the frequency FSMN (kernel ``2 * order - 1``).

    Example
    -------
    >>> CausalDenseBlock(8, depth=2)(torch.randn(2, 8, 10, 12)).shape
    torch.Size([2, 8, 10, 12])
    """

    def __init__(self, channels, depth=4, memory_order=5):
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(channels * (i + 1), channels, (2, 3), dilation=(2**i, 1)) for i in range(depth)
        )
        self.norms = nn.ModuleList(nn.InstanceNorm2d(channels, affine=True) for _ in range(depth))
        self.activations = nn.ModuleList(nn.PReLU(channels) for _ in range(depth))
        self.memories = nn.ModuleList(SequenceFSMN(channels, channels, memory_order) for _ in range(depth))

    def forward(self, x):
        dense = x
        for i, (conv, norm, activation, memory) in enumerate(zip(self.convs, self.norms, self.activations, self.memories)):
            out = activation(norm(conv(F.pad(dense, (1, 1, 2**i, 0)))))  # frames t - d and t only
            batch, channels, frames, bins = out.shape
            along_freq = out.permute(0, 2, 3, 1).reshape(batch * frames, bins, channels)
            out = memory(along_freq).view(batch, frames, bins, channels).permute(0, 3, 1, 2)
            dense = torch.cat((out, dense), dim=1)
        return out


class GridMossFormer(nn.Module):
    """The MossFormer unit of MossFormerGAN, on a grid of sequences [B, R, N, D] -> [B * R, N, D].

    Each of the ``R`` rows is a sequence of ``N`` positions. Token shift, ``to_hidden`` -> values
    ``v`` and gates ``u``, ``to_qk`` -> four scaled and offset variants (rotated along the sequence).
    The attention of ``[v | u]`` sums three parts: relu² attention over the whole sequence (scaled
    by ``1 / N``), relu² attention across rows at each position (scaled by ``1 / R``, a row never
    attending to itself) and linear attention over the sequence; the unit returns
    ``x + to_out(a_u * v * sigmoid(a_v * u))``.

    Arguments
    ---------
    d_model : int
        Channels D.
    query_key_dim : int
        Channels of queries and keys.
    expansion_factor : float
        Width of ``[v | u]`` relative to ``d_model``.
    dropout : float
        Dropout of the feed-forward branches and the attention weights.

    Example
    -------
    >>> GridMossFormer(16, query_key_dim=16)(torch.randn(2, 3, 7, 16)).shape
    torch.Size([6, 7, 16])
    """

    def __init__(self, d_model, query_key_dim=128, expansion_factor=4.0, dropout=0.1):
        super().__init__()
        hidden_size = int(d_model * expansion_factor)
        self.to_hidden = ConvFeedForward(d_model, hidden_size, kernel_size=31, dropout=dropout, norm="layer")
        self.to_qk = ConvFeedForward(d_model, query_key_dim, kernel_size=31, dropout=dropout, norm="layer")
        self.qk_gain = nn.Parameter(torch.ones(4, query_key_dim))
        self.qk_bias = nn.Parameter(torch.zeros(4, query_key_dim))
        self.rotary = RotaryEmbedding(min(32, query_key_dim))
        self.to_out = ConvFeedForward(hidden_size // 2, d_model, kernel_size=31, dropout=dropout, norm="layer")
        self.attention_dropout = Dropout(dropout)

    def forward(self, grid):
        batch, rows, length, channels = grid.shape
        x = grid.reshape(batch * rows, length, channels)
        shifted = _token_shift(x)
        hidden = self.to_hidden(shifted)  # [B * R, N, E] = [v | u]
        heads = torch.addcmul(self.qk_bias[:, None, None], self.to_qk(shifted), self.qk_gain[:, None, None])
        quad_q, lin_q, quad_k, lin_k = RotaryEmbedding.rotate_(heads, *self.rotary(length)).unbind(0)

        def across(t):  # [B * R, N, C] -> [B, N, R, C]: the rows of each position
            return t.view(batch, rows, length, -1).transpose(1, 2)

        if (self.training or self.attention_dropout.training or _builds_graph(hidden, quad_q)
                or torch.compiler.is_exporting() or torch.compiler.is_compiling()):
            weights = F.relu(quad_q @ quad_k.transpose(-1, -2) / length).square()
            out = self.attention_dropout(weights) @ hidden
            cross = F.relu(across(quad_q) @ across(quad_k).transpose(-1, -2) / rows).square()
            cross = cross * (1 - torch.eye(rows, device=cross.device, dtype=cross.dtype))  # no row attends to itself
            out = out + (self.attention_dropout(cross) @ across(hidden)).transpose(1, 2).reshape_as(out)
            out = out + lin_q @ (lin_k.transpose(-1, -2) @ hidden / length)
        else:
            # The same sums in eval mode without a graph: the linear attention first, then
            # each relu² attention added in place, its score maps ([B * R, N, N] and [B, N, R, R];
            # for 4 s the larger is 166 MB) either one item at a time (long sequences, oneDNN) or
            # written once and transformed in place.
            summary = _batched_product(lin_k.transpose(-1, -2), hidden).div_(length)  # [B * R, Q, E]
            out = _batched_product(lin_q, summary)
            _add_relu2_attention_(out, quad_q, quad_k, hidden, length)
            for item in range(batch):  # across rows: the items are the positions of each grid
                _add_relu2_attention_(across(out)[item], across(quad_q)[item], across(quad_k)[item],
                                      across(hidden)[item], rows, exclude_self=True)

        v, u = hidden.chunk(2, dim=-1)
        attended_v, attended_u = out.chunk(2, dim=-1)
        return x + self.to_out(attended_u * v * torch.sigmoid(attended_v * u))


#: Sequences at least this long take :func:`_add_relu2_attention_` one item at a time.
ITEMWISE_ATTENTION_LENGTH = 256


def _add_relu2_attention_(out, q, k, values, scale, exclude_self=False):
    """``out[i] += relu(q[i] @ k[i]^T / scale)^2 @ values[i]`` for the items ``i`` of ``q``, ``k``
    [I, N, Q], ``values`` [I, N, E] and ``out`` [I, N, E] (any strides: ``out`` may be a view),
    without a graph; with ``exclude_self`` the scores' diagonal is zeroed (no position attends
    to itself).

    Long sequences (from :data:`ITEMWISE_ATTENTION_LENGTH`) on oneDNN's route go one item at a
    time through oneDNN's linear, so that each [N, N] score map stays in cache; otherwise all
    score maps are one batched product, transformed in place.
    """
    if q.shape[1] >= ITEMWISE_ATTENTION_LENGTH and _use_onednn(q, k, values):
        q, k, values = q.contiguous(), k.contiguous(), values.contiguous()  # oneDNN's fast layouts
        product = torch.ops.mkldnn._linear_pointwise
        for item, (q_i, k_i, values_i) in enumerate(zip(q, k, values)):
            scores = _relu2_scores_(product(q_i, k_i, None, "none", [], ""), scale, exclude_self)
            out[item].add_(product(scores, values_i.t(), None, "none", [], ""))
        return out
    return out.add_(_relu2_scores_(q @ k.transpose(-1, -2), scale, exclude_self) @ values)


def _relu2_scores_(scores, scale, exclude_self):
    """``relu(scores / scale) ** 2`` in place, [..., N, N]; the diagonal zeroed if
    ``exclude_self``. Returns ``scores``."""
    scores.div_(scale).relu_().square_()
    if exclude_self:
        scores.diagonal(dim1=-2, dim2=-1).zero_()
    return scores


class ChannelNorm(nn.Module):
    """Normalisation of [B, C, T, F] maps over ``dims`` (1: the channels, per time-frequency point;
    (1, 3): channels and frequency, per frame), with a learned scale and offset of ``shape``.

    Example
    -------
    >>> ChannelNorm((1, 8, 1, 1))(torch.randn(2, 8, 5, 6)).shape
    torch.Size([2, 8, 5, 6])
    """

    def __init__(self, shape, dims=(1,), eps=1e-5):
        super().__init__()
        self.dims, self.eps = dims, eps
        self.gamma = nn.Parameter(torch.ones(shape))
        self.beta = nn.Parameter(torch.zeros(shape))

    def forward(self, x):
        var, mean = torch.var_mean(x, dim=self.dims, keepdim=True, correction=0)
        return (x - mean) * torch.rsqrt(var + self.eps) * self.gamma + self.beta


class SqueezeExcitation(nn.Module):
    """Channel gate of [B, C, T, F] maps: ``sigmoid(mlp(mean)) + sigmoid(mlp'(max))`` (in (0, 2)),
    over time and frequency, times the input.

    Example
    -------
    >>> SqueezeExcitation(8)(torch.randn(2, 8, 5, 6)).shape
    torch.Size([2, 8, 5, 6])
    """

    def __init__(self, channels):
        super().__init__()
        self.mean_gate = nn.Sequential(nn.Linear(channels, channels), nn.ReLU(), nn.Linear(channels, channels))
        self.max_gate = nn.Sequential(nn.Linear(channels, channels), nn.ReLU(), nn.Linear(channels, channels))

    def forward(self, x):
        gate = torch.sigmoid(self.mean_gate(x.mean((2, 3)))) + torch.sigmoid(self.max_gate(x.amax((2, 3))))
        return gate[:, :, None, None] * x


class AxisPath(nn.Module):
    """One axis of a :class:`TimeFrequencyBlock` on [B, C, T, F] maps: channel norm, pairs of
    neighbours along the axis (2 C features), gated FSMN features, a transposed convolution back to
    C channels and the axis length, a :class:`GridMossFormer` along the axis, squeeze-excitation,
    plus the input. Along frequency (``axis="freq"``) the pairs come from a learned depthwise
    convolution; along time they are the two frames themselves.

    Arguments
    ---------
    channels : int
        Channels C.
    axis : str
        ``"freq"`` or ``"time"``.
    hidden_channels : int
        Features of the gated FSMN (2 C).

    Example
    -------
    >>> AxisPath(16, "time", hidden_channels=32)(torch.randn(2, 16, 9, 7)).shape
    torch.Size([2, 16, 9, 7])
    """

    def __init__(self, channels, axis, hidden_channels=128, fsmn_order=20, query_key_dim=128, dropout=0.1):
        super().__init__()
        if axis not in ("freq", "time"):
            raise ValueError(f"axis must be 'freq' or 'time', got {axis!r}")
        self.axis = axis
        self.norm = ChannelNorm((1, channels, 1, 1))
        self.pairs = nn.Conv2d(channels, 2 * channels, (1, 2), groups=channels) if axis == "freq" else None
        self.to_memory = ConvFeedForward(hidden_channels, hidden_channels, kernel_size=31, dropout=dropout, norm="layer")
        self.to_gate = ConvFeedForward(hidden_channels, hidden_channels, kernel_size=31, dropout=dropout, norm="layer")
        self.memory = SequenceFSMN(hidden_channels, hidden_channels, fsmn_order)
        self.merge = nn.ConvTranspose1d(hidden_channels, channels, 2)
        self.attention = GridMossFormer(channels, query_key_dim=query_key_dim, dropout=dropout)
        self.excitation = SqueezeExcitation(channels)

    def forward(self, x):
        batch, channels, frames, bins = x.shape
        y = self.norm(x)
        if self.axis == "freq":  # sequences along frequency, one per frame
            y = self.pairs(y)  # [B, 2C, T, F - 1]
            y = y.permute(0, 2, 3, 1).reshape(batch * frames, bins - 1, 2 * channels)
            rows, length = frames, bins
        else:  # sequences along time, one per frequency bin
            y = y.permute(0, 3, 2, 1).reshape(batch * bins, frames, channels)
            y = torch.stack((y[:, :-1], y[:, 1:]), dim=-1).flatten(2)  # [B * F, T - 1, 2C]
            rows, length = bins, frames
        y = self.to_gate(y) * self.memory(self.to_memory(y))
        y = self.merge(y.transpose(1, 2)).transpose(1, 2)  # [B * rows, length, C]
        y = self.attention(y.reshape(batch, rows, length, channels)).view(batch, rows, length, channels)
        y = y.permute(0, 3, 1, 2) if self.axis == "freq" else y.permute(0, 3, 2, 1)
        return self.excitation(y) + x


class _ProjectNorm(nn.Sequential):
    """1x1 convolution -> PReLU (one slope) -> :class:`ChannelNorm` over channels and frequency."""

    def __init__(self, channels, out_channels, bins):
        super().__init__(nn.Conv2d(channels, out_channels, 1), nn.PReLU(),
                         ChannelNorm((1, out_channels, 1, bins), dims=(1, 3)))


class FullBandAttention(nn.Module):
    """Multi-head softmax attention over the frames of [B, C, T, F] maps, every frame a vector of
    all its bins (queries and keys of ``qk_channels`` per bin), plus the input.

    Example
    -------
    >>> FullBandAttention(16, bins=7, heads=2, qk_channels=3)(torch.randn(2, 16, 9, 7)).shape
    torch.Size([2, 16, 9, 7])
    """

    def __init__(self, channels, bins, heads=4, qk_channels=6):
        super().__init__()
        head_channels = channels // heads
        self.queries = nn.ModuleList(_ProjectNorm(channels, qk_channels, bins) for _ in range(heads))
        self.keys = nn.ModuleList(_ProjectNorm(channels, qk_channels, bins) for _ in range(heads))
        self.values = nn.ModuleList(_ProjectNorm(channels, head_channels, bins) for _ in range(heads))
        self.output = _ProjectNorm(channels, channels, bins)

    def forward(self, x):
        batch, _, frames, bins = x.shape
        heads = []
        for query, key, value in zip(self.queries, self.keys, self.values):
            q, k = (proj(x).transpose(1, 2).flatten(2) for proj in (query, key))  # [B, T, qk * F]
            v = value(x)
            # (Products of contiguous items: through oneDNN without a graph.)
            weights = torch.softmax(_batched_product(q, k.transpose(1, 2)) / math.sqrt(q.shape[-1]), dim=-1)
            out = _batched_product(weights, v.transpose(1, 2).flatten(2))  # [B, T, head * F]
            heads.append(out.view(batch, frames, -1, bins).transpose(1, 2))
        return self.output(torch.cat(heads, dim=1)) + x


class TimeFrequencyBlock(nn.Module):
    """A block of the generator: :class:`AxisPath` along frequency, then along time, then
    :class:`FullBandAttention`, on [B, C, T, F] maps.

    Example
    -------
    >>> block = TimeFrequencyBlock(16, bins=7, hidden_channels=32, query_key_dim=16, qk_channels=3)
    >>> block(torch.randn(1, 16, 9, 7)).shape
    torch.Size([1, 16, 9, 7])
    """

    def __init__(self, channels, bins, hidden_channels=128, query_key_dim=128, heads=4, qk_channels=6):
        super().__init__()
        self.intra = AxisPath(channels, "freq", hidden_channels, query_key_dim=query_key_dim)
        self.inter = AxisPath(channels, "time", hidden_channels, query_key_dim=query_key_dim)
        self.fullband = FullBandAttention(channels, bins, heads, qk_channels)

    def forward(self, x):
        return self.fullband(self.inter(self.intra(x)))


class _SubPixelUp(nn.Module):
    """Doubles the bins of [B, C, T, F] maps: a 1 x 3 convolution to 2 C channels, interleaved."""

    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, 2 * channels, (1, 3))

    def forward(self, x):
        y = self.conv(F.pad(x, (1, 1)))
        batch, _, frames, bins = y.shape
        return y.view(batch, 2, -1, frames, bins).permute(0, 2, 3, 4, 1).reshape(batch, -1, frames, 2 * bins)


class MossFormerGANGenerator(nn.Module):
    """The generator: compressed spectrum [B, 2, T, F] (real, imaginary) -> (real, imaginary),
    each [B, 1, T, F]: a magnitude mask times the input magnitude with the input phase, plus a
    complex residual.

    Arguments
    ---------
    bins : int
        Frequency bins F (odd; the blocks run on ``(F + 1) // 2``).
    channels, num_blocks, hidden_channels, query_key_dim, heads, qk_channels
        Sizes of the encoder, blocks and decoders (official: 64, 6, 128, 128, 4, 6).

    Example
    -------
    >>> generator = MossFormerGANGenerator(bins=21, channels=16, num_blocks=1, hidden_channels=32,
    ...                                    query_key_dim=16, qk_channels=3)
    >>> real, imag = generator(torch.randn(1, 2, 9, 21))
    >>> real.shape, imag.shape
    (torch.Size([1, 1, 9, 21]), torch.Size([1, 1, 9, 21]))
    """

    def __init__(self, bins=201, channels=64, num_blocks=6, hidden_channels=128, query_key_dim=128, heads=4,
                 qk_channels=6):  # fmt: skip
        super().__init__()
        half = (bins + 1) // 2
        # Encoder: magnitude, real, imaginary -> C channels -> dense block -> half the bins.
        self.encoder_in = nn.Sequential(nn.Conv2d(3, channels, 1), nn.InstanceNorm2d(channels, affine=True),
                                        nn.PReLU(channels))
        self.encoder_dense = CausalDenseBlock(channels)
        self.encoder_down = nn.Sequential(nn.Conv2d(channels, channels, (1, 3), stride=(1, 2), padding=(0, 1)),
                                          nn.InstanceNorm2d(channels, affine=True), nn.PReLU(channels))
        self.blocks = nn.ModuleList(
            TimeFrequencyBlock(channels, half, hidden_channels, query_key_dim, heads, qk_channels)
            for _ in range(num_blocks)
        )
        # Mask decoder: a per-bin PReLU last (an unbounded mask).
        self.mask_dense = CausalDenseBlock(channels)
        self.mask_up = _SubPixelUp(channels)
        self.mask_out = nn.Sequential(nn.Conv2d(channels, 1, (1, 2)), nn.InstanceNorm2d(1, affine=True), nn.PReLU(1),
                                      nn.Conv2d(1, 1, 1))
        self.mask_slopes = nn.PReLU(bins)
        # Complex decoder: the residual, real and imaginary.
        self.complex_dense = CausalDenseBlock(channels)
        self.complex_up = _SubPixelUp(channels)
        self.complex_norm = nn.InstanceNorm2d(channels, affine=True)
        self.complex_act = nn.PReLU(channels)
        self.complex_out = nn.Conv2d(channels, 2, (1, 2))

    def forward(self, spectrum):
        real, imag = spectrum[:, :1], spectrum[:, 1:]
        magnitude = torch.sqrt(real * real + imag * imag)
        if torch.compiler.is_exporting():  # ONNX has no atan2: the phase's cosine and sine directly
            nonzero = magnitude > 0
            cosine = torch.where(nonzero, real / magnitude.clamp_min(1e-30), 1.0)
            sine = torch.where(nonzero, imag / magnitude.clamp_min(1e-30), 0.0)
        else:
            phase = torch.atan2(imag, real)
            cosine, sine = torch.cos(phase), torch.sin(phase)
        h = self.encoder_down(self.encoder_dense(self.encoder_in(torch.cat((magnitude, spectrum), dim=1))))
        for block in self.blocks:
            h = block(h)
        mask = self.mask_out(self.mask_up(self.mask_dense(h)))  # [B, 1, T, F]
        mask = self.mask_slopes(mask.permute(0, 3, 2, 1)).permute(0, 3, 2, 1)  # slopes per bin
        residual = self.complex_out(self.complex_act(self.complex_norm(self.complex_up(self.complex_dense(h)))))
        masked = mask * magnitude
        return masked * cosine + residual[:, :1], masked * sine + residual[:, 1:]


class MossFormerGANSE(nn.Module):
    """MossFormerGAN speech enhancement: noisy waveform [B, T] -> enhanced waveform [B, T].

    Every item is scaled to unit mean power (and back), padded to whole hops by repeating its
    start (as ClearVoice does), analysed with a periodic-hamming STFT (``center=True``),
    power-compressed, enhanced by :class:`MossFormerGANGenerator`, uncompressed and resynthesised.
    Defaults are those of the official ``MossFormerGAN_SE_16K``.

    Arguments
    ---------
    sample_rate : int
        The rate of the input (read by the interfaces).
    win_len, win_inc : int
        STFT window (= FFT size) and hop, in samples.
    compression : float
        Exponent of the magnitude compression.
    channels, num_blocks, hidden_channels, query_key_dim, heads, qk_channels
        The generator's (see :class:`MossFormerGANGenerator`).

    Example
    -------
    >>> model = MossFormerGANSE(win_len=40, win_inc=10, channels=16, num_blocks=1, hidden_channels=32,
    ...                         query_key_dim=16, qk_channels=3).eval()
    >>> model(0.1 * torch.randn(2, 1003)).shape
    torch.Size([2, 1003])
    """

    def __init__(self, sample_rate=16000, win_len=400, win_inc=100, compression=COMPRESSION, channels=64,
                 num_blocks=6, hidden_channels=128, query_key_dim=128, heads=4, qk_channels=6):  # fmt: skip
        super().__init__()
        self.sample_rate, self.win_len, self.win_inc, self.compression = sample_rate, win_len, win_inc, compression
        self.generator = MossFormerGANGenerator(win_len // 2 + 1, channels, num_blocks, hidden_channels,
                                                query_key_dim, heads, qk_channels)
        self.register_buffer("window", torch.hamming_window(win_len, periodic=True), persistent=False)
        self.recycles_memory = False  # see fuse_for_inference

    @property
    def config(self):
        """The constructor arguments that rebuild this model."""
        generator = self.generator
        block = generator.blocks[0]
        return dict(
            sample_rate=self.sample_rate, win_len=self.win_len, win_inc=self.win_inc, compression=self.compression,
            channels=generator.encoder_in[0].out_channels, num_blocks=len(generator.blocks),
            hidden_channels=block.intra.memory.hidden.in_features,
            query_key_dim=block.intra.attention.qk_gain.shape[-1], heads=len(block.fullband.queries),
            qk_channels=block.fullband.queries[0][0].out_channels,
        )  # fmt: skip

    def fuse_for_inference(self):
        """Inference only: :meth:`forward` runs in :func:`~speechbrain_ext.memory.recycled_memory`
        (a 4 s input's larger attention maps are 166 MB each: kept in the process, their pages are
        reused by the next block instead of faulted in afresh) and the weights of every
        :class:`~speechbrain_ext.lobes.models.mossformer.ConvFeedForward` are prepacked for oneDNN. Puts the model in eval mode; ``train()`` undoes it. Returns self.

        Example
        -------
        >>> model = MossFormerGANSE(win_len=40, win_inc=10, channels=16, num_blocks=1, hidden_channels=32,
        ...                         query_key_dim=16, qk_channels=3).eval()
        >>> noisy = 0.1 * torch.randn(1, 500)
        >>> with torch.no_grad():
        ...     plain = model(noisy)
        ...     fused = model.fuse_for_inference()(noisy)
        >>> torch.allclose(plain, fused, atol=1e-6)
        True
        """
        self.eval()
        self.recycles_memory = True
        prepack_linear_weights(self)
        return self

    def train(self, mode=True):
        if mode:
            self.recycles_memory = False
        return super().train(mode)

    def forward(self, noisy):
        """Enhances ``noisy`` [B, T] (more than ``win_len // 2`` samples); returns [B, T]."""
        with recycled_memory(self.recycles_memory):
            return self._enhance(noisy)

    def _enhance(self, noisy):
        length = noisy.shape[-1]
        if length <= self.win_len // 2:
            raise ValueError(f"input of {length} samples is too short: more than {self.win_len // 2} needed")
        gain = torch.rsqrt(noisy.pow(2).mean(dim=-1, keepdim=True).clamp_min(1e-20))  # unit mean power
        wrapped = -length % self.win_inc
        x = torch.cat((noisy, noisy[:, :wrapped]), dim=-1) * gain
        if torch.compiler.is_exporting():
            return self._real_valued_forward(x)[:, :length] / gain
        spectrum = torch.stft(x, self.win_len, self.win_inc, self.win_len, self.window, return_complex=True)
        compressed = torch.polar(spectrum.abs().pow(self.compression), spectrum.angle())
        real, imag = self.generator(torch.stack((compressed.real, compressed.imag), dim=1).transpose(2, 3))
        enhanced = torch.complex(real, imag)[:, 0].transpose(1, 2)  # [B, F, T]
        enhanced = torch.polar(enhanced.abs().pow(1 / self.compression), enhanced.angle())
        out = torch.istft(enhanced, self.win_len, self.win_inc, self.win_len, self.window, length=x.shape[-1])
        return out[:, :length] / gain

    def _real_valued_forward(self, x):
        """:meth:`forward`'s analysis, generator and synthesis for ``x`` [B, T] (whole hops, unit
        power) without complex tensors, which ONNX export does not translate: the centred STFT and
        its inverse as convolutions, the compression as ``X * |X| ** (c - 1)``."""
        frames = dict(win_len=self.win_len, win_inc=self.win_inc, fft_len=self.win_len, window=self.window)
        half = self.win_len // 2
        padded = F.pad(x[:, None], (half, half), mode="reflect")[:, 0]  # center=True
        spectrum = FramedSTFT(**frames).as_convolution(padded)  # [B, 2, F, N]

        def compress(spec, exponent):  # the magnitude to a power, the phase kept; 0 stays 0
            magnitude = spec.square().sum(dim=1, keepdim=True).sqrt()
            return spec * magnitude.clamp_min(1e-30).pow(exponent - 1)

        real, imag = self.generator(compress(spectrum, self.compression).transpose(2, 3))
        enhanced = compress(torch.cat((real, imag), dim=1).transpose(2, 3), 1 / self.compression)
        return FramedISTFT(**frames).as_convolution(enhanced)[:, half: half + x.shape[-1]]
