"""Which files to score together, and reading them: folders matched into items, checked, loaded.

An item is one unit to score: an :class:`EvaluationItem` (enhancement: a clean reference, its
enhanced version and optionally the noisy input), a :class:`SeparationItem` (separation: a
mixture, its reference sources and the estimated sources, in any order) or a
:class:`QualityItem` (quality without a reference: an enhanced file, optionally its input). Its first file is the
reference of the item: the others are read at its sample rate.

- :func:`match_files` pairs clean / enhanced (/ noisy) folders by file name, or DNS-style by
  ``fileid`` (``noisy/..._fileid_7.wav`` <-> ``clean/clean_fileid_7.wav``);
  :func:`match_separation_files` pairs mixture / source / estimate folders by file name
  (``mix/``, ``s1/``, ``s2/``... as in the wsj0-2mix layout);
- :func:`check_item` checks an item of either kind from the file headers (readable, one sample
  rate, lengths alike) and :func:`load_item` reads it, trimmed to the common length.

Bad input (missing or unmatched files, sample rates that differ within an item, unreadable
audio, lengths that do not match) raises one :class:`EvaluationError` saying what is wrong.

Example
-------
>>> import tempfile
>>> root = tempfile.mkdtemp()
>>> for folder in ("clean", "enhanced"):
...     os.makedirs(os.path.join(root, folder))
...     sf.write(os.path.join(root, folder, "a.wav"), np.zeros(1600), 16000)
>>> [item] = match_files(os.path.join(root, "clean"), os.path.join(root, "enhanced"))
>>> signals = load_item(item)
>>> signals["clean"].shape, signals["noisy"], signals["sample_rate"]
((1600,), None, 16000)

Authors: speechbrain-ext contributors
"""

import dataclasses
import logging
import os
import re
from dataclasses import dataclass
from typing import ClassVar, Optional

import numpy as np
import soundfile as sf

from speechbrain_ext.audio import AUDIO_EXTENSIONS, AudioInputError, audio_info, read_segment
from speechbrain_ext.errors import SpeechBrainExtError
from speechbrain_ext.evaluation.metrics import resample as resample_signal

logger = logging.getLogger(__name__)

FILEID_PATTERN = re.compile(r"fileid_(\d+)")

# Shorter/longer ratio below which two versions of one utterance are considered different
# recordings rather than the same one with a few samples of padding or trimming.
MIN_LENGTH_RATIO = 0.9


class EvaluationError(SpeechBrainExtError, ValueError):
    """The files to evaluate are missing, unmatched or unusable.

    Example
    -------
    >>> issubclass(EvaluationError, ValueError)
    True
    """


# --------------------------------------------------------------------------------------------
# Items
# --------------------------------------------------------------------------------------------


@dataclass
class EvaluationItem:
    """One utterance to score: its clean reference, its enhanced version and, optionally,
    the noisy input (paths).

    Example
    -------
    >>> EvaluationItem("fileid_3", "clean/3.wav", "enhanced/3.wav").noisy is None
    True
    """

    id: str
    clean: str
    enhanced: str
    noisy: Optional[str] = None
    task: ClassVar[str] = "enhancement"

    # The wording of this task's messages (see check_item).
    def _rate_error(self, reference_rate, role, path, rate):
        return (
            f"{self.id}: the clean file is at {reference_rate} Hz but the {role} file {os.path.basename(path)} "
            f"is at {rate} Hz; resample it, or pass resample=True (--resample) to resample to {reference_rate} Hz"
        )

    def _length_error(self, durations):
        # Each file's length: an enhancement item has at most three.
        described = ", ".join(f"{role} {seconds:.2f} s" for role, seconds in durations)
        return f"{self.id}: the files differ in length ({described}); are they the same utterance?"


@dataclass
class SeparationItem:
    """One mixture to score: its file, the reference sources' files and the estimated sources'
    files (in any order: the permutation is resolved when scoring).

    Example
    -------
    >>> len(SeparationItem("m0", "mix/m0.wav", ["s1/m0.wav", "s2/m0.wav"], ["e1/m0.wav", "e2/m0.wav"]).sources)
    2
    """

    id: str
    mixture: str
    sources: list
    estimates: list
    task: ClassVar[str] = "separation"

    def _rate_error(self, reference_rate, role, path, rate):
        role = {"sources": "source", "estimates": "estimate"}.get(role, role)
        return (
            f"{self.id}: the mixture is at {reference_rate} Hz but the {role} file "
            f"{path} is at {rate} Hz; resample it, or pass resample=True (--resample) "
            f"to resample to {reference_rate} Hz"
        )

    def _length_error(self, durations):
        # The range only: a separation item has one file per speaker twice over.
        seconds = [duration for _, duration in durations]
        return (
            f"{self.id}: the files differ in length ({min(seconds):.2f} s to {max(seconds):.2f} s); "
            "are they the same mixture?"
        )


