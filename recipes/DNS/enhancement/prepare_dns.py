"""Manifests of the DNS-Challenge data for the enhancement recipe (FRCRN, MossFormer2).

Reads the layouts of https://github.com/microsoft/DNS-Challenge: the wideband one of the
interspeech2020 branch (16 kHz)::

    datasets/clean/*.wav                      clean read speech (training material)
    datasets/noise/*.wav                      noise clips (training material)
    datasets/impulse_responses/**/*.wav       room impulse responses (optional)
    datasets/test_set/synthetic/{no_reverb,with_reverb}/{clean,noisy}/
        noisy/..._fileid_N.wav <-> clean/clean_fileid_N.wav

and the fullband one of the later challenges (ICASSP 2021 onwards, 48 kHz)::

    datasets_fullband/clean_fullband/**/*.wav     clean speech, in per-corpus folders
    datasets_fullband/noise_fullband/**/*.wav     noise clips
    datasets_fullband/impulse_responses/**/*.wav  room impulse responses (optional)
    datasets_fullband/test_set/synthetic/...      a synthetic test set in the layout above, if
                                                  you have one (the fullband dev test set holds
                                                  noisy clips only: no references to score)

and writes SpeechBrain CSV manifests (``ID`` first, ``duration`` in seconds, absolute paths)
into ``save_folder``:

- ``train.csv``: the clean files mixtures are made from on the fly (``wav, frames``),
- ``noise_train.csv`` and, with reverberation, ``rir_train.csv``: what they are mixed with,
- ``valid.csv``: a fixed, seeded validation set: each row is one mixture fully specified
  (clean segment, noise segment, SNR, level, impulse response) from held-out clean, noise and
  RIR files, so validation numbers are comparable across runs (:func:`validation_mixture`
  makes it),
- ``test_<subset>.csv``: the synthetic test pairs (``noisy_wav, clean_wav``), when present.

The options used are stored in ``dns_prepare.json``; a later call with the same options and the
same number of files does nothing. Call it once, under ``run_on_main`` in multi-process runs.

Authors
 * speechbrain-ext contributors
"""

import csv
import glob
import json
import logging
import os
import re

import numpy as np
import soundfile as sf

from speechbrain_ext.errors import SpeechBrainExtError

logger = logging.getLogger(__name__)

OPTIONS_FILE = "dns_prepare.json"
MANIFEST_VERSION = 1
TEST_SUBSETS = ("no_reverb", "with_reverb")
FILEID_PATTERN = re.compile(r"fileid_(\d+)")
# A validation segment quieter than this (RMS, full scale = 1) is re-drawn: SI-SNR against a
# silent target is meaningless.
SILENCE_RMS = 10 ** (-50 / 20)
ACTIVE_SEGMENT_TRIES = 10


class DNSLayoutError(SpeechBrainExtError, ValueError):
    """The data folder is not a DNS-Challenge checkout."""


# (clean folder, noise folder, recursive) inside the datasets folder, wideband and fullband.
_LAYOUTS = (("clean", "noise", False), ("clean_fullband", "noise_fullband", True))


def _wavs(folder, recursive):
    pattern = os.path.join(folder, "**", "*.wav") if recursive else os.path.join(folder, "*.wav")
    return sorted(glob.glob(pattern, recursive=recursive))


def _layout(datasets):
    """The (clean folder, noise folder, recursive) of a datasets folder, or None."""
    for clean, noise, recursive in _LAYOUTS:
        if _wavs(os.path.join(datasets, clean), recursive) and _wavs(os.path.join(datasets, noise), recursive):
            return clean, noise, recursive
    return None


def clean_and_noise_files(datasets):
    """The clean and noise files of a ``datasets`` / ``datasets_fullband`` folder."""
    clean, noise, recursive = _layout(datasets)
    return _wavs(os.path.join(datasets, clean), recursive), _wavs(os.path.join(datasets, noise), recursive)


