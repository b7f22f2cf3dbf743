"""MossFormer2 time-domain speech separation as SpeechBrain encoder / masknet / decoder.

MossFormer2 (Zhao et al., ICASSP 2024, https://arxiv.org/abs/2312.11825) keeps MossFormer's
encoder, masknet layout and gated attention blocks, and follows every attention block with a
*recurrent* module: a gated FSMN whose memory is a small dense network of dilated depthwise
convolutions along time. Attention models long-range structure, the memory fine-grained
recurrent patterns, with no recurrent (sequential) computation.

* :class:`DilatedDenseMemory`: the memory of the separator, time-major [B, L, C] -> [B, L, C];
* :class:`PlainMemory`: the memory of the 48 kHz enhancer (one "same" depthwise convolution);
* :func:`dilated_time_convolution` and the time-major layers they are built of
  (:class:`TimeGroupedConv`, :class:`TimeInstanceNorm`, :class:`TimePReLU`);
* :class:`GatedFSMNBlock`: the recurrent module that follows each attention block;
* :class:`MossFormer2MaskNet`: :class:`~speechbrain_ext.lobes.models.mossformer.MossFormerMaskNet`
  with the recurrent modules interleaved;
* :class:`MossFormer2`: encoder + masknet + decoder, defaults of the official
  ``MossFormer2_SS_16K`` (16 kHz, 2 speakers, 55,735,410 parameters).

Encoder and decoder are MossFormer's, so SpeechBrain's separation recipes and
``SepformerSeparation`` drive these modules unchanged. Official ClearerVoice-Studio weights
load with :func:`speechbrain_ext.convert.mossformer2_from_official`.

Authors
 * speechbrain-ext contributors
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from speechbrain_ext.lobes.models.mossformer import (
    ConvFeedForward,
    DepthwiseTimeConv,
    MossFormer,
    MossFormerMaskNet,
    _linear,
    _TimeMajorDepthwiseConv,
)


def dilated_time_convolution(x, weight, dilation=1):
    """The "same" grouped convolution along time of ``x`` [B, L, n * C], time-major, with
    ``weight`` [C, n, K] (K odd): output channel c reads input channels ``c * n ... c * n + n - 1``
    at dilation ``dilation``; returns [B, L, C].

    It runs as depthwise convolutions of the time-major memory (the fast CPU kernel, see
    :class:`~speechbrain_ext.lobes.models.mossformer.DepthwiseTimeConv`): every input channel is
    convolved with its own tap set, the ``n`` results of a group summed, and a dilated
    convolution is ``dilation`` undilated ones, one per phase of the time axis (samples
    ``r, r + d, r + 2d, ...``). Gradients flow through (the depthwise backward is the fast one).

    Example
    -------
    >>> x, weight = torch.randn(2, 50, 8), torch.randn(4, 2, 5)
    >>> expected = F.conv1d(x.transpose(1, 2), weight, padding=4, dilation=2, groups=4).transpose(1, 2)
    >>> torch.allclose(dilated_time_convolution(x, weight, dilation=2), expected, atol=1e-5)
    True
    """
    channels, per_group, taps = weight.shape
    if torch.compiler.is_exporting():  # one grouped convolution: the phases' strided slices would fix the length
        time_last = F.conv1d(x.transpose(1, 2), weight, padding=dilation * (taps // 2), dilation=dilation, groups=channels)
        return time_last.transpose(1, 2)
    depthwise = weight.reshape(channels * per_group, 1, taps)
    if dilation == 1:
        out = _TimeMajorDepthwiseConv.apply(x, depthwise)
    else:
        batch, length, width = x.shape
        x = F.pad(x, (0, 0, 0, (-length) % dilation))  # zeros, as the "same" padding
        phases = [_TimeMajorDepthwiseConv.apply(x[:, r::dilation].contiguous(), depthwise) for r in range(dilation)]
        out = torch.stack(phases, dim=2).view(batch, -1, width)[:, :length]  # phases interleaved back
    # Sum each group's consecutive channels: adding strided views is many times faster on CPU
    # than a reduction over a last axis of a few elements.
    return sum(out[..., j::per_group] for j in range(1, per_group)) + out[..., ::per_group] if per_group > 1 else out


class TimeGroupedConv(nn.Module):
    """A bias-free grouped "same" convolution along time on time-major [B, L, n * C] -> [B, L, C]
    (the weights of ``nn.Conv1d(n * C, C, K, dilation=d, groups=C)``); see
    :func:`dilated_time_convolution`.

    Arguments
    ---------
    channels : int
        Output channels C (and groups).
    inputs_per_channel : int
        Input channels n each output channel reads.
    kernel_size : int
        Odd number of taps K.
    dilation : int
        Spacing of the taps, in frames.

    Example
    -------
    >>> TimeGroupedConv(8, inputs_per_channel=2, kernel_size=5, dilation=2)(torch.randn(2, 30, 16)).shape
    torch.Size([2, 30, 8])
    """

    def __init__(self, channels, inputs_per_channel=1, kernel_size=39, dilation=1):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd for 'same' padding, got {kernel_size}")
        self.dilation = dilation
        conv = nn.Conv1d(channels * inputs_per_channel, channels, kernel_size, groups=channels, bias=False)
        self.weight = conv.weight  # the initialisation of nn.Conv1d

    def forward(self, x):
        return dilated_time_convolution(x, self.weight, self.dilation)


class TimeInstanceNorm(nn.Module):
    """InstanceNorm (``nn.InstanceNorm1d(affine=True)``) on time-major [B, L, C]: every channel of
    every item normalised over time (biased variance), then scaled and shifted. The statistics are
    computed in float32 whatever the input's precision (as torch's own norms do).

    Arguments
    ---------
    channels : int
        Channels C (one weight and bias each).
    eps : float
        Added to the variance.

    Example
    -------
    >>> norm, x = TimeInstanceNorm(4), torch.randn(2, 30, 4)
    >>> reference = torch.nn.InstanceNorm1d(4, affine=True)(x.transpose(1, 2)).transpose(1, 2)
    >>> torch.allclose(norm(x), reference, atol=1e-5)
    True
    """

    def __init__(self, channels, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        # Means along time as plain reductions (var_mean over a non-last axis is slow on CPU).
        x32 = x.float()
        centred = x32 - x32.mean(dim=1, keepdim=True)
        var = (centred * centred).mean(dim=1, keepdim=True)
        return torch.addcmul(self.bias.float(), centred, self.weight.float() * torch.rsqrt(var + self.eps)).to(x.dtype)


class TimePReLU(nn.PReLU):
    """``nn.PReLU(channels)`` on time-major [B, L, C] (one slope per channel, the last axis).

    Arguments
    ---------
    num_parameters : int
        Channels C.

    Example
    -------
    >>> prelu, x = TimePReLU(4), torch.randn(2, 30, 4)
    >>> torch.equal(prelu(x), torch.nn.PReLU(4)(x.transpose(1, 2)).transpose(1, 2))
    True
    """

    def forward(self, x):
        return F.prelu(x.transpose(1, 2), self.weight).transpose(1, 2)  # the [B, C, L] view: no copy


class DilatedDenseMemory(nn.Module):
    """Dense stack of dilated "same" convolutions along time, each with InstanceNorm and PReLU,
    on time-major [B, L, C] -> [B, L, C].

    Layer ``i`` (dilation ``2 ** i``, kernel ``2 * memory_order - 1``) reads the concatenation
    ``[out_{i-1}, ..., out_0, x]`` of everything before it, in ``channels`` groups (so each
    output channel sees ``i + 1`` consecutive input channels of that concatenation); the last
    layer's output is the memory. InstanceNorm normalises each channel over the whole sequence,
    so the output of a segment depends on the segment as a whole.

    Arguments
    ---------
    channels : int
        Channels C of input and output.
    memory_order : int
        Half the kernel length (plus one): a layer of dilation d sees ``d * (memory_order - 1)``
        frames on each side.
    depth : int
        Number of layers.

    Example
    -------
    >>> memory = DilatedDenseMemory(8, memory_order=4, depth=2)
    >>> memory(torch.randn(2, 30, 8)).shape
    torch.Size([2, 30, 8])
    """

    def __init__(self, channels, memory_order=20, depth=2):
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        kernel_size = 2 * memory_order - 1
        self.convs = nn.ModuleList(
            TimeGroupedConv(channels, i + 1, kernel_size, dilation=2**i) for i in range(depth)
        )
        self.norms = nn.ModuleList(TimeInstanceNorm(channels) for _ in range(depth))
        self.activations = nn.ModuleList(TimePReLU(channels) for _ in range(depth))

    def forward(self, x):
        """Returns the [B, L, C] memory of ``x`` [B, L, C]."""
        dense = x
        for i, (conv, norm, activation) in enumerate(zip(self.convs, self.norms, self.activations)):
            out = activation(norm(conv(dense)))
            if i + 1 < len(self.convs):
                dense = torch.cat((out, dense), dim=-1)
        return out


class PlainMemory(nn.Module):
    """FSMN memory: the input plus one depthwise "same" convolution along time, on time-major
    [B, L, C] -> [B, L, C].

    Arguments
    ---------
    channels : int
        Channels C.
    memory_order : int
        The kernel has ``2 * memory_order - 1`` taps: ``memory_order - 1`` frames on each side.

    Example
    -------
    >>> PlainMemory(8, memory_order=4)(torch.randn(2, 30, 8)).shape
    torch.Size([2, 30, 8])
    """

    def __init__(self, channels, memory_order=20):
        super().__init__()
        self.conv = DepthwiseTimeConv(channels, 2 * memory_order - 1)

    def forward(self, x):
        """Returns ``x + conv(x)`` for ``x`` [B, L, C]."""
        return self.conv(x, residual=True)


#: The memories a :class:`GatedFSMNBlock` can use.
MEMORIES = ("dense", "plain")


class GatedFSMNBlock(nn.Module):
    """The recurrent module of MossFormer2, on time-major sequences [B, L, d_model].

    1x1 projection to ``channels`` -> PReLU -> LayerNorm -> gated FSMN -> LayerNorm -> 1x1
    projection back -> + input. The gated FSMN computes two :class:`ConvFeedForward` branches
    (LayerNorm variant) of its input ``h``: ``u``, to which the FSMN adds its memory
    (``u + memory(project(relu(hidden(u))))``), and a gate ``g``; it returns ``g * fsmn(u) + h``.

    Arguments
    ---------
    d_model : int
        Channels of the input and output.
    channels : int
        Channels inside the module (256 in the official models, whatever ``d_model``).
    memory_order : int
        See :class:`DilatedDenseMemory`.
    memory_depth : int
        Layers of the memory (``"dense"`` only).
    dropout : float
        Dropout at the end of each feed-forward branch.
    memory : str
        ``"dense"`` (:class:`DilatedDenseMemory`, the separator's) or ``"plain"``
        (:class:`PlainMemory`, the 48 kHz enhancer's).

    Example
    -------
    >>> block = GatedFSMNBlock(16, channels=8, memory_order=4)
    >>> block(torch.randn(2, 30, 16)).shape
    torch.Size([2, 30, 16])
    """

    def __init__(self, d_model, channels=256, memory_order=20, memory_depth=2, dropout=0.1, memory="dense"):
        super().__init__()
        if memory not in MEMORIES:
            raise ValueError(f"memory must be one of {MEMORIES}, got {memory!r}")
        self.input_proj = nn.Linear(d_model, channels)
        self.input_activation = nn.PReLU()
        self.input_norm = nn.LayerNorm(channels)
        self.to_memory = ConvFeedForward(channels, channels, dropout=dropout, norm="layer")
        self.to_gate = ConvFeedForward(channels, channels, dropout=dropout, norm="layer")
        self.memory_hidden = nn.Linear(channels, channels)
        self.memory_project = nn.Linear(channels, channels, bias=False)
        if memory == "dense":
            self.memory = DilatedDenseMemory(channels, memory_order, memory_depth)
        else:
            self.memory = PlainMemory(channels, memory_order)
        self.output_norm = nn.LayerNorm(channels)
        self.output_proj = nn.Linear(channels, d_model)
        #: Set when the masknet is fused for inference (:func:`~speechbrain_ext.lobes.models.mossformer.prepack_linear_weights`):
        #: oneDNN products read copies of the linear weights in oneDNN's layout.
        self.prepacked = False

    def train(self, mode=True):
        if mode:
            self.prepacked = False
        return super().train(mode)

    def forward(self, x):
        """Returns the [B, L, d_model] output for ``x`` [B, L, d_model]."""
        h = self.input_norm(self.input_activation(self._project(self.input_proj, x)))
        u = self.to_memory(h)
        projected = self._project(self.memory_project, self._project(self.memory_hidden, u, "relu"))
        u = u + self.memory(projected)
        h = torch.addcmul(h, self.to_gate(h), u)
        return self._project(self.output_proj, self.output_norm(h)) + x

    def _project(self, layer, x, activation="none"):
        """``activation(layer(x))`` for one of the block's ``nn.Linear`` layers; without autograd
        on CPU through oneDNN's linear (see :func:`~speechbrain_ext.lobes.models.mossformer._linear`)."""
        return _linear(x, layer.weight, layer.bias, activation, self.prepacked)


class MossFormer2MaskNet(MossFormerMaskNet):
    """MossFormer2 masking network: MossFormer's, with a :class:`GatedFSMNBlock` after every
    attention block.

    Arguments
    ---------
    in_channels, out_channels, num_spks, num_blocks, d_model, group_size, query_key_dim,
    expansion_factor, attn_dropout, norm, skip_connection, use_global_pos_enc
        As for :class:`~speechbrain_ext.lobes.models.mossformer.MossFormerMaskNet`;
        ``attn_dropout`` is also the dropout inside the recurrent modules (0.1 in both,
        officially).
    causal : bool
        Must be False: the recurrent modules look ahead and normalise over the whole input.
    fsmn_channels : int
        Channels inside each recurrent module.
    memory_order : int
        See :class:`DilatedDenseMemory`.
    memory_depth : int
        Layers of each memory.
    memory : str
        ``"dense"`` or ``"plain"`` (see :class:`GatedFSMNBlock`).
    mask_channels : int, optional
        Channels of the masks when they are not ``in_channels`` (the enhancer's 961 frequency
        bins, from 180 feature channels).

    Example
    -------
    >>> masknet = MossFormer2MaskNet(
    ...     in_channels=32, out_channels=32, num_blocks=2, group_size=16, query_key_dim=16,
    ...     fsmn_channels=16,
    ... )
    >>> masknet(torch.randn(3, 32, 100)).shape
    torch.Size([2, 3, 32, 100])
    """

    def __init__(
        self,
        in_channels=512, out_channels=512, num_spks=2,
        # the block stack
        num_blocks=24, d_model=None, group_size=256, query_key_dim=128, expansion_factor=4.0,
        attn_dropout=0.1, causal=False,
        # the recurrent modules
        fsmn_channels=256, memory_order=20, memory_depth=2, memory="dense",
        # around it
        norm="ln", skip_connection=True, use_global_pos_enc=True, mask_channels=None,
    ):  # fmt: skip
        if causal:
            raise ValueError("MossFormer2 cannot be causal: its recurrent modules look ahead and normalise over the whole input")
        super().__init__(
            in_channels, out_channels, num_spks=num_spks, num_blocks=num_blocks, d_model=d_model,
            group_size=group_size, query_key_dim=query_key_dim, expansion_factor=expansion_factor,
            attn_dropout=attn_dropout, causal=causal, norm=norm, skip_connection=skip_connection,
            use_global_pos_enc=use_global_pos_enc, mask_channels=mask_channels,
        )  # fmt: skip
        self.recurrences = nn.ModuleList(
            GatedFSMNBlock(out_channels, fsmn_channels, memory_order, memory_depth, attn_dropout, memory)
            for _ in range(num_blocks)
        )

    def _block_stack(self, h, rotation):
        for block, recurrence in zip(self.blocks, self.recurrences):
            h = recurrence(block(h, rotation))
        return h


class MossFormer2(MossFormer):
    """MossFormer2 separator: encoder, masknet and decoder in one module.

    Defaults are those of the official ``MossFormer2_SS_16K`` (16 kHz, 2 speakers, 24
    layers, 55,735,410 parameters). Input [B, T] -> sources [B, T, num_spks].

    Arguments
    ---------
    kernel_size, stride, in_channels, out_channels, bias
        The encoder / decoder's (see :class:`~speechbrain_ext.lobes.models.mossformer.MossFormer`).
    num_spks, num_blocks, d_model, group_size, query_key_dim, expansion_factor, attn_dropout,
    causal, norm, fsmn_channels, memory_order, memory_depth
        The masknet's (see :class:`MossFormer2MaskNet`).

    Example
    -------
    >>> model = MossFormer2(
    ...     in_channels=32, out_channels=32, d_model=32, num_blocks=1, group_size=16,
    ...     query_key_dim=16, fsmn_channels=16,
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
        fsmn_channels=256, memory_order=20, memory_depth=2,
    ):  # fmt: skip
        nn.Module.__init__(self)
        self._assemble(
            lambda: MossFormer2MaskNet(
                in_channels, out_channels, num_spks=num_spks, num_blocks=num_blocks, d_model=d_model,
                group_size=group_size, query_key_dim=query_key_dim, expansion_factor=expansion_factor,
                attn_dropout=attn_dropout, causal=causal, norm=norm, fsmn_channels=fsmn_channels,
                memory_order=memory_order, memory_depth=memory_depth,
            ),
            kernel_size, stride, in_channels, out_channels, bias,
        )  # fmt: skip

    @property
    def config(self):
        """The constructor arguments that rebuild this model (for ``configuration.json``)."""
        return dict(super().config, **recurrence_config(self.masknet))


def recurrence_config(masknet):
    """The constructor arguments of a :class:`MossFormer2MaskNet`'s recurrent modules."""
    recurrence = masknet.recurrences[0]
    memory = recurrence.memory
    if isinstance(memory, PlainMemory):
        return dict(fsmn_channels=recurrence.input_proj.out_features, memory_order=(memory.conv.kernel_size[0] + 1) // 2,
                    memory="plain")
    return dict(
        fsmn_channels=recurrence.input_proj.out_features,
        memory_order=(memory.convs[0].weight.shape[-1] + 1) // 2,
        memory_depth=len(memory.convs),
    )
