"""What the MossFormer separation recipes share (``recipes/WSJ0Mix/separation``, ``recipes/WHAM/separation``).

Both recipes read a wsj0-2mix-style layout, mix training items (from the files, or dynamically
from single-speaker utterances, optionally with noise and speed perturbation), train with the
permutation-invariant SI-SNR of SpeechBrain's separation recipes and score the test set with
SDR/SDRi and SI-SNR/SI-SNRi. Each recipe's ``train.py`` keeps what is its own (which folders,
which noise); the rest is here:

- **Manifests** (:func:`prepare_mixture_manifests`): ``<data_folder>/{wav8k,wav16k}/{min,max}/
  {tr,cv,tt}/{mix,s1,s2[,s3]}/<same file name>.wav`` into SpeechBrain CSVs with ``mix_wav``,
  ``s1_wav``, ``s2_wav`` (, ``s3_wav``, other folders) columns; idempotent.
- **Mixing** (:class:`SeparationMixer`): items read from the manifest, speed-perturbed and
  cropped for training; or dynamic mixing of utterances of different speakers
  (:class:`SpeakerPool`) with random relative gains; noise added at a given SNR.
- **Training** (:class:`SeparationBrain`): PIT SI-SNR loss
  (``speechbrain.nnet.losses.get_si_snr_with_pitwrapper``), the loss threshold and the
  skipping of non-finite losses of SpeechBrain's recipes, learning-rate scheduling, history
  and checkpoints; :func:`train_and_evaluate` runs fit, fine-tuning from official weights and
  the test evaluation (:func:`evaluate_test_set`, ``test_results.csv``).

Random draws use torch's global generator, which the DataLoader seeds differently in every
worker process (and :func:`~speechbrain_ext.recipes_common.reseed_per_process` per DDP rank).

Authors
 * speechbrain-ext contributors
"""

import csv
import functools
import glob
import json
import logging
import math
import os

import numpy as np
import soundfile as sf
import speechbrain as sb
import torch
import torch.nn.functional as F
import torchaudio
from speechbrain.nnet.losses import get_si_snr_with_pitwrapper
from speechbrain.utils.distributed import run_on_main
from speechbrain_ext.errors import SpeechBrainExtError

from speechbrain_ext.evaluation import (
    format_separation_summary,
    separation_metrics,
    summarize_separation,
    write_separation_csv,
)
from speechbrain_ext.recipes_common import (
    RecipeBrain,
    discard_incomplete_checkpoints,
    export_model,
    read_rows,
    within_time_budget,
)

logger = logging.getLogger(__name__)

# Manifest names of the three subsets, and their wsj0-2mix folder names.
SPLITS = {"train": "tr", "valid": "cv", "test": "tt"}
RATE_FOLDERS = {8000: "wav8k", 16000: "wav16k"}
MODES = ("min", "max")
MANIFEST_VERSION = 1
# Peak of dynamically mixed items (as the wsj0-2mix scripts and SpeechBrain's dynamic mixing),
# and the largest peak of noisy mixtures made on the fly (as the WHAM! scripts).
DYNAMIC_MIX_PEAK = 0.9
MAX_PEAK = 0.9


class MixLayoutError(SpeechBrainExtError, ValueError):
    """The data folder is not the expected mixture layout, or its files cannot be used."""


# --------------------------------------------------------------------------------------------
# Layout and manifests
# --------------------------------------------------------------------------------------------


def _wav_names(folder):
    if not os.path.isdir(folder):
        return []
    return sorted(name for name in os.listdir(folder) if name.lower().endswith(".wav"))


def _layouts_found(data_folder):
    """``['wav8k/min', ...]``: the rate/mode folders present under ``data_folder``."""
    found = []
    for rate_folder in RATE_FOLDERS.values():
        for mode in MODES:
            if os.path.isdir(os.path.join(data_folder, rate_folder, mode)):
                found.append(f"{rate_folder}/{mode}")
    return found


