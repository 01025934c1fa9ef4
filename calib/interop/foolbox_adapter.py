"""Run foolbox 3 with an epsilon table (foolbox takes scalar epsilons: one call per class).

Threat model: L-inf (``LinfPGD``, ``FGSM``) or L2 (``L2PGD``) ball of the class budget, box [0,1]
(``bounds=(0, 1)``). foolbox's own ``rel_stepsize`` is relative to epsilon, as here.
"""
from __future__ import annotations

import torch
from torch import nn

from calib.budgets.table import EpsTable
from calib.errors import ConfigError
from calib.perturb.pgd import eval_mode
from calib.interop.common import as_tensors, model_device, per_class, require

ATTACKS = {("pgd", "linf"): "LinfPGD", ("pgd", "l2"): "L2PGD", ("fgsm", "linf"): "FGSM"}


def foolbox_attack(model: nn.Module, images, labels, table: EpsTable, *, attack: str = "pgd", norm: str = "linf",
                   steps: int = 10, rel_step: float | None = None, random_start: bool = True, seed: int = 0,
                   space: str = "input", fingerprint: str | None = None,
                   allow_mismatch: bool = False) -> torch.Tensor:
    """Adversarial examples (N, C, H, W): foolbox's clipped outputs, grouped by class."""
    fb = require("foolbox", "foolbox")
    key = (attack.lower(), norm)
    if key not in ATTACKS:
        raise ConfigError(f"foolbox adapter supports {sorted(ATTACKS)}; got {key}")
    rel = rel_step if rel_step is not None else 2.5 / steps
    x, y = as_tensors(images, labels, model_device(model))
    torch.manual_seed(seed)
    with eval_mode(model):
        fmodel = fb.PyTorchModel(model, bounds=(0.0, 1.0), device=x.device)

        def one(xc: torch.Tensor, yc: torch.Tensor, eps: float) -> torch.Tensor:
            if key[0] == "fgsm":
                atk = fb.attacks.FGSM(random_start=False)
            else:
                atk = getattr(fb.attacks, ATTACKS[key])(rel_stepsize=rel, steps=steps, random_start=random_start)
            _, clipped, _ = atk(fmodel, xc, yc, epsilons=eps)
            return clipped

        return per_class(x, y, table, space, norm, one, f"foolbox.{ATTACKS[key]}", fingerprint, allow_mismatch)
