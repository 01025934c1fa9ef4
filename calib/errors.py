"""Exceptions raised by calib.

Every error a user can cause (bad files, bad arrays, bad options, tampered artefacts) is a
:class:`CalibError`, which is a :class:`ValueError`; the CLI prints its message as one line and
exits with status 2. Messages name the offending file/option and say what was expected.

A broken invariant (an attack output outside its ball or box, a certificate beaten by a witness) is
a bug, not a user error: an :class:`InternalError` (an :class:`AssertionError`). The CLI reports it,
like any other unexpected exception, as "internal error" with exit status 3 and the traceback saved.
"""


class CalibError(ValueError):
    """Base class of all user-facing calib errors."""


class DataError(CalibError):
    """A dataset is missing, corrupt, truncated, inconsistent or out of range."""


class ArtefactError(CalibError):
    """A model artefact (safetensors weights + JSON config) is missing, corrupt or tampered with."""


class ConfigError(CalibError):
    """An option or configuration value is unknown or out of range."""


class InternalError(AssertionError):
    """A broken invariant: a bug in calib (or in a library it drives), never the user's input."""
