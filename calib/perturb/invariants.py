"""Attack invariants, asserted on every output (not hoped): the box [0,1] and the epsilon ball.

Threat model: x' is admissible for a clean x with budget eps under norm p when
``0 <= x' <= 1`` elementwise and ``||x' - x||_p <= eps + tol``.
"""
from __future__ import annotations

import numpy as np
import torch

from calib.errors import InternalError

NORM_ORDERS = {"linf": float("inf"), "l2": 2.0, "l1": 1.0}
#: a witness found by bisection on a verdict stops this far (relative) past the last change seen, so
#: that re-asking the judge, in a batch of another size (float rounding), gives the same verdict
VERDICT_GUARD = 1e-3


class ConstraintViolation(InternalError):
    """An attack returned an example outside its box or its ball, or a certificate was beaten: a bug."""


def perturbation_norms(x: torch.Tensor, x_adv: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample ``||x_adv - x||_p`` for (N, ...) tensors, shape (N,), computed in float64."""
    if norm not in NORM_ORDERS:
        raise ValueError(f"unknown norm {norm!r}; choose one of {', '.join(NORM_ORDERS)}")
    delta = (x_adv.detach().double() - x.detach().double()).flatten(1)
    return torch.linalg.vector_norm(delta, ord=NORM_ORDERS[norm], dim=1)


def check_ball(x: torch.Tensor | np.ndarray, x_adv: torch.Tensor | np.ndarray,
               eps: torch.Tensor | np.ndarray | float, norm: str, tol: float = 1e-6,
               who: str = "attack") -> None:
    """Raise :class:`ConstraintViolation` unless every x_adv is finite, in [0,1] and within its eps.

    Args:
        x, x_adv: (N, C, H, W) clean and adversarial images.
        eps: scalar or per-sample (N,) / (N, 1, 1, 1) budgets.
    """
    x, x_adv = torch.as_tensor(x), torch.as_tensor(x_adv)
    if x.shape != x_adv.shape:
        raise ConstraintViolation(f"{who}: returned shape {tuple(x_adv.shape)} for inputs {tuple(x.shape)}")
    if not torch.isfinite(x_adv).all():
        raise ConstraintViolation(f"{who}: returned non-finite values")
    lo, hi = float(x_adv.min()), float(x_adv.max())
    if lo < 0.0 or hi > 1.0:
        raise ConstraintViolation(f"{who}: returned values outside [0,1] (range [{lo:g}, {hi:g}])")
    e = torch.as_tensor(eps, dtype=torch.float64).reshape(-1).to(x_adv.device)
    d = perturbation_norms(x, x_adv, norm)
    over = d > e + tol
    if over.any():
        i = int(over.nonzero()[0])
        budget = float(e[i] if e.numel() > 1 else e[0])
        raise ConstraintViolation(f"{who}: {int(over.sum())} example(s) outside the {norm} ball, e.g. #{i} at "
                                  f"{float(d[i]):.6g} > eps {budget:.6g}")
