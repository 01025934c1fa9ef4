"""Exceptions raised by calib.

Every error a user can cause (bad files, bad arrays, bad options, tampered artefacts) is a
:class:`CalibError`, which is a :class:`ValueError`; the CLI prints its message as one line and
exits with status 2. Messages name the offending file/option and say what was expected.
"""


class CalibError(ValueError):
    """Base class of all user-facing calib errors."""


class DataError(CalibError):
    """A dataset is missing, corrupt, truncated, inconsistent or out of range."""


class ArtefactError(CalibError):
    """A model artefact (safetensors weights + JSON config) is missing, corrupt or tampered with."""


class ConfigError(CalibError):
    """An option or configuration value is unknown or out of range."""
