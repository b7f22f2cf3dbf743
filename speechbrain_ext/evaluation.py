"""Objective quality of enhanced and separated speech: metrics per file, averages and plots.

Two tasks (``--task`` of the ``evaluate`` command): **enhancement** and **separation**.

Enhancement: the metrics of the FRCRN paper's table (and of the DNS-Challenge synthetic test set):

- PESQ-WB and PESQ-NB (ITU-T P.862.2 / P.862 through the ``pesq`` package),
- STOI (``pystoi``),
- SI-SNR in dB (scale-invariant SNR, zero-mean signals), and its improvement over the noisy
  input when the noisy files are given.

Files are matched across folders by name, or DNS-style by ``fileid``
(``noisy/..._fileid_7.wav`` <-> ``clean/clean_fileid_7.wav``). :func:`evaluate_folders` is the
whole job: match, score, write a per-file CSV (ending with an ``avg`` row, as SpeechBrain's
recipes do) and a summary CSV in the paper's layout (rows ``noisy`` / ``enhanced``), and
optionally a PNG of noisy / enhanced / clean spectrograms. :func:`add_evaluate_arguments` and
:func:`run_evaluate` expose it as a command (``python -m speechbrain_ext.evaluation`` or the
``speechbrain-ext evaluate`` subcommand).

Separation: per mixture, with the estimated sources matched to the references by the
permutation of best mean SI-SNR (permutation invariant):

- SI-SNR of the estimates and its improvement over the mixture (SI-SNRi),
- SDR of BSS-eval (``mir_eval.separation.bss_eval_sources``, the implementation SpeechBrain's
  separation recipes use) and its improvement over the mixture (SDRi),

each the mean over the speakers. :func:`evaluate_separation_folders` matches mixtures, reference
sources and estimates by file name (``mix/``, ``s1/``, ``s2/``... as in the wsj0-2mix layout) and
writes the CSV of SpeechBrain's separation recipes (``test_results.csv``: ``snt_id, sdr, sdr_i,
si-snr, si-snr_i``, then an ``avg`` row).

Bad input (missing or unmatched files, sample rates that differ within a pair, unreadable
audio, lengths that do not match) raises one :class:`EvaluationError` saying what is wrong.

Example
-------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> clean = rng.standard_normal(16000)
>>> round(si_snr(clean + 0.1 * rng.standard_normal(16000), clean), 1)
20.0
"""

import argparse
import csv
import itertools
import logging
import math
import os
import re
import sys
import warnings
from dataclasses import dataclass
from typing import Optional

import numpy as np
import soundfile as sf
from pesq import pesq as _pesq
from pystoi import stoi as _stoi
from scipy.signal import resample_poly
from speechbrain_ext.errors import SpeechBrainExtError

logger = logging.getLogger(__name__)

# Tasks `run_evaluate` knows.
TASKS = ("enhancement", "separation")

AUDIO_EXTENSIONS = (".wav", ".flac")
FILEID_PATTERN = re.compile(r"fileid_(\d+)")

# Metric columns of the per-file CSV and the order of the summary table.
METRICS = ("pesq_wb", "pesq_nb", "stoi", "si_snr")
METRIC_TITLES = {
    "pesq_wb": "PESQ-WB",
    "pesq_nb": "PESQ-NB",
    "stoi": "STOI",
    "si_snr": "SI-SNR (dB)",
    "si_snr_improvement": "SI-SNRi (dB)",
}

# Columns of the separation CSV, as in SpeechBrain's separation recipes (test_results.csv).
SEPARATION_METRICS = ("sdr", "sdr_i", "si-snr", "si-snr_i")
SEPARATION_TITLES = {"sdr": "SDR (dB)", "sdr_i": "SDRi (dB)", "si-snr": "SI-SNR (dB)", "si-snr_i": "SI-SNRi (dB)"}

# Shorter/longer ratio below which two versions of one utterance are considered different
# recordings rather than the same one with a few samples of padding or trimming.
MIN_LENGTH_RATIO = 0.9


class EvaluationError(SpeechBrainExtError, ValueError):
    """The files to evaluate are missing, unmatched or unusable."""


@dataclass
class EvaluationItem:
    """One utterance to score: its clean reference, its enhanced version and, optionally,
    the noisy input."""

    id: str
    clean: str
    enhanced: str
    noisy: Optional[str] = None


