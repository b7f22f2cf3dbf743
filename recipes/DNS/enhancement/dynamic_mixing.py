"""On-the-fly noisy/clean pairs for the DNS recipe: segments, SNR, level, reverberation.

Training mixtures are drawn anew every time an item is read (random clean segment, random noise
clip and offset, SNR, level and optionally a room impulse response); validation mixtures are
fully specified by their manifest row (see ``prepare_dns.py``), so they never change. Both go
through :func:`make_mixture`. Random draws use torch's global generator, which the DataLoader
seeds differently in every worker process (and ``train.py`` per DDP rank).

Authors
 * speechbrain-ext contributors
"""

import functools

import soundfile as sf
import torch
import torchaudio

# Direct path plus this much of the impulse response is the "early" part kept in the target.
EARLY_REFLECTIONS_SECONDS = 0.05
# RMS (full scale = 1) under which a training segment counts as silence and is drawn again.
SILENCE_RMS = 10 ** (-50 / 20)
ACTIVE_SEGMENT_TRIES = 5
# Peak kept below full scale after the level change (what a 16-bit file could hold).
MAX_PEAK = 0.99


def whole_frames_length(num_samples, win_len, win_inc):
    """The nearest length ``(N - 1) * win_inc + win_len`` (N >= 1 frames) to ``num_samples``.

    FRCRN returns whole frames only, and its training loss needs the target to have exactly
    the enhanced signal's length.

    Example
    -------
    >>> whole_frames_length(64000, 640, 320), whole_frames_length(16100, 640, 320)
    (64000, 16000)
    """
    frames = max(1, int(round((num_samples - win_len) / win_inc)) + 1)
    return (frames - 1) * win_inc + win_len


