"""The run folder as one object (:class:`RunFolder`): paths and artefact names
(:mod:`calib.runfolder.artefacts`), the recorded split, models, judges, the epsilon table, stage
manifests, and the one-writer lock (:mod:`calib.runfolder.lock`)."""
from calib.runfolder import artefacts
from calib.runfolder.checks import check_model_data
from calib.runfolder.folder import RunFolder, open_run
from calib.runfolder.lock import RunFolderLocked, RunLock

__all__ = ["RunFolder", "open_run", "check_model_data", "RunLock", "RunFolderLocked", "artefacts"]
