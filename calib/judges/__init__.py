"""Judges: who decides "the class changed" (docs/design.md, "Judges").

Each judge gives, per image, a label and a margin in its own space (its negation is the continuous
"class changed" score), and a certified input radius where it has a Lipschitz certificate. The
audit's "class changed" verdict and the semantic budgets both ask the run's judge.
"""
from calib.judges.base import CERT_NORMS, Judge, l2_to_norm
from calib.judges.classifier import ClassifierJudge
from calib.judges.ensemble import RULES, EnsembleJudge
from calib.judges.knn import KnnJudge
from calib.judges.registry import JUDGES, KIND_OF, MODEL_OF, JudgeConfig, build_judge, check_judge_name

__all__ = ["Judge", "ClassifierJudge", "KnnJudge", "EnsembleJudge", "JudgeConfig", "build_judge", "JUDGES",
           "MODEL_OF", "KIND_OF", "RULES", "CERT_NORMS", "l2_to_norm", "check_judge_name"]
