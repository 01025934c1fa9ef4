"""Classifier f trained with cross-entropy; scored by held-out accuracy (overall and per class)."""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from calib.data import Dataset
from calib.device import resolve_device, seed_everything
from calib.models import build_model, default_arch
from calib.models.infer import forward_batched
from calib.train.loop import TrainConfig, fit
from calib.train.result import TrainedModel, data_provenance

if TYPE_CHECKING:
    from calib.train.adversarial import AdversarialMix

log = logging.getLogger(__name__)


def accuracy(model: nn.Module, data: Dataset, device: torch.device | str | None = None) -> dict[str, float]:
    """Top-1 accuracy on ``data``, and per class (keys ``accuracy``, ``accuracy/<class name>``)."""
    pred = forward_batched(model, data.images, device=device).argmax(1).numpy()
    correct = pred == data.labels
    out = {"accuracy": float(correct.mean())}
    for c, name in enumerate(data.class_names):
        out[f"accuracy/{name}"] = float(correct[data.labels == c].mean())
    return out


def train_classifier(train: Dataset, config: TrainConfig, *, validation: Dataset | None = None,
                     test: Dataset | None = None, arch: str | None = None, dropout: float = 0.25,
                     split_seed: int | None = None, adversarial: AdversarialMix | None = None) -> TrainedModel:
    """Train the classifier f on ``train`` with cross-entropy.

    Args:
        train: training part (images (N,C,H,W) in [0,1]).
        config: optimisation settings; ``config.seed`` fixes every random choice.
        validation: scored after every epoch (history only, no early stopping).
        test: held-out part for the reported metrics (``test_accuracy``, per class).
        arch: ``cnn-small`` / ``cnn`` / ``mlp``; default by image size.
        adversarial: train on Goodfellow et al.'s mixture of clean and adversarial cross-entropy
            (:class:`calib.train.adversarial.AdversarialMix`), with a global or per-class radius.

    ``config.batch_size=None`` means ``N // 40`` clipped to [32, 128]: at least ~40 steps per
    epoch on small sets (digits: 32), 128 on MNIST-size sets.
    """
    if config.batch_size is None:
        config = dataclasses.replace(config, batch_size=int(min(128, max(32, len(train) // 40))))
    gen = seed_everything(config.seed)
    spec = {"kind": "classifier", "arch": arch or default_arch(train.image_shape),
            "input_shape": list(train.image_shape), "num_classes": train.num_classes, "dropout": dropout}
    model = build_model(spec)
    device = resolve_device(config.device)

    def loss_hook(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if adversarial is not None:
            from calib.train.adversarial import mixed_cross_entropy

            return mixed_cross_entropy(m, x, y, adversarial, gen)
        return F.cross_entropy(m(x), y)

    def evaluate(m: nn.Module) -> dict[str, float]:
        return {"val_accuracy": accuracy(m, validation, device)["accuracy"]} if validation else {}

    t0 = time.perf_counter()
    history = fit(model, train, loss_hook, config, gen, evaluate, description="classifier")
    seconds = time.perf_counter() - t0
    metrics: dict[str, float] = {}
    if test is not None:
        metrics = {f"test_{k}": v for k, v in accuracy(model, test, device).items()}
        metrics["num_test"] = len(test)
        log.info("classifier test accuracy %.4f on %d samples", metrics["test_accuracy"], len(test))
    training = {"config": config.to_json(), "loss": "cross_entropy", "history": history,
                "adversarial": adversarial.describe() if adversarial is not None else None,
                "seconds": seconds, "device": str(device)}
    return TrainedModel(model.cpu().eval(), spec, training, metrics, data_provenance(train, split_seed))


def predict(model: nn.Module, images: np.ndarray, device: torch.device | str | None = None) -> np.ndarray:
    """Predicted labels (N,) for images (N,C,H,W) in [0,1]."""
    return forward_batched(model, images, device=device).argmax(1).numpy()