def find_datasets_folder(data_folder, sample_rate=16000):
    """The ``datasets`` (or ``datasets_fullband``) folder of a DNS-Challenge checkout
    (``data_folder`` may be either). A checkout holding both gives the one of ``sample_rate``:
    ``datasets_fullband`` above 16 kHz.

    Raises
    ------
    DNSLayoutError
        Naming what was expected and what was found.
    """
    subfolders = ["datasets", "datasets_fullband"]
    if sample_rate > 16000:
        subfolders.reverse()
    candidates = [os.path.join(data_folder, name) for name in subfolders] + [data_folder]
    for folder in candidates:
        if _layout(folder):
            return folder
    if not os.path.isdir(data_folder):
        found = "the folder does not exist"
    else:
        found = "found: " + (", ".join(sorted(os.listdir(data_folder))[:8]) or "an empty folder")
    raise DNSLayoutError(
        f"{data_folder} is not a DNS-Challenge folder: expected datasets/clean/*.wav and datasets/noise/*.wav "
        f"(interspeech2020) or datasets_fullband/clean_fullband/**/*.wav and .../noise_fullband/**/*.wav in it "
        f"({found}). Get https://github.com/microsoft/DNS-Challenge (branch interspeech2020/master with its "
        "git-lfs audio, or the fullband data of its download scripts) and pass its root as --data_folder."
    )


def _audio_info(paths, sample_rate, role, resampled_ok=False):
    """``[(path, frames, rate)]``; an error if a file cannot be read or (unless
    ``resampled_ok``) is not at ``sample_rate``."""
    infos, wrong_rate = [], []
    for path in paths:
        try:
            info = sf.info(path)
        except Exception as error:
            raise DNSLayoutError(f"cannot read the {role} file {path}: {error}") from None
        if info.frames == 0:
            continue
        if info.samplerate != sample_rate and not resampled_ok:
            wrong_rate.append(f"{os.path.basename(path)} ({info.samplerate} Hz)")
        infos.append((os.path.abspath(path), info.frames, info.samplerate))
    if wrong_rate:
        raise DNSLayoutError(
            f"{len(wrong_rate)} {role} files are not at {sample_rate} Hz, e.g. {', '.join(wrong_rate[:3])}: "
            "the DNS-Challenge audio is 16 kHz in datasets/ and 48 kHz in datasets_fullband/; the recipe's "
            "sample_rate must be that of the data"
        )
    return infos


def _split(items, valid_fraction, rng, role):
    """Seeded split into (train, valid); at least one item on each side."""
    if len(items) < 2:
        raise DNSLayoutError(f"need at least 2 {role} files to hold one out for validation, found {len(items)}")
    order = rng.permutation(len(items))
    num_valid = min(len(items) - 1, max(1, int(round(valid_fraction * len(items)))))
    valid = [items[i] for i in sorted(order[:num_valid])]
    train = [items[i] for i in sorted(order[num_valid:])]
    return train, valid


def _identifier(path):
    return os.path.splitext(os.path.basename(path))[0]


