"""Audio input/output for the whole package: inference, training and evaluation.

- files of any length, rate and channel count (inference): :class:`AudioReader` reads block by
  block, mixed down (or kept per channel), resampled to the model rate by a streaming resampler
  that reproduces whole-signal resampling; :class:`AtomicAudioWriter` writes block by block to a
  temporary file renamed into place only when everything succeeded. Memory stays bounded however
  long the file is, and a failure never leaves a half-written output.
- segments (training and evaluation): :func:`read_segment` (any part of a file, looped or
  zero-padded past its end, resampled), :func:`fit_length`, :func:`loop_to_length`.
- levels and lengths: :func:`level_scale` (the official pipelines' input level),
  :func:`whole_frames_length` (padding for frame-based models).

Authors: speechbrain-ext contributors
"""

import math
import os
import re

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
import torchaudio

from speechbrain_ext.errors import AudioOutputError, SpeechBrainExtError

#: Loudness the official pipelines normalise input to before the model (dB re full scale).
REFERENCE_LEVEL_DB = -25.0


#: File extensions taken as audio when a folder is searched (what libsndfile reads).
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".aiff", ".aif", ".au", ".w64", ".caf")


class AudioInputError(SpeechBrainExtError, ValueError):
    """An input that cannot be processed; the message says which file and why, in one sentence."""


def audio_info(path):
    """Validated ``soundfile`` info of an audio file, or :class:`AudioInputError`.

    Example
    -------
    >>> audio_info("/nonexistent.wav")
    Traceback (most recent call last):
    ...
    speechbrain_ext.audio.AudioInputError: /nonexistent.wav: no such file
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise AudioInputError(f"{path}: no such file")
    if os.path.isdir(path):
        raise AudioInputError(f"{path}: is a directory, not an audio file")
    try:
        info = sf.info(path)
    except (sf.LibsndfileError, RuntimeError, TypeError) as error:
        raise AudioInputError(f"{path}: not a readable audio file ({_libsndfile_message(error)})") from None
    if info.frames == 0:
        raise AudioInputError(f"{path}: the file holds no samples")
    return info


def _libsndfile_message(error):
    """libsndfile's message without its "Error opening 'PATH': " prefix (we name the path once)."""
    message = str(error).strip().splitlines()[0] if str(error).strip() else error.__class__.__name__
    return re.sub(r"^Error opening .*?: ", "", message).strip()


