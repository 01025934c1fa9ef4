"""Threat-model geometry for the one PGD loop: each norm supplies its random start, its steepest-
ascent step direction and its projection onto the ball ``||delta||_p <= eps``.

All functions take per-sample budgets ``eps`` shaped (N, 1, 1, 1) and perturbations (N, C, H, W).
A zero budget gives a zero perturbation; zero or non-finite gradients give a zero step.
"""
from __future__ import annotations

import torch

from calib.errors import ConfigError

_TINY = 1e-12


def _flat_norm(t: torch.Tensor, p: float) -> torch.Tensor:
    return torch.linalg.vector_norm(t.flatten(1), ord=p, dim=1).view(-1, *([1] * (t.dim() - 1)))


class Linf:
    """``||delta||_inf <= eps``: sign steps (FGSM/PGD of Goodfellow et al.; Madry et al.), clipping."""

    name = "linf"

    @staticmethod
    def random_start(x: torch.Tensor, eps: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        u = torch.rand(x.shape, generator=gen, device="cpu").to(x.device, x.dtype)
        return (2 * u - 1) * eps

    @staticmethod
    def direction(grad: torch.Tensor) -> torch.Tensor:
        return torch.sign(torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0))

    @staticmethod
    def project(delta: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return torch.maximum(torch.minimum(delta, eps), -eps)


class L2:
    """``||delta||_2 <= eps``: normalised-gradient steps, radial projection."""

    name = "l2"

    @staticmethod
    def random_start(x: torch.Tensor, eps: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        g = torch.randn(x.shape, generator=gen, device="cpu").to(x.device, x.dtype)
        d = x[0].numel()
        r = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), generator=gen, device="cpu").to(x.device, x.dtype)
        return g / (_flat_norm(g, 2) + _TINY) * eps * r ** (1.0 / d)  # uniform in the ball

    @staticmethod
    def direction(grad: torch.Tensor) -> torch.Tensor:
        g = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
        return g / (_flat_norm(g, 2) + _TINY)

    @staticmethod
    def project(delta: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        n = _flat_norm(delta, 2)
        return delta * torch.clamp(eps / (n + _TINY), max=1.0)


NORMS = {"linf": Linf, "l2": L2}


def get_norm(name: str):
    if name not in NORMS:
        raise ConfigError(f"attacks support norms {', '.join(NORMS)}; got {name!r}")
    return NORMS[name]
