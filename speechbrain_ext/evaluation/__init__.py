"""Objective quality of enhanced and separated speech: metrics per item, averages, CSVs, plots.

One pipeline, :func:`evaluate`, scores the items of either task (the ``--task`` of the
``speechbrain-ext evaluate`` command, also run by ``python -m speechbrain_ext.evaluation``):

- **enhancement**, the metrics of the FRCRN paper's table (and of the DNS-Challenge synthetic
  test set): PESQ-WB and PESQ-NB (ITU-T P.862.2 / P.862, ``pesq``), STOI (``pystoi``), SI-SNR
  in dB, and their values for the noisy input with the SI-SNR improvement when the noisy files
  are given;
- **quality** without a reference (real recordings): DNSMOS (:func:`dnsmos`, the DNS-Challenge's
  P.835 SIG / BAK / OVRL and P.808 MOS) of each processed file and, when given, of its input;
  ``dnsmos=True`` adds the same columns to an enhancement evaluation;
- **separation**, per mixture, the estimates matched to the references by the permutation of
  best mean SI-SNR (permutation invariant): SI-SNR and SI-SNRi, BSS-eval SDR
  (``mir_eval``, as SpeechBrain's separation recipes) and SDRi, each the mean over the speakers.

The package has three parts:

- :mod:`~speechbrain_ext.evaluation.metrics`: the metrics on signals in memory, among them the
  project's one SI-SNR (:func:`si_snr`, numpy or torch, also the FRCRN training loss's) and one
  permutation search (:func:`best_permutation`);
- :mod:`~speechbrain_ext.evaluation.pairing`: folders matched into items
  (:func:`match_files`, :func:`match_separation_files`), checked and read (:func:`check_item`,
  :func:`load_item`); bad input raises one :class:`EvaluationError` saying what is wrong;
- :mod:`~speechbrain_ext.evaluation.reports`: averages (:func:`summarize`), CSVs
  (:func:`write_csv`: SpeechBrain's per-item layout with an ``avg`` row, and for enhancement a
  summary in the paper's layout), markdown tables (:func:`format_summary`) and spectrograms
  (:func:`plot_spectrograms`).

The per-task names of earlier releases (``evaluate_items``, ``summarize_separation``,
``write_separation_csv``, ``format_separation_summary``, ...) remain, as thin wrappers over the
task-generic functions.

Example
-------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> clean = rng.standard_normal(16000)
>>> round(si_snr(clean + 0.1 * rng.standard_normal(16000), clean), 1)
20.0

Authors: speechbrain-ext contributors
"""

import dataclasses

from speechbrain_ext.evaluation.metrics import (
    DNSMOS_METRICS,
    best_permutation,
    bss_eval_sdr,
    compute_metrics,
    dnsmos,
    pesq_nb,
    pesq_wb,
    resample,
    separation_metrics,
    si_snr,
    si_snr_matrix,
    stoi,
)
from speechbrain_ext.evaluation.pairing import (
    EvaluationError,
    EvaluationItem,
    QualityItem,
    SeparationItem,
    check_item,
    item_files,
    load_item,
    match_files,
    match_quality_files,
    match_separation_files,
    read_mono,
)
from speechbrain_ext.evaluation.reports import (
    METRICS,
    SEPARATION_METRICS,
    TASKS,
    EvaluationResult,
    format_summary,
    log_spectrogram,
    plot_spectrograms,
    summarize,
    summary_path_for,
    task_layout,
    write_csv,
)

__all__ = [
    "DNSMOS_METRICS", "METRICS", "SEPARATION_METRICS", "TASKS",
    # the pipeline
    "evaluate", "evaluate_folders", "evaluate_separation_folders",
    # metrics
    "best_permutation", "bss_eval_sdr", "compute_metrics", "dnsmos", "pesq_nb", "pesq_wb", "resample", "separation_metrics",
    "si_snr", "si_snr_matrix", "stoi",
    # pairing
    "EvaluationError", "EvaluationItem", "QualityItem", "SeparationItem", "check_item", "item_files", "load_item",
    "match_files", "match_quality_files", "match_separation_files", "read_mono",
    # reports
    "EvaluationResult", "format_summary", "log_spectrogram", "plot_spectrograms", "summarize", "summary_path_for",
    "task_layout", "write_csv",
]