@dataclass
class QualityItem:
    """One recording to score without a reference (DNSMOS): the processed file and, optionally,
    the unprocessed input, to compare.

    Example
    -------
    >>> QualityItem("a", "enhanced/a.wav").noisy is None
    True
    """

    id: str
    enhanced: str
    noisy: Optional[str] = None
    task: ClassVar[str] = "quality"

    def _rate_error(self, reference_rate, role, path, rate):
        return (f"{self.id}: the enhanced file is at {reference_rate} Hz but the {role} file {os.path.basename(path)} "
                f"is at {rate} Hz; resample it, or pass resample=True (--resample)")

    def _length_error(self, durations):
        described = ", ".join(f"{role} {seconds:.2f} s" for role, seconds in durations)
        return f"{self.id}: the files differ in length ({described}); are they the same recording?"


def item_files(item):
    """The files of an item, reference first: ``[(role, path)]`` in field order, a role once per
    file (``sources`` and ``estimates`` once per speaker); absent optional files left out.

    Example
    -------
    >>> item_files(EvaluationItem("a", "c.wav", "e.wav"))
    [('clean', 'c.wav'), ('enhanced', 'e.wav')]
    """
    files = []
    for field in dataclasses.fields(item)[1:]:  # after the id
        value = getattr(item, field.name)
        paths = value if isinstance(value, (list, tuple)) else [value] if value is not None else []
        files.extend((field.name, path) for path in paths)
    return files


# --------------------------------------------------------------------------------------------
# Matching folders
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


def _matched_keys(keyed, folders, how, references, reference):
    """The keys of the reference role (the first), in natural order, once every other role has
    a file for each; files of other roles without a reference are logged and ignored.

    ``references`` / ``reference`` name the reference files in messages (``'clean files'`` /
    ``'clean reference'``, ``'mixtures'`` / ``'mixture'``).
    """
    reference_role, *roles = keyed
    expected = keyed[reference_role]
    for role in roles:
        missing = set(expected) - set(keyed[role])
        if missing:
            raise EvaluationError(
                f"{len(missing)} of {len(expected)} {references} have no {role} file with the same {how} in "
                f"{folders[role]}: {_examples(missing)}"
            )
        extra = set(keyed[role]) - set(expected)
        if extra:
            logger.warning("%d %s files have no %s and are ignored: %s", len(extra), role, reference, _examples(extra))
    return sorted(expected, key=_natural_order)


