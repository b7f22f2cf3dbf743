"""Manifests of mixture-folder layouts: wsj0-2mix / wsj0-3mix and the datasets built on it (WHAM!).

The layout the wsj0-mix scripts write, and WHAM! keeps::

    <data_folder>/{wav8k,wav16k}/{min,max}/{tr,cv,tt}/{mix,s1,s2[,s3],...}/<same file name>.wav

becomes SpeechBrain CSV manifests with ``ID``, ``duration``, ``mix_wav``, ``s1_wav``, ``s2_wav``
(, ``s3_wav``, one column per other folder) by :func:`prepare_mixture_manifests`, idempotently.
The recipes' ``prepare_data.py`` say which dataset it is (``recipes/WSJ0Mix``: ``mix``;
``recipes/WHAM``: ``mix_both`` + ``noise``, or the wsj0-2mix folders + noise on the fly); this
module holds the layout they share, so that it is read (and its errors worded) one way.

Authors
 * speechbrain-ext contributors
"""

import csv
import json
import logging
import os

import soundfile as sf

from speechbrain_ext.training.mixing import MixLayoutError

logger = logging.getLogger(__name__)

__all__ = ["MixLayoutError", "SPLITS", "find_layout_root", "manifest_paths", "prepare_mixture_manifests"]

# Manifest names of the three subsets, and their wsj0-2mix folder names.
SPLITS = {"train": "tr", "valid": "cv", "test": "tt"}
RATE_FOLDERS = {8000: "wav8k", 16000: "wav16k"}
MODES = ("min", "max")
MANIFEST_VERSION = 1


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
