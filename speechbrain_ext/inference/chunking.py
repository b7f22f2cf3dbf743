"""Chunked inference over long signals: overlapping chunks, cross-fades, consistent speakers.

A long signal is cut into equal chunks that overlap by ``overlap`` samples (the last chunk is
aligned to the end of the signal, so every chunk has the same length and chunks can be
batched). Consecutive outputs are blended over their overlap with a raised-cosine cross-fade,
skipping ``guard`` samples at each chunk edge, where models see no context. For separation,
the sources of each chunk are first permuted to best match the previous chunk on the overlap,
so speaker 1 stays speaker 1 across the whole file.

Authors: speechbrain-ext contributors
"""

import math

import torch

from speechbrain_ext.evaluation.metrics import best_permutation


def chunk_starts(total, chunk, overlap):
    """Start positions of equal chunks of ``chunk`` samples covering ``total`` samples.

    Example
    -------
    >>> chunk_starts(100, 40, 10)
    [0, 30, 60]
    >>> chunk_starts(30, 40, 10)  # shorter than one chunk: one (shorter) chunk
    [0]
    """
    if overlap >= chunk:
        raise ValueError(f"overlap ({overlap}) must be shorter than the chunk ({chunk})")
    if total <= chunk:
        return [0]
    hop = chunk - overlap
    starts = list(range(0, total - chunk, hop))
    return starts + [total - chunk]


def chunk_lengths(chunk_seconds, overlap_seconds, default_overlap, sample_rate):
    """Chunk and overlap in samples; ``chunk_seconds`` falsy means whole signal (``None``).

    Without an explicit overlap, ``default_overlap`` seconds are used, capped at a quarter chunk.

    Example
    -------
    >>> chunk_lengths(30, None, 1.0, 16000), chunk_lengths(2, None, 1.0, 16000), chunk_lengths(0, None, 1.0, 16000)
    ((480000, 16000), (32000, 8000), (None, 0))
    """
    if not chunk_seconds:
        return None, 0
    if overlap_seconds is None:
        overlap_seconds = min(default_overlap, chunk_seconds / 4)
    return int(chunk_seconds * sample_rate), int(overlap_seconds * sample_rate)


def source_permutation(reference, candidate):
    """Order of ``candidate``'s sources that best matches ``reference``: the permutation of
    maximum total correlation (:func:`speechbrain_ext.evaluation.metrics.best_permutation`).

    The scores are correlation coefficients (in [-1, 1]) of the sources over the overlap of two
    chunks: cheap, and blind to the gain each chunk gives a source.

    Arguments
    ---------
    reference, candidate : torch.Tensor
        ``[n, S]`` source signals over the same samples.

    Returns
    -------
    list of int
        ``candidate[:, perm]`` is aligned with ``reference``.

    Example
    -------
    >>> a = torch.randn(1000, 2)
    >>> source_permutation(a, a[:, [1, 0]])
    [1, 0]
    """
    ref = reference - reference.mean(0)
    cand = candidate - candidate.mean(0)
    norms = ref.norm(dim=0)[:, None] * cand.norm(dim=0)[None, :] + 1e-8
    similarity = (ref.T @ cand) / norms  # [S_ref, S_cand] correlation coefficients
    return list(best_permutation(similarity))


