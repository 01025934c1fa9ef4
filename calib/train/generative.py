"""The ``abs`` judge's class models: one VAE per class (:mod:`calib.models.vae`), each trained on its
class's images of the training part by the sampled ELBO; scored by held-out accuracy of the
"class whose model explains the image best" rule (overall and per class) and by the held-out ELBO of
each image under its own class's model (bits per pixel)."""
from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np
import torch
from torch import nn

from calib.data import Dataset
from calib.device import resolve_device, seed_everything
from calib.models import build_model
from calib.models.infer import forward_batched
from calib.models.vae import default_vae_arch
from calib.train.loop import TrainConfig, fit
from calib.train.result import TrainedModel, data_provenance

log = logging.getLogger(__name__)


def elbo_scores(model: nn.Module, images: np.ndarray, device: torch.device | str | None = None) -> np.ndarray:
    """(N, K) deterministic ELBOs (nats) of images (N, C, H, W) under each class's model."""
    return forward_batched(model, images, batch_size=512, device=device).numpy().astype(np.float64)


def generative_metrics(model: nn.Module, data: Dataset, device: torch.device | str | None = None) -> dict[str, float]:
    """``accuracy`` (argmax ELBO == label), per class, and the mean own-class ELBO in bits per pixel."""
    e = elbo_scores(model, data.images, device)
    pred = e.argmax(1)
    own = e[np.arange(len(e)), data.labels]
    out = {"accuracy": float((pred == data.labels).mean()),
           "bits_per_pixel": float(-own.mean() / (np.prod(data.image_shape) * np.log(2.0)))}
    for c, name in enumerate(data.class_names):
        out[f"accuracy/{name}"] = float((pred[data.labels == c] == c).mean())
    return out


def train_abs(train: Dataset, config: TrainConfig, *, test: Dataset | None = None, validation: Dataset | None = None,
              latent: int = 8, width: int = 16, arch: str | None = None,
              split_seed: int | None = None) -> TrainedModel:
    """Train the K class VAEs on ``train`` (each on its own class; one shared, seeded loop).

    Args:
        train: the training part (images (N, C, H, W) in [0,1], labels (N,)).
        config: optimisation (``batch_size=None``: 128, or N // 20 on small sets).
        test: held-out part for the reported metrics (``test_accuracy``, ``test_bits_per_pixel``).
        validation: scored after every epoch (history only).
        latent, width, arch: the VAEs (:class:`calib.models.vae.ClassVAEs`).
    """
    if config.batch_size is None:
        config = dataclasses.replace(config, batch_size=int(min(128, max(32, len(train) // 20))))
    gen = seed_everything(config.seed)
    spec = {"kind": "abs", "arch": arch or default_vae_arch(train.image_shape), "input_shape": list(train.image_shape),
            "num_classes": train.num_classes, "latent": latent, "width": width}
    model = build_model(spec)
    device = resolve_device(config.device)

    def loss_hook(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return m(x, y).mean()

    def evaluate(m: nn.Module) -> dict[str, float]:
        if validation is None:
            return {}
        r = generative_metrics(m, validation, device)
        return {"val_accuracy": r["accuracy"], "val_bits_per_pixel": r["bits_per_pixel"]}

    t0 = time.perf_counter()
    history = fit(model, train, loss_hook, config, gen, evaluate, description="abs (class VAEs)")
    seconds = time.perf_counter() - t0
    metrics: dict[str, float] = {}
    if test is not None:
        metrics = {f"test_{k}": v for k, v in generative_metrics(model, test, device).items()}
        metrics["num_test"] = len(test)
        log.info("abs: test accuracy %.4f, %.4f bits per pixel on %d samples", metrics["test_accuracy"],
                 metrics["test_bits_per_pixel"], len(test))
    training = {"config": config.to_json(), "loss": "negative ELBO of the image's own class model (one sample)",
                "history": history, "seconds": seconds, "device": str(device)}
    return TrainedModel(model.cpu().eval(), spec, training, metrics, data_provenance(train, split_seed))
