"""The audit of adversarial examples (docs/design.md): perceptibility, semantic class change,
same-class interpolation and the *valid adversarial example* verdict."""
from calib.audit.audit import (FLAGS, AuditConfig, AuditResult, Reference, SsimThresholds, audit, build_reference,
                               judge_verdicts)
from calib.audit.interpolation import ball_has_wrong, interpolation, nearest_same_class
from calib.audit.perceptibility import perceptibility, ssim


def load_audits(run) -> dict[str, AuditResult]:
    """Every audit of a run folder (:class:`calib.runfolder.RunFolder`), by attack name.

    Raises:
        DataError: the run has no audits (it ran without attacks).
    """
    from calib.errors import DataError
    from calib.runfolder import artefacts as A

    names = run.names(A.AUDIT)
    if not names:
        raise DataError(f"{run.path} has no {A.AUDIT}/ results; run `calib run` (with attacks) first")
    return {name: AuditResult.load(run.file(A.AUDIT), name) for name in names}

__all__ = ["FLAGS", "AuditConfig", "AuditResult", "Reference", "SsimThresholds", "audit", "build_reference", "judge_verdicts",
           "load_audits",
           "ball_has_wrong", "interpolation", "nearest_same_class", "perceptibility", "ssim"]
