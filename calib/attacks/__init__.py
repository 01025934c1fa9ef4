"""Attacks and their invariants (box [0,1], epsilon ball), checked on every output."""
from calib.attacks.invariants import NORM_ORDERS, ConstraintViolation, check_ball, perturbation_norms

__all__ = ["ConstraintViolation", "check_ball", "perturbation_norms", "NORM_ORDERS"]
