"""Validation of the options and inputs the interfaces take, with one clear error each.

The interfaces call these before any work, so a wrong value fails at once with a sentence
that names the option, instead of deep inside the resampler or the model.

Authors: speechbrain-ext contributors
"""

import numbers

import numpy as np
import torch

from speechbrain_ext.errors import InvalidOptionError


def check_output_rate(output_rate):
    """``None`` (the model's rate), ``'input'``, or a positive integer rate in Hz.

    Integral floats (``22050.0``) are taken as integers.

    Example
    -------
    >>> check_output_rate(None), check_output_rate("input"), check_output_rate(22050.0)
    (None, 'input', 22050)
    >>> check_output_rate("44.1k")
    Traceback (most recent call last):
    ...
    speechbrain_ext.errors.InvalidOptionError: output_rate must be 'input' or a whole number of Hz (e.g. 44100), got '44.1k'
    """
    if output_rate is None or output_rate == "input":
        return output_rate
    number = None
    if _is_number(output_rate) and float(output_rate).is_integer():
        number = int(output_rate)
    if number is None or number <= 0:
        raise InvalidOptionError(
            f"output_rate must be 'input' or a whole number of Hz (e.g. 44100), got {output_rate!r}"
        )
    return number


def check_channels(channels):
    """``'mix'``, ``'all'`` or a channel index (integer >= 0).

    Example
    -------
    >>> check_channels("all"), check_channels(np.int64(1))
    ('all', 1)
    >>> check_channels("left")
    Traceback (most recent call last):
    ...
    speechbrain_ext.errors.InvalidOptionError: channels must be 'mix', 'all' or a channel index (0, 1, ...), got 'left'
    """
    if channels in ("mix", "all"):
        return channels
    if isinstance(channels, numbers.Integral) and not isinstance(channels, bool) and channels >= 0:
        return int(channels)
    raise InvalidOptionError(f"channels must be 'mix', 'all' or a channel index (0, 1, ...), got {channels!r}")


def check_batch_size(batch_size):
    """A positive integer number of chunks per forward pass."""
    if isinstance(batch_size, numbers.Integral) and not isinstance(batch_size, bool) and batch_size >= 1:
        return int(batch_size)
    raise InvalidOptionError(f"batch_size must be an integer >= 1, got {batch_size!r}")


def check_chunking(chunk_seconds, overlap_seconds=None):
    """``(chunk_seconds, overlap_seconds)`` after checking them.

    ``chunk_seconds`` is ``None`` or 0 (whole file at once) or positive; the overlap, if given,
    is >= 0 and shorter than the chunk.

    Example
    -------
    >>> check_chunking(10, 1)
    (10.0, 1.0)
    >>> check_chunking(-1)
    Traceback (most recent call last):
    ...
    speechbrain_ext.errors.InvalidOptionError: chunk_seconds must be None, 0 (whole file) or a positive number of seconds, got -1
    """
    if chunk_seconds is not None:
        if not _is_number(chunk_seconds) or not chunk_seconds >= 0:
            raise InvalidOptionError(
                f"chunk_seconds must be None, 0 (whole file) or a positive number of seconds, got {chunk_seconds!r}"
            )
        chunk_seconds = float(chunk_seconds)
    if overlap_seconds is not None:
        if not _is_number(overlap_seconds) or not overlap_seconds >= 0:
            raise InvalidOptionError(f"overlap_seconds must be a number of seconds >= 0, got {overlap_seconds!r}")
        overlap_seconds = float(overlap_seconds)
        if chunk_seconds and overlap_seconds >= chunk_seconds:
            raise InvalidOptionError(
                f"overlap_seconds ({overlap_seconds:g}) must be shorter than chunk_seconds ({chunk_seconds:g})"
            )
    return chunk_seconds, overlap_seconds


def _is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and np.isfinite(value)


def as_float_waveform(wavs):
    """A float32 tensor from a waveform given as a tensor, a numpy array or a (nested) list.

    Integer PCM is scaled to [-1, 1).

    Example
    -------
    >>> as_float_waveform(torch.tensor([16384, -32768], dtype=torch.int16)).tolist()
    [0.5, -1.0]
    >>> as_float_waveform(np.array([0.25, -0.5])).dtype, as_float_waveform([[0.0, 1.0]]).shape
    (torch.float32, torch.Size([1, 2]))
    """
    if not torch.is_tensor(wavs):
        try:
            wavs = torch.as_tensor(np.asarray(wavs))
        except (TypeError, ValueError) as error:
            raise InvalidOptionError(f"expected a waveform (tensor, numpy array or list of numbers): {error}") from None
    if wavs.dtype == torch.int16:
        return wavs.float() / 32768
    if wavs.dtype == torch.int32:
        return wavs.float() / 2**31
    if wavs.dtype == torch.uint8:
        return (wavs.float() - 128) / 128
    if not wavs.is_floating_point():
        raise InvalidOptionError(f"unsupported waveform dtype {wavs.dtype}: give float or int16/int32/uint8 PCM")
    return wavs.float()


def as_waveform_batch(wavs):
    """``(batch [B, T] float32, was_1d)`` from a ``[T]`` or ``[B, T]`` waveform of any accepted kind."""
    wavs = as_float_waveform(wavs)
    if wavs.dim() not in (1, 2):
        raise InvalidOptionError(
            f"expected a waveform [T] or a batch [B, T], got shape {tuple(wavs.shape)} "
            "(for several channels, pass each channel as one item of the batch)"
        )
    single = wavs.dim() == 1
    return (wavs[None] if single else wavs), single


def absolute_lengths(batch, lengths):
    """Samples per item from SpeechBrain's relative ``lengths`` (``None``: every item is full).

    Arguments
    ---------
    batch : torch.Tensor
        ``[B, T]``.
    lengths : torch.Tensor, numpy array, list or None
        ``B`` values in [0, 1]: each item's length as a fraction of ``T``.

    Example
    -------
    >>> absolute_lengths(torch.zeros(2, 100), [1.0, 0.5])
    [100, 50]
    >>> absolute_lengths(torch.zeros(2, 100), torch.tensor([100, 50]))
    Traceback (most recent call last):
    ...
    speechbrain_ext.errors.InvalidOptionError: lengths are relative (fractions of the padded length, in [0, 1]) as in SpeechBrain; got values up to 100 (divide absolute lengths by the padded length 100)
    """
    total = batch.shape[-1]
    if lengths is None:
        return [total] * batch.shape[0]
    try:
        values = torch.as_tensor(np.asarray(lengths.cpu() if torch.is_tensor(lengths) else lengths), dtype=torch.float64)
    except (TypeError, ValueError):
        raise InvalidOptionError(f"lengths must be numbers in [0, 1], got {lengths!r}") from None
    values = values.flatten()
    if values.numel() != batch.shape[0]:
        raise InvalidOptionError(f"lengths has {values.numel()} value(s) for a batch of {batch.shape[0]} item(s)")
    if not torch.isfinite(values).all() or (values < 0).any():
        raise InvalidOptionError(f"lengths must be numbers in [0, 1], got {values.tolist()}")
    if (values > 1).any():
        raise InvalidOptionError(
            "lengths are relative (fractions of the padded length, in [0, 1]) as in SpeechBrain; got values "
            f"up to {values.max().item():g} (divide absolute lengths by the padded length {total})"
        )
    return [int(round(float(rel) * total)) for rel in values]
