"""Which judges exist, what each needs, and how a run's models become judges.

Judge names and the model artefact each one reads (``RUN/models/<stem>``):

=============  ===========================  ==========================================================
name           model                         rule
=============  ===========================  ==========================================================
``classifier``  ``classifier``               f itself (the baseline)
``knn``         ``embedding``                nearest class over the plain triplet g
``knn2``        ``embedding2``               the same over g2 (other seed, other training subset)
``robust``      ``robust-embedding``         the same over a robust triplet g (adversarial anchors)
``lipschitz``   ``lipschitz-embedding``      the same over a certified-Lipschitz g (a certificate)
``abs``         ``abs``                      the class whose VAE explains the image best (ELBO)
``ensemble``    its members'                 ``any`` / ``majority`` of the member judges
=============  ===========================  ==========================================================
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from calib.errors import ConfigError
from calib.judges.base import Judge
from calib.judges.classifier import ClassifierJudge
from calib.judges.ensemble import RULES, EnsembleJudge
from calib.judges.knn import KnnJudge

#: single judges and the model stem each reads
MODEL_OF = {"classifier": "classifier", "knn": "embedding", "knn2": "embedding2", "robust": "robust-embedding",
            "lipschitz": "lipschitz-embedding", "abs": "abs"}
JUDGES = (*MODEL_OF, "ensemble")
KIND_OF = {"classifier": "classifier", "knn": "knn", "knn2": "knn", "robust": "robust", "lipschitz": "lipschitz",
           "abs": "abs", "ensemble": "ensemble"}

ModelLoader = Callable[[str], tuple[nn.Module, dict[str, Any]]]


#: the name of a judge fitted to people's labels (``calib judge fit --name``; ``RUN/models/judges/<name>.json``)
FITTED_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")


def is_fitted(name: str) -> bool:
    """Whether ``name`` names a fitted judge (anything but a built-in judge); whether the run has it is
    checked where the run is known (:func:`calib.runfolder.judges.run_judge`, ``calib run``)."""
    return name not in JUDGES


def check_judge_name(name: str, where: str = "judge", fitted: bool = True) -> str:
    """``name`` if it is a built-in judge or (with ``fitted``) could name a fitted one."""
    if name in JUDGES or (fitted and isinstance(name, str) and FITTED_NAME.fullmatch(name)):
        return name
    more = " or the name of a judge fitted with `calib judge fit`" if fitted else ""
    raise ConfigError(f"unknown {where} {name!r}; choose one of {', '.join(JUDGES)}{more}")


@dataclass(frozen=True)
class JudgeConfig:
    """The run's judge and how judges are built.

    Attributes:
        name: the judge whose verdicts the audit uses and whose robustness radius sets the semantic
            budgets (one of :data:`JUDGES`).
        k: references per class whose mean distance decides, for the embedding judges (1 = 1-NN).
        members, rule: the ensemble's member judges and its rule (``any``/``majority``).
        also: further judges whose semantic radii are measured too (``RUN/semantic/<name>.*``).
    """

    name: str = "knn"
    k: int = 1
    members: tuple[str, ...] = ("knn", "knn2")
    rule: str = "any"
    also: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_judge_name(self.name)
        if self.k < 1:
            raise ConfigError(f"judge k must be >= 1; got {self.k}")
        if self.rule not in RULES:
            raise ConfigError(f"unknown ensemble rule {self.rule!r}; choose {', '.join(RULES)}")
        for m in self.members:
            if m not in MODEL_OF:  # (an ensemble of built-in single judges)
                raise ConfigError(f"ensemble member {m!r} must be one of {', '.join(MODEL_OF)}")
        if len(set(self.members)) < 2 or len(set(self.members)) != len(self.members):
            raise ConfigError(f"an ensemble needs at least 2 distinct members; got {list(self.members)}")
        for a in self.also:
            check_judge_name(a, "judge in 'also'")

    @property
    def measured(self) -> tuple[str, ...]:
        """The run's judge first, then ``also`` (without repeats)."""
        return tuple(dict.fromkeys((self.name, *self.also)))

    def singles(self, name: str) -> tuple[str, ...]:
        """The built-in single judges ``name`` consists of (a fitted judge's members are in its file, and
        the run that fitted it has their models: none listed here)."""
        if is_fitted(name):
            return ()
        return tuple(self.members) if name == "ensemble" else (name,)

    def identity(self, name: str | None = None) -> "JudgeConfig":
        """The options that decide judge ``name``'s verdicts (default: the run's judge), and nothing
        else: ``also`` dropped, the ensemble's members and rule only for the ensemble. Stages key on
        it, so measuring one more judge or changing the ensemble does not redo a single judge's work."""
        name = name or self.name
        base = JudgeConfig()
        ens = name == "ensemble"
        return JudgeConfig(name=name, k=self.k, members=self.members if ens else base.members,
                           rule=self.rule if ens else base.rule)

    def models(self) -> tuple[str, ...]:
        """Model stems every measured judge needs (the classifier is always trained)."""
        stems = {MODEL_OF[s] for n in self.measured for s in self.singles(n)}
        return tuple(sorted(stems))


def build_judge(name: str, config: JudgeConfig, load: ModelLoader, reference_images: np.ndarray,
                reference_labels: np.ndarray, num_classes: int, *, device: str | torch.device = "cpu",
                calibration: tuple[np.ndarray, np.ndarray] | None = None) -> Judge:
    """The judge ``name`` from a run's models.

    Args:
        load: ``load(stem) -> (model, artefact config)`` for ``RUN/models/<stem>``.
        reference_images, reference_labels: the embedding judges' reference set (the training part).
        calibration: clean calibration images and labels; an ensemble sets its member scales on them.
    """
    check_judge_name(name)
    if name == "ensemble":
        members = [build_judge(m, config, load, reference_images, reference_labels, num_classes, device=device)
                   for m in config.members]
        judge = EnsembleJudge(members, rule=config.rule)
        if calibration is not None:
            x, y = calibration
            judge.calibrate_scales(torch.from_numpy(x).to(device), torch.from_numpy(y).to(device))
        return judge
    model, cfg = load(MODEL_OF[name])
    model = model.to(device).eval()
    sha = cfg.get("weights_sha256")
    if name == "classifier":
        return ClassifierJudge(model, num_classes, weights_sha256=sha)
    if name == "abs":
        from calib.judges.generative import AbsJudge

        return AbsJudge(model, num_classes, weights_sha256=sha)
    lipschitz = None
    if name == "lipschitz":
        from calib.models.lipschitz import lipschitz_constant

        lipschitz = lipschitz_constant(model)
    return KnnJudge(model, reference_images, reference_labels, num_classes, k=config.k, lipschitz=lipschitz,
                    name=name, kind=KIND_OF[name], weights_sha256=sha, device=device)


__all__ = ["JudgeConfig", "JUDGES", "MODEL_OF", "KIND_OF", "build_judge", "check_judge_name"]