def match_files(clean_dir, enhanced_dir, noisy_dir=None, match="auto"):
    """Pair every clean file with its enhanced (and noisy) version.

    Arguments
    ---------
    clean_dir, enhanced_dir : str
        Folders of audio files (``speechbrain_ext.audio.AUDIO_EXTENSIONS``; not searched recursively).
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
    folders = {"clean": clean_dir, "enhanced": enhanced_dir}
    if noisy_dir is not None:
        folders["noisy"] = noisy_dir
    files = {role: _audio_files(folder, role) for role, folder in folders.items()}

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

    keys = _matched_keys(keyed, folders, how, "clean files", "clean reference")
    return [
        EvaluationItem(
            id=key,
            clean=keyed["clean"][key],
            enhanced=keyed["enhanced"][key],
            noisy=keyed["noisy"][key] if "noisy" in keyed else None,
        )
        for key in keys
    ]


def match_quality_files(enhanced_dir, noisy_dir=None):
    """Every audio file of ``enhanced_dir`` as a :class:`QualityItem`, with the noisy file of the
    same name when ``noisy_dir`` is given (each enhanced file must have one).

    Example
    -------
    >>> import tempfile
    >>> root = tempfile.mkdtemp()
    >>> sf.write(os.path.join(root, "b.wav"), np.zeros(160), 16000)
    >>> [(item.id, item.noisy) for item in match_quality_files(root)]
    [('b', None)]
    """
    folders = {"enhanced": enhanced_dir, **({"noisy": noisy_dir} if noisy_dir is not None else {})}
    keyed = {role: _keyed(_audio_files(folder, role), _name_key, role, "name") for role, folder in folders.items()}
    keys = _matched_keys(keyed, folders, "name", "enhanced files", "enhanced file")
    return [QualityItem(key, keyed["enhanced"][key], keyed["noisy"][key] if "noisy" in keyed else None)
            for key in keys]


def match_separation_files(mix_dir, source_dirs, estimate_dirs):
    """Pair every mixture with its reference sources and estimates, by file name.

    Arguments
    ---------
    mix_dir : str
        Folder of the mixtures (``speechbrain_ext.audio.AUDIO_EXTENSIONS``; not searched recursively).
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

    Example
    -------
    >>> import tempfile
    >>> root = tempfile.mkdtemp()
    >>> folder = {name: os.path.join(root, name) for name in ("mix", "s1", "s2", "e1", "e2")}
    >>> for path in folder.values():
    ...     os.makedirs(path)
    ...     sf.write(os.path.join(path, "m0.wav"), np.zeros(80), 8000)
    >>> [item] = match_separation_files(folder["mix"], [folder["s1"], folder["s2"]], [folder["e2"], folder["e1"]])
    >>> item.id, [os.path.basename(os.path.dirname(path)) for path in item.estimates]
    ('m0', ['e2', 'e1'])
    """
    source_dirs, estimate_dirs = list(source_dirs or []), list(estimate_dirs or [])
    if len(source_dirs) < 2:
        raise EvaluationError(f"separation needs the folders of at least 2 reference sources, got {len(source_dirs)}")
    if len(estimate_dirs) != len(source_dirs):
        raise EvaluationError(
            f"{len(source_dirs)} reference source folders but {len(estimate_dirs)} estimate folders: "
            "give one estimate folder per speaker"
        )
    folders = {"mixture": mix_dir}
    folders.update({f"source {i + 1}": folder for i, folder in enumerate(source_dirs)})
    folders.update({f"estimate {i + 1}": folder for i, folder in enumerate(estimate_dirs)})
    keyed = {role: _keyed(_audio_files(folder, role), _name_key, role, "name") for role, folder in folders.items()}
    keys = _matched_keys(keyed, folders, "name", "mixtures", "mixture")
    return [
        SeparationItem(
            id=key,
            mixture=keyed["mixture"][key],
            sources=[keyed[f"source {i + 1}"][key] for i in range(len(source_dirs))],
            estimates=[keyed[f"estimate {i + 1}"][key] for i in range(len(estimate_dirs))],
        )
        for key in keys
    ]


# --------------------------------------------------------------------------------------------
# Checking and reading
# --------------------------------------------------------------------------------------------


def _info(path):
    try:
        return audio_info(path)
    except AudioInputError as error:
        raise EvaluationError(str(error)) from None


def read_mono(path):
    """``(samples float64 [T], sample_rate)`` of an audio file (channel 0 of a multichannel one).

    Example
    -------
    >>> read_mono("/nonexistent.wav")
    Traceback (most recent call last):
    ...
    speechbrain_ext.evaluation.pairing.EvaluationError: /nonexistent.wav: no such file
    """
    info = _info(path)
    return read_segment(path).double().numpy(), int(info.samplerate)


def check_item(item, resample=False):
    """Check from the file headers that an item (of either task) can be scored: every file
    readable, at the reference's sample rate unless ``resample``, lengths alike.

    Enhancers may drop or pad a few samples at the end (FRCRN returns whole frames only): the
    common part is scored, but clearly different recordings (shorter than ``MIN_LENGTH_RATIO``
    of the longest) are refused.

    Arguments
    ---------
    item : EvaluationItem or SeparationItem
    resample : bool
        Accept other sample rates (:func:`load_item` resamples them).

    Returns
    -------
    int
        The sample rate of the reference file (clean file or mixture).

    Raises
    ------
    EvaluationError
        Saying which file and why.

    Example
    -------
    >>> check_item(EvaluationItem("a", "/nonexistent.wav", "/nonexistent.wav"))
    Traceback (most recent call last):
    ...
    speechbrain_ext.evaluation.pairing.EvaluationError: /nonexistent.wav: no such file
    """
    (reference_role, reference_path), *others = item_files(item)
    reference = _info(reference_path)
    durations = [(reference_role, reference.frames / reference.samplerate)]
    for role, path in others:
        info = _info(path)
        if info.samplerate != reference.samplerate and not resample:
            raise EvaluationError(item._rate_error(reference.samplerate, role, path, info.samplerate))
        durations.append((role, info.frames / info.samplerate))
    seconds = [duration for _, duration in durations]
    if min(seconds) < MIN_LENGTH_RATIO * max(seconds):
        raise EvaluationError(item._length_error(durations))
    return int(reference.samplerate)


def load_item(item, resample=False):
    """Read an item's signals at the reference file's rate, trimmed to their common length.

    Arguments
    ---------
    item : EvaluationItem or SeparationItem
    resample : bool
        Resample files whose rate differs from the reference's instead of raising an error.

    Returns
    -------
    dict
        One entry per field of the item, and ``sample_rate``. Enhancement: ``clean``,
        ``enhanced`` ``[T]`` and ``noisy`` ``[T]`` (None without a noisy file). Separation:
        ``mixture`` ``[T]``, ``sources`` and ``estimates`` ``[speakers, T]``.

    Example
    -------
    >>> import tempfile
    >>> root = tempfile.mkdtemp()
    >>> paths = [os.path.join(root, f"{name}.wav") for name in ("mix", "s1", "s2", "e1", "e2")]
    >>> for path in paths:
    ...     sf.write(path, np.zeros(800), 8000)
    >>> signals = load_item(SeparationItem("m", paths[0], paths[1:3], paths[3:]))
    >>> signals["mixture"].shape, signals["estimates"].shape, signals["sample_rate"]
    ((800,), (2, 800), 8000)
    """
    rate = check_item(item, resample)
    loaded = []
    for role, path in item_files(item):
        signal, signal_rate = read_mono(path)
        loaded.append((role, resample_signal(signal, signal_rate, rate)))
    shortest = min(len(signal) for _, signal in loaded)
    signals = {}
    for field in dataclasses.fields(item)[1:]:
        trimmed = [signal[:shortest] for role, signal in loaded if role == field.name]
        if isinstance(getattr(item, field.name), (list, tuple)):
            signals[field.name] = np.stack(trimmed)
        else:
            signals[field.name] = trimmed[0] if trimmed else None
    return {**signals, "sample_rate": int(rate)}