@dataclass
class EvaluationResult:
    """Per-file rows (dicts, as written to the CSV) and averages per system."""

    rows: list
    summary: dict


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def si_snr(estimate, target, eps=1e-8):
    """Scale-invariant signal-to-noise ratio in dB (both signals made zero-mean first).

    ``SI-SNR = 10 log10(|s_t|^2 / |e - s_t|^2)`` with ``s_t = <e, s> s / |s|^2`` the projection of
    the (zero-mean) estimate ``e`` on the (zero-mean) target ``s``.

    Arguments
    ---------
    estimate, target : numpy.ndarray
        1-D signals of the same length.
    eps : float
        Guards the divisions and the logarithm (silent signals).

    Returns
    -------
    float

    Example
    -------
    >>> t = np.sin(np.arange(1000) / 5.0)
    >>> round(si_snr(3.0 * t + 0.01 * np.cos(np.arange(1000) / 3.0), t), 1)
    49.5
    """
    estimate = np.asarray(estimate, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if estimate.shape != target.shape or estimate.ndim != 1:
        raise ValueError(f"si_snr needs two 1-D signals of one length, got {estimate.shape} and {target.shape}")
    estimate = estimate - estimate.mean()
    target = target - target.mean()
    projection = np.dot(estimate, target) / (np.dot(target, target) + eps) * target
    residual = estimate - projection
    return float(10 * np.log10((np.dot(projection, projection) + eps) / (np.dot(residual, residual) + eps)))


def _pesq_rate(sample_rate):
    """The rate PESQ runs at for audio at ``sample_rate``: 16 kHz, or 8 kHz for narrowband audio."""
    return 16000 if sample_rate >= 16000 else 8000


def _resample(signal, from_rate, to_rate):
    if from_rate == to_rate:
        return signal
    divisor = math.gcd(int(from_rate), int(to_rate))
    return resample_poly(signal, int(to_rate) // divisor, int(from_rate) // divisor)


def _pesq_or_nan(rate, reference, degraded, mode):
    """PESQ, or NaN (with a warning) when the signal has no utterance PESQ can find."""
    try:
        with np.errstate(divide="ignore", invalid="ignore"):  # pesq normalises silence by 0
            return float(_pesq(rate, reference, degraded, mode))
    except Exception as error:  # NoUtterancesError, BufferTooShortError, ...
        warnings.warn(f"PESQ ({mode}) could not score a file: {error.__class__.__name__}: {error}")
        return float("nan")


def pesq_wb(clean, enhanced, sample_rate=16000):
    """Wideband PESQ (P.862.2), computed at 16 kHz.

    Audio at another rate above 16 kHz is resampled to 16 kHz first; audio below 16 kHz has no
    wideband content and scores NaN. Returns NaN (with a warning) when PESQ finds no speech.

    Example
    -------
    >>> from speechbrain_ext.testing.audio import speech_like
    >>> clean = speech_like(1.0, 16000, seed=0)
    >>> round(pesq_wb(clean, clean), 2)
    4.64
    """
    if sample_rate < 16000:
        return float("nan")
    clean, enhanced = (_resample(np.asarray(x, np.float64), sample_rate, 16000) for x in (clean, enhanced))
    return _pesq_or_nan(16000, clean, enhanced, "wb")


def pesq_nb(clean, enhanced, sample_rate=16000):
    """Narrowband PESQ (P.862), at 16 kHz (``pesq``'s 'nb' mode) or at 8 kHz for 8 kHz audio.

    Example
    -------
    >>> from speechbrain_ext.testing.audio import speech_like
    >>> clean = speech_like(1.0, 8000, seed=0)
    >>> round(pesq_nb(clean, clean, sample_rate=8000), 2)
    4.55
    """
    rate = _pesq_rate(sample_rate)
    clean, enhanced = (_resample(np.asarray(x, np.float64), sample_rate, rate) for x in (clean, enhanced))
    return _pesq_or_nan(rate, clean, enhanced, "nb")


def stoi(clean, enhanced, sample_rate=16000):
    """Short-time objective intelligibility (``pystoi``, classic not extended), in [0, 1].

    Example
    -------
    >>> from speechbrain_ext.testing.audio import speech_like
    >>> clean = speech_like(1.0, 16000, seed=0)
    >>> round(stoi(clean, clean), 3)
    1.0
    """
    return float(_stoi(np.asarray(clean, np.float64), np.asarray(enhanced, np.float64), sample_rate, extended=False))


def compute_metrics(clean, enhanced, sample_rate, noisy=None):
    """Every metric of one utterance: ``pesq_wb, pesq_nb, stoi, si_snr`` of the enhanced signal
    and, with ``noisy``, the same for the noisy input (``*_noisy``) and ``si_snr_improvement``.

    Arguments
    ---------
    clean, enhanced : numpy.ndarray
        1-D signals of the same length, at ``sample_rate``.
    sample_rate : int
        In Hz.
    noisy : numpy.ndarray, optional
        The noisy input, same length.

    Returns
    -------
    dict
        Metric name to float.

    Example
    -------
    >>> from speechbrain_ext.testing.audio import pink_noise, speech_like
    >>> clean = speech_like(1.0, 16000, seed=0)
    >>> noisy = clean + 0.05 * pink_noise(1.0, 16000, seed=1)
    >>> metrics = compute_metrics(clean, 0.5 * (clean + noisy), 16000, noisy=noisy)
    >>> sorted(metrics)[:5]
    ['pesq_nb', 'pesq_nb_noisy', 'pesq_wb', 'pesq_wb_noisy', 'si_snr']
    >>> bool(metrics["si_snr_improvement"] > 5)
    True
    """
    metrics = {
        "pesq_wb": pesq_wb(clean, enhanced, sample_rate),
        "pesq_nb": pesq_nb(clean, enhanced, sample_rate),
        "stoi": stoi(clean, enhanced, sample_rate),
        "si_snr": si_snr(enhanced, clean),
    }
    if noisy is not None:
        metrics.update(
            pesq_wb_noisy=pesq_wb(clean, noisy, sample_rate),
            pesq_nb_noisy=pesq_nb(clean, noisy, sample_rate),
            stoi_noisy=stoi(clean, noisy, sample_rate),
            si_snr_noisy=si_snr(noisy, clean),
        )
        metrics["si_snr_improvement"] = metrics["si_snr"] - metrics["si_snr_noisy"]
    return metrics


# --------------------------------------------------------------------------------------------
# Matching files
# --------------------------------------------------------------------------------------------


def _audio_files(folder, role):
    if not folder or not os.path.isdir(folder):
        raise EvaluationError(f"the {role} folder {folder!r} does not exist")
    files = sorted(
        os.path.join(folder, name)
        for name in os.listdir(folder)
        if name.lower().endswith(AUDIO_EXTENSIONS) and os.path.isfile(os.path.join(folder, name))
    )
    if not files:
        raise EvaluationError(f"the {role} folder {folder} has no audio files ({', '.join(AUDIO_EXTENSIONS)})")
    return files


def _keyed(files, key_of, role, how):
    """``{key: path}``; None if some file has no key; an error on a duplicate key."""
    keyed = {}
    for path in files:
        key = key_of(path)
        if key is None:
            return None
        if key in keyed:
            raise EvaluationError(
                f"two {role} files have the same {how} {key!r}: {os.path.basename(keyed[key])} and "
                f"{os.path.basename(path)}"
            )
        keyed[key] = path
    return keyed


def _name_key(path):
    return os.path.splitext(os.path.basename(path))[0]


def _fileid_key(path):
    found = FILEID_PATTERN.findall(os.path.basename(path))
    return f"fileid_{found[-1]}" if found else None


def _natural_order(name):
    """Sort key putting ``fileid_2`` before ``fileid_10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _examples(names, count=5):
    names = sorted(names)
    return ", ".join(names[:count]) + (f", ... ({len(names) - count} more)" if len(names) > count else "")


def match_files(clean_dir, enhanced_dir, noisy_dir=None, match="auto"):
    """Pair every clean file with its enhanced (and noisy) version.

    Arguments
    ---------
    clean_dir, enhanced_dir : str
        Folders of audio files (``.wav``, ``.flac``; not searched recursively).
    noisy_dir : str, optional
        Folder of the noisy inputs.
    match : str
        ``'name'``: same file name (without extension); ``'fileid'``: same DNS ``fileid_N``;
        ``'auto'``: by name when every clean file has a same-named enhanced file, else by fileid.

    Returns
    -------
    list of EvaluationItem
        One per clean file, sorted by id (numbers in numeric order).

    Raises
    ------
    EvaluationError
        If a folder is missing or empty, or some clean file has no enhanced (or noisy) match.

    Example
    -------
    >>> import tempfile
    >>> root = tempfile.mkdtemp()
    >>> for folder, name in [("clean", "clean_fileid_3.wav"), ("enh", "noisy_snr5_fileid_3.wav")]:
    ...     os.makedirs(os.path.join(root, folder))
    ...     sf.write(os.path.join(root, folder, name), np.zeros(160), 16000)
    >>> [item.id for item in match_files(os.path.join(root, "clean"), os.path.join(root, "enh"))]
    ['fileid_3']
    """
    if match not in ("auto", "name", "fileid"):
        raise EvaluationError(f"match must be 'auto', 'name' or 'fileid', got {match!r}")
    roles = {"clean": clean_dir, "enhanced": enhanced_dir}
    if noisy_dir is not None:
        roles["noisy"] = noisy_dir
    files = {role: _audio_files(folder, role) for role, folder in roles.items()}

    def keyed_by(key_of, how):
        keyed = {role: _keyed(paths, key_of, role, how) for role, paths in files.items()}
        return None if any(v is None for v in keyed.values()) else keyed

    if match == "name":
        how, keyed = "name", keyed_by(_name_key, "name")
    elif match == "fileid":
        how, keyed = "fileid", keyed_by(_fileid_key, "fileid")
        if keyed is None:
            unnamed = [os.path.basename(p) for paths in files.values() for p in paths if _fileid_key(p) is None]
            raise EvaluationError(f"matching by fileid, but some files carry no 'fileid_N': {_examples(unnamed)}")
    else:
        how, keyed = "name", keyed_by(_name_key, "name")
        if not all(set(keyed["clean"]) <= set(keyed[role]) for role in keyed):
            by_fileid = keyed_by(_fileid_key, "fileid")
            if by_fileid is not None:
                how, keyed = "fileid", by_fileid

    for role in keyed:
        if role == "clean":
            continue
        missing = set(keyed["clean"]) - set(keyed[role])
        if missing:
            raise EvaluationError(
                f"{len(missing)} of {len(keyed['clean'])} clean files have no {role} file with the same {how} in "
                f"{roles[role]}: {_examples(missing)}"
            )
        extra = set(keyed[role]) - set(keyed["clean"])
        if extra:
            logger.warning("%d %s files have no clean reference and are ignored: %s", len(extra), role, _examples(extra))
    return [
        EvaluationItem(
            id=key,
            clean=keyed["clean"][key],
            enhanced=keyed["enhanced"][key],
            noisy=keyed["noisy"][key] if "noisy" in keyed else None,
        )
        for key in sorted(keyed["clean"], key=_natural_order)
    ]


# --------------------------------------------------------------------------------------------
# Reading and scoring
# --------------------------------------------------------------------------------------------


def _info(path):
    if not os.path.isfile(path):
        raise EvaluationError(f"audio file not found: {path}")
    try:
        info = sf.info(path)
    except Exception as error:
        raise EvaluationError(f"cannot read {path}: {error}") from None
    if info.frames == 0:
        raise EvaluationError(f"{path} is empty")
    return info


def read_mono(path):
    """``(samples float64 [T], sample_rate)`` of an audio file (channel 0 of a multichannel one)."""
    _info(path)
    samples, rate = sf.read(path, dtype="float64", always_2d=True)
    return samples[:, 0], int(rate)


def check_item(item, resample=False):
    """Check from the file headers that an item can be scored (files readable, one sample rate
    unless ``resample``, lengths alike); raises :class:`EvaluationError` otherwise."""
    clean = _info(item.clean)
    durations = {"clean": clean.frames / clean.samplerate}
    for role in ("enhanced", "noisy"):
        path = getattr(item, role)
        if path is None:
            continue
        info = _info(path)
        if info.samplerate != clean.samplerate and not resample:
            raise EvaluationError(
                f"{item.id}: the clean file is at {clean.samplerate} Hz but the {role} file {os.path.basename(path)} "
                f"is at {info.samplerate} Hz; resample it, or pass resample=True (--resample) to resample to "
                f"{clean.samplerate} Hz"
            )
        durations[role] = info.frames / info.samplerate
    # Enhancers may drop or pad a few samples at the end (FRCRN returns whole frames only):
    # the common part is scored, but clearly different recordings are refused.
    if min(durations.values()) < MIN_LENGTH_RATIO * max(durations.values()):
        described = ", ".join(f"{role} {seconds:.2f} s" for role, seconds in durations.items())
        raise EvaluationError(f"{item.id}: the files differ in length ({described}); are they the same utterance?")


def load_item(item, resample=False):
    """Read one item's signals at the clean file's rate, trimmed to their common length.

    Arguments
    ---------
    item : EvaluationItem
    resample : bool
        Resample enhanced/noisy files whose rate differs from the clean file's instead of
        raising an error.

    Returns
    -------
    dict
        ``clean``, ``enhanced`` and ``noisy`` (None without a noisy file) arrays, and
        ``sample_rate``.
    """
    check_item(item, resample)
    clean, rate = read_mono(item.clean)
    signals = {"clean": clean}
    for role in ("enhanced", "noisy"):
        path = getattr(item, role)
        if path is not None:
            signal, signal_rate = read_mono(path)
            signals[role] = _resample(signal, signal_rate, rate)
    shortest = min(len(signal) for signal in signals.values())
    trimmed = {role: signal[:shortest] for role, signal in signals.items()}
    return {**trimmed, "noisy": trimmed.get("noisy"), "sample_rate": rate}


def _nanmean(values):
    values = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def summarize(rows):
    """Average metrics per system: ``{'enhanced': {...}, 'noisy': {...}}`` (``noisy`` only when
    the rows have noisy scores). NaN entries (PESQ failures) are left out of the averages."""
    summary = {"enhanced": {m: _nanmean(r.get(m) for r in rows) for m in METRICS}}
    if rows and "si_snr_noisy" in rows[0]:
        summary["enhanced"]["si_snr_improvement"] = _nanmean(r["si_snr_improvement"] for r in rows)
        summary["noisy"] = {m: _nanmean(r[f"{m}_noisy"] for r in rows) for m in METRICS}
        summary["noisy"]["si_snr_improvement"] = 0.0
    return summary


def evaluate_items(items, resample=False):
    """Score every item; see :func:`compute_metrics` for the metrics.

    Arguments
    ---------
    items : list of EvaluationItem
    resample : bool
        See :func:`load_item`.

    Returns
    -------
    EvaluationResult
    """
    if not items:
        raise EvaluationError("nothing to evaluate: no files")
    for item in items:  # from the headers: bad input stops before minutes of scoring
        check_item(item, resample)
    rows = []
    for item in items:
        signals = load_item(item, resample=resample)
        metrics = compute_metrics(signals["clean"], signals["enhanced"], signals["sample_rate"], signals["noisy"])
        rows.append(
            {
                "id": item.id,
                "clean": item.clean,
                "enhanced": item.enhanced,
                **({"noisy": item.noisy} if item.noisy else {}),
                "sample_rate": signals["sample_rate"],
                "duration": len(signals["clean"]) / signals["sample_rate"],
                **metrics,
            }
        )
    if len({"noisy" in row for row in rows}) > 1:
        raise EvaluationError("either every item or none needs a noisy file")
    return EvaluationResult(rows=rows, summary=summarize(rows))


# --------------------------------------------------------------------------------------------
# Writing results
# --------------------------------------------------------------------------------------------


def summary_path_for(csv_path):
    """Where the summary table of ``csv_path`` goes: ``results.csv`` -> ``results_summary.csv``."""
    stem, extension = os.path.splitext(csv_path)
    return f"{stem}_summary{extension or '.csv'}"


def _formatted(value):
    return f"{value:.4f}" if isinstance(value, float) else value


def write_csv(result, csv_path):
    """Write the per-file CSV (one row per file, then an ``avg`` row) and, next to it, the
    summary CSV (rows ``noisy`` / ``enhanced``; see :func:`summary_path_for`).

    Returns
    -------
    tuple of str
        The per-file and summary CSV paths.
    """
    folder = os.path.dirname(os.path.abspath(csv_path))
    os.makedirs(folder, exist_ok=True)
    columns = list(result.rows[0])
    averages = {"id": "avg"}
    for column in columns:
        if column not in ("id", "clean", "enhanced", "noisy", "sample_rate"):
            averages[column] = _nanmean(row[column] for row in result.rows)
    with open(csv_path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=columns)
        writer.writeheader()
        for row in [*result.rows, averages]:
            writer.writerow({key: _formatted(value) for key, value in row.items()})

    summary_path = summary_path_for(csv_path)
    metric_columns = [*METRICS, *(["si_snr_improvement"] if "noisy" in result.summary else [])]
    with open(summary_path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["system", *metric_columns, "files"])
        for system in ("noisy", "enhanced"):
            if system in result.summary:
                writer.writerow(
                    [system, *(_formatted(result.summary[system][m]) for m in metric_columns), len(result.rows)]
                )
    return csv_path, summary_path


def format_summary(summary):
    """The averages as a markdown table, in the layout of the FRCRN paper.

    Example
    -------
    >>> print(format_summary({"enhanced": {"pesq_wb": 3.2, "pesq_nb": 3.6, "stoi": 0.98, "si_snr": 20.0}}))
    |          | PESQ-WB | PESQ-NB | STOI  | SI-SNR (dB) |
    |----------|---------|---------|-------|-------------|
    | enhanced | 3.20    | 3.60    | 0.980 | 20.00       |
    """
    systems = [s for s in ("noisy", "enhanced") if s in summary]
    columns = [m for m in (*METRICS, "si_snr_improvement") if m in summary[systems[-1]]]
    header = ["", *(METRIC_TITLES[m] for m in columns)]
    body = [
        [system, *(f"{summary[system][m]:.3f}" if m == "stoi" else f"{summary[system][m]:.2f}" for m in columns)]
        for system in systems
    ]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

    def line(cells):
        return "| " + " | ".join(cell.ljust(width) for cell, width in zip(cells, widths)) + " |"

    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, body)])


# --------------------------------------------------------------------------------------------
# Spectrogram plot
# --------------------------------------------------------------------------------------------


def log_spectrogram(signal, sample_rate, frame_seconds=0.032, hop_seconds=0.008, floor_db=-80.0):
    """Magnitude spectrogram in dB relative to its maximum, ``[bins, frames]``, floored at
    ``floor_db`` (Hann window).

    Example
    -------
    >>> log_spectrogram(np.random.default_rng(0).standard_normal(16000), 16000).shape
    (257, 122)
    """
    frame = int(round(frame_seconds * sample_rate))
    hop = int(round(hop_seconds * sample_rate))
    signal = np.asarray(signal, dtype=np.float64)
    if len(signal) < frame:
        signal = np.pad(signal, (0, frame - len(signal)))
    count = 1 + (len(signal) - frame) // hop
    frames = np.lib.stride_tricks.sliding_window_view(signal, frame)[::hop][:count]
    magnitude = np.abs(np.fft.rfft(frames * np.hanning(frame), axis=-1)).T
    decibels = 20 * np.log10(magnitude + 1e-10)
    return np.maximum(decibels - decibels.max(), floor_db)


def plot_spectrograms(items, png_path, max_files=3, resample=False):
    """A PNG of noisy / enhanced / clean spectrograms (one row per file) for the first
    ``max_files`` items.

    Returns
    -------
    str
        ``png_path``.
    """
    panels = []  # per file: (title, spectrogram, sample rate, seconds) of noisy, enhanced, clean
    for item in items[:max_files]:
        signals = load_item(item, resample=resample)
        rate = signals["sample_rate"]
        seconds = len(signals["clean"]) / rate
        panels.append([
            (f"{item.id}: {role}", log_spectrogram(signals[role], rate), rate, seconds)
            for role in ("noisy", "enhanced", "clean")
            if signals[role] is not None
        ])
    if not panels:
        raise EvaluationError("nothing to plot: no files")
    os.makedirs(os.path.dirname(os.path.abspath(png_path)), exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    columns = max(len(row) for row in panels)
    figure, axes = plt.subplots(len(panels), columns, figsize=(4 * columns, 2.6 * len(panels)), squeeze=False)
    for r, row in enumerate(panels):
        for c in range(columns):
            axis = axes[r][c]
            if c >= len(row):
                axis.axis("off")
                continue
            title, spec, rate, seconds = row[c]
            axis.imshow(
                spec, origin="lower", aspect="auto", cmap="viridis", vmin=-80, vmax=0,
                extent=(0, seconds, 0, rate / 2000),
            )
            axis.set_title(title, fontsize=9)
            axis.set_xlabel("time (s)", fontsize=8)
            axis.set_ylabel("frequency (kHz)", fontsize=8)
    figure.tight_layout()
    figure.savefig(png_path, dpi=100)
    plt.close(figure)
    return png_path


# --------------------------------------------------------------------------------------------
# Separation
# --------------------------------------------------------------------------------------------


@dataclass
class SeparationItem:
    """One mixture to score: its file, the reference sources' files and the estimated sources'
    files (in any order: the permutation is resolved when scoring)."""

    id: str
    mixture: str
    sources: list
    estimates: list


def _as_sources(signals, role):
    """``signals`` as a float64 ``[speakers, samples]`` array (at least two speakers)."""
    array = np.asarray(signals, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] < 2:
        raise ValueError(f"{role} must be [speakers (>= 2), samples], got shape {array.shape}")
    return array


def best_permutation(sources, estimates):
    """The order of the estimates that maximises the mean SI-SNR against the sources.

    Arguments
    ---------
    sources, estimates : numpy.ndarray
        ``[speakers, samples]`` each.

    Returns
    -------
    permutation : tuple of int
        ``estimates[permutation[i]]`` is the estimate of ``sources[i]`` (ties keep the given order).
    si_snrs : numpy.ndarray
        SI-SNR in dB of each source's estimate, in source order.

    Example
    -------
    >>> rng = np.random.default_rng(0)
    >>> sources = rng.standard_normal((2, 1000))
    >>> permutation, si_snrs = best_permutation(sources, sources[::-1])
    >>> permutation
    (1, 0)
    """
    sources, estimates = _as_sources(sources, "sources"), _as_sources(estimates, "estimates")
    if sources.shape != estimates.shape:
        raise ValueError(f"sources {sources.shape} and estimates {estimates.shape} differ in shape")
    count = len(sources)
    # scores[i, j]: SI-SNR of estimate j against source i.
    scores = np.array([[si_snr(estimate, source) for estimate in estimates] for source in sources])
    rows = np.arange(count)
    permutation = max(itertools.permutations(range(count)), key=lambda order: scores[rows, list(order)].sum())
    return tuple(int(j) for j in permutation), scores[rows, list(permutation)]


def bss_eval_sdr(sources, estimates):
    """BSS-eval SDR in dB of each estimate against the source of the same index.

    Computed by ``mir_eval.separation.bss_eval_sources`` (512-tap distortion filters, as in
    SpeechBrain's separation recipes) without a permutation search: order the estimates first
    (:func:`best_permutation`). mir_eval refuses silent (all-zero) signals: their SDR is NaN,
    with a warning.

    Arguments
    ---------
    sources, estimates : numpy.ndarray
        ``[speakers, samples]`` each.

    Returns
    -------
    numpy.ndarray
        ``[speakers]`` SDR in dB.

    Example
    -------
    >>> rng = np.random.default_rng(0)
    >>> sources = rng.standard_normal((2, 4000))
    >>> estimates = sources + 0.1 * rng.standard_normal((2, 4000))  # noise 20 dB down
    >>> [round(float(v)) for v in bss_eval_sdr(sources, estimates)]
    [21, 21]
    """
    try:
        from mir_eval.separation import bss_eval_sources
    except ImportError:  # pragma: no cover - a declared dependency
        raise ImportError("SDR needs the mir_eval package: pip install mir_eval") from None
    sources, estimates = _as_sources(sources, "sources"), _as_sources(estimates, "estimates")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # mir_eval 0.8 deprecates its separation module
        try:
            sdr, _, _, _ = bss_eval_sources(sources, estimates, compute_permutation=False)
        except ValueError as error:  # a silent reference or estimate
            warnings.warn(f"SDR could not be computed: {error}")
            return np.full(len(sources), np.nan)
    return np.asarray(sdr, dtype=np.float64)


def separation_metrics(mixture, sources, estimates):
    """SDR, SDRi, SI-SNR and SI-SNRi of one mixture, each the mean over the speakers.

    The estimates may come in any order: they are matched to the sources by the permutation of
    best mean SI-SNR (:func:`best_permutation`), which the SDR uses too. The improvements are
    over the unprocessed mixture taken as the estimate of every source, as in SpeechBrain's
    separation recipes.

    Arguments
    ---------
    mixture : numpy.ndarray
        ``[samples]``.
    sources, estimates : numpy.ndarray
        ``[speakers, samples]`` each, same length as the mixture.

    Returns
    -------
    dict
        ``sdr``, ``sdr_i``, ``si-snr``, ``si-snr_i`` (dB) and ``permutation`` (see
        :func:`best_permutation`).

    Example
    -------
    >>> rng = np.random.default_rng(0)
    >>> sources = rng.standard_normal((2, 4000))
    >>> estimates = sources + 0.1 * rng.standard_normal((2, 4000))  # noise 20 dB down
    >>> metrics = separation_metrics(sources.sum(0), sources, 3.0 * estimates[::-1])
    >>> metrics["permutation"], round(metrics["si-snr"]), round(metrics["si-snr_i"])
    ((1, 0), 20, 20)
    """
    sources, estimates = _as_sources(sources, "sources"), _as_sources(estimates, "estimates")
    mixture = np.asarray(mixture, dtype=np.float64)
    if mixture.shape != sources.shape[1:] or estimates.shape != sources.shape:
        raise ValueError(
            f"mixture {mixture.shape}, sources {sources.shape} and estimates {estimates.shape} do not match"
        )
    permutation, si_snrs = best_permutation(sources, estimates)
    mixture_si_snr = np.mean([si_snr(mixture, source) for source in sources])
    sdr = np.mean(bss_eval_sdr(sources, estimates[list(permutation)]))
    mixture_sdr = np.mean(bss_eval_sdr(sources, np.repeat(mixture[None], len(sources), axis=0)))
    return {
        "sdr": float(sdr),
        "sdr_i": float(sdr - mixture_sdr),
        "si-snr": float(np.mean(si_snrs)),
        "si-snr_i": float(np.mean(si_snrs) - mixture_si_snr),
        "permutation": permutation,
    }


def match_separation_files(mix_dir, source_dirs, estimate_dirs):
    """Pair every mixture with its reference sources and estimates, by file name.

    Arguments
    ---------
    mix_dir : str
        Folder of the mixtures (``.wav``, ``.flac``).
    source_dirs : list of str
        One folder per speaker (``s1``, ``s2`` [, ``s3``]), files named as the mixtures.
    estimate_dirs : list of str
        As many folders of estimated sources, files named as the mixtures, in any speaker order.

    Returns
    -------
    list of SeparationItem
        One per mixture, sorted by name (numbers in numeric order).

    Raises
    ------
    EvaluationError
        If a folder is missing or empty, the folder counts differ, or a mixture lacks a file.
    """
    source_dirs, estimate_dirs = list(source_dirs or []), list(estimate_dirs or [])
    if len(source_dirs) < 2:
        raise EvaluationError(f"separation needs the folders of at least 2 reference sources, got {len(source_dirs)}")
    if len(estimate_dirs) != len(source_dirs):
        raise EvaluationError(
            f"{len(source_dirs)} reference source folders but {len(estimate_dirs)} estimate folders: "
            "give one estimate folder per speaker"
        )
    roles = {"mixture": mix_dir}
    roles.update({f"source {i + 1}": folder for i, folder in enumerate(source_dirs)})
    roles.update({f"estimate {i + 1}": folder for i, folder in enumerate(estimate_dirs)})
    keyed = {role: _keyed(_audio_files(folder, role), _name_key, role, "name") for role, folder in roles.items()}
    mixtures = keyed["mixture"]
    for role, files in keyed.items():
        missing = set(mixtures) - set(files)
        if missing:
            raise EvaluationError(
                f"{len(missing)} of {len(mixtures)} mixtures have no {role} file with the same name in "
                f"{roles[role]}: {_examples(missing)}"
            )
        extra = set(files) - set(mixtures)
        if extra:
            logger.warning("%d %s files have no mixture and are ignored: %s", len(extra), role, _examples(extra))
    return [
        SeparationItem(
            id=key,
            mixture=mixtures[key],
            sources=[keyed[f"source {i + 1}"][key] for i in range(len(source_dirs))],
            estimates=[keyed[f"estimate {i + 1}"][key] for i in range(len(estimate_dirs))],
        )
        for key in sorted(mixtures, key=_natural_order)
    ]


def check_separation_item(item, resample=False):
    """Check from the file headers that a separation item can be scored (files readable, one
    sample rate unless ``resample``, lengths alike); raises :class:`EvaluationError` otherwise.

    Returns
    -------
    int
        The mixture's sample rate.
    """
    mixture_info = _info(item.mixture)
    durations = []
    for role, paths in (("mixture", [item.mixture]), ("source", item.sources), ("estimate", item.estimates)):
        for path in paths:
            info = _info(path)
            if info.samplerate != mixture_info.samplerate and not resample:
                raise EvaluationError(
                    f"{item.id}: the mixture is at {mixture_info.samplerate} Hz but the {role} file "
                    f"{path} is at {info.samplerate} Hz; resample it, or pass resample=True (--resample) "
                    f"to resample to {mixture_info.samplerate} Hz"
                )
            durations.append(info.frames / info.samplerate)
    if min(durations) < MIN_LENGTH_RATIO * max(durations):
        raise EvaluationError(
            f"{item.id}: the files differ in length ({min(durations):.2f} s to {max(durations):.2f} s); "
            "are they the same mixture?"
        )
    return int(mixture_info.samplerate)


def load_separation_item(item, resample=False):
    """Read one separation item at the mixture's rate, trimmed to the common length.

    Arguments
    ---------
    item : SeparationItem
    resample : bool
        Resample files whose rate differs from the mixture's instead of raising an error.

    Returns
    -------
    dict
        ``mixture`` ``[T]``, ``sources`` and ``estimates`` ``[speakers, T]``, ``sample_rate``.
    """
    rate = check_separation_item(item, resample)
    paths = {"mixture": [item.mixture], "sources": item.sources, "estimates": item.estimates}
    signals = {}
    for role, role_paths in paths.items():
        loaded = []
        for path in role_paths:
            signal, signal_rate = read_mono(path)
            loaded.append(_resample(signal, signal_rate, rate))
        signals[role] = loaded
    shortest = min(len(signal) for loaded in signals.values() for signal in loaded)
    return {
        "mixture": signals["mixture"][0][:shortest],
        "sources": np.stack([signal[:shortest] for signal in signals["sources"]]),
        "estimates": np.stack([signal[:shortest] for signal in signals["estimates"]]),
        "sample_rate": int(rate),
    }


def summarize_separation(rows):
    """Average of every separation metric over ``rows`` (NaN entries left out):
    ``{'separated': {metric: mean}}``."""
    return {"separated": {metric: _nanmean(row[metric] for row in rows) for metric in SEPARATION_METRICS}}


def evaluate_separation_items(items, resample=False):
    """Score every separation item (:func:`separation_metrics`).

    Returns
    -------
    EvaluationResult
        Rows ``{snt_id, sdr, sdr_i, si-snr, si-snr_i}`` and their averages.
    """
    if not items:
        raise EvaluationError("nothing to evaluate: no mixtures")
    for item in items:  # from the headers: bad input stops before minutes of scoring
        check_separation_item(item, resample)
    rows = []
    for item in items:
        signals = load_separation_item(item, resample=resample)
        metrics = separation_metrics(signals["mixture"], signals["sources"], signals["estimates"])
        rows.append({"snt_id": item.id, **{metric: metrics[metric] for metric in SEPARATION_METRICS}})
    return EvaluationResult(rows=rows, summary=summarize_separation(rows))


def write_separation_csv(rows, csv_path):
    """Write the per-mixture CSV of SpeechBrain's separation recipes: ``snt_id, sdr, sdr_i,
    si-snr, si-snr_i``, one row per mixture, then an ``avg`` row (NaN entries left out of it).

    Arguments
    ---------
    rows : list of dict
        Each with ``snt_id`` and the four metrics (other keys are not written).
    csv_path : str

    Returns
    -------
    str
        ``csv_path``.
    """
    os.makedirs(os.path.dirname(os.path.abspath(csv_path)), exist_ok=True)
    averages = {"snt_id": "avg", **summarize_separation(rows)["separated"]}
    with open(csv_path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=["snt_id", *SEPARATION_METRICS], extrasaction="ignore")
        writer.writeheader()
        for row in [*rows, averages]:
            writer.writerow({key: _formatted(value) for key, value in row.items()})
    return csv_path


def format_separation_summary(summary):
    """The separation averages as a markdown table.

    Example
    -------
    >>> print(format_separation_summary({"separated": {"sdr": 12.0, "sdr_i": 12.1, "si-snr": 11.5, "si-snr_i": 11.6}}))
    |           | SDR (dB) | SDRi (dB) | SI-SNR (dB) | SI-SNRi (dB) |
    |-----------|----------|-----------|-------------|--------------|
    | separated | 12.00    | 12.10     | 11.50       | 11.60        |
    """
    header = ["", *(SEPARATION_TITLES[m] for m in SEPARATION_METRICS)]
    body = [["separated", *(f"{summary['separated'][m]:.2f}" for m in SEPARATION_METRICS)]]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

    def line(cells):
        return "| " + " | ".join(cell.ljust(width) for cell, width in zip(cells, widths)) + " |"

    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, body)])


def evaluate_separation_folders(mix_dir, source_dirs, estimate_dirs, csv_path=None, resample=False):
    """Match (:func:`match_separation_files`), score and write the CSV (:func:`write_separation_csv`).

    Returns
    -------
    EvaluationResult
    """
    items = match_separation_files(mix_dir, source_dirs, estimate_dirs)
    result = evaluate_separation_items(items, resample=resample)
    if csv_path:
        write_separation_csv(result.rows, csv_path)
    return result


# --------------------------------------------------------------------------------------------
# The whole job, and the command line
# --------------------------------------------------------------------------------------------


def evaluate_folders(
    clean_dir,
    enhanced_dir,
    noisy_dir=None,
    csv_path=None,
    plot_path=None,
    match="auto",
    resample=False,
    plot_files=3,
):
    """Match, score, write the CSVs and the plot; see the module docstring.

    Arguments
    ---------
    clean_dir, enhanced_dir : str
        Folders of clean references and enhanced files.
    noisy_dir : str, optional
        Folder of the noisy inputs (adds the ``noisy`` row and SI-SNR improvement).
    csv_path : str, optional
        Per-file CSV to write (the summary goes to :func:`summary_path_for`).
    plot_path : str, optional
        PNG of spectrograms to write.
    match, resample : see :func:`match_files` and :func:`load_item`.
    plot_files : int
        Files shown in the plot.

    Returns
    -------
    EvaluationResult
    """
    items = match_files(clean_dir, enhanced_dir, noisy_dir, match=match)
    result = evaluate_items(items, resample=resample)
    if csv_path:
        write_csv(result, csv_path)
    if plot_path:
        plot_spectrograms(items, plot_path, max_files=plot_files, resample=resample)
    return result


def add_evaluate_arguments(parser):
    """Declare the ``evaluate`` options on ``parser`` (an ``argparse`` (sub)parser)."""
    parser.add_argument("--task", choices=TASKS, default="enhancement", help="what was produced (default: %(default)s)")
    enhancement = parser.add_argument_group("enhancement (--task enhancement)")
    enhancement.add_argument("--clean", metavar="DIR", help="folder of clean reference files (required)")
    enhancement.add_argument("--enhanced", metavar="DIR", help="folder of enhanced files (required)")
    enhancement.add_argument("--noisy", metavar="DIR", help="folder of the noisy inputs (adds the noisy row and SI-SNRi)")
    enhancement.add_argument("--plot", metavar="PNG", help="spectrograms (noisy / enhanced / clean) of a few files")
    enhancement.add_argument("--plot_files", type=int, default=3, metavar="N", help="files in the plot (default: %(default)s)")
    enhancement.add_argument(
        "--match", choices=("auto", "name", "fileid"), default="auto",
        help="pair files by name or by DNS 'fileid_N' (default: %(default)s: name if possible, else fileid)",
    )
    separation = parser.add_argument_group(
        "separation (--task separation; files are paired by name, e.g. the wsj0-2mix tt/mix, tt/s1, tt/s2)"
    )
    separation.add_argument("--mix", metavar="DIR", help="folder of the mixtures (required)")
    separation.add_argument(
        "--sources", nargs="+", metavar="DIR", help="folders of the reference sources, one per speaker (required)"
    )
    separation.add_argument(
        "--estimates", nargs="+", metavar="DIR",
        help="folders of the estimated sources, one per speaker, in any order (required)",
    )
    parser.add_argument(
        "--csv", metavar="FILE",
        help="per-file CSV to write (enhancement: the averages go to FILE_summary.csv; separation: "
        "SpeechBrain's test_results.csv layout with an avg row)",
    )
    parser.add_argument(
        "--resample", action="store_true",
        help="resample files whose rate differs from the reference's instead of stopping with an error",
    )
    return parser


def _missing_options(args, names):
    """The ``--options`` among ``names`` that were not given."""
    return [f"--{name}" for name in names if not getattr(args, name, None)]


def run_evaluate(args):
    """Run the ``evaluate`` command for parsed ``args``; prints the table, returns the exit status."""
    required = {"enhancement": ("clean", "enhanced"), "separation": ("mix", "sources", "estimates")}
    if args.task not in required:
        print(f"evaluate: error: --task {args.task} is not supported", file=sys.stderr)
        return 2
    missing = _missing_options(args, required[args.task])
    if missing:
        print(f"evaluate: error: --task {args.task} needs {', '.join(missing)}", file=sys.stderr)
        return 2
    other_task = "separation" if args.task == "enhancement" else "enhancement"
    misplaced = [f"--{name}" for name in (*required[other_task], "noisy", "plot") if getattr(args, name, None)]
    if args.task == "separation" and misplaced:
        print(f"evaluate: error: {', '.join(misplaced)} are options of --task enhancement", file=sys.stderr)
        return 2
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if args.task == "separation":
                result = evaluate_separation_folders(
                    args.mix, args.sources, args.estimates, csv_path=args.csv, resample=args.resample
                )
            else:
                result = evaluate_folders(
                    args.clean, args.enhanced, args.noisy, csv_path=args.csv, plot_path=args.plot,
                    match=args.match, resample=args.resample, plot_files=args.plot_files,
                )
    except EvaluationError as error:
        print(f"evaluate: error: {error}", file=sys.stderr)
        return 1
    for warning in {str(w.message) for w in caught}:
        print(f"evaluate: warning: {warning}", file=sys.stderr)
    if args.task == "separation":
        print(f"{len(result.rows)} mixtures")
        print(format_separation_summary(result.summary))
        if args.csv:
            print(f"per-mixture metrics and averages: {args.csv}")
        return 0
    print(f"{len(result.rows)} files")
    print(format_summary(result.summary))
    if args.csv:
        print(f"per-file metrics: {args.csv}; averages: {summary_path_for(args.csv)}")
    if args.plot:
        print(f"spectrograms: {args.plot}")
    return 0


def main(argv=None):
    """``python -m speechbrain_ext.evaluation --clean DIR --enhanced DIR [...]`` or
    ``python -m speechbrain_ext.evaluation --task separation --mix DIR --sources DIR DIR
    --estimates DIR DIR [...]``."""
    parser = argparse.ArgumentParser(
        prog="python -m speechbrain_ext.evaluation",
        description="Enhancement: PESQ-WB/NB, STOI and SI-SNR against clean references. Separation: SDR, SDRi, "
        "SI-SNR and SI-SNRi (permutation invariant) against the reference sources.",
    )
    return run_evaluate(add_evaluate_arguments(parser).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
