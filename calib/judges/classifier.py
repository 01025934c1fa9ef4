"""The classifier judge: the attacked classifier f itself, the baseline every other judge must beat."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from calib.judges.base import Judge, top_other


class ClassifierJudge(Judge):
    """Label ``argmax f(x)``; margin ``f(x)_y - max_{j != y} f(x)_j`` in logits. No certificate.

    Args:
        model: f, (N, C, H, W) in [0,1] -> logits (N, K).
        num_classes: K.
        name: the judge's name (default ``classifier``).
        weights_sha256: provenance of f's weights.
    """

    kind = "classifier"

    def __init__(self, model: nn.Module, num_classes: int, *, name: str = "classifier",
                 weights_sha256: str | None = None) -> None:
        self.model, self.num_classes, self.name, self.weights_sha256 = model, num_classes, name, weights_sha256
        self.modules = (model,)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def margin(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        z = self.model(x)
        return z.gather(1, y[:, None]).squeeze(1) - top_other(z, y)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "rule": "argmax of f's logits", "margin": "logit margin",
                "weights_sha256": self.weights_sha256}