def resampled_length(num_samples, orig_rate, new_rate):
    """Samples after resampling ``num_samples`` from ``orig_rate`` to ``new_rate`` (torchaudio's rule)."""
    g = math.gcd(orig_rate, new_rate)
    return math.ceil((new_rate // g) * num_samples / (orig_rate // g))


class StreamResampler:
    """Resample a signal fed in blocks; the output equals resampling the whole signal at once.

    torchaudio's sinc resampler computes each group of ``new/gcd`` output samples from a window
    of input samples around ``orig/gcd`` input samples. Keeping ``width`` samples of context on
    both sides of the block being resampled therefore gives the same numbers as the one-shot
    ``torchaudio.functional.resample`` (same kernel, same arithmetic).

    Arguments
    ---------
    orig_rate, new_rate : int
        Input and output sample rates.

    Example
    -------
    >>> signal = torch.randn(2, 44100)
    >>> resampler = StreamResampler(44100, 16000)
    >>> blocks = [resampler.push(block) for block in signal.split(5000, dim=-1)] + [resampler.flush()]
    >>> whole = torchaudio.functional.resample(signal, 44100, 16000)
    >>> bool((torch.cat(blocks, dim=-1) - whole).abs().max() < 1e-4)  # float32 rounding only
    True
    """

    def __init__(self, orig_rate, new_rate):
        self.identity = orig_rate == new_rate
        g = math.gcd(orig_rate, new_rate)
        self.orig, self.new = orig_rate // g, new_rate // g
        self.orig_rate, self.new_rate = orig_rate, new_rate
        self.buffer = None
        self.channels = 1
        self.seen = 0
        self.emitted = 0
        if not self.identity:
            resampler = torchaudio.transforms.Resample(orig_rate, new_rate)
            self.kernel, self.width = resampler.kernel, resampler.width

    def _resample_blocks(self, blocks):
        """Resample the first ``blocks`` groups held in the buffer and drop their input."""
        span = blocks * self.orig + 2 * self.width
        segment = self.buffer[:, :span]
        out = torch.nn.functional.conv1d(segment[:, None], self.kernel, stride=self.orig)
        self.buffer = self.buffer[:, blocks * self.orig :]
        return out.transpose(1, 2).reshape(segment.shape[0], -1)

    def push(self, block):
        """Feed ``block`` [C, n]; returns the output samples that are now final, [C, m]."""
        self.seen += block.shape[-1]
        self.channels = block.shape[0]
        if self.identity:
            return block
        if self.buffer is None:  # the signal starts with `width` zeros of context, as one-shot does
            self.buffer = block.new_zeros(block.shape[0], self.width)
        self.buffer = torch.cat([self.buffer, block], dim=-1)
        blocks = (self.buffer.shape[-1] - 2 * self.width) // self.orig
        if blocks <= 0:
            return block.new_zeros(block.shape[0], 0)
        out = self._resample_blocks(blocks)
        self.emitted += out.shape[-1]
        return out

    def flush(self):
        """Finish the signal (zero context at its end); returns the remaining output."""
        if self.identity or self.buffer is None:
            return torch.zeros(self.channels, 0)
        self.buffer = torch.cat([self.buffer, self.buffer.new_zeros(self.buffer.shape[0], self.width + self.orig)], -1)
        blocks = (self.buffer.shape[-1] - 2 * self.width) // self.orig
        out = self._resample_blocks(blocks) if blocks > 0 else self.buffer[:, :0]
        total = resampled_length(self.seen, self.orig_rate, self.new_rate)
        out = out[:, : max(0, total - self.emitted)]
        self.emitted += out.shape[-1]
        return out


class AudioReader:
    """Read an audio file block by block as float32 ``[channels, n]`` at a target sample rate.

    Arguments
    ---------
    path : str
        Audio file (anything libsndfile reads: WAV, FLAC, OGG, ...; integer or float samples).
    target_rate : int
        Rate of the returned blocks.
    channels : str or int
        ``'mix'`` (average all channels to one), ``'all'`` (keep every channel), or a channel index.
    block_seconds : float
        Approximate duration read from the file at once.

    Example
    -------
    >>> import tempfile, soundfile
    >>> path = tempfile.mktemp(suffix=".wav")
    >>> soundfile.write(path, np.zeros((8000, 2), dtype=np.float32), 8000)
    >>> reader = AudioReader(path, 16000, channels="mix")
    >>> reader.num_channels, reader.num_samples
    (1, 16000)
    >>> sum(block.shape[-1] for block in reader)
    16000
    """

    def __init__(self, path, target_rate, channels="mix", block_seconds=10.0):
        self.path = os.fspath(path)
        self.info = audio_info(self.path)
        if not (channels in ("mix", "all") or (isinstance(channels, int) and 0 <= channels < self.info.channels)):
            raise AudioInputError(
                f"{self.path}: channel selection {channels!r} is not 'mix', 'all' or a channel index "
                f"below {self.info.channels}"
            )
        self.channels = channels
        self.target_rate = target_rate
        self.sample_rate = self.info.samplerate
        self.block_frames = max(1, int(block_seconds * self.sample_rate))
        self.num_channels = self.info.channels if channels == "all" else 1
        self.num_samples = resampled_length(self.info.frames, self.sample_rate, target_rate)

    def _select(self, block):
        if self.channels == "mix":
            return block.mean(axis=1, keepdims=True)
        if self.channels == "all":
            return block
        return block[:, self.channels : self.channels + 1]

    def __iter__(self):
        resampler = StreamResampler(self.sample_rate, self.target_rate)
        try:
            blocks = sf.blocks(self.path, blocksize=self.block_frames, dtype="float32", always_2d=True)
            for position, block in enumerate(blocks):
                if not np.isfinite(block).all():
                    second = position * self.block_frames / self.sample_rate
                    raise AudioInputError(f"{self.path}: NaN or infinite samples (after {second:.1f} s)")
                out = resampler.push(torch.from_numpy(np.ascontiguousarray(self._select(block).T)))
                if out.shape[-1]:
                    yield out
        except (sf.LibsndfileError, RuntimeError) as error:
            raise AudioInputError(f"{self.path}: reading failed ({_libsndfile_message(error)})") from None
        tail = resampler.flush()
        if tail.shape[-1]:
            yield tail


def read_audio(path, target_rate, channels="mix"):
    """Read a whole file as ``[channels, n]`` at ``target_rate`` (see :class:`AudioReader`)."""
    reader = AudioReader(path, target_rate, channels)
    blocks = list(reader)
    return torch.cat(blocks, dim=-1) if blocks else torch.zeros(reader.num_channels, 0)


def fit_length(signal, length):
    """``signal`` [..., T] cropped or zero-padded at the end to ``length`` samples.

    Example
    -------
    >>> fit_length(torch.ones(3), 5).tolist()
    [1.0, 1.0, 1.0, 0.0, 0.0]
    """
    return F.pad(signal, (0, length - signal.shape[-1])) if signal.shape[-1] < length else signal[..., :length]


def loop_to_length(signal, length):
    """``signal`` [T] repeated (or cropped) to ``length`` samples.

    Example
    -------
    >>> loop_to_length(torch.tensor([1.0, 2.0, 3.0]), 7).tolist()
    [1.0, 2.0, 3.0, 1.0, 2.0, 3.0, 1.0]
    """
    if signal.numel() == 0:
        return torch.zeros(length)
    return signal.repeat(-(-length // signal.shape[-1]))[:length]


def _read(path, start=0, frames=None):
    stop = None if frames is None else start + frames
    data, _ = sf.read(path, start=start, stop=stop, dtype="float32", always_2d=True)
    return torch.from_numpy(np.ascontiguousarray(data[:, 0]))


def read_segment(path, start=0, length=None, loop=False, sample_rate=None):
    """Channel 0 of an audio file as a float32 tensor ``[length]``.

    Arguments
    ---------
    path : str
    start : int
        First sample, at the file's own rate (with ``loop``, taken modulo the file length).
    length : int, optional
        Samples to return, at ``sample_rate`` (default: the rest of the file).
    loop : bool
        Past the end of the file, go on from its beginning (noise clips shorter than a segment);
        otherwise zero-pad.
    sample_rate : int, optional
        Resample to this rate when the file has another one (WHAM! noise is 16 kHz).

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "ramp.wav")
    >>> sf.write(path, np.arange(4) / 8, 8000, subtype="FLOAT")
    >>> (read_segment(path, 2, 5, loop=True) * 8).tolist()
    [2.0, 3.0, 0.0, 1.0, 2.0]
    """
    if length is None:
        return _read(path, start)
    if not loop and sample_rate is None:  # a plain segment: no need for the header
        return fit_length(_read(path, start, length), length)
    info = sf.info(path)
    resample = sample_rate is not None and info.samplerate != sample_rate
    # One sample more than the resampled length needs, so that its last sample is complete.
    needed = math.ceil(length * info.samplerate / sample_rate) + 1 if resample else length
    if loop:
        start = int(start) % max(1, info.frames)
    segment = _read(path, start, needed)
    if segment.shape[-1] < needed and loop and info.frames > 0:  # wrap around to the beginning
        segment = torch.cat([segment, loop_to_length(_read(path), needed - segment.shape[-1])])
    if resample:
        segment = torchaudio.functional.resample(segment, info.samplerate, sample_rate)
    return fit_length(segment, length)


def whole_frames_length(num_samples, win_len, win_inc, rounding="up"):
    """A length ``(N - 1) * win_inc + win_len`` (N >= 1 whole frames) near ``num_samples``.

    Frame-based models (FRCRN) return whole frames only: ``rounding="up"`` gives the padded
    length that keeps every sample, ``"nearest"`` a training segment length.

    Example
    -------
    >>> whole_frames_length(16100, 640, 320), whole_frames_length(16100, 640, 320, rounding="nearest")
    (16320, 16000)
    """
    if rounding not in ("up", "nearest"):
        raise ValueError(f"rounding must be 'up' or 'nearest', got {rounding!r}")
    steps = (num_samples - win_len) / win_inc
    frames = max(1, (math.ceil(steps) if rounding == "up" else int(round(steps))) + 1)
    return (frames - 1) * win_inc + win_len


def level_scale(blocks, target_db=REFERENCE_LEVEL_DB):
    """Per-channel gain that brings audio to the official pipelines' input level.

    The official pipelines scale the input so that the RMS of its louder part (the samples
    whose power is above the mean power) is ``target_db`` dB re full scale. Computed in two
    passes over ``blocks``, so a whole file never needs to be in memory; 1 for silence.

    Arguments
    ---------
    blocks : iterable of torch.Tensor
        ``[C, n]`` blocks, iterable twice: an :class:`AudioReader`, or ``[signal]``.

    Returns
    -------
    torch.Tensor
        ``[C]`` float32 gains.

    Example
    -------
    >>> x = 0.5 * torch.ones(1, 100)
    >>> round(20 * math.log10(float(level_scale([x])[0] * 0.5)), 3)
    -25.0
    """
    total, count = 0.0, 0
    for block in blocks:
        total = total + (block.double() ** 2).sum(dim=-1)
        count += block.shape[-1]
    mean_power = total / max(count, 1)
    loud_sum, loud_count = 0.0, 0
    for block in blocks:
        power = block.double() ** 2
        loud = power >= mean_power[:, None]
        loud_sum = loud_sum + (power * loud).sum(dim=-1)
        loud_count = loud_count + loud.sum(dim=-1)
    rms = torch.as_tensor(loud_sum / torch.as_tensor(loud_count).clamp(min=1)).sqrt()
    return torch.where(rms > 0, 10 ** (target_db / 20) / rms, torch.ones_like(rms)).float()


#: Suffix of the temporary files the writers use; a rerun replaces them (see :func:`temporary_paths`).
TEMPORARY_SUFFIX = ".sbext-partial"
#: The ``software`` tag every output carries: how ``--overwrite`` recognises our own earlier outputs.
OUTPUT_TAG = "speechbrain-ext"


def temporary_paths(path):
    """The fixed temporary names used while writing ``path``: ``[partial, staging]``.

    Fixed (not random) names make an interrupted write recognisable and replaceable: writing
    ``path`` again first removes both, and the CLI sweeps them for every output it plans.

    Example
    -------
    >>> temporary_paths("out/a.wav")
    ['out/.a.wav.sbext-partial', 'out/.a.wav.staging.sbext-partial']
    """
    folder, name = os.path.split(os.fspath(path))
    return [os.path.join(folder, f".{name}{TEMPORARY_SUFFIX}"), os.path.join(folder, f".{name}.staging{TEMPORARY_SUFFIX}")]


def remove_temporaries(path):
    """Remove the temporary files of an earlier (interrupted) write of ``path``; returns those removed."""
    removed = []
    for temporary in temporary_paths(path):
        if os.path.lexists(temporary):
            os.remove(temporary)
            removed.append(temporary)
    return removed


def is_own_output(path):
    """True if ``path`` is an audio file that speechbrain-ext wrote (it carries :data:`OUTPUT_TAG`).

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "x.wav")
    >>> sf.write(path, np.zeros(10), 8000)
    >>> is_own_output(path)
    False
    >>> with AtomicAudioWriter(path, 8000, 1) as writer:
    ...     writer.write(np.zeros((10, 1)))
    >>> is_own_output(path)
    True
    """
    try:
        with sf.SoundFile(os.fspath(path)) as stream:
            return (stream.software or "").startswith(OUTPUT_TAG)
    except (sf.LibsndfileError, RuntimeError, TypeError, OSError):
        return False


def same_file(a, b):
    """True if the paths name one existing file (symbolic and hard links included)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def os_reason(error, stream=None):
    """The operating system's reason for a failed file operation, in lower case, no full stop.

    libsndfile reports failed system calls as "System error."; the real reason (errno) is in the
    failing file's own error string, or in the errno that the C call left.
    """
    if isinstance(error, OSError) and error.strerror:
        reason = error.strerror
    else:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else error.__class__.__name__
        if "System error" in reason:
            detail = ""
            if stream is not None and getattr(stream, "_file", None) is not None:
                try:
                    detail = sf._ffi.string(sf._snd.sf_strerror(stream._file)).decode(errors="replace")
                except Exception:  # private libsndfile access: best effort only
                    detail = ""
            if ":" in detail:
                reason = detail.split(":", 1)[1]
            elif getattr(sf._ffi, "errno", 0):
                reason = os.strerror(sf._ffi.errno)
        reason = reason.removeprefix("Error opening").strip()
    reason = reason.strip().rstrip(".")
    return reason[:1].lower() + reason[1:]


class AtomicAudioWriter:
    """Write audio block by block to a temporary file, renamed to ``path`` only on success.

    The temporary file has a fixed name beside ``path`` (:func:`temporary_paths`), so a write
    killed half-way (even by ``kill -9``) is replaced by the next write of the same output; any
    failure inside the ``with`` block, or while opening or closing the file, removes it. The
    output gets the permissions of any new file under the user's umask, and carries
    :data:`OUTPUT_TAG` so that later runs can tell our outputs from the user's own files. A
    failed write raises :class:`~speechbrain_ext.errors.AudioOutputError` ("cannot write PATH:
    no space left on device"). Float samples are clipped to [-1, 1] for integer subtypes (no
    int16 wrap-around); ``clipped`` counts clipped samples.

    Arguments
    ---------
    path : str
        Final output path; parent folders are created.
    sample_rate : int
    channels : int
    subtype : str
        A soundfile subtype: ``'PCM_16'`` (default, clipped), ``'PCM_24'``, ``'FLOAT'`` (no clipping).
    source : str, optional
        The input this output is made from: writing over it is refused.
    temporary : int
        Which of :func:`temporary_paths` to write to (1: the separation's float staging files).
    rename : bool
        False: on success keep the result at its temporary name (``temporary_path``), for the
        caller to read back and remove; on failure it is removed all the same.

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "out.wav")
    >>> with AtomicAudioWriter(path, 16000, 1) as writer:
    ...     writer.write(np.full((100, 1), 2.0, dtype=np.float32))
    >>> writer.clipped, float(sf.read(path)[0].max())
    (100, 0.999969482421875)
    >>> AtomicAudioWriter(path, 16000, 1, source=path).__enter__()
    Traceback (most recent call last):
    ...
    speechbrain_ext.errors.AudioOutputError: refusing to write ... it is the input file
    """

    def __init__(self, path, sample_rate, channels, subtype="PCM_16", source=None, temporary=0, rename=True):
        self.path = os.fspath(path)
        self.sample_rate, self.channels, self.subtype = sample_rate, channels, subtype
        self.source = source
        self.rename = rename
        self.clipped = 0
        self._file = None
        self._tmp = self.temporary_path = temporary_paths(self.path)[temporary]

    def _fail(self, error, stream=None):
        self._discard()
        return AudioOutputError(f"cannot write {self.path}: {os_reason(error, stream)}")

    def _discard(self):
        if self._file is not None:
            try:
                self._file.close()
            except Exception:  # already failed; the file goes anyway
                pass
            self._file = None
        if os.path.lexists(self._tmp):
            os.remove(self._tmp)

    def __enter__(self):
        if self.source is not None and same_file(self.source, self.path):
            raise AudioOutputError(f"refusing to write {self.path}: it is the input file")
        if os.path.isdir(self.path):
            raise AudioOutputError(f"cannot write {self.path}: it is a folder")
        try:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            if os.path.lexists(self._tmp):  # left by an interrupted run
                os.remove(self._tmp)
            # os.open applies the umask to 0o666, as for any new file (mkstemp would give 0600).
            descriptor = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except OSError as error:
            raise self._fail(error) from None
        try:
            self._file = sf.SoundFile(descriptor, "w", self.sample_rate, self.channels, self.subtype,
                                      format=_format_for(self.path), closefd=True)
        except (sf.LibsndfileError, RuntimeError, ValueError, TypeError) as error:
            os.close(descriptor)
            raise self._fail(error) from None
        try:
            self._file.software = f"{OUTPUT_TAG} {_version()}"
        except (sf.LibsndfileError, RuntimeError):  # a format without metadata
            pass
        return self

    def write(self, block):
        """Append ``block`` [n, channels] (numpy or torch, float)."""
        if torch.is_tensor(block):
            block = block.detach().cpu().numpy()
        block = np.asarray(block, dtype=np.float32)
        if block.size == 0:
            return
        if self.subtype not in ("FLOAT", "DOUBLE"):
            over = np.abs(block) > 1.0
            if over.any():
                self.clipped += int(over.sum())
                block = np.clip(block, -1.0, 1.0)
        try:
            self._file.write(block)
        except (sf.LibsndfileError, RuntimeError, OSError) as error:
            raise self._fail(error, self._file) from None

    def __exit__(self, error_type, error, traceback):
        if error_type is not None:
            self._discard()
            return False
        try:
            self._file.close()
            self._file = None
            if self.rename:
                os.replace(self._tmp, self.path)
        except (sf.LibsndfileError, RuntimeError, OSError) as close_error:
            raise self._fail(close_error) from None
        return False


def _version():
    from speechbrain_ext import __version__

    return __version__


def _format_for(path):
    """libsndfile container format from the file extension (WAV when unknown)."""
    extension = os.path.splitext(path)[1].lstrip(".").upper()
    return extension if extension in sf.available_formats() else "WAV"