# --------------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------------


def _dnsmos_columns(signals):
    """DNSMOS of the enhanced signal and, if there is one, of the noisy input (``*_noisy``)."""
    rate = signals["sample_rate"]
    scores = dnsmos(signals["enhanced"], rate)
    if signals.get("noisy") is not None:
        scores.update({f"{name}_noisy": value for name, value in dnsmos(signals["noisy"], rate).items()})
    return scores


def _enhancement_row(item, signals, with_dnsmos=False):
    """The CSV row of one enhancement item: its files, rate, duration and every metric."""
    rate = signals["sample_rate"]
    metrics = compute_metrics(signals["clean"], signals["enhanced"], rate, signals["noisy"])
    if with_dnsmos:
        metrics.update(_dnsmos_columns(signals))
    return {
        "id": item.id,
        "clean": item.clean,
        "enhanced": item.enhanced,
        **({"noisy": item.noisy} if item.noisy else {}),
        "sample_rate": rate,
        "duration": len(signals["clean"]) / rate,
        **metrics,
    }


def _separation_row(item, signals, with_dnsmos=False):
    """The CSV row of one separation item (``test_results.csv`` of SpeechBrain's recipes)."""
    metrics = separation_metrics(signals["mixture"], signals["sources"], signals["estimates"])
    return {"snt_id": item.id, **{metric: metrics[metric] for metric in SEPARATION_METRICS}}


def _quality_row(item, signals, with_dnsmos=True):
    """The CSV row of one recording scored without a reference: its files, rate, duration, DNSMOS."""
    rate = signals["sample_rate"]
    return {
        "id": item.id,
        "enhanced": item.enhanced,
        **({"noisy": item.noisy} if item.noisy else {}),
        "sample_rate": rate,
        "duration": len(signals["enhanced"]) / rate,
        **_dnsmos_columns(signals),
    }


_ROWS = {"enhancement": _enhancement_row, "separation": _separation_row, "quality": _quality_row}


def _check_same_files(items):
    """Every item has the same optional files (a summary compares one set of systems)."""
    for field in dataclasses.fields(items[0])[1:]:
        if len({getattr(item, field.name) is None for item in items}) > 1:
            raise EvaluationError(f"either every item or none needs a {field.name} file")


