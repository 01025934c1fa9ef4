"""Triplet embedding g trained with pytorch-metric-learning; scored by retrieval metrics over faiss.

Loss: ``TripletMarginLoss`` (L2 distance on unit vectors, margin configurable). Mining: semi-hard
``TripletMarginMiner`` by default, batch-hard (``BatchHardMiner``) as an option. Evaluation:
``AccuracyCalculator`` (precision@1, MAP@R) with the held-out part as queries and the training
part as reference, k-NN by faiss.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from calib.data import Dataset
from calib.device import resolve_device, seed_everything
from calib.errors import ConfigError
from calib.models import build_model, default_arch
from calib.models.nets import LIPSCHITZ_ARCH
from calib.models.infer import forward_batched
from calib.train.loop import TrainConfig, fit
from calib.train.result import TrainedModel, data_provenance

if TYPE_CHECKING:
    from calib.train.adversarial import AdversarialMix

log = logging.getLogger(__name__)

MINERS = ("semihard", "hard", "all")


def make_loss_and_miner(margin: float, miner: str, normalize: bool = True):
    """The pytorch-metric-learning loss and miner for ``miner`` in ``semihard | hard | all``; L2
    distance between unit-normalised embeddings, or between raw ones with ``normalize=False``."""
    from pytorch_metric_learning import distances, losses, miners

    if not margin > 0:
        raise ConfigError(f"triplet margin must be > 0; got {margin}")
    dist = distances.LpDistance(normalize_embeddings=normalize)
    loss = losses.TripletMarginLoss(margin=margin, distance=dist)
    if miner == "semihard":
        return loss, miners.TripletMarginMiner(margin=margin, type_of_triplets="semihard", distance=dist)
    if miner == "hard":
        return loss, miners.BatchHardMiner(distance=dist)
    if miner == "all":
        return loss, miners.TripletMarginMiner(margin=margin, type_of_triplets="all", distance=dist)
    raise ConfigError(f"unknown miner {miner!r}; choose one of {', '.join(MINERS)}")


def embed(model: nn.Module, images: np.ndarray, device: torch.device | str | None = None) -> np.ndarray:
    """Embeddings (N, dim) float32 of images (N,C,H,W)."""
    return forward_batched(model, images, device=device).numpy().astype(np.float32)


def retrieval_metrics(model: nn.Module, query: Dataset, reference: Dataset,
                      device: torch.device | str | None = None) -> dict[str, float]:
    """precision@1 and MAP@R of ``query`` against ``reference`` (disjoint sets), via faiss k-NN."""
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    calc = AccuracyCalculator(include=("precision_at_1", "mean_average_precision_at_r"),
                              k="max_bin_count", device=torch.device("cpu"))
    q = torch.from_numpy(embed(model, query.images, device))
    r = torch.from_numpy(embed(model, reference.images, device))
    acc = calc.get_accuracy(q, torch.from_numpy(query.labels), r, torch.from_numpy(reference.labels),
                            ref_includes_query=False)
    return {k: float(v) for k, v in acc.items()}


def train_embedding(train: Dataset, config: TrainConfig, *, validation: Dataset | None = None,
                    test: Dataset | None = None, arch: str | None = None, dim: int = 64,
                    margin: float = 0.2, miner: str = "semihard",
                    split_seed: int | None = None, adversarial: AdversarialMix | None = None,
                    width: int = 512, depth: int = 3) -> TrainedModel:
    """Train the embedding g on ``train`` with a triplet loss over mined in-batch triplets.

    Args:
        train: training part; also the retrieval reference set for evaluation.
        config: optimisation settings; ``config.seed`` fixes every random choice.
        validation: scored (precision@1 vs train) after every epoch, history only.
        test: held-out queries for the reported metrics (``test_precision_at_1``, ``test_map_at_r``).
        dim: embedding dimension (outputs are L2-normalised).
        margin: triplet margin in embedding L2 distance.
        miner: ``semihard`` (default), ``hard`` (batch-hard) or ``all``.
        adversarial: a robust triplet embedding: mix the clean triplet loss with the loss of
            anchors that maximise the embedding shift (:mod:`calib.train.adversarial`).
        arch: ``lipschitz-mlp`` trains the certified-Lipschitz embedding
            (:mod:`calib.models.lipschitz`, hidden ``width`` x ``depth``): orthogonal weights during
            training, triplet distances between raw (not normalised) embeddings, and the computed
            constant recorded in ``metrics["lipschitz_l2"]``.

    ``config.batch_size=None`` means 256, so each batch holds many positives per class to mine.
    """
    if config.batch_size is None:
        config = dataclasses.replace(config, batch_size=256)
    if dim < 1:
        raise ConfigError(f"embedding dim must be >= 1; got {dim}")
    arch = arch or default_arch(train.image_shape)
    lipschitz = arch == LIPSCHITZ_ARCH
    loss_fn, miner_fn = make_loss_and_miner(margin, miner, normalize=not lipschitz)
    gen = seed_everything(config.seed)
    spec = {"kind": "embedding", "arch": arch, "input_shape": list(train.image_shape), "dim": dim}
    if lipschitz:
        spec |= {"width": width, "depth": depth}
    model = build_model(spec)
    if lipschitz:
        from calib.models.lipschitz import orthogonalize

        orthogonalize(model)
    device = resolve_device(config.device)

    def loss_hook(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if adversarial is not None:
            from calib.train.adversarial import mixed_triplet

            return mixed_triplet(m, x, y, adversarial, loss_fn, miner_fn, gen)
        emb = m(x)
        return loss_fn(emb, y, miner_fn(emb, y))

    def evaluate(m: nn.Module) -> dict[str, float]:
        if validation is None:
            return {}
        return {"val_precision_at_1": retrieval_metrics(m, validation, train, device)["precision_at_1"]}

    t0 = time.perf_counter()
    history = fit(model, train, loss_hook, config, gen, evaluate, description="embedding")
    seconds = time.perf_counter() - t0
    metrics: dict[str, float] = {}
    if lipschitz:
        from calib.models.lipschitz import freeze, lipschitz_constant

        freeze(model)
        metrics["lipschitz_l2"] = lipschitz_constant(model)
        log.info("lipschitz embedding: computed L2 Lipschitz constant %.6f", metrics["lipschitz_l2"])
    if test is not None:
        acc = retrieval_metrics(model, test, train, device)
        metrics |= {"test_precision_at_1": acc["precision_at_1"],
                    "test_map_at_r": acc["mean_average_precision_at_r"], "num_test": len(test)}
        log.info("embedding test precision@1 %.4f, MAP@R %.4f", metrics["test_precision_at_1"],
                 metrics["test_map_at_r"])
    training = {"config": config.to_json(),
                "loss": f"TripletMarginLoss(margin={margin}, {'raw' if lipschitz else 'unit-normalised'} L2)",
                "miner": miner, "margin": margin, "history": history, "seconds": seconds,
                "adversarial": adversarial.describe() if adversarial is not None else None,
                "device": str(device)}
    return TrainedModel(model.cpu().eval(), spec, training, metrics, data_provenance(train, split_seed))
