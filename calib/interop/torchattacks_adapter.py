"""Run torchattacks with an epsilon table (torchattacks takes one scalar eps: one call per class).

Threat model: L-inf (``PGD``, ``FGSM``) or L2 (``PGDL2``) ball of the sample's class budget, box
[0,1]. Step size is relative to epsilon (``alpha = rel_step * eps``; default 2.5 / steps, Madry et al.).
"""
from __future__ import annotations

import torch
from torch import nn

from calib.budgets.table import EpsTable
from calib.errors import ConfigError
from calib.perturb.pgd import eval_mode
from calib.interop.common import as_tensors, model_device, per_class, require

ATTACKS = {("pgd", "linf"): "PGD", ("pgd", "l2"): "PGDL2", ("fgsm", "linf"): "FGSM"}


def torchattacks_attack(model: nn.Module, images, labels, table: EpsTable, *, attack: str = "pgd",
                        norm: str = "linf", steps: int = 10, rel_step: float | None = None,
                        random_start: bool = True, seed: int = 0, space: str = "input",
                        fingerprint: str | None = None, allow_mismatch: bool = False) -> torch.Tensor:
    """Adversarial examples (N, C, H, W) from torchattacks ``PGD`` / ``PGDL2`` / ``FGSM``.

    Args:
        model: classifier taking [0,1] images, returning logits.
        images: (N, C, H, W) in [0,1]; labels: (N,) true labels (also select each sample's eps).
        table: epsilon table; ``space``/``norm`` choose the budget column.
        seed: seeds torch's RNG (torchattacks' random start uses it).
    """
    ta = require("torchattacks", "torchattacks (pip install --no-deps torchattacks if torchvision is absent)")
    key = (attack.lower(), norm)
    if key not in ATTACKS:
        raise ConfigError(f"torchattacks adapter supports {sorted(ATTACKS)}; got {key}")
    cls = getattr(ta, ATTACKS[key])
    rel = rel_step if rel_step is not None else 2.5 / steps
    x, y = as_tensors(images, labels, model_device(model))
    torch.manual_seed(seed)

    def one(xc: torch.Tensor, yc: torch.Tensor, eps: float) -> torch.Tensor:
        if key[0] == "fgsm":
            atk = cls(model, eps=eps)
        else:
            atk = cls(model, eps=eps, alpha=rel * eps, steps=steps, random_start=random_start)
        return atk(xc, yc)

    with eval_mode(model):
        return per_class(x, y, table, space, norm, one, f"torchattacks.{ATTACKS[key]}", fingerprint, allow_mismatch)
