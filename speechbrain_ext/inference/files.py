"""Planning a batch of files: which inputs, which outputs, and what may never be touched.

The rules that keep a user's files safe, checked before any model is loaded:

- an output never replaces an input, and two inputs never produce the same output: such a
  plan is refused as a whole (:class:`~speechbrain_ext.errors.OutputConflictError`), naming
  both paths;
- the output folder is never read as input, even when it lies inside an input folder; an
  output folder that *is* an input folder is refused;
- an existing file is only ever replaced if speechbrain-ext wrote it (it carries
  :data:`~speechbrain_ext.audio.OUTPUT_TAG`), and only with ``overwrite``;
- files of a format we cannot read are counted and listed, not silently ignored;
- temporary files of an interrupted earlier run are removed for every planned output.

Authors: speechbrain-ext contributors
"""

import os
from dataclasses import dataclass, field

from speechbrain_ext.errors import OutputConflictError
from speechbrain_ext.audio import AUDIO_EXTENSIONS, is_own_output, remove_temporaries, same_file


@dataclass
class Job:
    """One input file and the output files it produces."""

    input: str
    outputs: list
    #: The input's name under the output folder (its path relative to the folder given).
    name: str = ""


@dataclass
class Plan:
    """What a batch run will do, decided before any work.

    Attributes
    ----------
    todo : list of Job
        Jobs to run.
    existing : list of Job
        Jobs whose outputs all exist (skipped unless ``overwrite``).
    failed : list of tuple
        ``(path, reason)`` for inputs that cannot be run (missing, empty folder, an existing
        output that is not ours).
    unsupported : list of str
        Files inside input folders skipped for their format.
    swept : list of str
        Temporary files of interrupted runs that were removed.
    """

    todo: list = field(default_factory=list)
    existing: list = field(default_factory=list)
    failed: list = field(default_factory=list)
    unsupported: list = field(default_factory=list)
    swept: list = field(default_factory=list)


def _real(path):
    return os.path.realpath(os.path.abspath(path))


