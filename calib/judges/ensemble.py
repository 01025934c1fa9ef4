"""Ensembles of independent judges: fooling one member is not enough.

Rule ``any``: the class changed when any member says so (the strictest verdict). Rule ``majority``:
when more than half of the members say so. The ensemble's margin is the t-th smallest of the
members' *normalised* margins, with t = 1 for ``any`` and ``floor(n/2) + 1`` for ``majority``, so its
sign is the verdict: members' margins come in their own units (logits, embedding distances), and
each is divided by its scale (by default the median margin of correctly judged clean calibration
points, :meth:`EnsembleJudge.calibrate_scales`), which changes no member's verdict, only how scores
from different members compare (the ROC curve of the ensemble's score, and which member the attack
pushes first).

Certificate: a member without one certifies radius 0, so the ensemble certifies the t-th smallest
member radius; ``None`` when that is 0 for want of certificates.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from calib.errors import ConfigError
from calib.judges.base import Judge

RULES = ("any", "majority")


@torch.no_grad()
def clean_margins(judge: Judge, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """(N,) the judge's margins at clean points (N, C, H, W) of labels y."""
    return torch.cat([judge.margin(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def scale_of(margins: torch.Tensor) -> float:
    """A judge's margin unit: the median of its positive clean margins (1 if none)."""
    pos = margins[margins > 0]
    return float(pos.median()) if pos.numel() else 1.0


def margin_scale(judge: Judge, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """A judge's margin unit: the median margin of the clean points (N, C, H, W) it judges correctly."""
    return scale_of(clean_margins(judge, x, y, batch_size))


class EnsembleJudge(Judge):
    """Several judges combined by ``rule`` (see the module docstring).

    Args:
        members: the judges (at least 2), each with its own name.
        rule: ``any`` or ``majority``.
        scales: per-member margin scales (positive); default 1.
    """

    kind = "ensemble"

    def __init__(self, members: Sequence[Judge], *, rule: str = "any", scales: Sequence[float] | None = None,
                 name: str = "ensemble") -> None:
        if rule not in RULES:
            raise ConfigError(f"unknown ensemble rule {rule!r}; choose {', '.join(RULES)}")
        if len(members) < 2:
            raise ConfigError("an ensemble needs at least 2 member judges")
        names = [m.name for m in members]
        if len(set(names)) != len(names):
            raise ConfigError(f"ensemble members must be distinct judges; got {names}")
        self.members, self.rule, self.name = list(members), rule, name
        self.scales = [1.0] * len(members) if scales is None else [float(s) for s in scales]
        if len(self.scales) != len(members) or not all(s > 0 and np.isfinite(s) for s in self.scales):
            raise ConfigError("ensemble scales must be one positive number per member")
        self.modules = tuple(mod for m in members for mod in m.modules)
        self.num_classes = max(m.num_classes for m in members)

    @property
    def t(self) -> int:
        """How many members must say "changed" for the ensemble to say so."""
        return 1 if self.rule == "any" else len(self.members) // 2 + 1

    differentiable_logits = False  # votes

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(N, K) member votes (not differentiable); ties go to the first member's label."""
        labels = [m.label(x) for m in self.members]
        k = self.num_classes
        votes = torch.zeros(x.shape[0], k, device=x.device)
        for lab in labels:
            votes += torch.nn.functional.one_hot(lab, k).to(votes.dtype)
        return votes + 0.5 * torch.nn.functional.one_hot(labels[0], k).to(votes.dtype)

    def margin(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        ms = torch.stack([m.margin(x, y) / s for m, s in zip(self.members, self.scales)], 1)
        return ms.kthvalue(self.t, dim=1).values

    @torch.no_grad()
    def changed(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        votes = torch.stack([m.changed(x, y) for m in self.members], 1).sum(1)
        return votes >= self.t

    @torch.no_grad()
    def member_labels(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each member's label, by member name."""
        return {m.name: m.label(x) for m in self.members}

    @torch.no_grad()
    def calibrate_scales(self, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> "EnsembleJudge":
        """Set each member's scale to the median margin of the clean points it judges correctly."""
        self.scales = [margin_scale(m, x, y, batch_size) for m in self.members]
        return self

    @torch.no_grad()
    def certified_radius(self, x: torch.Tensor, y: torch.Tensor, norm: str) -> torch.Tensor | None:
        radii = [m.certified_radius(x, y, norm) for m in self.members]
        if sum(r is not None for r in radii) < len(self.members) - self.t + 1:
            return None  # the t-th smallest would be a trivial 0
        r = torch.stack([torch.zeros(x.shape[0], device=x.device, dtype=torch.float64) if v is None else v.double()
                         for v in radii], 1)
        return r.kthvalue(self.t, dim=1).values

    @property
    def lipschitz(self) -> float | None:
        return None

    def describe(self) -> dict[str, Any]:
        radii_known = sum(m.lipschitz is not None for m in self.members)
        return {"name": self.name, "kind": self.kind, "rule": self.rule,
                "certified": radii_known >= len(self.members) - self.t + 1,
                "members": [m.describe() for m in self.members], "scales": self.scales,
                "margin": f"{self.t}-th smallest normalised member margin"}
