"""Corpus-scale processing: manifests in and out, shares of the work across torchrun's processes,
short files packed into batches.

``speechbrain-ext enhance`` / ``separate`` run one process by default. Started by ``torchrun``
(``torchrun --nproc_per_node=N -m speechbrain_ext.cli enhance ...``), every process takes the
share :func:`balanced_shares` gives its rank, the same on every rank because rank 0 plans the
batch once and shares the plan (:class:`Workers`); rank 0 then gathers what every rank did and
writes the one summary and the output manifest. What makes a rerun finish only what is missing
is the batch plan's own (:mod:`speechbrain_ext.inference.files`): outputs are renamed into place
only when complete, existing ones are skipped, interrupted ones swept.

Authors: speechbrain-ext contributors
"""

import csv
import datetime
import heapq
import json
import os

from speechbrain_ext.errors import SpeechBrainExtError


class ManifestError(SpeechBrainExtError, ValueError):
    """An input manifest that cannot be read, or an output manifest that may not be written."""


#: Columns an input manifest's audio paths are looked for in, in this order (SpeechBrain
#: recipes' names first; ``input`` reads our own output manifest back).
PATH_COLUMNS = ("wav", "path", "file", "audio", "noisy_wav", "mix_wav", "input")
#: The first columns of every output manifest; how a manifest we wrote is recognised.
MANIFEST_COLUMNS = ("ID", "duration", "input")
#: SpeechBrain's placeholders for a data folder in manifest paths, filled by ``data_root``.
ROOT_PLACEHOLDERS = ("data_root", "data_folder")


