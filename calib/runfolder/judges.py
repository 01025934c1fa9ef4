"""A run's judges, built from its models (:meth:`calib.runfolder.RunFolder.judge` caches them)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from calib.errors import ConfigError
from calib.judges import MODEL_OF, Judge, JudgeConfig, build_judge

if TYPE_CHECKING:
    from calib.runfolder.folder import RunFolder


def run_judge(folder: "RunFolder", name: str, config: JudgeConfig) -> Judge:
    """Judge ``name`` from the models of ``folder``: the training part is its reference set, the
    calibration part sets an ensemble's member scales.

    Raises:
        ConfigError: the run has no model the judge needs.
    """
    def load(stem: str):
        if not folder.has_model(stem):
            raise ConfigError(f"judge {name!r} needs the model models/{stem}, which {folder.path} does not have; "
                              f"run `calib run --judge {name}` (or list it under [judge] also)")
        return folder.model(stem), folder.model_config(stem)

    for single in config.singles(name):
        load(MODEL_OF[single])  # a missing model fails with its own message before anything is built
    tr, cal = folder.splits.train, folder.splits.calibration
    return build_judge(name, JudgeConfig(**{**config.__dict__, "name": name}), load, tr.images, tr.labels,
                       len(folder.class_names), device=folder.device, calibration=(cal.images, cal.labels))