def evaluate(items, task, resample=False, dnsmos=False):
    """Score every item of one task: check them all, then read and score each.

    Every file header is checked first (:func:`check_item`), so bad input stops before minutes
    of scoring.

    Arguments
    ---------
    items : list of EvaluationItem, SeparationItem or QualityItem
        From :func:`match_files` (enhancement), :func:`match_separation_files` (separation) or
        :func:`match_quality_files` (quality).
    task : str
        ``'enhancement'`` (:func:`compute_metrics` per item), ``'separation'``
        (:func:`separation_metrics` per item) or ``'quality'`` (:func:`dnsmos` per file).
    resample : bool
        Resample files whose rate differs from the item's reference instead of raising an error.
    dnsmos : bool
        Enhancement: also score DNSMOS (of the enhanced and the noisy files; the ``quality``
        task always does: it is all it scores).

    Returns
    -------
    EvaluationResult
        ``rows``: one dict per item, as :func:`write_csv` writes them (enhancement: ``id``, the
        files, ``sample_rate``, ``duration`` and every metric; separation: ``snt_id, sdr, sdr_i,
        si-snr, si-snr_i``; quality: ``id``, the files, ``sample_rate``, ``duration`` and the
        DNSMOS scores); ``summary``: their averages (:func:`summarize`).

    Raises
    ------
    EvaluationError
        No items, items of the other task, or files that cannot be scored.

    Example
    -------
    >>> import os, tempfile
    >>> import soundfile as sf
    >>> from speechbrain_ext.synthetic import pink_noise, speech_like
    >>> root = tempfile.mkdtemp()
    >>> clean = speech_like(1.0, 16000, seed=0)
    >>> for folder, signal in (("clean", clean), ("enhanced", clean + 0.01 * pink_noise(1.0, 16000, seed=1))):
    ...     os.makedirs(os.path.join(root, folder))
    ...     sf.write(os.path.join(root, folder, "a.wav"), signal, 16000, subtype="FLOAT")
    >>> items = match_files(os.path.join(root, "clean"), os.path.join(root, "enhanced"))
    >>> result = evaluate(items, "enhancement")
    >>> [row["id"] for row in result.rows], bool(result.summary["enhanced"]["si_snr"] > 20)
    (['a'], True)
    """
    layout = task_layout(task)
    if not items:
        raise EvaluationError(f"nothing to evaluate: no {layout.unit}")
    for item in items:
        if getattr(item, "task", None) != task:
            raise EvaluationError(f"{item.id}: a {type(item).__name__} is not an item of the {task} task")
    for item in items:  # from the headers: bad input stops before minutes of scoring
        check_item(item, resample)
    _check_same_files(items)
    if dnsmos or task == "quality":
        _check_dnsmos()  # before minutes of scoring
    rows = [_ROWS[task](item, load_item(item, resample=resample), dnsmos) for item in items]
    return EvaluationResult(rows=rows, summary=summarize(rows, task))


def _check_dnsmos():
    try:
        import speechmos.dnsmos  # noqa: F401
    except ImportError as error:
        raise EvaluationError(f"DNSMOS needs the speechmos package and onnxruntime ({error}): "
                              "pip install 'speechbrain-ext[dnsmos]'") from None


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
    """Enhancement folders from end to end: match, score, write the CSVs and the plot.

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
    match : str
        See :func:`match_files`.
    resample : bool
        See :func:`evaluate`.
    plot_files : int
        Files shown in the plot.

    Returns
    -------
    EvaluationResult

    Example
    -------
    >>> evaluate_folders("/nonexistent/clean", "/nonexistent/enhanced")
    Traceback (most recent call last):
    ...
    speechbrain_ext.evaluation.pairing.EvaluationError: the clean folder '/nonexistent/clean' does not exist
    """
    items = match_files(clean_dir, enhanced_dir, noisy_dir, match=match)
    result = evaluate(items, "enhancement", resample=resample)
    if csv_path:
        write_csv(result, csv_path, "enhancement")
    if plot_path:
        plot_spectrograms(items, plot_path, max_files=plot_files, resample=resample)
    return result


def evaluate_separation_folders(mix_dir, source_dirs, estimate_dirs, csv_path=None, resample=False):
    """Separation folders from end to end: match (:func:`match_separation_files`), score and
    write ``test_results.csv`` (:func:`write_csv`).

    Arguments
    ---------
    mix_dir : str
        Folder of the mixtures.
    source_dirs, estimate_dirs : list of str
        One folder per speaker each (estimates in any speaker order).
    csv_path : str, optional
        Per-mixture CSV to write.
    resample : bool
        See :func:`evaluate`.

    Returns
    -------
    EvaluationResult

    Example
    -------
    >>> evaluate_separation_folders("mix", ["s1"], ["e1"])
    Traceback (most recent call last):
    ...
    speechbrain_ext.evaluation.pairing.EvaluationError: separation needs the folders of at least 2 reference sources, got 1
    """
    items = match_separation_files(mix_dir, source_dirs, estimate_dirs)
    result = evaluate(items, "separation", resample=resample)
    if csv_path:
        write_csv(result, csv_path, "separation")
    return result
