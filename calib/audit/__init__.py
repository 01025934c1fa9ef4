"""The audit of adversarial examples (docs/design.md): perceptibility, semantic class change,
same-class interpolation and the *valid adversarial example* verdict."""
from calib.audit.audit import FLAGS, AuditConfig, AuditResult, Reference, audit, build_reference, judge_verdicts
from calib.audit.interpolation import ball_has_wrong, interpolation, nearest_same_class
from calib.audit.perceptibility import perceptibility, ssim

__all__ = ["FLAGS", "AuditConfig", "AuditResult", "Reference", "audit", "build_reference", "judge_verdicts",
           "ball_has_wrong", "interpolation", "nearest_same_class", "perceptibility", "ssim"]