class OverlapStitcher:
    """Join overlapping chunk outputs into one stream, emitting samples as they become final.

    Arguments
    ---------
    guard : int
        Samples at each edge of an overlap taken from the chunk whose interior they are.
    align_sources : bool
        Permute the last axis of each chunk (the sources) to match the previous chunk.

    Example
    -------
    >>> stitcher = OverlapStitcher(guard=2)
    >>> signal = torch.arange(100.0)[None]  # [channels, time]
    >>> pieces = [stitcher.add(signal[:, s : s + 40], s) for s in chunk_starts(100, 40, 10)]
    >>> torch.equal(torch.cat(pieces + [stitcher.finish()], dim=1), signal)
    True
    """

    def __init__(self, guard=0, align_sources=False):
        self.guard = guard
        self.align_sources = align_sources
        self.pending = None  # [C, n, ...] output not emitted yet
        self.pending_start = 0

    def _fade(self, length, like):
        """Weights of the earlier chunk over an overlap of ``length``: 1 -> 0 between the guards."""
        guard = min(self.guard, length // 4)
        ramp = length - 2 * guard
        weights = torch.ones(length, dtype=like.dtype, device=like.device)
        if ramp > 0:
            position = (torch.arange(ramp, dtype=like.dtype, device=like.device) + 0.5) / ramp
            weights[guard : guard + ramp] = 0.5 * (1 + torch.cos(math.pi * position))
        weights[guard + max(ramp, 0) :] = 0
        return weights.view(1, length, *([1] * (like.dim() - 2)))

    def add(self, output, start):
        """Add a chunk's output ``[C, n, ...]`` that starts at sample ``start``; returns final samples."""
        if self.pending is None:
            self.pending, self.pending_start = output, start
            return output[:, :0]
        if start < self.pending_start:
            # The end-aligned last chunk can reach back into samples already emitted: skip them.
            output, start = output[:, self.pending_start - start :], self.pending_start
        pending_end = self.pending_start + self.pending.shape[1]
        overlap = pending_end - start
        if overlap < 0:
            raise ValueError("chunks must be added in order and overlap or touch")
        before = self.pending[:, : start - self.pending_start]
        old, new = self.pending[:, start - self.pending_start :], output[:, :overlap]
        if self.align_sources and overlap > 0:
            for channel in range(output.shape[0]):
                perm = source_permutation(old[channel], new[channel])
                output[channel] = output[channel][..., perm]
            new = output[:, :overlap]
        weights = self._fade(overlap, output)
        blended = old * weights + new * (1 - weights)
        self.pending, self.pending_start = output[:, overlap:], start + overlap
        return torch.cat([before, blended], dim=1)

    def finish(self):
        """Return the samples still held (the end of the last chunk)."""
        rest = self.pending
        self.pending = None
        return rest


def chunked_inference(blocks, total, process, chunk, overlap, batch_size=1, guard=0, align_sources=False):
    """Run ``process`` over a long signal chunk by chunk; yields stitched output blocks.

    Arguments
    ---------
    blocks : iterable of torch.Tensor
        The input signal as consecutive ``[C, n]`` blocks (any sizes), ``total`` samples in all.
    total : int
        Length of the signal.
    process : callable
        Maps a batch of chunks ``[B, L]`` to outputs ``[B, L, ...]``.
    chunk, overlap : int or None
        Chunk and overlap lengths in samples; ``chunk=None`` processes the whole signal at once.
    batch_size : int
        Chunks per call of ``process`` (chunks of all channels are batched together).
    guard : int
        See :class:`OverlapStitcher`.
    align_sources : bool
        Keep the order of the sources (last output axis) consistent across chunks.

    Yields
    ------
    torch.Tensor
        ``[C, n, ...]`` output blocks in order, ``total`` samples in all. At most about
        ``(batch_size + 1) * chunk`` input samples are held at any time.

    Example
    -------
    >>> signal = torch.randn(2, 1000)
    >>> out = chunked_inference(signal.split(123, dim=1), 1000, lambda x: 2 * x, chunk=300, overlap=50)
    >>> torch.allclose(torch.cat(list(out), dim=1), 2 * signal)
    True
    """
    if chunk is None or chunk >= total:
        whole = torch.cat(list(blocks), dim=1)
        yield process(whole)
        return
    starts = chunk_starts(total, chunk, overlap)
    stitcher = OverlapStitcher(guard, align_sources)
    buffer, buffer_start = None, 0
    source = iter(blocks)
    for first in range(0, len(starts), batch_size):
        batch_starts = starts[first : first + batch_size]
        needed = batch_starts[-1] + chunk
        while buffer is None or buffer_start + buffer.shape[1] < needed:
            block = next(source)
            buffer = block if buffer is None else torch.cat([buffer, block], dim=1)
        channels = buffer.shape[0]
        pieces = [buffer[:, s - buffer_start : s - buffer_start + chunk] for s in batch_starts]
        outputs = process(torch.cat(pieces, dim=0))  # [len(batch) * C, L, ...]
        for index, start in enumerate(batch_starts):
            yield stitcher.add(outputs[index * channels : (index + 1) * channels], start)
        # Keep only what later chunks still need.
        if first + batch_size < len(starts):
            keep_from = starts[first + batch_size]
            buffer, buffer_start = buffer[:, keep_from - buffer_start :], keep_from
    yield stitcher.finish()
    for _ in source:  # drain: lets the reader finish its checks on the whole file
        pass