def find_layout_root(data_folder, sample_rate, mode, folders, dataset):
    """The folder holding ``{tr,cv,tt}/<folders>`` for ``sample_rate`` and ``mode``.

    ``data_folder`` is the dataset root (``.../2speakers`` holding ``wav8k/min/...``), or
    directly its ``wav8k/min`` (or ``wav8k``) folder.

    Raises
    ------
    MixLayoutError
        Naming what was expected and what was found (and the options that would match it).
    """
    if sample_rate not in RATE_FOLDERS:
        raise MixLayoutError(f"{dataset} exists at 8000 and 16000 Hz; sample_rate is {sample_rate}")
    if mode not in MODES:
        raise MixLayoutError(f"mode must be 'min' or 'max', got {mode!r}")
    rate_folder = RATE_FOLDERS[sample_rate]
    candidates = [os.path.join(data_folder, rate_folder, mode), os.path.join(data_folder, mode), data_folder]
    for candidate in candidates:
        if all(_wav_names(os.path.join(candidate, split, folder)) for split in SPLITS.values() for folder in folders):
            return candidate
    expected = f"{rate_folder}/{mode}/{{{','.join(SPLITS.values())}}}/{{{','.join(folders)}}}/*.wav"
    if not os.path.isdir(data_folder):
        found = "the folder does not exist"
    elif _layouts_found(data_folder):
        found = "it has " + ", ".join(_layouts_found(data_folder))
        requested = os.path.join(data_folder, rate_folder, mode)
        if os.path.isdir(requested):
            missing = [f"{split}/{folder}" for split in SPLITS.values() for folder in folders
                       if not _wav_names(os.path.join(requested, split, folder))]
            found += f"; {rate_folder}/{mode} has no .wav files in {', '.join(missing[:6])}"
    else:
        found = "found: " + (", ".join(sorted(os.listdir(data_folder))[:8]) or "an empty folder")
    raise MixLayoutError(f"{data_folder} is not a {dataset} folder: expected {expected} in it ({found})")


def _split_rows(root, split, mixture_folder, columns, sample_rate, dataset):
    """Manifest rows of one subset: every mixture with the same-named files of ``columns``."""
    folder = os.path.join(root, split, mixture_folder)
    names = _wav_names(folder)
    for source_folder in columns:
        present = set(_wav_names(os.path.join(root, split, source_folder)))
        missing = [name for name in names if name not in present]
        if missing:
            raise MixLayoutError(
                f"{len(missing)} of {len(names)} mixtures in {folder} have no file of the same name in "
                f"{split}/{source_folder}/, e.g. {', '.join(missing[:3])}: is the {dataset} folder complete?"
            )
    rows, wrong_rate = [], []
    for name in names:
        path = os.path.join(folder, name)
        try:
            info = sf.info(path)
        except Exception as error:
            raise MixLayoutError(f"cannot read {path}: {error}") from None
        if info.samplerate != sample_rate:
            wrong_rate.append(f"{name} ({info.samplerate} Hz)")
        row = {"ID": os.path.splitext(name)[0], "duration": f"{info.frames / info.samplerate:.4f}", "mix_wav": path}
        row.update({column: os.path.join(root, split, source_folder, name) for source_folder, column in columns.items()})
        rows.append(row)
    if wrong_rate:
        raise MixLayoutError(
            f"{len(wrong_rate)} mixtures in {folder} are not at sample_rate {sample_rate} Hz, "
            f"e.g. {', '.join(wrong_rate[:3])}"
        )
    return rows


def manifest_paths(save_folder, prefix):
    """``{'train': <save_folder>/<prefix>_tr.csv, 'valid': ..._cv.csv, 'test': ..._tt.csv}``."""
    return {name: os.path.join(save_folder, f"{prefix}_{split}.csv") for name, split in SPLITS.items()}


