"""The judge interface: who decides "the class changed" (docs/design.md, "Judges").

A judge maps images (N, C, H, W) in [0,1] to a class and, given the class y a perturbed image
should keep, to a *margin* in the judge's own space: positive when the judge still sees y, negative
when it sees another class. Its negation is the continuous "class changed" score, so agreement with
people can be measured as ROC AUC and not only at one threshold. Where the judge has a known
Lipschitz constant, :meth:`Judge.certified_radius` gives a radius in input space inside which its
label provably stays y.

Every method is batched, takes tensors on the judge's device and is differentiable where noted, so
the attacks that estimate a judge's robustness radius (:mod:`calib.budgets.semantic`) ascend
``score`` with the same PGD loop as every other attack.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import nn

from calib.errors import ConfigError

#: input norms a certificate can be stated in (L-inf via ||delta||_2 <= sqrt(n) ||delta||_inf)
CERT_NORMS = ("l2", "linf")


class Judge(ABC):
    """Base class: subclasses implement :meth:`logits` and :meth:`margin`; the rest follows.

    Attributes:
        name: the judge's name in tables and reports (``knn``, ``classifier``, ...).
        kind: its kind (``classifier``, ``knn``, ``robust``, ``lipschitz``, ``ensemble``).
        modules: the networks it runs (put in eval mode by the attacks).
        num_classes: K.
        differentiable_logits: :meth:`logits` carries a gradient (a minimum-norm attack may then target
            one class at a time); a vote does not.
    """

    num_classes: int = 0
    differentiable_logits: bool = True
    name: str = "judge"
    kind: str = "judge"
    modules: tuple[nn.Module, ...] = ()

    # ---- what subclasses implement -------------------------------------------------------------
    @abstractmethod
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(N, K) class scores whose argmax is the judge's label; differentiable."""

    @abstractmethod
    def margin(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(N,) margin of class ``y`` in the judge's own units: > 0 keeps y, < 0 changes it;
        differentiable (the attacks ascend ``-margin``)."""

    # ---- derived -------------------------------------------------------------------------------
    @torch.no_grad()
    def label(self, x: torch.Tensor) -> torch.Tensor:
        """(N,) the judge's class."""
        return self.logits(x).argmax(1)

    def score(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(N,) the "class changed" score ``-margin``: > 0 means the judge sees another class than y."""
        return -self.margin(x, y)

    @torch.no_grad()
    def changed(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(N,) bool: the judge's verdict that x does not show class y."""
        return self.label(x) != y

    @property
    def lipschitz(self) -> float | None:
        """The judge's input -> own-space Lipschitz constant in L2, if known (else ``None``)."""
        return None

    def certified_radius(self, x: torch.Tensor, y: torch.Tensor, norm: str) -> torch.Tensor | None:
        """(N,) input radius in ``norm`` within which the label provably stays y (0 where it is not
        y already), or ``None`` when the judge has no certificate."""
        return None

    def describe(self) -> dict[str, Any]:
        """JSON-ready description (name, kind, settings, weights hashes) for tables and reports."""
        return {"name": self.name, "kind": self.kind, "certified": self.lipschitz is not None}

    def to(self, device: str | torch.device) -> "Judge":
        for m in self.modules:
            m.to(device)
        return self


def l2_to_norm(radius_l2: torch.Tensor, norm: str, n_inputs: int) -> torch.Tensor:
    """An L2 radius as a radius in ``norm``: ``||delta||_2 <= sqrt(n) ||delta||_inf``, so an L2
    certificate r certifies the L-inf ball of radius r / sqrt(n)."""
    if norm == "l2":
        return radius_l2
    if norm == "linf":
        return radius_l2 / math.sqrt(n_inputs)
    raise ConfigError(f"certificates are stated in {', '.join(CERT_NORMS)}; got {norm!r}")


def top_other(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(N,) the largest entry of each row of ``z`` (N, K) other than column ``y``."""
    return z.masked_fill(torch.nn.functional.one_hot(y, z.shape[1]).bool(), float("-inf")).amax(1)