def _inside(path, folder):
    """True if ``path`` is ``folder`` or lies below it (both real paths)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def collect_inputs(paths, output_dir):
    """Expand files and folders (recursively) into ``(file, name under the output folder)``.

    Returns
    -------
    (list of tuple, list of str, list of tuple)
        The audio files, each once; the files skipped for their format; ``(path, reason)`` for
        inputs that are missing or folders without audio.

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> for name in ("a.wav", "notes.txt", ".hidden.wav"):
    ...     open(os.path.join(folder, name), "w").close()
    >>> found, unsupported, errors = collect_inputs([folder], os.path.join(folder, "out"))
    >>> [name for _, name in found], [os.path.basename(p) for p in unsupported], errors
    (['a.wav'], ['notes.txt'], [])
    """
    output_real = _real(output_dir)
    found, unsupported, errors, seen = [], [], [], set()

    def add(path, name):
        real = _real(path)
        if real not in seen:  # the same file given twice (or a file and its folder): once
            seen.add(real)
            found.append((path, name))

    for path in paths:
        path = os.fspath(path)
        if os.path.isdir(path):
            if _real(path) == output_real:
                raise OutputConflictError(
                    f"the output folder {output_dir} is the input folder {path}: results would be written "
                    "among the recordings and over inputs of the same name; choose another output folder"
                )
            audio = []
            for root, folders, names in os.walk(path):
                # Never read our own output folder (or anything below it) as input.
                folders[:] = sorted(f for f in folders if not _inside(_real(os.path.join(root, f)), output_real))
                for name in sorted(names):
                    if name.startswith("."):  # hidden files, our own temporary files
                        continue
                    file = os.path.join(root, name)
                    if name.lower().endswith(AUDIO_EXTENSIONS):
                        audio.append(file)
                    else:
                        unsupported.append(file)
            if not audio:
                errors.append((path, "folder holds no audio files"))
            for file in audio:
                add(file, os.path.relpath(file, path))
        elif os.path.exists(path):
            add(path, os.path.basename(path))
        else:
            errors.append((path, "no such file or folder"))
    return found, unsupported, errors


def collect_listed(items):
    """:func:`collect_inputs` for files listed one by one (a manifest): ``items`` are
    ``(file, name under the output folder)``; returns the same three lists.

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> open(os.path.join(folder, "a.wav"), "w").close()
    >>> found, unsupported, errors = collect_listed([(os.path.join(folder, "a.wav"), "a.wav"),
    ...                                              (os.path.join(folder, "gone.wav"), "gone.wav")])
    >>> [name for _, name in found], errors[0][1]
    (['a.wav'], 'no such file')
    """
    found, unsupported, errors, seen = [], [], [], set()
    for path, name in items:
        real = _real(path)
        if real in seen:
            continue
        seen.add(real)
        if not os.path.isfile(path):
            errors.append((path, "no such file" if not os.path.exists(path) else "not a file"))
        elif not path.lower().endswith(AUDIO_EXTENSIONS):
            unsupported.append(path)
        else:
            found.append((path, name))
    return found, unsupported, errors


def plan_batch(paths, output_dir, output_names, overwrite=False, listed=None):
    """Decide the inputs and outputs of a batch run; refuse plans that would lose data.

    Arguments
    ---------
    paths : list of str
        Input files and folders.
    output_dir : str
        Where outputs go, mirroring the input folders.
    output_names : callable
        ``name -> list of output names`` (relative to ``output_dir``) for an input's name
        under the output folder.
    overwrite : bool
        Redo jobs whose outputs exist (only ever replacing files that speechbrain-ext wrote).
    listed : list of tuple, optional
        ``(file, name under the output folder)`` to take instead of ``paths`` (files a
        manifest lists; see :func:`collect_listed`).

    Returns
    -------
    Plan

    Raises
    ------
    OutputConflictError
        If an output would be an input file, or two inputs would produce the same output.

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> for name in ("a.flac", "a.mp3"):
    ...     open(os.path.join(folder, name), "w").close()
    >>> to_wav = lambda name: [os.path.splitext(name)[0] + ".wav"]
    >>> plan_batch([folder], os.path.join(folder, "out"), to_wav)
    Traceback (most recent call last):
    ...
    speechbrain_ext.errors.OutputConflictError: ...a.flac and ...a.mp3 would both be written to .../out/a.wav. Nothing was processed: ...
    """
    if listed is None:
        found, unsupported, failed = collect_inputs(paths, output_dir)
    else:
        found, unsupported, failed = collect_listed(listed)
    jobs = [Job(path, [os.path.join(output_dir, name) for name in output_names(relative)], relative)
            for path, relative in found]

    inputs_by_real = {_real(job.input): job.input for job in jobs}
    producers, conflicts = {}, []
    for job in jobs:
        for output in job.outputs:
            real = _real(output)
            if real in inputs_by_real or same_file(output, job.input):
                conflicts.append(f"{output} would replace the input {inputs_by_real.get(real, job.input)}")
            elif real in producers:
                conflicts.append(f"{producers[real]} and {job.input} would both be written to {output}")
            else:
                producers[real] = job.input
    if conflicts:
        shown = conflicts[:10] + ([f"... and {len(conflicts) - 10} more"] if len(conflicts) > 10 else [])
        raise OutputConflictError(
            "; ".join(shown) + ". Nothing was processed: choose another output folder, or rename or "
            "process separately the inputs that share a name"
        )

    plan = Plan(failed=failed, unsupported=unsupported)
    for job in jobs:
        for output in job.outputs:
            plan.swept.extend(remove_temporaries(output))
        present = [output for output in job.outputs if os.path.lexists(output)]
        foreign = [output for output in present if not is_own_output(output)]
        if len(present) == len(job.outputs) and not overwrite:
            plan.existing.append(job)
        elif foreign:
            plan.failed.append((job.input, f"{foreign[0]} exists and was not written by speechbrain-ext: "
                                           "not replaced (move it away or choose another output folder)"))
        else:
            plan.todo.append(job)
    return plan
