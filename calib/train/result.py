"""What a training run returns, and how it becomes an artefact on disk."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from calib.data import Dataset
from calib.models import save_model, weights_hash


@dataclass
class TrainedModel:
    """A trained network with its architecture spec, training record and held-out metrics."""

    model: nn.Module
    spec: dict[str, Any]
    training: dict[str, Any]
    metrics: dict[str, Any]
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def weights_sha256(self) -> str:
        return weights_hash(self.model.state_dict())

    def save(self, path: str | os.PathLike[str]) -> dict[str, Any]:
        """Write ``path.safetensors`` + ``path.json``; returns the JSON config."""
        return save_model(self.model, self.spec, path, training=self.training, metrics=self.metrics,
                          data=self.data)


def data_provenance(train: Dataset, splits_seed: int | None = None) -> dict[str, Any]:
    """Provenance of the training data: name, fingerprints, classes, split seed."""
    return {"dataset": train.name.split(":")[0], "train_fingerprint": train.fingerprint,
            "data_fingerprint": train.source_fingerprint or train.fingerprint,
            "classes": list(train.class_names), "input_shape": list(train.image_shape),
            "num_train": len(train), "split_seed": splits_seed}
