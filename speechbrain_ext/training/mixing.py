"""Training items made on the fly, for every task: noisy speech and speaker mixtures.

One place for what the enhancement and separation recipes mix:

- reading: :func:`speechbrain_ext.audio.read_segment` (any segment of a file, looped or
  zero-padded past its end, resampled to the training rate);
- levels: :func:`power`, :func:`scale_to_snr` (the one SNR scaling), :func:`limit_peak`;
- speech + noise (+ room impulse response) at a random SNR and level: :class:`NoiseMixer`
  (enhancement training; :func:`make_noisy` for fixed validation mixtures);
- speakers: :class:`SpeakerPool` and :class:`SpeakerMixer` (separation: items from a manifest,
  speed-perturbed and cropped, noise added at an SNR, or dynamic mixing of utterances of
  different speakers).

Random draws use torch's global generator (:func:`random_int`, :func:`random_uniform`), which the
DataLoader seeds differently in every worker process (and
:func:`speechbrain_ext.training.brain.reseed_per_process` per DDP rank).

Authors
 * speechbrain-ext contributors
"""

import functools
import glob
import math
import os

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
import torchaudio

from speechbrain_ext.audio import fit_length, loop_to_length, read_segment
from speechbrain_ext.errors import SpeechBrainExtError

# Direct path plus this much of the impulse response is the "early" part kept in the target.
EARLY_REFLECTIONS_SECONDS = 0.05
# RMS (full scale = 1) under which a training segment counts as silence and is drawn again.
SILENCE_RMS = 10 ** (-50 / 20)
ACTIVE_SEGMENT_TRIES = 5
# Peak of noisy speech after the level change (what a 16-bit file could hold).
NOISY_PEAK = 0.99
# Peak of dynamically mixed items (as the wsj0-2mix scripts and SpeechBrain's dynamic mixing),
# and the largest peak of noisy speaker mixtures made on the fly (as the WHAM! scripts).
DYNAMIC_MIX_PEAK = 0.9
SPEAKER_MIX_PEAK = 0.9


class MixLayoutError(SpeechBrainExtError, ValueError):
    """The data folder is not the expected layout, or its files cannot be used for mixing."""


# --------------------------------------------------------------------------------------------
# Levels
# --------------------------------------------------------------------------------------------


def random_int(high):
    """Uniform integer in ``[0, high)`` from torch's global generator."""
    return int(torch.randint(int(high), ()))


def random_uniform(low, high):
    """Uniform float in ``[low, high)`` from torch's global generator."""
    return float(low + (high - low) * torch.rand(()))


def power(signal):
    """Mean square of a signal (float64)."""
    return signal.double().pow(2).mean()


def scale_to_snr(reference, noise, snr_db):
    """``noise`` scaled so that ``10 log10(power(reference) / power(noise)) == snr_db``.

    Example
    -------
    >>> reference, noise = torch.ones(100), 0.5 * torch.ones(100)
    >>> scaled = scale_to_snr(reference, noise, 20.0)
    >>> round(float(10 * torch.log10(power(reference) / power(scaled))), 3)
    20.0
    """
    gain = torch.sqrt(power(reference) / (power(noise).clamp_min(1e-12) * 10 ** (snr_db / 10)))
    return noise * gain.to(noise.dtype)


def limit_peak(signals, peak):
    """``signals`` (a list of tensors) scaled down together when one would peak above ``peak``.

    Example
    -------
    >>> [s.abs().max().item() for s in limit_peak([torch.full((3,), 2.0), torch.ones(3)], 0.5)]
    [0.5, 0.25]
    """
    largest = max(float(signal.abs().max()) for signal in signals)
    if largest <= peak:
        return list(signals)
    return [signal * (peak / largest) for signal in signals]


# --------------------------------------------------------------------------------------------
# Speech + noise (enhancement)
# --------------------------------------------------------------------------------------------


def random_active_segment(path, frames, length):
    """A random ``length``-sample segment of a speech file, avoiding silent ones when it can."""
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

    Example
    -------
    >>> rir = torch.zeros(1600)
    >>> rir[0], rir[1200] = 1.0, 0.5  # the direct path and one late reflection (75 ms)
    >>> clean = torch.randn(8000)
    >>> reverberant, early = reverberate(clean, rir, 16000)
    >>> bool(torch.allclose(early, clean, atol=1e-5)), bool(torch.allclose(reverberant, clean, atol=1e-5))
    (True, False)
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


