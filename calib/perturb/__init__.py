"""Perturbations: norms and balls, the batched PGD/FGSM loop, loss hooks, and the invariant checks.

The lowest layer that perturbs inputs, shared by adversarial training (``calib.train``), the judges'
robustness radii (``calib.budgets.semantic``), the attacks (``calib.attacks``) and the audit. It
imports nothing from calib but errors: every caller sits above it.

* :func:`pgd` / :func:`fgsm`: L-inf and L2, per-sample budgets, any loss hook; every output checked;
* :class:`ClassifierLoss`, :class:`EmbeddingShift`: the loss hooks;
* :func:`check_ball`, :func:`perturbation_norms`, :class:`ConstraintViolation` (a bug when raised).
"""
from calib.perturb.invariants import NORM_ORDERS, ConstraintViolation, check_ball, perturbation_norms
from calib.perturb.objectives import ClassifierLoss, EmbeddingShift
from calib.perturb.pgd import AttackResult, eval_mode, fgsm, pgd, resolve_eps

__all__ = ["pgd", "fgsm", "AttackResult", "ClassifierLoss", "EmbeddingShift", "eval_mode", "resolve_eps",
           "ConstraintViolation", "check_ball", "perturbation_norms", "NORM_ORDERS"]
