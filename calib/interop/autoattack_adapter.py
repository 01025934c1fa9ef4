"""Run AutoAttack (Croce & Hein 2020; the ``pyautoattack`` package) with an epsilon table.

AutoAttack takes one scalar epsilon: one run per class. ``version="standard"`` is the full
ensemble (APGD-CE, APGD-T, FAB-T, Square); ``version="custom"`` with ``attacks=[...]`` runs a subset.
Threat model: L-inf / L2 / L1 ball of the class budget, box [0,1].
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from calib.budgets.table import EpsTable
from calib.errors import ConfigError
from calib.perturb.pgd import eval_mode
from calib.interop.common import as_tensors, model_device, per_class, require

NORMS = {"linf": "Linf", "l2": "L2", "l1": "L1"}


def autoattack_attack(model: nn.Module, images, labels, table: EpsTable, *, norm: str = "linf",
                      version: str = "standard", attacks: list[str] | None = None, batch_size: int = 250,
                      seed: int = 0, space: str = "input", fingerprint: str | None = None,
                      allow_mismatch: bool = False) -> torch.Tensor:
    """Adversarial examples (N, C, H, W) from AutoAttack, one evaluation per class budget."""
    aa = require("pyautoattack", "pyautoattack")
    if norm not in NORMS:
        raise ConfigError(f"AutoAttack norms: {', '.join(NORMS)}; got {norm!r}")
    x, y = as_tensors(images, labels, model_device(model))
    logging.getLogger("auto-attack").setLevel(logging.WARNING)

    def one(xc: torch.Tensor, yc: torch.Tensor, eps: float) -> torch.Tensor:
        runner = aa.AutoAttack(model, norm=NORMS[norm], eps=eps, version=version, seed=seed, device=x.device,
                               attacks=attacks if version == "custom" else None)
        runner.verbose = False
        x_adv, _ = runner.run_standard_evaluation(xc, yc, batch_size=batch_size)  # (images, predictions)
        return x_adv

    with eval_mode(model):
        return per_class(x, y, table, space, norm, one, f"autoattack.{version}", fingerprint, allow_mismatch)
