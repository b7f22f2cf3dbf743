"""The exceptions of speechbrain-ext: one base class, so callers (and the CLI) catch ours by name.

Each keeps the built-in base its callers already expect (``ValueError`` for bad input,
``OSError`` for a failed write); every message is one sentence that says which file and why.

Example
-------
>>> from speechbrain_ext.audio import AudioInputError
>>> issubclass(AudioInputError, SpeechBrainExtError) and issubclass(AudioInputError, ValueError)
True
"""


class SpeechBrainExtError(Exception):
    """Base class of every error speechbrain-ext raises on purpose."""


class InvalidOptionError(SpeechBrainExtError, ValueError):
    """An option (sample rate, channel selection, batch size, lengths, ...) that cannot be used."""


class OutputConflictError(SpeechBrainExtError, ValueError):
    """Outputs that would replace an input, or that two inputs would both produce."""


class AudioOutputError(SpeechBrainExtError, OSError):
    """An output file that could not be written; the message names the file and the reason."""