def _write_csv(path, rows):
    columns = list(rows[0]) if rows else ["ID", "duration", "mix_wav"]
    with open(path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def prepare_mixture_manifests(
    data_folder,
    save_folder,
    prefix,
    dataset,
    num_spks=2,
    sample_rate=8000,
    mode="min",
    mixture_folder="mix",
    extra_folders=None,
    add_columns=None,
    extra_options=None,
    extra_counts=None,
):
    """Write ``<prefix>_{tr,cv,tt}.csv`` for a wsj0-2mix-style layout; skip when up to date.

    Every row is one mixture: ``ID`` (the file name without extension), ``duration`` (seconds),
    ``mix_wav``, ``s1_wav``, ``s2_wav`` (, ``s3_wav``) and a column per ``extra_folders`` entry,
    absolute paths. The options and file counts are stored in ``<prefix>_prepare.json``: a later
    call with the same ones does nothing. Run it once, under ``run_on_main``.

    Arguments
    ---------
    data_folder : str
        Dataset root (see :func:`find_layout_root`).
    save_folder : str
        Where the manifests go.
    prefix : str
        Manifest name prefix (``wsj`` gives SpeechBrain's ``wsj_tr.csv``...).
    dataset : str
        Name used in messages (``wsj0-2mix``).
    num_spks : int
        Speakers per mixture: the ``s1`` .. ``s<num_spks>`` folders are read.
    sample_rate : int
        8000 (``wav8k``) or 16000 (``wav16k``); the mixtures must be at that rate.
    mode : str
        ``min`` or ``max``.
    mixture_folder : str
        Folder of the mixtures (``mix``; ``mix_both`` for WHAM!).
    extra_folders : dict, optional
        More same-named files per mixture: ``{folder: column}`` (``{"noise": "noise_wav"}``).
    add_columns : callable, optional
        ``add_columns(split, rows)`` may add columns to the rows of a subset before they are
        written (``split`` is ``tr``, ``cv`` or ``tt``).
    extra_options, extra_counts : dict, optional
        More options and file counts that decide whether the manifests are up to date.

    Returns
    -------
    dict
        ``{'train', 'valid', 'test'}`` -> manifest path.

    Raises
    ------
    MixLayoutError
        If the folder is not the layout, files are missing or at another rate, or the number of
        speakers does not match the folders.
    """
    if num_spks not in (2, 3):
        raise MixLayoutError(f"num_spks must be 2 or 3, got {num_spks}")
    columns = {f"s{i + 1}": f"s{i + 1}_wav" for i in range(num_spks)}
    columns.update(extra_folders or {})
    root = find_layout_root(data_folder, sample_rate, mode, [mixture_folder, *columns], dataset)
    if num_spks == 2 and _wav_names(os.path.join(root, SPLITS["train"], "s3")):
        raise MixLayoutError(
            f"{root} has s3/ folders: 3-speaker mixtures (wsj0-3mix); set num_spks: 3 (--num_spks 3)"
        )

    options = {
        "version": MANIFEST_VERSION,
        "root": os.path.abspath(root),
        "num_spks": int(num_spks),
        "sample_rate": int(sample_rate),
        "mode": mode,
        "mixture_folder": mixture_folder,
        "columns": columns,
        **(extra_options or {}),
    }
    counts = {
        f"{split}/{folder}": len(_wav_names(os.path.join(root, split, folder)))
        for split in SPLITS.values()
        for folder in [mixture_folder, *columns]
    }
    counts.update(extra_counts or {})
    signature = {"options": options, "counts": counts}
    paths = manifest_paths(save_folder, prefix)
    options_path = os.path.join(save_folder, f"{prefix}_prepare.json")
    if os.path.isfile(options_path):
        with open(options_path, encoding="utf-8") as stream:
            stored = json.load(stream)
        if {key: stored.get(key) for key in signature} == signature and all(map(os.path.isfile, paths.values())):
            logger.info("%s manifests in %s are up to date: skipping preparation", dataset, save_folder)
            return paths
        logger.info("%s manifests in %s were made with other options or data: preparing again", dataset, save_folder)

    os.makedirs(save_folder, exist_ok=True)
    for name, split in SPLITS.items():
        rows = _split_rows(root, split, mixture_folder, columns, sample_rate, dataset)
        if add_columns is not None:
            add_columns(split, rows)
        _write_csv(paths[name], rows)
    with open(options_path, "w", encoding="utf-8") as stream:
        json.dump({**signature, "manifests": paths}, stream, indent=2)
    logger.info(
        "%s manifests written to %s: %s", dataset, save_folder,
        ", ".join(f"{counts[f'{split}/{mixture_folder}']} {split}" for split in SPLITS.values()),
    )
    return paths


# --------------------------------------------------------------------------------------------
# Audio and mixing
# --------------------------------------------------------------------------------------------


def read_audio(path, start=0, frames=None):
    """Channel 0 of an audio file as a float32 tensor: ``frames`` samples from ``start`` (all
    the rest by default)."""
    stop = None if frames is None else start + frames
    data, _ = sf.read(path, start=start, stop=stop, dtype="float32", always_2d=True)
    return torch.from_numpy(np.ascontiguousarray(data[:, 0]))


def fit_length(signal, length):
    """``signal`` [..., T] cropped or zero-padded at the end to ``length`` samples."""
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


def read_noise(path, start, length, sample_rate):
    """``length`` samples at ``sample_rate`` of channel 0 of a noise file, from sample ``start``
    of the file (at its own rate): resampled when the file has another rate (WHAM! noise is
    16 kHz), wrapped around to the file's beginning when it ends first."""
    info = sf.info(path)
    needed = math.ceil(length * info.samplerate / sample_rate) + 1
    start = int(start) % max(1, info.frames)
    segment = read_audio(path, start, min(needed, info.frames - start))
    if segment.shape[-1] < needed:  # wrap around
        segment = torch.cat([segment, loop_to_length(read_audio(path), needed - segment.shape[-1])])
    if info.samplerate != sample_rate:
        segment = torchaudio.functional.resample(segment, info.samplerate, sample_rate)
    return fit_length(segment, length)


def power(signal):
    """Mean square of a signal."""
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
    return noise * gain.float()


def random_int(high):
    """Uniform integer in ``[0, high)`` from torch's global generator."""
    return int(torch.randint(int(high), ()))


def random_uniform(low, high):
    """Uniform float in ``[low, high)`` from torch's global generator."""
    return float(low + (high - low) * torch.rand(()))


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


class SeparationMixer:
    """Makes the ``(mixture [T], sources [num_spks, T])`` of one item.

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
        sources = [read_audio(row[f"s{i + 1}_wav"]) for i in range(self.num_spks)]
        length = min(source.shape[-1] for source in sources)
        sources = torch.stack([source[:length] for source in sources])
        noise, remix, limit = None, False, False
        if row.get("noise_wav"):
            if row.get("noise_snr_db", "") not in ("", None):  # WHAM! noise added on the fly
                noise = read_noise(row["noise_wav"], int(row.get("noise_start") or 0), length, self.sample_rate)
                noise = scale_to_snr(sources[0], noise, float(row["noise_snr_db"]))
                remix = limit = True
            else:  # noise of a generated layout: already at its level
                noise = fit_length(read_audio(row["noise_wav"]), length)
        if training and self.speed_perturb is not None:
            sources = self._perturb(sources)
            if noise is not None:
                noise = loop_to_length(noise, sources.shape[-1])
            remix = True
        mixture = None if remix else fit_length(read_audio(row["mix_wav"]), sources.shape[-1])
        if training:
            sources, noise, mixture = self._random_crop(sources, noise, mixture)
        if remix:
            mixture = sources.sum(0) + (noise if noise is not None else 0.0)
            if limit:
                mixture, sources = self._limit_peak(mixture, sources, noise)
        return mixture, sources

    @staticmethod
    def _limit_peak(mixture, sources, noise=None, peak=MAX_PEAK):
        """Mixture and sources scaled down together when one would peak above ``peak``."""
        signals = [mixture, sources] + ([noise] if noise is not None else [])
        largest = max(float(signal.abs().max()) for signal in signals)
        if largest > peak:
            mixture, sources = mixture * (peak / largest), sources * (peak / largest)
        return mixture, sources

    def dynamic(self):
        """A new mixture of utterances of different speakers; see the class description."""
        paths = self.speaker_pool.draw(self.num_spks)
        frames = [sf.info(path).frames for path in paths]
        length = min(frames)
        if self.segment_samples:
            length = min(length, self.segment_samples)
        sources = torch.stack([read_audio(path, random_int(total - length + 1), length) for path, total in zip(paths, frames)])
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
            noise = read_noise(path, random_int(max(1, sf.info(path).frames)), sources.shape[-1], self.sample_rate)
            noise = scale_to_snr(sources[0], noise, random_uniform(*self.snr_range_db))
            mixture = mixture + noise
        largest = max(float(mixture.abs().max()), float(sources.abs().max()),
                      float(noise.abs().max()) if noise is not None else 0.0)
        scale = DYNAMIC_MIX_PEAK / max(largest, 1e-8)
        return mixture * scale, sources * scale


def source_keys(num_spks):
    """``['s1_sig', 's2_sig'(, 's3_sig')]``: the dataset keys of the sources."""
    return [f"s{i + 1}_sig" for i in range(num_spks)]


def separation_datasets(hparams, manifests):
    """Training, validation and test datasets (``id``, ``mix_sig``, ``s1_sig``, ``s2_sig`` ...).

    Validation and test items are whole mixtures, as in the manifests. Training items follow
    ``segment_seconds``, ``use_speedperturb`` (``speed_perturb``) and ``dynamic_mixing``
    (sources from ``base_folder_dm``, or the training set's own sources; noise drawn from the
    training rows' ``noise_wav`` files, at ``snr_range_db``; gains in ``dm_relative_gain_db``).

    Returns
    -------
    tuple
        ``(train, valid, test)`` :class:`speechbrain.dataio.dataset.DynamicItemDataset`.

    Raises
    ------
    MixLayoutError
        If dynamic mixing cannot find enough speakers.
    """
    num_spks, sample_rate = hparams["num_spks"], hparams["sample_rate"]
    segment_seconds = hparams.get("segment_seconds")
    segment_samples = int(round(segment_seconds * sample_rate)) if segment_seconds else None
    train_rows = read_rows(manifests["train"])
    dynamic_mixing = bool(hparams.get("dynamic_mixing"))
    pool = None
    if dynamic_mixing:
        folder = hparams.get("base_folder_dm")
        pool = SpeakerPool.from_folder(folder, sample_rate) if folder else SpeakerPool.from_rows(train_rows, num_spks)
        pool.check(num_spks)
        logger.info("Dynamic mixing from %d speakers", len(pool.speakers))
    train_mixer = SeparationMixer(
        num_spks, sample_rate, segment_samples=segment_samples,
        speed_perturb=hparams["speed_perturb"] if hparams.get("use_speedperturb") else None,
        speaker_pool=pool,
        noise_files=sorted({row["noise_wav"] for row in train_rows if row.get("noise_wav")}),
        snr_range_db=hparams.get("snr_range_db", (-6.0, 3.0)),
        relative_gain_db=hparams.get("dm_relative_gain_db", 2.5),
    )
    eval_mixer = SeparationMixer(num_spks, sample_rate)
    output_keys = ["id", "mix_sig", *source_keys(num_spks)]

    datasets = []
    for name in ("train", "valid", "test"):
        with open(manifests[name], newline="", encoding="utf-8") as stream:
            columns = [c for c in next(csv.reader(stream)) if c not in ("ID", "duration")]
        dataset = sb.dataio.dataset.DynamicItemDataset.from_csv(csv_path=manifests[name])
        training = name == "train"

        def pipeline(*values, columns=columns, training=training):
            if training and dynamic_mixing:
                mixture, sources = train_mixer.dynamic()
            else:
                mixer = train_mixer if training else eval_mixer
                mixture, sources = mixer.from_row(dict(zip(columns, values)), training=training)
            yield mixture
            yield from sources

        dataset.add_dynamic_item(
            sb.utils.data_pipeline.provides("mix_sig", *source_keys(num_spks))(
                sb.utils.data_pipeline.takes(*columns)(pipeline)
            )
        )
        dataset.set_output_keys(output_keys)
        datasets.append(dataset)
    return tuple(datasets)


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def pit_si_snr_loss(targets, estimates, lengths=None):
    """Negative permutation-invariant SI-SNR per item, ``[B]`` (SpeechBrain's
    ``get_si_snr_with_pitwrapper``); items shorter than the batch (``lengths`` in samples) are
    scored on their own samples only, not on the padding.

    Example
    -------
    >>> sources = torch.randn(2, 800, 2)
    >>> loss = pit_si_snr_loss(sources, sources.flip(-1), lengths=torch.tensor([800, 500]))
    >>> bool((loss < -100).all())
    True
    """
    total = targets.shape[1]
    if lengths is None or bool((lengths >= total).all()):
        return get_si_snr_with_pitwrapper(targets, estimates)
    return torch.cat([
        get_si_snr_with_pitwrapper(targets[i : i + 1, :length], estimates[i : i + 1, :length])
        for i, length in enumerate(lengths.tolist())
    ])


def _mean(values):
    return float(sum(values) / len(values)) if values else float("nan")


class SeparationBrain(RecipeBrain):
    """Trains an encoder / masknet / decoder separator (MossFormer, SepFormer's contract) with
    the permutation-invariant SI-SNR loss of SpeechBrain's separation recipes.

    As there: per training batch, the items whose loss is already below ``threshold`` (-30 dB,
    i.e. better than 30 dB SI-SNR) are left out when ``threshold_byloss``; a batch whose loss is
    not finite or above ``loss_upper_lim`` (or has no item left) is skipped without an update and
    counted (``nonfinite_count``, logged per epoch as ``skipped_batches``). In multi-process runs
    every process skips together. Gradient clipping (``max_grad_norm``) and mixed precision
    (``precision``) are SpeechBrain's. Validation logs the loss, SI-SNR and SI-SNR improvement;
    the ``lr_scheduler`` (``ReduceLROnPlateau``) follows the validation loss.
    """

    @property
    def num_spks(self):
        return self.hparams.num_spks

    def compute_forward(self, batch, stage):
        """Estimated sources ``[B, T, num_spks]`` of the batch's mixtures."""
        batch = batch.to(self.device)
        mixture = batch.mix_sig.data
        encoded = self.modules.encoder(mixture)  # [B, N, L]
        masks = self.modules.masknet(encoded)  # [spks, B, N, L]
        separated = encoded.unsqueeze(0) * masks
        num_spks, batch_size = masks.shape[:2]
        # All speakers through the decoder in one call: [spks * B, N, L] -> [spks * B, T'].
        decoded = self.modules.decoder(separated.flatten(0, 1)).view(num_spks, batch_size, -1)
        return fit_length(decoded.permute(1, 0, 2), mixture.shape[-1]).transpose(1, 2)

    def targets_and_lengths(self, batch):
        """``([B, T, num_spks] references, [B] lengths in samples)``."""
        targets = torch.stack([getattr(batch, key).data for key in source_keys(self.num_spks)], dim=-1)
        lengths = torch.round(batch.mix_sig.lengths * targets.shape[1]).long()
        return targets.to(self.device), lengths

    def compute_objectives(self, estimates, batch, stage):
        """Negative PIT SI-SNR per item ``[B]``; validation also records SI-SNR and the mixture's."""
        targets, lengths = self.targets_and_lengths(batch)
        losses = pit_si_snr_loss(targets, estimates.float(), lengths)
        if stage != sb.Stage.TRAIN:
            mixture = batch.mix_sig.data.to(self.device).unsqueeze(-1).expand_as(targets)
            self.si_snrs.extend((-losses).tolist())
            self.mixture_si_snrs.extend((-pit_si_snr_loss(targets, mixture, lengths)).tolist())
        return losses

    def training_loss(self, losses):
        """The loss to minimise, or None when the batch is to be skipped (see the class)."""
        if not bool(torch.isfinite(losses).all()):
            return None
        if getattr(self.hparams, "threshold_byloss", False):
            losses = losses[losses > self.hparams.threshold]
            if losses.numel() == 0:
                return None
        loss = losses.mean()
        if loss >= getattr(self.hparams, "loss_upper_lim", float("inf")):
            return None
        return loss

    def _skip_everywhere(self, skip):
        """True on every process when any process must skip its batch (DDP needs all of them to
        run the backward pass, or none)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            flag = torch.tensor(float(skip), device=self.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            return bool(flag.item())
        return skip

    def fit_batch(self, batch):
        """One training step with the loss threshold and the skipping of unusable losses."""
        should_step = (self.step % self.grad_accumulation_factor) == 0
        self.on_fit_batch_start(batch, should_step)
        with self.no_sync(not should_step):
            with self.training_ctx:
                estimates = self.compute_forward(batch, sb.Stage.TRAIN)
                losses = self.compute_objectives(estimates, batch, sb.Stage.TRAIN)
            loss = self.training_loss(losses)
            if self._skip_everywhere(loss is None):
                self.nonfinite_count += 1
                logger.warning(
                    "Skipping a batch: its loss is not finite, above loss_upper_lim or below the threshold "
                    "for every item (%d skipped this epoch)", self.nonfinite_count,
                )
                self.optimizer.zero_grad(set_to_none=True)
                return torch.tensor(float("nan"))
            self.scaler.scale(loss / self.grad_accumulation_factor).backward()
        if should_step:
            self.optimizers_step()
        self.on_fit_batch_end(batch, estimates, loss, should_step)
        return loss.detach().cpu()

    @torch.no_grad()
    def evaluate_batch(self, batch, stage):
        with self.evaluation_ctx:
            estimates = self.compute_forward(batch, stage)
        return self.compute_objectives(estimates, batch, stage).mean().detach().cpu()

    def on_stage_start(self, stage, epoch=None):
        self.si_snrs, self.mixture_si_snrs = [], []
        if stage == sb.Stage.TRAIN:
            # Non-zero when an intra-epoch checkpoint was recovered: the epoch continues there.
            self.resumed_at_step = self.step

    def on_stage_end(self, stage, stage_loss, epoch=None):
        stats = {"loss": stage_loss}
        if self.si_snrs:
            stats["si-snr"] = _mean(self.si_snrs)
            stats["si-snr_i"] = stats["si-snr"] - _mean(self.mixture_si_snrs)
        if stage == sb.Stage.TRAIN:
            self.train_stats = {**stats, "skipped_batches": self.nonfinite_count}
            self.train_steps = self.step
            return
        if stage != sb.Stage.VALID:
            return
        self.end_validation(epoch, stage_loss, stats)


def load_official_weights(separator, path):
    """Fill ``separator`` (a :class:`~speechbrain_ext.lobes.models.mossformer.MossFormer`
    sharing the recipe's modules) from the official weights in ``path`` (a folder with
    ``encoder.bin``, ``masknet.bin``, ``decoder.bin``), converted by
    :func:`speechbrain_ext.convert.mossformer_from_official` for this model's configuration."""
    from speechbrain_ext.convert import mossformer_from_official

    official = mossformer_from_official(path, **separator.config)
    separator.load_state_dict(official.state_dict())
    logger.info("Initialised MossFormer from the official weights in %s", path)


@torch.no_grad()
def evaluate_test_set(hparams, test_data, device):
    """Separate every test mixture with ``hparams['separator']``, score it
    (:func:`speechbrain_ext.evaluation.separation_metrics`: SDR, SDRi, SI-SNR, SI-SNRi) and write
    ``<output_folder>/test_results.csv``; the first ``n_audio_to_save`` mixtures (all when
    negative or null) and their estimates go to ``<separated_folder>/{mix,s1,s2..}/<id>.wav``
    (float WAV; the estimates in the model's output order). Run it on the main process only.

    Returns
    -------
    list of dict
        The per-mixture rows.
    """
    separator = hparams["separator"].eval()
    num_spks, sample_rate = hparams["num_spks"], hparams["sample_rate"]
    to_save = hparams.get("n_audio_to_save", 0)
    to_save = len(test_data) if to_save is None or to_save < 0 else to_save
    folder = hparams.get("separated_folder") or os.path.join(hparams["output_folder"], "separated")
    rows = []
    for index in range(len(test_data)):
        item = test_data[index]
        mixture = item["mix_sig"]
        sources = torch.stack([item[key] for key in source_keys(num_spks)])
        estimates = separator(mixture[None].to(device))[0].T.float().cpu()  # [spks, T]
        metrics = separation_metrics(mixture.numpy(), sources.numpy(), estimates.numpy())
        rows.append({"snt_id": item["id"], **metrics})
        if index < to_save:
            for name, signal in [("mix", mixture), *((f"s{i + 1}", estimates[i]) for i in range(num_spks))]:
                os.makedirs(os.path.join(folder, name), exist_ok=True)
                sf.write(os.path.join(folder, name, f"{item['id']}.wav"), signal.numpy(), sample_rate, subtype="FLOAT")
    csv_path = write_separation_csv(rows, os.path.join(hparams["output_folder"], "test_results.csv"))
    summary = summarize_separation(rows)
    hparams["train_logger"].log_stats(stats_meta={"test set": "tt", "mixtures": len(rows)},
                                      test_stats=summary["separated"])
    logger.info("Test set (%d mixtures), %s:\n%s", len(rows), csv_path, format_separation_summary(summary))
    return rows


def train_and_evaluate(hparams, run_opts, train_data, valid_data, test_data):
    """Fit (resuming from the last checkpoint; with ``pretrained_path`` starting from the
    official weights at ``finetune_lr``, their validation logged as epoch 0), then score the
    best checkpoint on the test set on the main process.

    Returns
    -------
    SeparationBrain
    """
    from speechbrain_ext.convert import CheckpointMismatchError

    checkpointer = hparams["checkpointer"]
    run_on_main(discard_incomplete_checkpoints, args=[checkpointer.checkpoints_dir])
    resuming = checkpointer.find_checkpoint() is not None
    opt_class = hparams["opt_class"]
    pretrained_path = hparams.get("pretrained_path")
    if pretrained_path:
        opt_class = functools.partial(opt_class, lr=hparams["finetune_lr"])
        if resuming:
            logger.info("Resuming from a checkpoint: pretrained_path is not loaded again")
        else:
            try:
                load_official_weights(hparams["separator"], pretrained_path)
            except (OSError, CheckpointMismatchError) as error:
                raise SystemExit(f"error: cannot load --pretrained_path {pretrained_path}: {error}") from None

    brain = SeparationBrain(
        modules=hparams["modules"],
        opt_class=opt_class,
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=checkpointer,
    )
    if pretrained_path and not resuming and not brain.test_only:
        brain.validate_initial_model(valid_data, hparams["valid_dataloader_opts"])
    brain.fit(
        within_time_budget(hparams["epoch_counter"], hparams.get("max_train_minutes")),
        train_data,
        valid_data,
        train_loader_kwargs=hparams["train_dataloader_opts"],
        valid_loader_kwargs=hparams["valid_dataloader_opts"],
    )
    checkpointer.recover_if_possible(min_key="loss")  # the best model, on every process
    run_on_main(evaluate_test_set, args=[hparams, test_data, brain.device])
    from speechbrain_ext.inference import SeparateMossFormer

    modules = {name: hparams[name] for name in SeparateMossFormer.MODULES_NEEDED}
    run_on_main(export_model, args=[SeparateMossFormer, modules, {"sample_rate": hparams["sample_rate"],
                                                                  "num_spks": hparams["num_spks"]},
                                    hparams["output_folder"]])
    return brain
