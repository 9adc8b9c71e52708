"""Errors the engine raises on purpose; their messages are written for the person running it."""


class GeoCLIPError(Exception):
    """Base class: anything the engine reports as the user's to fix."""


class WeightsError(GeoCLIPError):
    """Weights are missing, unreadable or of the wrong shape."""


class PhotoError(GeoCLIPError):
    """One photo cannot be used; the batch goes on without it."""


class ForeignFileError(GeoCLIPError):
    """A file GeoCLIP would write, or a side file of one (its lock, its unfinished copy), is in the way
    and is not GeoCLIP's: another program's file, or a symbolic link. It is left as it is."""


class WriteError(GeoCLIPError):
    """An output could not be written (disk full, permissions...); what was committed before is kept."""


class InputFileError(GeoCLIPError):
    """A file the user gave (a table of photos, a configuration) cannot be read as what it should be."""


class Cancelled(GeoCLIPError):  # noqa: N818 - a stop on request, not a failure
    """Work stopped because its caller asked (its ``should_stop()`` said yes). The message says what was
    kept and what a next call resumes; a run turns it into a partial outcome rather than an error."""

    def __init__(self, message: str = "cancelled"):
        super().__init__(message)