def _write_csv(path, rows, columns):
    with open(path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def _file_rows(infos):
    """Manifest rows of a file list; IDs made unique by the relative position when needed."""
    rows, seen = [], set()
    for path, frames, rate in infos:
        identifier = _identifier(path)
        if identifier in seen:
            identifier = f"{identifier}_{len(rows)}"
        seen.add(identifier)
        rows.append({"ID": identifier, "duration": f"{frames / rate:.4f}", "wav": path, "frames": frames,
                     "sample_rate": rate})
    return rows


def _active_start(path, frames, length, rng):
    """A segment start whose segment is not silent (first of a few random tries)."""
    start = 0
    for _ in range(ACTIVE_SEGMENT_TRIES):
        start = int(rng.integers(0, frames - length + 1)) if frames > length else 0
        segment, _ = sf.read(path, start=start, stop=start + length, dtype="float32", always_2d=True)
        if np.sqrt(np.mean(segment[:, 0].astype(np.float64) ** 2)) > SILENCE_RMS:
            break
    return start


def _valid_rows(clean, noise, rirs, options, rng):
    """Fully specified validation mixtures (see the module docstring)."""
    length = options["segment_samples"]
    rows = []
    for index in range(options["num_valid_mixtures"]):
        clean_path, clean_frames, _ = clean[index % len(clean)]  # every held-out file in turn
        noise_path, noise_frames, _ = noise[int(rng.integers(len(noise)))]
        use_rir = bool(rirs) and rng.random() < options["reverb_probability"]
        rows.append(
            {
                "ID": f"valid_{index:05d}",
                "duration": f"{length / options['sample_rate']:.4f}",
                "clean_wav": clean_path,
                "clean_start": _active_start(clean_path, clean_frames, length, rng),
                "noise_wav": noise_path,
                "noise_start": int(rng.integers(0, max(1, noise_frames - length + 1))),
                "snr_db": f"{rng.uniform(*options['snr_range_db']):.3f}",
                "level_db": f"{rng.uniform(*options['level_range_db']):.3f}",
                "rir_wav": rirs[int(rng.integers(len(rirs)))][0] if use_rir else "",
            }
        )
    return rows


def _test_rows(subset_folder, subset):
    """Noisy/clean pairs of one synthetic test subset, matched by fileid."""

    def by_fileid(folder, role):
        files = {}
        for path in sorted(glob.glob(os.path.join(folder, "*.wav"))):
            found = FILEID_PATTERN.findall(os.path.basename(path))
            if not found:
                raise DNSLayoutError(f"test file without a fileid_N in its name: {path}")
            if found[-1] in files:
                raise DNSLayoutError(f"two {role} test files have fileid {found[-1]}: {files[found[-1]]} and {path}")
            files[found[-1]] = os.path.abspath(path)
        return files

    noisy = by_fileid(os.path.join(subset_folder, "noisy"), "noisy")
    clean = by_fileid(os.path.join(subset_folder, "clean"), "clean")
    unpaired = sorted(set(noisy) ^ set(clean), key=int)
    if unpaired:
        raise DNSLayoutError(
            f"the {subset} test set does not pair up: fileid {', '.join(unpaired[:5])} "
            f"{'are' if len(unpaired) > 1 else 'is'} only in one of noisy/ and clean/ ({subset_folder})"
        )
    rows = []
    for fileid in sorted(noisy, key=int):
        info = sf.info(noisy[fileid])
        rows.append({"ID": f"fileid_{fileid}", "duration": f"{info.frames / info.samplerate:.4f}",
                     "noisy_wav": noisy[fileid], "clean_wav": clean[fileid]})
    return rows


def _file_counts(datasets, use_rirs, test_subsets):
    """How many files the layout holds: part of the signature, so added data re-prepares."""
    counts = {
        **dict(zip(("clean", "noise"), map(len, clean_and_noise_files(datasets)))),
    }
    if use_rirs:
        counts["rir"] = len(_rir_files(datasets))
    for subset in test_subsets:
        counts[f"test_{subset}"] = len(glob.glob(os.path.join(datasets, "test_set", "synthetic", subset, "*", "*.wav")))
    return counts


def _rir_files(datasets):
    # The SLR28 folder mixes impulse responses with isotropic noise recordings: skip the latter.
    paths = glob.glob(os.path.join(datasets, "impulse_responses", "**", "*.wav"), recursive=True)
    return sorted(p for p in paths if "noise" not in os.path.basename(p).lower())


def validation_mixture(row, segment_samples, sample_rate=16000, reverb_target="early"):
    """The fixed ``(noisy, target)`` mixture a ``valid.csv`` row describes (see
    :func:`speechbrain_ext.training.mixing.make_noisy`)."""
    from speechbrain_ext.training.mixing import load_rir, make_noisy, read_segment

    clean = read_segment(row["clean_wav"], int(row["clean_start"]), segment_samples)
    noise = read_segment(row["noise_wav"], int(row["noise_start"]), segment_samples, loop=True)
    rir = load_rir(row["rir_wav"], sample_rate) if row["rir_wav"] else None
    return make_noisy(clean, noise, float(row["snr_db"]), float(row["level_db"]), rir, sample_rate, reverb_target)


def manifest_paths(save_folder, test_subsets=TEST_SUBSETS):
    """Paths of every manifest :func:`prepare_dns` may write, by name."""
    names = ["train", "valid", "noise_train", "rir_train", *(f"test_{s}" for s in test_subsets)]
    return {name: os.path.join(save_folder, f"{name}.csv") for name in names}


def prepare_dns(
    data_folder,
    save_folder,
    segment_samples,
    sample_rate=16000,
    valid_fraction=0.01,
    num_valid_mixtures=500,
    snr_range_db=(-5.0, 20.0),
    level_range_db=(-35.0, -15.0),
    reverb_probability=0.0,
    test_subsets=TEST_SUBSETS,
    seed=1234,
):
    """Write the recipe's manifests (see the module docstring); skip when already done.

    Arguments
    ---------
    data_folder : str
        DNS-Challenge checkout (the folder holding ``datasets/``), or its ``datasets`` folder.
    save_folder : str
        Where the manifests and ``dns_prepare.json`` go.
    segment_samples : int
        Length of the validation mixtures (and training segments), in samples.
    sample_rate : int
        Expected rate of the clean speech and noise (16 kHz); RIRs are resampled when loaded.
    valid_fraction : float
        Share of clean, noise and RIR files held out for validation (at least one each).
    num_valid_mixtures : int
        Size of the fixed validation set.
    snr_range_db, level_range_db : tuple of float
        Uniform ranges of the mixtures' SNR and RMS level (dBFS) of the validation set.
    reverb_probability : float
        Share of reverberant validation mixtures; when > 0 the impulse responses are listed.
    test_subsets : sequence of str
        Synthetic test subsets to list when present (``no_reverb``, ``with_reverb``).
    seed : int
        Seed of the splits and of the validation mixtures.

    Returns
    -------
    dict
        Name -> path of the manifests written (or found up to date).

    Raises
    ------
    DNSLayoutError
        If ``data_folder`` is not a DNS-Challenge layout or its files cannot be used.
    """
    datasets = find_datasets_folder(data_folder, sample_rate)
    use_rirs = reverb_probability > 0
    if use_rirs and not _rir_files(datasets):
        raise DNSLayoutError(
            f"reverb_probability is {reverb_probability} but {datasets}/impulse_responses has no impulse "
            "responses (*.wav): add them or set reverb_probability to 0"
        )
    options = {
        "version": MANIFEST_VERSION,
        "datasets": os.path.abspath(datasets),
        "segment_samples": int(segment_samples),
        "sample_rate": int(sample_rate),
        "valid_fraction": float(valid_fraction),
        "num_valid_mixtures": int(num_valid_mixtures),
        "snr_range_db": [float(v) for v in snr_range_db],
        "level_range_db": [float(v) for v in level_range_db],
        "reverb_probability": float(reverb_probability),
        "test_subsets": list(test_subsets),
        "seed": int(seed),
    }
    signature = {"options": options, "counts": _file_counts(datasets, use_rirs, test_subsets)}
    options_path = os.path.join(save_folder, OPTIONS_FILE)
    if os.path.isfile(options_path):
        with open(options_path, encoding="utf-8") as stream:
            stored = json.load(stream)
        if {k: stored.get(k) for k in signature} == signature and all(
            os.path.isfile(path) for path in stored["manifests"].values()
        ):
            logger.info("DNS manifests in %s are up to date: skipping preparation", save_folder)
            return stored["manifests"]
        logger.info("DNS manifests in %s were made with other options or data: preparing again", save_folder)

    os.makedirs(save_folder, exist_ok=True)
    paths = manifest_paths(save_folder, test_subsets)
    rng = np.random.default_rng(seed)
    clean_files, noise_files = clean_and_noise_files(datasets)
    clean = _audio_info(clean_files, sample_rate, "clean")
    noise = _audio_info(noise_files, sample_rate, "noise")
    clean_train, clean_valid = _split(clean, valid_fraction, rng, "clean")
    noise_train, noise_valid = _split(noise, valid_fraction, rng, "noise")
    rir_train, rir_valid = [], []
    if use_rirs:
        rirs = _audio_info(_rir_files(datasets), sample_rate, "impulse response", resampled_ok=True)
        rir_train, rir_valid = _split(rirs, valid_fraction, rng, "impulse response") if len(rirs) > 1 else (rirs, rirs)

    written = {}
    file_columns = ["ID", "duration", "wav", "frames", "sample_rate"]
    for name, infos in [("train", clean_train), ("noise_train", noise_train), ("rir_train", rir_train)]:
        if name == "rir_train" and not use_rirs:
            continue
        _write_csv(paths[name], _file_rows(infos), file_columns)
        written[name] = paths[name]
    valid_rows = _valid_rows(clean_valid, noise_valid, rir_valid, options, rng)
    _write_csv(paths["valid"], valid_rows, list(valid_rows[0]))
    written["valid"] = paths["valid"]

    for subset in test_subsets:
        subset_folder = os.path.join(datasets, "test_set", "synthetic", subset)
        if not os.path.isdir(os.path.join(subset_folder, "noisy")):
            logger.warning("no %s synthetic test set in %s: it will not be evaluated", subset, datasets)
            continue
        rows = _test_rows(subset_folder, subset)
        if rows:
            _write_csv(paths[f"test_{subset}"], rows, list(rows[0]))
            written[f"test_{subset}"] = paths[f"test_{subset}"]

    with open(options_path, "w", encoding="utf-8") as stream:
        json.dump({**signature, "manifests": written}, stream, indent=2)
    logger.info(
        "DNS manifests written to %s: %d train / %d valid clean files, %d / %d noise files, %d validation "
        "mixtures%s", save_folder, len(clean_train), len(clean_valid), len(noise_train), len(noise_valid),
        len(valid_rows), "".join(f", {n}" for n in written if n.startswith("test_")),
    )
    return written