def read_manifest(path, column=None, data_root=None):
    """The audio files a manifest lists, as ``[(path, duration or None)]`` in its order.

    Reads SpeechBrain's CSV (a header, one row per item, usually with ``ID`` and
    ``duration``), its JSON (``{id: {"wav": ..., "duration": ...}}``) and JSON lines (one
    object per line). The path column is ``column`` or the first of :data:`PATH_COLUMNS` the
    manifest has; ``$data_root`` / ``$data_folder`` in paths become ``data_root``. Relative
    paths are taken from the working directory, as SpeechBrain does.

    Example
    -------
    >>> import tempfile
    >>> manifest = os.path.join(tempfile.mkdtemp(), "test.csv")
    >>> with open(manifest, "w") as stream:
    ...     _ = stream.write("ID,duration,wav\\nu1,1.5,$data_root/u1.wav\\nu2,2.0,$data_root/u2.flac\\n")
    >>> read_manifest(manifest, data_root="/corpus")
    [('/corpus/u1.wav', 1.5), ('/corpus/u2.flac', 2.0)]
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8", newline="") as stream:
            text = stream.read()
    except (OSError, UnicodeDecodeError) as error:
        raise ManifestError(f"{path}: cannot read the manifest ({getattr(error, 'strerror', None) or error})") from None
    try:
        if path.lower().endswith(".jsonl"):
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        elif path.lower().endswith(".json"):
            rows = list(json.loads(text).values())
        else:
            rows = list(csv.DictReader(text.splitlines(), skipinitialspace=True))
    except (ValueError, AttributeError) as error:
        raise ManifestError(f"{path}: not a manifest (CSV with a header, JSON or JSON lines): {error}") from None
    if not rows or not all(isinstance(row, dict) for row in rows):
        raise ManifestError(f"{path}: the manifest lists no items")
    if column is None:
        column = next((name for name in PATH_COLUMNS if name in rows[0]), None)
        if column is None:
            raise ManifestError(f"{path}: no column of audio paths ({', '.join(PATH_COLUMNS)}); name it with "
                                f"--manifest-column (columns: {', '.join(rows[0])})")
    elif column not in rows[0]:
        raise ManifestError(f"{path}: no column {column!r} (columns: {', '.join(rows[0])})")
    items = []
    for number, row in enumerate(rows, start=1):
        value = row.get(column)
        if not isinstance(value, str) or not value.strip():
            raise ManifestError(f"{path}: item {number} has no path in column {column!r}")
        value = value.strip()
        for name in ROOT_PLACEHOLDERS:
            if data_root is not None:
                value = value.replace(f"${name}", os.fspath(data_root)).replace(f"${{{name}}}", os.fspath(data_root))
        if "$" in value:
            raise ManifestError(f"{path}: item {number}'s path {value!r} has a placeholder: give --data-root")
        items.append((value, _duration(row.get("duration"))))
    return items


def _duration(value):
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return seconds if seconds >= 0 else None


def manifest_inputs(items):
    """``(path, name under the output folder)`` for manifest items: names relative to the
    deepest folder holding them all, so the output folder mirrors the corpus's layout.

    Example
    -------
    >>> [name for _, name in manifest_inputs(["/c/a/x.wav", "/c/b/x.wav"])]
    ['a/x.wav', 'b/x.wav']
    """
    paths = [os.fspath(path) for path in items]
    absolute = [os.path.abspath(path) for path in paths]
    if not absolute:
        return []
    root = os.path.commonpath([os.path.dirname(path) for path in absolute])
    return [(path, os.path.relpath(full, root)) for path, full in zip(paths, absolute)]


def check_manifest_target(path):
    """Refuse to write the output manifest over a file that is not a manifest we wrote."""
    if not os.path.lexists(path):
        return
    try:
        with open(path, encoding="utf-8") as stream:
            header = stream.readline().strip().split(",")
    except (OSError, UnicodeDecodeError):
        header = []
    if tuple(header[: len(MANIFEST_COLUMNS)]) != MANIFEST_COLUMNS:
        raise ManifestError(f"{path} exists and is not a manifest speechbrain-ext wrote: not replaced (give "
                            "--manifest-out another file)")


def write_manifest(path, rows, columns):
    """Write ``rows`` (dicts) as a CSV manifest, atomically: a hidden temporary file renamed."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    temporary = os.path.join(folder, f".{os.path.basename(path)}.sbext-partial")
    try:
        with open(temporary, "w", encoding="utf-8", newline="") as stream:
            writer = csv.DictWriter(stream, fieldnames=list(columns), extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        os.replace(temporary, path)
    except OSError:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def balanced_shares(durations, world_size):
    """Split jobs among ``world_size`` processes so their audio durations are as even as possible.

    Longest first, each to the process with the least audio so far (ties: the lower rank), so
    one long file never waits behind many short ones on the same process, and every process
    computes the same shares from the same durations.

    Returns
    -------
    list of list of int
        The job indices of each rank, in the order given.

    Example
    -------
    >>> balanced_shares([7200, 1, 1, 1, 1, 1], 2)
    [[0], [1, 2, 3, 4, 5]]
    """
    loads = [(0.0, rank) for rank in range(world_size)]
    shares = [[] for _ in range(world_size)]
    for index in sorted(range(len(durations)), key=lambda i: (-durations[i], i)):
        load, rank = heapq.heappop(loads)
        shares[rank].append(index)
        heapq.heappush(loads, (load + durations[index], rank))
    return [sorted(share) for share in shares]


def pack_by_length(durations, batch_size, max_seconds):
    """Groups of job indices to run together: up to ``batch_size`` jobs no longer than
    ``max_seconds`` each, of neighbouring lengths (little padding); longer jobs alone.

    Example
    -------
    >>> pack_by_length([3.0, 1.0, 60.0, 2.0, 1.5], batch_size=2, max_seconds=10)
    [[1, 4], [3, 0], [2]]
    """
    if batch_size <= 1:
        return [[index] for index in range(len(durations))]
    short = sorted((i for i, d in enumerate(durations) if d <= max_seconds), key=lambda i: (durations[i], i))
    groups = [short[i : i + batch_size] for i in range(0, len(short), batch_size)]
    return groups + [[i] for i, d in enumerate(durations) if d > max_seconds]


class Workers:
    """This process's place among the processes ``torchrun`` started (alone: rank 0 of 1).

    Under ``torchrun`` (``WORLD_SIZE`` > 1) it joins them in a gloo process group (CPU
    messages only: plans and results, whatever device the models use), with a timeout long
    enough for the longest share. ``local_rank`` picks the process's GPU.

    Example
    -------
    >>> with Workers() as workers:  # not under torchrun
    ...     workers.rank, workers.world_size, workers.share({"plan": 1}), workers.gather("done")
    (0, 1, {'plan': 1}, ['done'])
    """

    #: How long a process waits for the others (planning, the slowest share).
    TIMEOUT = datetime.timedelta(days=7)

    def __init__(self):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self._joined = False

    def __enter__(self):
        if self.world_size > 1:
            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group("gloo", timeout=self.TIMEOUT)
                self._joined = True
        return self

    def __exit__(self, *exc):
        if self._joined:
            import torch.distributed as dist

            dist.destroy_process_group()
            self._joined = False

    @property
    def main(self):
        """True on rank 0, which plans, prints and writes the manifest."""
        return self.rank == 0

    def share(self, value):
        """``value`` as rank 0 has it, on every rank."""
        if self.world_size == 1:
            return value
        import torch.distributed as dist

        box = [value if self.main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value):
        """Every rank's ``value``, in rank order, on rank 0 (None elsewhere)."""
        if self.world_size == 1:
            return [value]
        import torch.distributed as dist

        values = [None] * self.world_size if self.main else None
        dist.gather_object(value, values, dst=0)
        return values

    def device(self, device):
        """The device a process uses for ``device``: a bare ``cuda`` is the process's own GPU."""
        if device == "cuda" and self.world_size > 1:
            return f"cuda:{self.local_rank}"
        return device
