"""Loss hooks the PGD loop maximises: per-sample losses (N,) of the candidate x'.

* :class:`ClassifierLoss`: cross-entropy or the margin ``max_{j != y} z_j - z_y`` of a classifier f;
  success = f(x') != y.
* :class:`EmbeddingShift`: ``||g(x') - g(x)||_2`` of an embedding g (no notion of success).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from calib.errors import ConfigError


class ClassifierLoss:
    """Untargeted classifier objective on f (logits), cross-entropy (``ce``) or margin (``margin``)."""

    def __init__(self, model: nn.Module, labels: torch.Tensor, kind: str = "ce") -> None:
        if kind not in ("ce", "margin"):
            raise ConfigError(f"unknown classifier loss {kind!r}; choose ce or margin")
        self.model, self.labels, self.kind = model, labels, kind
        self.modules = (model,)

    def __call__(self, x_adv: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        return self._loss(self.model(x_adv), self.labels if idx is None else self.labels[idx])

    @torch.no_grad()
    def evaluate(self, x_adv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, success) from one forward pass."""
        z = self.model(x_adv)
        return self._loss(z, self.labels), z.argmax(1) != self.labels

    def _loss(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.kind == "ce":
            return F.cross_entropy(z, y, reduction="none")
        zy = z.gather(1, y[:, None]).squeeze(1)
        other = z.masked_fill(F.one_hot(y, z.shape[1]).bool(), float("-inf")).amax(1)
        return other - zy

    @torch.no_grad()
    def success(self, x_adv: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        y = self.labels if idx is None else self.labels[idx]
        return self.model(x_adv).argmax(1) != y


class EmbeddingShift:
    """``||g(x') - g(x)||_2`` for an embedding g; the clean embeddings are computed once."""

    def __init__(self, embedding: nn.Module, x: torch.Tensor) -> None:
        self.embedding = embedding
        self.modules = (embedding,)
        with torch.no_grad():
            self.anchor = embedding(x).detach()

    def __call__(self, x_adv: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        a = self.anchor if idx is None else self.anchor[idx]
        return torch.linalg.vector_norm(self.embedding(x_adv) - a, dim=1)

    def success(self, x_adv: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        return torch.zeros(x_adv.shape[0], dtype=torch.bool, device=x_adv.device)

    @torch.no_grad()
    def evaluate(self, x_adv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(shift, no success) from one forward pass."""
        return self(x_adv), self.success(x_adv)
