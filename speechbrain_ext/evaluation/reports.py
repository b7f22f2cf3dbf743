"""What an evaluation writes and prints: averages, CSVs, markdown tables, spectrogram plots.

One implementation serves both tasks; a :class:`TaskLayout` says what differs (the metric
columns, the systems of the summary, the fixed CSV columns):

- enhancement: a per-file CSV (every column of the rows, an ``avg`` row last, as SpeechBrain's
  recipes write) and a summary CSV in the FRCRN paper's layout (rows ``noisy`` / ``enhanced``,
  :func:`summary_path_for`); the table has PESQ-WB, PESQ-NB, STOI, SI-SNR (and SI-SNRi);
- separation: the ``test_results.csv`` of SpeechBrain's separation recipes (``snt_id, sdr,
  sdr_i, si-snr, si-snr_i``, then an ``avg`` row); the table has one row, ``separated``.

NaN scores (a PESQ or SDR that could not be computed) are left out of every average.

Example
-------
>>> rows = [{"snt_id": "a", "sdr": 10.0, "sdr_i": 10.0, "si-snr": 9.0, "si-snr_i": 9.5},
...         {"snt_id": "b", "sdr": 12.0, "sdr_i": 11.0, "si-snr": float("nan"), "si-snr_i": 10.5}]
>>> summarize(rows, "separation")
{'separated': {'sdr': 11.0, 'sdr_i': 10.5, 'si-snr': 9.0, 'si-snr_i': 10.0}}

Authors: speechbrain-ext contributors
"""

import csv
import math
import os
from dataclasses import dataclass
from typing import NamedTuple, Optional

import numpy as np

from speechbrain_ext.evaluation.metrics import DNSMOS_METRICS
from speechbrain_ext.evaluation.pairing import EvaluationError, load_item

# Metric columns of the enhancement CSV, in the order of the summary table.
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

DNSMOS_TITLES = {"dnsmos_sig": "DNSMOS SIG", "dnsmos_bak": "DNSMOS BAK", "dnsmos_ovrl": "DNSMOS OVRL",
                 "dnsmos_p808": "DNSMOS P.808"}

TITLES = {**METRIC_TITLES, **SEPARATION_TITLES, **DNSMOS_TITLES}
# Decimals in the tables: STOI lives in [0, 1], the rest are dB or MOS-like scores.
DECIMALS = {"stoi": 3}


class TaskLayout(NamedTuple):
    """What the results of one task look like.

    Example
    -------
    >>> task_layout("separation").id_column
    'snt_id'
    """

    unit: str  # what a row is, plural ("files", "mixtures")
    id_column: str  # per-item CSV column naming the item; "avg" in the averages row
    metrics: tuple  # metric columns, in table order
    systems: tuple  # (system, column suffix) of the summary, the processed system first
    improvement: Optional[str]  # column over the other systems, 0 for them; only with them
    csv_columns: Optional[tuple]  # fixed per-item CSV columns; None: every column of the rows
    text_columns: tuple  # per-item CSV columns not averaged
    summary_csv: bool  # also write the per-system summary CSV
    panels: tuple  # item fields shown by plot_spectrograms, in order


LAYOUTS = {
    "enhancement": TaskLayout(
        unit="files",
        id_column="id",
        metrics=METRICS,
        systems=(("enhanced", ""), ("noisy", "_noisy")),
        improvement="si_snr_improvement",
        csv_columns=None,
        text_columns=("id", "clean", "enhanced", "noisy", "sample_rate"),
        summary_csv=True,
        panels=("noisy", "enhanced", "clean"),
    ),
    "separation": TaskLayout(
        unit="mixtures",
        id_column="snt_id",
        metrics=SEPARATION_METRICS,
        systems=(("separated", ""),),
        improvement=None,  # sdr_i and si-snr_i are columns of their own
        csv_columns=("snt_id", *SEPARATION_METRICS),
        text_columns=("snt_id",),
        summary_csv=False,
        panels=("mixture", "estimates", "sources"),
    ),
    "quality": TaskLayout(
        unit="files",
        id_column="id",
        metrics=DNSMOS_METRICS,
        systems=(("enhanced", ""), ("noisy", "_noisy")),
        improvement=None,
        csv_columns=None,
        text_columns=("id", "enhanced", "noisy", "sample_rate"),
        summary_csv=True,
        panels=("noisy", "enhanced"),
    ),
}

# The tasks an evaluation knows (the ``evaluate`` command's ``--task``).
TASKS = tuple(LAYOUTS)


def task_layout(task):
    """The :class:`TaskLayout` of ``task``; an :class:`EvaluationError` for an unknown task.

    Example
    -------
    >>> task_layout("enhancement").unit
    'files'
    """
    if task not in LAYOUTS:
        raise EvaluationError(f"task must be one of {', '.join(map(repr, TASKS))}, got {task!r}")
    return LAYOUTS[task]


