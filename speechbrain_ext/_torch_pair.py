"""Import-time guard against an unusable torch/torchaudio pair.

Resolving the newest releases of both packages can give builds made for different
CUDA versions (e.g. torch 2.15+cu132 with torchaudio 2.11+cu130); torchaudio then
fails deep inside its extension loader. We turn that into one sentence saying what
to install.
"""

from importlib import metadata

PINNED_PAIR = "torch==2.11.0 torchaudio==2.11.0"


class TorchPairError(ImportError):
    """Raised when the installed torch and torchaudio cannot work together."""


def installed_versions():
    """Return the installed ``(torch, torchaudio)`` distribution versions (None if absent)."""
    found = []
    for name in ("torch", "torchaudio"):
        try:
            found.append(metadata.version(name))
        except metadata.PackageNotFoundError:
            found.append(None)
    return tuple(found)


def _split(version):
    """'2.11.0+cu130' -> ((2, 11), 'cu130'); the local tag names the CUDA build."""
    public, _, local = version.partition("+")
    parts = public.split(".")
    return (int(parts[0]), int(parts[1])), local or None


def mismatch_message(torch_version, torchaudio_version):
    """Explain why the pair is unusable, or return None when it looks fine.

    Example
    -------
    >>> mismatch_message("2.11.0+cu130", "2.11.0+cu130") is None
    True
    >>> "pip install" in mismatch_message("2.15.0+cu132", "2.11.0+cu130")
    True
    """
    if torch_version is None or torchaudio_version is None:
        missing = "torch" if torch_version is None else "torchaudio"
        return (
            f"speechbrain-ext needs {missing}, which is not installed: "
            f"install the tested pair with `pip install {PINNED_PAIR}`."
        )
    (t_minor, t_build), (a_minor, a_build) = _split(torch_version), _split(torchaudio_version)
    if t_minor != a_minor or (t_build and a_build and t_build != a_build):
        return (
            f"speechbrain-ext found torch {torch_version} with torchaudio {torchaudio_version}, "
            "builds that cannot be imported together: install a matching pair, for example "
            f"`pip install {PINNED_PAIR}` (what `make test` and `make demo` set up)."
        )
    return None


def check_torch_pair(versions=None):
    """Raise :class:`TorchPairError` with one clear sentence if torch/torchaudio mismatch.

    Arguments
    ---------
    versions : tuple, optional
        ``(torch_version, torchaudio_version)``; read from the installed packages by default.
    """
    message = mismatch_message(*(versions or installed_versions()))
    if message:
        raise TorchPairError(message) from None
    try:
        import torchaudio  # noqa: F401  (its extension loader is what fails on a bad pair)
    except Exception as error:  # the loader raises RuntimeError/OSError, not ImportError
        raise TorchPairError(
            f"torchaudio cannot be loaded with this torch ({error.__class__.__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}); install a matching pair, "
            f"for example `pip install {PINNED_PAIR}`."
        ) from None
