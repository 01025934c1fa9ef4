"""What every adapter shares: per-class grouping for scalar-epsilon libraries, mode handling, checks."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from calib.perturb.invariants import check_ball
from calib.budgets.table import EpsTable


def require(module: str, extra: str):
    """Import an optional attack library lazily, with an error that says how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"this adapter needs {module!r}: pip install {extra}") from exc


def as_tensors(images, labels, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.as_tensor(np.asarray(images) if not torch.is_tensor(images) else images, dtype=torch.float32)
    y = torch.as_tensor(np.asarray(labels) if not torch.is_tensor(labels) else labels, dtype=torch.int64)
    if device is not None:
        x, y = x.to(device), y.to(device)
    return x, y


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def per_class(x: torch.Tensor, y: torch.Tensor, table: EpsTable, space: str, norm: str,
              attack_one: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor],
              who: str, fingerprint: str | None = None, allow_mismatch: bool = False) -> torch.Tensor:
    """Run a scalar-epsilon attack once per class present in ``y`` with that class's epsilon.

    Classes whose epsilon is 0 are returned unchanged (no library is called with eps = 0). The
    whole batch is then checked against each sample's own class budget.
    """
    eps = table.eps_for(y, space, norm, fingerprint=fingerprint, allow_mismatch=allow_mismatch)
    per_cls = table.eps(space, norm)
    out = x.clone()
    for c in torch.unique(y).tolist():
        idx = (y == c).nonzero().flatten()
        e = float(per_cls[c])
        if e > 0:
            out[idx] = attack_one(x[idx], y[idx], e).detach().to(out.dtype).to(out.device)
    check_ball(x, out, eps.to(out.device), norm, who=who)
    return out
