"""Errors the engine raises on purpose; their messages are written for the person running it."""


class GeoCLIPError(Exception):
    """Base class: anything the engine reports as the user's to fix."""


class WeightsError(GeoCLIPError):
    """Weights are missing, unreadable or of the wrong shape."""


class PhotoError(GeoCLIPError):
    """One photo cannot be used; the batch goes on without it."""