@dataclass
class EvaluationResult:
    """Per-item rows (dicts, as written to the CSV) and averages per system (:func:`summarize`).

    Example
    -------
    >>> EvaluationResult(rows=[], summary={}).rows
    []
    """

    rows: list
    summary: dict


# --------------------------------------------------------------------------------------------
# Averages
# --------------------------------------------------------------------------------------------


def _nanmean(values):
    values = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def _metrics(layout, rows):
    """The layout's metrics, and the DNSMOS ones when the rows carry them (enhancement with
    ``dnsmos=True``)."""
    extra = tuple(m for m in DNSMOS_METRICS if m not in layout.metrics and rows and m in rows[0])
    return (*layout.metrics, *extra)


def summarize(rows, task="enhancement"):
    """Average of every metric per system, NaN entries left out.

    Enhancement: ``{'enhanced': {...}, 'noisy': {...}}``, ``noisy`` (and the SI-SNR improvement,
    0 for the noisy input itself) only when the rows have noisy scores. Separation:
    ``{'separated': {...}}``.

    Arguments
    ---------
    rows : list of dict
        Per-item rows, as :func:`speechbrain_ext.evaluation.evaluate` makes them.
    task : str
        ``'enhancement'`` or ``'separation'``.

    Returns
    -------
    dict
        System to ``{metric: mean}``.

    Example
    -------
    >>> rows = [{"pesq_wb": 3.0, "pesq_nb": 3.5, "stoi": 0.9, "si_snr": 15.0}]
    >>> summarize(rows)
    {'enhanced': {'pesq_wb': 3.0, 'pesq_nb': 3.5, 'stoi': 0.9, 'si_snr': 15.0}}
    """
    layout = task_layout(task)
    summary = {}
    metrics = _metrics(layout, rows)
    for system, suffix in layout.systems:
        # A system with a suffix (the noisy input) is scored only when the rows carry it.
        if suffix and not (rows and all(f"{m}{suffix}" in rows[0] for m in layout.metrics)):
            continue
        summary[system] = {m: _nanmean(row.get(f"{m}{suffix}") for row in rows) for m in metrics}
    if layout.improvement and len(summary) > 1:
        processed, *others = summary
        summary[processed][layout.improvement] = _nanmean(row.get(layout.improvement) for row in rows)
        for system in others:
            summary[system][layout.improvement] = 0.0  # the input improves on itself by nothing
    return summary


# --------------------------------------------------------------------------------------------
# CSVs
# --------------------------------------------------------------------------------------------


def summary_path_for(csv_path):
    """Where the summary table of ``csv_path`` goes: ``results.csv`` -> ``results_summary.csv``.

    Example
    -------
    >>> summary_path_for("out/results.csv")
    'out/results_summary.csv'
    """
    stem, extension = os.path.splitext(csv_path)
    return f"{stem}_summary{extension or '.csv'}"


def _formatted(value):
    return f"{value:.4f}" if isinstance(value, float) else value


def _table_systems(layout, summary):
    """The summary's systems in table order: the unprocessed input first, as the FRCRN paper."""
    return [system for system, _ in reversed(layout.systems) if system in summary]


