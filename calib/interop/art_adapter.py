"""Run ART (adversarial-robustness-toolbox) with an epsilon table.

ART accepts per-sample budgets directly: ``eps`` and ``eps_step`` as arrays shaped (N, 1, 1, 1)
(what :meth:`EpsTable.eps_for` returns), so without a random start the whole batch goes through
in one call. ART 1.20's random initialisation (``art.utils.random_sphere``) cannot take array
radii (L-inf broadcasts them to the wrong shape; L2/L1 raise NotImplementedError), so with
``random_start=True`` the adapter calls ART once per class with that class's scalar epsilon.
Threat model: L-inf / L2 / L1 ball of each sample's class budget, box [0,1] (``clip_values``).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from calib.perturb.invariants import check_ball
from calib.budgets.table import EpsTable
from calib.errors import ConfigError
from calib.perturb.pgd import eval_mode
from calib.interop.common import model_device, require

NORMS = {"linf": np.inf, "l2": 2, "l1": 1}


def art_classifier(model: nn.Module, input_shape: tuple[int, ...], num_classes: int):
    """Wrap a [0,1]-input PyTorch classifier as an ART ``PyTorchClassifier``."""
    require("art", "adversarial-robustness-toolbox")
    from art.estimators.classification import PyTorchClassifier

    dev = model_device(model)
    return PyTorchClassifier(model=model, loss=nn.CrossEntropyLoss(), input_shape=tuple(input_shape),
                             nb_classes=num_classes, clip_values=(0.0, 1.0),
                             device_type="gpu" if dev.type == "cuda" else "cpu")


def art_attack(model: nn.Module, images, labels, table: EpsTable, *, attack: str = "pgd", norm: str = "linf",
               steps: int = 10, rel_step: float | None = None, random_start: bool = True, batch_size: int = 256,
               seed: int = 0, space: str = "input", fingerprint: str | None = None,
               allow_mismatch: bool = False) -> torch.Tensor:
    """Adversarial examples (N, C, H, W) float32 from ART ``ProjectedGradientDescent`` or
    ``FastGradientMethod``: per-sample ``eps``/``eps_step`` arrays (N, 1, 1, 1) in one call, or one
    call per class when PGD uses a random start (see the module docstring).

    Returns a float32 tensor, like every adapter (on ``images``'s device when it is a tensor, else on
    the CPU; ART itself works on numpy). Samples whose class budget is 0 are returned unchanged.
    """
    require("art", "adversarial-robustness-toolbox")
    from art.attacks.evasion import FastGradientMethod, ProjectedGradientDescent

    if norm not in NORMS:
        raise ConfigError(f"ART adapter norms: {', '.join(NORMS)}; got {norm!r}")
    x = np.asarray(images.detach().cpu() if torch.is_tensor(images) else images, dtype=np.float32)
    y = np.asarray(labels.detach().cpu() if torch.is_tensor(labels) else labels, dtype=np.int64)
    eps = table.eps_for(y, space, norm, as_tensor=False, fingerprint=fingerprint, allow_mismatch=allow_mismatch)
    rel = rel_step if rel_step is not None else 2.5 / steps
    out = x.copy()
    live = eps.reshape(-1) > 0
    if attack not in ("pgd", "fgm", "fgsm"):
        raise ConfigError(f"ART adapter attacks: pgd, fgm; got {attack!r}")
    name = "ProjectedGradientDescent" if attack == "pgd" else "FastGradientMethod"
    if live.any():
        clf = art_classifier(model, x.shape[1:], len(table.class_names))
        np.random.seed(seed)  # ART's random initialisation draws from numpy's global RNG
        torch.manual_seed(seed)

        def run(rows: np.ndarray, e: np.ndarray | float) -> None:
            if attack == "pgd":
                atk = ProjectedGradientDescent(clf, norm=NORMS[norm], eps=e, eps_step=rel * e, max_iter=steps,
                                               num_random_init=1 if random_start else 0, batch_size=batch_size,
                                               verbose=False)
            else:
                atk = FastGradientMethod(clf, norm=NORMS[norm], eps=e, eps_step=e, batch_size=batch_size)
            out[rows] = atk.generate(x=x[rows], y=y[rows]).astype(np.float32)

        with eval_mode(model):
            if attack == "pgd" and random_start:
                for c in np.unique(y[live]):
                    rows = live & (y == c)
                    run(rows, float(eps[rows][0, 0, 0, 0]))
            else:
                run(live, eps[live])
    check_ball(x, out, eps, norm, tol=1e-6 if norm != "l1" else 1e-4, who=f"art.{name}")
    return torch.from_numpy(out).to(images.device if torch.is_tensor(images) else "cpu")