def make_noisy(clean, noise, snr_db, level_db, rir=None, sample_rate=16000, reverb_target="early"):
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
    >>> noisy, target = make_noisy(speech, noise, snr_db=5.0, level_db=-25.0)
    >>> round(float(20 * torch.log10(noisy.pow(2).mean().sqrt())), 1)
    -25.0
    """
    speech, target = (clean, clean) if rir is None else reverberate(clean, rir, sample_rate, reverb_target)
    noisy = speech + scale_to_snr(speech, noise, snr_db)
    gain = 10 ** (level_db / 20) / noisy.pow(2).mean().sqrt().clamp_min(1e-8)
    return tuple(limit_peak([noisy * gain, target * gain], NOISY_PEAK))


class NoiseMixer:
    """Draws a noisy training item for a clean file: what the train pipeline calls per item.

    A random active segment of the clean file, a random noise clip at a random offset (looped
    when shorter), a random SNR and level, and with ``reverb_probability`` a random room impulse
    response (:func:`make_noisy`).

    Arguments
    ---------
    noises : list of dict
        Noise files: rows with ``wav`` and ``frames``.
    rirs : list of dict
        Impulse responses: rows with ``wav``; may be empty.
    segment_samples : int
        Item length.
    snr_range_db, level_range_db : tuple of float
        Uniform ranges of the SNR and of the mixture level (dBFS).
    reverb_probability : float
        Share of items made reverberant (needs ``rirs``).
    reverb_target : str
        See :func:`reverberate`.
    sample_rate : int

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> for name in ("clean", "noise"):
    ...     sf.write(os.path.join(folder, name + ".wav"), np.random.randn(8000) * 0.1, 16000)
    >>> mixer = NoiseMixer([{"wav": os.path.join(folder, "noise.wav"), "frames": 8000}], [], 4000,
    ...                    (0.0, 5.0), (-30.0, -20.0))
    >>> [t.shape[-1] for t in mixer(os.path.join(folder, "clean.wav"), 8000)]
    [4000, 4000]
    """

    def __init__(self, noises, rirs, segment_samples, snr_range_db, level_range_db, reverb_probability=0.0,
                 reverb_target="early", sample_rate=16000):
        if not noises:
            raise ValueError("the training mixer needs at least one noise file")
        if reverb_probability > 0 and not rirs:
            raise ValueError("reverb_probability > 0 needs impulse responses")
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
        return make_noisy(
            clean, noise, random_uniform(*self.snr_range_db), random_uniform(*self.level_range_db), rir,
            self.sample_rate, self.reverb_target,
        )


# --------------------------------------------------------------------------------------------
# Speakers (separation)
# --------------------------------------------------------------------------------------------


def wsj0_utterances(mixture_name, num_spks):
    """The (speaker, utterance) of each source of a wsj0-mix mixture, from its file name.

    wsj0-2mix names a mixture ``<utt1>_<gain1>_<utt2>_<gain2>.wav`` (wsj0-3mix: three pairs);
    a wsj0 utterance id starts with its 3-character speaker id. None if the name is not so.

    Example
    -------
    >>> wsj0_utterances("019o031a_0.27588_01vo030q_-0.27588.wav", 2)
    [('019', '019o031a'), ('01v', '01vo030q')]
    >>> wsj0_utterances("my_recording.wav", 2) is None
    True
    """
    parts = os.path.splitext(os.path.basename(mixture_name))[0].split("_")
    if len(parts) != 2 * num_spks:
        return None
    try:
        [float(gain) for gain in parts[1::2]]
    except ValueError:
        return None
    utterances = parts[0::2]
    if any(len(utterance) < 4 for utterance in utterances):
        return None
    return [(utterance[:3], utterance) for utterance in utterances]


class SpeakerPool:
    """Single-speaker utterances grouped by speaker, for dynamic mixing.

    :meth:`draw` picks distinct speakers with probabilities proportional to their number of
    utterances (as SpeechBrain's dynamic mixing), then one utterance of each.

    Arguments
    ---------
    utterances : dict
        Speaker id -> list of audio file paths.

    Example
    -------
    >>> pool = SpeakerPool({"001": ["a.wav", "b.wav"], "002": ["c.wav"], "003": ["d.wav"]})
    >>> picked = pool.draw(2)
    >>> len(picked), len({path[0] for path in picked})
    (2, 2)
    """

    def __init__(self, utterances):
        self.speakers = sorted(speaker for speaker, paths in utterances.items() if paths)
        self.utterances = {speaker: sorted(utterances[speaker]) for speaker in self.speakers}
        self.weights = torch.tensor([len(self.utterances[s]) for s in self.speakers], dtype=torch.float)

    @classmethod
    def from_rows(cls, rows, num_spks):
        """The sources of the training mixtures, speakers taken from the wsj0-mix file names;
        every utterance once, even if several mixtures use it."""
        by_utterance = {}
        for row in rows:
            parsed = wsj0_utterances(row["mix_wav"], num_spks)
            if parsed is None:
                raise MixLayoutError(
                    f"dynamic mixing needs the speaker of every source: {os.path.basename(row['mix_wav'])} is not a "
                    "wsj0-mix name (<utt1>_<gain1>_<utt2>_<gain2>.wav, speaker = first 3 characters of an "
                    "utterance); set base_folder_dm to a folder of single-speaker wsj0 utterances instead"
                )
            for index, (speaker, utterance) in enumerate(parsed):
                by_utterance.setdefault(utterance, (speaker, row[f"s{index + 1}_wav"]))
        utterances = {}
        for speaker, path in by_utterance.values():
            utterances.setdefault(speaker, []).append(path)
        return cls(utterances)

    @classmethod
    def from_folder(cls, folder, sample_rate=None):
        """Every ``.wav`` under ``folder`` (recursively); the speaker is the first 3 characters of
        the file name, as for wsj0 utterances (``si_tr_s/011/011a0101.wav`` -> ``011``)."""
        paths = sorted(glob.glob(os.path.join(folder, "**", "*.wav"), recursive=True))
        if not paths:
            raise MixLayoutError(f"base_folder_dm {folder} has no .wav files")
        if sample_rate is not None:
            rate = sf.info(paths[0]).samplerate
            if rate != sample_rate:
                raise MixLayoutError(
                    f"base_folder_dm holds {rate} Hz audio ({paths[0]}); resample it to {sample_rate} Hz"
                )
        utterances = {}
        for path in paths:
            utterances.setdefault(os.path.basename(path)[:3], []).append(path)
        return cls(utterances)

    def check(self, num_spks):
        """Raise :class:`MixLayoutError` unless there are enough speakers to mix ``num_spks``."""
        if len(self.speakers) < num_spks:
            raise MixLayoutError(
                f"dynamic mixing of {num_spks} speakers needs at least {num_spks} speakers, found "
                f"{len(self.speakers)}: {', '.join(self.speakers) or 'none'}"
            )

    def draw(self, count):
        """Paths of ``count`` utterances of ``count`` different speakers."""
        chosen = torch.multinomial(self.weights, count, replacement=False).tolist()
        paths = []
        for index in chosen:
            files = self.utterances[self.speakers[index]]
            paths.append(files[random_int(len(files))])
        return paths


class SpeakerMixer:
    """Makes the ``(mixture [T], sources [num_spks, T])`` of one separation item.

    :meth:`from_row` reads a manifest row. For training it may speed-perturb every source
    independently (then remixes them) and crops a random segment. A ``noise_wav`` column adds
    noise: taken as it is (generated WHAM! layout, already scaled), or, with a ``noise_snr_db``
    value, read from ``noise_start`` (in the noise file's samples, resampled) and scaled to that
    SNR against the first speaker (WHAM! noise added on the fly); noisy mixtures made on the fly
    are scaled down when they would peak above 0.9.

    :meth:`dynamic` mixes utterances of different speakers (:class:`SpeakerPool`): a random
    common-length window of each, every source at the same power times a gain drawn uniformly in
    ``[-relative_gain_db, relative_gain_db]`` dB, optionally a random noise at an SNR drawn in
    ``snr_range_db`` (against the first speaker), and the whole item scaled to a peak of 0.9.

    Arguments
    ---------
    num_spks : int
    sample_rate : int
    segment_samples : int, optional
        Training items longer than this are cropped to a random segment of it.
    speed_perturb : callable, optional
        ``[1, T] -> [1, T']``, e.g. :class:`speechbrain.augment.time_domain.SpeedPerturb`; applied
        to each training source separately.
    speaker_pool : SpeakerPool, optional
        For :meth:`dynamic`.
    noise_files : list of str, optional
        Noise files :meth:`dynamic` draws from.
    snr_range_db : tuple of float
        SNR range of :meth:`dynamic`'s noise.
    relative_gain_db : float
        Gain range of :meth:`dynamic`'s sources.

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> row = {}
    >>> for name in ("mix", "s1", "s2"):
    ...     row[name + "_wav"] = os.path.join(folder, name + ".wav")
    ...     sf.write(row[name + "_wav"], np.random.randn(800) * 0.1, 8000)
    >>> mixture, sources = SpeakerMixer(2, 8000, segment_samples=400).from_row(row, training=True)
    >>> tuple(mixture.shape), tuple(sources.shape)
    ((400,), (2, 400))
    """

    def __init__(self, num_spks, sample_rate, segment_samples=None, speed_perturb=None, speaker_pool=None,
                 noise_files=None, snr_range_db=(-6.0, 3.0), relative_gain_db=2.5):
        self.num_spks = num_spks
        self.sample_rate = sample_rate
        self.segment_samples = segment_samples
        self.speed_perturb = speed_perturb
        self.speaker_pool = speaker_pool
        self.noise_files = list(noise_files or [])
        self.snr_range_db = tuple(snr_range_db)
        self.relative_gain_db = float(relative_gain_db)

    def _perturb(self, sources):
        """Speed-perturb every source independently; crop them to the shortest."""
        perturbed = [self.speed_perturb(source[None])[0] for source in sources]
        length = min(signal.shape[-1] for signal in perturbed)
        return torch.stack([signal[:length] for signal in perturbed])

    def _random_crop(self, *signals):
        """The same random ``segment_samples`` window of every signal (unchanged if shorter)."""
        length = signals[0].shape[-1]
        if not self.segment_samples or length <= self.segment_samples:
            return signals
        start = random_int(length - self.segment_samples + 1)
        return tuple(None if s is None else s[..., start : start + self.segment_samples] for s in signals)

    def from_row(self, row, training=False):
        """The item of one manifest row; see the class description."""
        sources = [read_segment(row[f"s{i + 1}_wav"]) for i in range(self.num_spks)]
        length = min(source.shape[-1] for source in sources)
        sources = torch.stack([source[:length] for source in sources])
        noise, remix, limit = None, False, False
        if row.get("noise_wav"):
            if row.get("noise_snr_db", "") not in ("", None):  # WHAM! noise added on the fly
                noise = read_segment(row["noise_wav"], int(row.get("noise_start") or 0), length, loop=True,
                                     sample_rate=self.sample_rate)
                noise = scale_to_snr(sources[0], noise, float(row["noise_snr_db"]))
                remix = limit = True
            else:  # noise of a generated layout: already at its level
                noise = fit_length(read_segment(row["noise_wav"]), length)
        if training and self.speed_perturb is not None:
            sources = self._perturb(sources)
            if noise is not None:
                noise = loop_to_length(noise, sources.shape[-1])
            remix = True
        mixture = None if remix else fit_length(read_segment(row["mix_wav"]), sources.shape[-1])
        if training:
            sources, noise, mixture = self._random_crop(sources, noise, mixture)
        if remix:
            mixture = sources.sum(0) + (noise if noise is not None else 0.0)
            if limit:
                mixture, sources = limit_peak([mixture, sources] + ([noise] if noise is not None else []),
                                              SPEAKER_MIX_PEAK)[:2]
        return mixture, sources

    def dynamic(self):
        """A new mixture of utterances of different speakers; see the class description."""
        paths = self.speaker_pool.draw(self.num_spks)
        frames = [sf.info(path).frames for path in paths]
        length = min(frames)
        if self.segment_samples:
            length = min(length, self.segment_samples)
        sources = torch.stack([read_segment(path, random_int(total - length + 1), length)
                               for path, total in zip(paths, frames)])
        if self.speed_perturb is not None:
            sources = self._perturb(sources)
        levels = torch.sqrt(sources.double().pow(2).mean(-1, keepdim=True)).clamp_min(1e-8).float()
        gains = torch.tensor([10 ** (random_uniform(-self.relative_gain_db, self.relative_gain_db) / 20)
                              for _ in range(self.num_spks)])
        sources = sources / levels * gains[:, None]
        mixture = sources.sum(0)
        noise = None
        if self.noise_files:
            path = self.noise_files[random_int(len(self.noise_files))]
            noise = read_segment(path, random_int(max(1, sf.info(path).frames)), sources.shape[-1], loop=True,
                                 sample_rate=self.sample_rate)
            noise = scale_to_snr(sources[0], noise, random_uniform(*self.snr_range_db))
            mixture = mixture + noise
        largest = max(float(mixture.abs().max()), float(sources.abs().max()),
                      float(noise.abs().max()) if noise is not None else 0.0)
        scale = DYNAMIC_MIX_PEAK / max(largest, 1e-8)
        return mixture * scale, sources * scale
