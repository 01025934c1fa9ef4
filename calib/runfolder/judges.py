"""A run's judges, built from its models (:meth:`calib.runfolder.RunFolder.judge` caches them)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from calib.errors import ConfigError
from calib.judges import MODEL_OF, Judge, JudgeConfig, build_judge
from calib.judges.registry import is_fitted

if TYPE_CHECKING:
    from calib.runfolder.folder import RunFolder


def run_judge(folder: "RunFolder", name: str, config: JudgeConfig) -> Judge:
    """Judge ``name`` from the models of ``folder``: the training part is its reference set, the
    calibration part sets an ensemble's member scales.

    Raises:
        ConfigError: the run has no model the judge needs.
    """
    if is_fitted(name):
        return fitted_judge(folder, name, config)

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


def fitted_judge(folder: "RunFolder", name: str, config: JudgeConfig) -> Judge:
    """The judge fitted to people's labels ``models/judges/<name>.json`` (``calib judge fit``), its
    members built from this run's models.

    Raises:
        ConfigError: the run has no such judge, or a member's weights changed since it was fitted
            (its coefficients belong to the old models: fit it again).
    """
    from calib.errors import ArtefactError
    from calib.judges.fitted import FORMAT, VERSION, FittedJudge
    from calib.runfolder import artefacts as A

    doc = folder.fitted_doc(name)
    if doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise ArtefactError(f"{folder.file(A.fitted_judge(name))}: not a calib fitted judge (version {VERSION})")
    try:
        members = [run_judge(folder, m, config.identity(m)) for m in doc["members"]]
        for m in members:
            want = doc["members_weights_sha256"].get(m.name)
            have = m.describe().get("weights_sha256")
            if want != have:
                raise ConfigError(f"fitted judge {name!r}: member {m.name}'s weights changed since it was fitted "
                                  f"({str(want)[:12]}… then, {str(have)[:12]}… now); fit it again with "
                                  f"`calib judge fit {folder.path} --name {name} --human ...`")
        return FittedJudge(members, doc["coef"], doc["intercept"], doc["centres"], doc["scales"], name=name, doc=doc)
    except (KeyError, TypeError) as exc:
        raise ArtefactError(f"{folder.file(A.fitted_judge(name))}: malformed fitted judge ({exc!r})") from exc
