"""The audit of adversarial examples (DESIGN.md): perceptibility, semantic class change,
same-class interpolation and the *valid adversarial example* verdict."""
from calib.audit.audit import FLAGS, AuditConfig, AuditResult, Reference, audit, build_reference
from calib.audit.interpolation import ball_has_wrong, interpolation, nearest_same_class
from calib.audit.knn import knn_labels
from calib.audit.perceptibility import perceptibility, ssim

__all__ = ["FLAGS", "AuditConfig", "AuditResult", "Reference", "audit", "build_reference", "ball_has_wrong",
           "interpolation", "nearest_same_class", "knn_labels", "perceptibility", "ssim"]
