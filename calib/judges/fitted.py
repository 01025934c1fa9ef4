"""The ``fitted`` judge: a logistic combination of other judges' standardised margins, fitted to
people's "the class changed" labels (docs/design.md, "Judges").

For member judges j with margins m_j(x, y) (each in its own units), the standardised margin is
``z_j = (m_j - c_j) / s_j`` with c_j, s_j the mean and standard deviation of judge j's margins on
the run's clean calibration points; the judge's probability that people see another class than y is
``sigmoid(b + sum_j w_j z_j)``. Its margin is ``-(b + sum_j w_j z_j)``: positive keeps y, negative
means "changed" (probability above 1/2). It is differentiable wherever the members' margins are, so
the semantic radii and the audit run on it; its label (which class, when it says "changed") is that
of its member with the largest ``|w_j|``, so FMN's targeted rows are not used (untargeted only).

What it is fitted on and how it was scored (cross-validated, never on its own training labels) lives
in its file, ``RUN/models/judges/<name>.json`` (:mod:`calib.human.fit`).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from calib.errors import ConfigError
from calib.judges.base import Judge

FORMAT = "calib-fitted-judge"
VERSION = 1


class FittedJudge(Judge):
    """``changed`` when ``b + sum_j w_j (m_j - c_j) / s_j > 0`` (see the module docstring).

    Args:
        members: the member judges, in the order of the coefficients.
        coef, intercept: the logistic model's weights w (one per member) and b.
        centres, scales: c_j and s_j (scales positive).
        name: the judge's name (its file's stem).
        doc: the fitted judge's document (for :meth:`describe`).
    """

    kind = "fitted"
    differentiable_logits = False  # its label is one member's; the margin is what is fitted

    def __init__(self, members: Sequence[Judge], coef: Sequence[float], intercept: float, centres: Sequence[float],
                 scales: Sequence[float], *, name: str = "fitted", doc: dict[str, Any] | None = None) -> None:
        if not members:
            raise ConfigError(f"fitted judge {name}: no member judges")
        if not (len(coef) == len(centres) == len(scales) == len(members)):
            raise ConfigError(f"fitted judge {name}: {len(members)} members but {len(coef)} coefficients, "
                              f"{len(centres)} centres and {len(scales)} scales")
        vals = np.array([*coef, intercept, *centres, *scales], np.float64)
        if not np.isfinite(vals).all() or min(scales) <= 0:
            raise ConfigError(f"fitted judge {name}: coefficients must be finite and scales positive")
        self.members, self.name, self.doc = list(members), name, doc or {}
        self.coef, self.intercept = [float(c) for c in coef], float(intercept)
        self.centres, self.scales = [float(c) for c in centres], [float(s) for s in scales]
        self.modules = tuple(mod for m in self.members for mod in m.modules)
        self.num_classes = max(m.num_classes for m in self.members)
        self.primary = self.members[int(np.argmax(np.abs(self.coef)))]

    def logit(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(N,) the log-odds that people see another class than y."""
        out = torch.full((x.shape[0],), self.intercept, dtype=torch.float64, device=x.device)
        for m, w, c, s in zip(self.members, self.coef, self.centres, self.scales):
            out = out + w * (m.margin(x, y).double() - c) / s
        return out

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.primary.logits(x)

    @torch.no_grad()
    def label(self, x: torch.Tensor) -> torch.Tensor:
        return self.primary.label(x)

    def margin(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -self.logit(x, y)

    @torch.no_grad()
    def changed(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.logit(x, y) > 0

    @torch.no_grad()
    def member_labels(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each member's label, by member name (the audit records them)."""
        return {m.name: m.label(x) for m in self.members}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "certified": False,
                "rule": "logistic combination of standardised member margins fitted to people's labels",
                "margin": "minus the log-odds that people see another class",
                "members": [m.describe() for m in self.members], "coef": self.coef, "intercept": self.intercept,
                "centres": self.centres, "scales": self.scales, "label_from": self.primary.name,
                "fitted_on": self.doc.get("fitted_on"), "selection": self.doc.get("selection"),
                "file_sha256": self.doc.get("file_sha256")}


__all__ = ["FittedJudge", "FORMAT", "VERSION"]
