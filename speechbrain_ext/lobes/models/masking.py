"""The encoder -> masknet -> decoder skeleton of time-domain separators, in one place.

SpeechBrain's SepFormer (:mod:`speechbrain.lobes.models.dual_path`) and MossFormer share it; the
models differ only in their parts. :func:`encode_mask_decode` is the one forward of that
skeleton, used by :class:`~speechbrain_ext.lobes.models.mossformer.MossFormer`, by
:class:`~speechbrain_ext.inference.SeparateMossFormer` and by the separation Brain
(:class:`~speechbrain_ext.training.separation.SeparationBrain`), so any parts with this
contract train and run with them:

* ``encoder``: mixture ``[B, T]`` -> representation ``[B, N, L]``;
* ``masknet``: ``[B, N, L]`` -> one mask per source, ``[num_spks, B, N, L]``;
* ``decoder``: a masked representation ``[B, N, L]`` -> waveform ``[B, T']``.

Authors
 * speechbrain-ext contributors
"""

import torch.nn.functional as F


def encode_mask_decode(encoder, masknet, decoder, mix):
    """Separate ``mix`` ``[B, T]`` into sources ``[B, T, num_spks]`` (at the input length).

    Example
    -------
    >>> import torch
    >>> from speechbrain.lobes.models.dual_path import Decoder, Encoder
    >>> encoder = Encoder(kernel_size=16, out_channels=8)
    >>> decoder = Decoder(in_channels=8, out_channels=1, kernel_size=16, stride=8, bias=False)
    >>> def two_masks(encoded):
    ...     return torch.stack([torch.ones_like(encoded), torch.zeros_like(encoded)])
    >>> encode_mask_decode(encoder, two_masks, decoder, torch.randn(3, 1001)).shape
    torch.Size([3, 1001, 2])
    """
    encoded = encoder(mix)  # [B, N, L]
    masks = masknet(encoded)  # [spks, B, N, L]
    num_spks, batch = masks.shape[:2]
    # All sources through the decoder in one call: [spks * B, N, L] -> [spks * B, T'].
    decoded = decoder((encoded.unsqueeze(0) * masks).flatten(0, 1)).view(num_spks, batch, -1)
    sources = decoded.permute(1, 2, 0)  # [B, T', spks]
    # The frames do not cover every sample: zero-pad (or crop) to the input length.
    return F.pad(sources, (0, 0, 0, mix.shape[-1] - sources.shape[1]))