def read_segment(path, start, length, loop=False):
    """``length`` samples of channel 0 from ``start`` as a float32 tensor.

    Past the end of the file the segment is zero-padded, or, with ``loop``, the file is
    repeated (noise clips shorter than a segment).
    """
    segment, _ = sf.read(path, start=start, stop=start + length, dtype="float32", always_2d=True)
    segment = torch.from_numpy(segment[:, 0].copy())
    if len(segment) < length:
        if loop and start > 0:  # wrap around to the beginning of the file
            segment = torch.cat([segment, read_segment(path, 0, length - len(segment), loop=True)])
        elif loop and len(segment) > 0:
            segment = segment.repeat(-(-length // len(segment)))[:length]
        else:
            segment = torch.nn.functional.pad(segment, (0, length - len(segment)))
    return segment


def random_int(high):
    """Uniform integer in ``[0, high)`` from torch's global generator."""
    return int(torch.randint(high, ()))


def random_uniform(low, high):
    """Uniform float in ``[low, high)`` from torch's global generator."""
    return float(low + (high - low) * torch.rand(()))


def random_active_segment(path, frames, length):
    """A random ``length``-sample segment of a clean file, avoiding silent ones when it can."""
    segment = None
    for _ in range(ACTIVE_SEGMENT_TRIES):
        start = random_int(frames - length + 1) if frames > length else 0
        segment = read_segment(path, start, length)
        if segment.pow(2).mean().sqrt() > SILENCE_RMS:
            break
    return segment


@functools.lru_cache(maxsize=4096)
def load_rir(path, sample_rate):
    """Channel 0 of an impulse response at ``sample_rate`` (cached: RIRs are small and reused)."""
    rir, rate = sf.read(path, dtype="float32", always_2d=True)
    rir = torch.from_numpy(rir[:, 0].copy())
    if rate != sample_rate:
        rir = torchaudio.functional.resample(rir, rate, sample_rate)
    return rir


def reverberate(clean, rir, sample_rate, target="early"):
    """Reverberant speech and the matching target.

    Arguments
    ---------
    clean : torch.Tensor
        ``[T]`` dry speech.
    rir : torch.Tensor
        ``[L]`` room impulse response.
    sample_rate : int
    target : str
        ``'early'``: the direct path and the first 50 ms of reflections (the model learns to
        dereverberate); ``'reverberant'``: the full reverberant speech (denoising only).

    Returns
    -------
    tuple of torch.Tensor
        ``(reverberant, target)``, each ``[T]``, aligned (the direct-path delay is in both).
    """
    if target not in ("early", "reverberant"):
        raise ValueError(f"reverb_target must be 'early' or 'reverberant', got {target!r}")
    length = clean.shape[-1]
    reverberant = torchaudio.functional.fftconvolve(clean, rir)[:length]
    if target == "reverberant":
        return reverberant, reverberant
    direct = int(rir.abs().argmax())
    early = rir[: direct + int(EARLY_REFLECTIONS_SECONDS * sample_rate)]
    return reverberant, torchaudio.functional.fftconvolve(clean, early)[:length]


def make_mixture(clean, noise, snr_db, level_db, rir=None, sample_rate=16000, reverb_target="early"):
    """Mix speech and noise at ``snr_db``, then set the mixture's RMS to ``level_db`` dBFS.

    The target gets the same gain as the mixture (so the model learns to keep the level), and
    both are scaled down together if the mixture would clip.

    Arguments
    ---------
    clean, noise : torch.Tensor
        ``[T]`` speech and noise of the same length.
    snr_db, level_db : float
        Speech-to-noise ratio (of the reverberant speech, when reverberant) and mixture level.
    rir : torch.Tensor, optional
        Room impulse response to apply to the speech.
    sample_rate : int
    reverb_target : str
        See :func:`reverberate`.

    Returns
    -------
    tuple of torch.Tensor
        ``(noisy, target)``, each ``[T]``.

    Example
    -------
    >>> speech, noise = torch.randn(16000), torch.randn(16000)
    >>> noisy, target = make_mixture(speech, noise, snr_db=5.0, level_db=-25.0)
    >>> round(float(20 * torch.log10(noisy.pow(2).mean().sqrt())), 1)
    -25.0
    """
    speech, target = (clean, clean) if rir is None else reverberate(clean, rir, sample_rate, reverb_target)
    speech_power = speech.pow(2).mean()
    noise_power = noise.pow(2).mean().clamp_min(1e-10)
    noise = noise * torch.sqrt(speech_power / (noise_power * 10 ** (snr_db / 10)))
    noisy = speech + noise
    gain = 10 ** (level_db / 20) / noisy.pow(2).mean().sqrt().clamp_min(1e-8)
    noisy, target = noisy * gain, target * gain
    peak = torch.maximum(noisy.abs().max(), target.abs().max())
    if peak > MAX_PEAK:
        noisy, target = noisy * (MAX_PEAK / peak), target * (MAX_PEAK / peak)
    return noisy, target


class TrainingMixer:
    """Draws a training mixture for a clean file: what the train pipeline calls per item.

    Arguments
    ---------
    noises : list of dict
        Rows of ``noise_train.csv`` (``wav``, ``frames``).
    rirs : list of dict
        Rows of ``rir_train.csv`` (``wav``); may be empty.
    segment_samples : int
        Mixture length.
    snr_range_db, level_range_db : tuple of float
        Uniform ranges of the SNR and of the mixture level (dBFS).
    reverb_probability : float
        Share of mixtures made reverberant (needs ``rirs``).
    reverb_target : str
        See :func:`reverberate`.
    sample_rate : int
    """

    def __init__(self, noises, rirs, segment_samples, snr_range_db, level_range_db, reverb_probability=0.0,
                 reverb_target="early", sample_rate=16000):
        if not noises:
            raise ValueError("the training mixer needs at least one noise file")
        if reverb_probability > 0 and not rirs:
            raise ValueError("reverb_probability > 0 needs impulse responses (rir_train.csv)")
        self.noises, self.rirs = noises, rirs
        self.segment_samples = segment_samples
        self.snr_range_db, self.level_range_db = snr_range_db, level_range_db
        self.reverb_probability, self.reverb_target = reverb_probability, reverb_target
        self.sample_rate = sample_rate

    def __call__(self, clean_path, clean_frames):
        """``(noisy, target)`` tensors of ``segment_samples`` for one clean file."""
        length = self.segment_samples
        clean = random_active_segment(clean_path, int(clean_frames), length)
        noise_row = self.noises[random_int(len(self.noises))]
        noise_frames = int(noise_row["frames"])
        noise_start = random_int(noise_frames - length + 1) if noise_frames > length else 0
        noise = read_segment(noise_row["wav"], noise_start, length, loop=True)
        rir = None
        if self.reverb_probability > 0 and float(torch.rand(())) < self.reverb_probability:
            rir = load_rir(self.rirs[random_int(len(self.rirs))]["wav"], self.sample_rate)
        return make_mixture(
            clean, noise, random_uniform(*self.snr_range_db), random_uniform(*self.level_range_db), rir,
            self.sample_rate, self.reverb_target,
        )


def validation_mixture(row, segment_samples, sample_rate=16000, reverb_target="early"):
    """The fixed mixture a ``valid.csv`` row describes: ``(noisy, target)``."""
    clean = read_segment(row["clean_wav"], int(row["clean_start"]), segment_samples)
    noise = read_segment(row["noise_wav"], int(row["noise_start"]), segment_samples, loop=True)
    rir = load_rir(row["rir_wav"], sample_rate) if row["rir_wav"] else None
    return make_mixture(clean, noise, float(row["snr_db"]), float(row["level_db"]), rir, sample_rate, reverb_target)
