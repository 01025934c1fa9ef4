"""calib: calibrate adversarial-perturbation budgets (epsilon) with metric learning.

Pipeline (one subpackage each): data -> models -> train -> stats -> budgets -> attacks -> audit -> report.
"""
from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("calib")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

from calib.errors import ArtefactError, CalibError, ConfigError, DataError

__all__ = ["__version__", "CalibError", "DataError", "ArtefactError", "ConfigError", "open_run"]


def __getattr__(name: str):
    """``calib.open_run(PATH)``: a run folder (imported on first use, so ``import calib`` stays light)."""
    if name == "open_run":  # (by name: no stage's cache key should follow this accessor into the run folder)
        import importlib

        return importlib.import_module("calib.runfolder").open_run
    raise AttributeError(f"module 'calib' has no attribute {name!r}")