def write_csv(result, csv_path, task="enhancement"):
    """Write the per-item CSV (one row per item, then an ``avg`` row) and, for enhancement, the
    summary CSV next to it (rows ``noisy`` / ``enhanced`` and a ``files`` count; see
    :func:`summary_path_for`).

    Arguments
    ---------
    result : EvaluationResult
    csv_path : str
        The per-item CSV; its folder is created.
    task : str
        ``'enhancement'`` (every column of the rows) or ``'separation'`` (``snt_id, sdr,
        sdr_i, si-snr, si-snr_i``: other keys of the rows are not written).

    Returns
    -------
    tuple of str
        The paths written: ``(per_item_csv, summary_csv)`` for enhancement, ``(per_item_csv,)``
        for separation.

    Example
    -------
    >>> import tempfile
    >>> rows = [{"snt_id": "a", "sdr": 10.0, "sdr_i": 10.0, "si-snr": 9.0, "si-snr_i": 9.5, "permutation": (0, 1)}]
    >>> [path] = write_csv(EvaluationResult(rows, summarize(rows, "separation")),
    ...                    os.path.join(tempfile.mkdtemp(), "test_results.csv"), "separation")
    >>> print(open(path).read().strip())
    snt_id,sdr,sdr_i,si-snr,si-snr_i
    a,10.0000,10.0000,9.0000,9.5000
    avg,10.0000,10.0000,9.0000,9.5000
    """
    layout = task_layout(task)
    os.makedirs(os.path.dirname(os.path.abspath(csv_path)), exist_ok=True)
    columns = list(layout.csv_columns or result.rows[0])
    averages = {layout.id_column: "avg"}
    for column in columns:
        if column not in layout.text_columns:
            averages[column] = _nanmean(row.get(column) for row in result.rows)
    with open(csv_path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in [*result.rows, averages]:
            writer.writerow({key: _formatted(value) for key, value in row.items()})
    if not layout.summary_csv:
        return (csv_path,)

    summary_path = summary_path_for(csv_path)
    processed = layout.systems[0][0]
    improvement = [layout.improvement] if layout.improvement in result.summary.get(processed, {}) else []
    metric_columns = [*_metrics(layout, result.rows), *improvement]
    with open(summary_path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["system", *metric_columns, layout.unit])
        for system in _table_systems(layout, result.summary):
            writer.writerow(
                [system, *(_formatted(result.summary[system][m]) for m in metric_columns), len(result.rows)]
            )
    return csv_path, summary_path


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


def format_summary(summary, task="enhancement"):
    """The averages as a markdown table: one row per system (the unprocessed input first, as in
    the FRCRN paper), one column per metric present.

    Arguments
    ---------
    summary : dict
        As :func:`summarize` returns it.
    task : str
        ``'enhancement'`` or ``'separation'``.

    Returns
    -------
    str

    Example
    -------
    >>> print(format_summary({"enhanced": {"pesq_wb": 3.2, "pesq_nb": 3.6, "stoi": 0.98, "si_snr": 20.0}}))
    |          | PESQ-WB | PESQ-NB | STOI  | SI-SNR (dB) |
    |----------|---------|---------|-------|-------------|
    | enhanced | 3.20    | 3.60    | 0.980 | 20.00       |
    """
    layout = task_layout(task)
    systems = _table_systems(layout, summary)
    candidates = dict.fromkeys((*layout.metrics, *DNSMOS_METRICS, *([layout.improvement] if layout.improvement else [])))
    columns = [m for m in candidates if m in summary[systems[-1]]]
    header = ["", *(TITLES[m] for m in columns)]
    body = [[system, *(f"{summary[system][m]:.{DECIMALS.get(m, 2)}f}" for m in columns)] for system in systems]
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

    Arguments
    ---------
    signal : numpy.ndarray
        ``[T]``.
    sample_rate : int
        In Hz.
    frame_seconds, hop_seconds : float
        Frame length and hop.
    floor_db : float
        Lowest value, relative to the maximum.

    Returns
    -------
    numpy.ndarray
        ``[frame // 2 + 1, frames]``.

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


def _panels(item, signals):
    """``(title, signal)`` per panel of one item, in the order of its task's layout."""
    panels = []
    for field in LAYOUTS[item.task].panels:
        value = signals[field]
        if value is None:  # no noisy file
            continue
        if value.ndim == 2:  # one panel per speaker: "estimate 1", "estimate 2", ...
            panels.extend((f"{item.id}: {field[:-1]} {k + 1}", row) for k, row in enumerate(value))
        else:
            panels.append((f"{item.id}: {field}", value))
    return panels


def plot_spectrograms(items, png_path, max_files=3, resample=False):
    """A PNG of spectrograms, one row per item for the first ``max_files`` items: noisy /
    enhanced / clean for enhancement items, mixture / estimates / sources for separation ones.

    Arguments
    ---------
    items : list of EvaluationItem or SeparationItem
    png_path : str
        The PNG to write; its folder is created.
    max_files : int
        Items shown.
    resample : bool
        See :func:`speechbrain_ext.evaluation.pairing.load_item`.

    Returns
    -------
    str
        ``png_path``.

    Example
    -------
    >>> import tempfile
    >>> import soundfile as sf
    >>> from speechbrain_ext.evaluation.pairing import EvaluationItem
    >>> from speechbrain_ext.synthetic import speech_like
    >>> root = tempfile.mkdtemp()
    >>> clean = os.path.join(root, "clean.wav")
    >>> sf.write(clean, speech_like(0.5, 16000, seed=0), 16000)
    >>> png = plot_spectrograms([EvaluationItem("a", clean, clean)], os.path.join(root, "plot.png"))
    >>> open(png, "rb").read(4) == b"\\x89PNG"
    True
    """
    panels = []  # per item: (title, spectrogram, sample rate, seconds) of each panel
    for item in items[:max_files]:
        signals = load_item(item, resample=resample)
        rate = signals["sample_rate"]
        panels.append([
            (title, log_spectrogram(signal, rate), rate, len(signal) / rate) for title, signal in _panels(item, signals)
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
