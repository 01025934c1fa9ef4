"""Attacks on batches with per-sample budgets; every output checked against its constraints.

* :func:`pgd` / :func:`fgsm`: L-inf and L2, any loss hook (classifier CE/margin, embedding shift);
  they live in :mod:`calib.perturb` (the layer training and the semantic budgets share) and are
  re-exported here.
* :func:`embedding_pgd`: classifier PGD projected onto the embedding ball.
* :func:`embedding_shift_pgd`: the largest embedding shift inside an input ball.
* :func:`class_mixing_probe`: ``x0 + eps * sign(x1)`` for class pairs.
"""
from calib.attacks.embedding_pgd import METHODS, EmbeddingBall, embedding_pgd
from calib.perturb import (NORM_ORDERS, AttackResult, ClassifierLoss, ConstraintViolation, EmbeddingShift,
                           check_ball, eval_mode, fgsm, perturbation_norms, pgd, resolve_eps)

__all__ = ["pgd", "fgsm", "embedding_pgd", "EmbeddingBall", "METHODS", "AttackResult", "ClassifierLoss",
           "EmbeddingShift", "eval_mode", "resolve_eps", "ConstraintViolation", "check_ball", "perturbation_norms",
           "NORM_ORDERS"]
