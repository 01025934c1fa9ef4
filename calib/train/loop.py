"""The one training loop: seeded shuffling and augmentation, Adam + cosine schedule, progress.

Classifier and embedding training supply only a loss hook and an evaluation hook.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from calib.data import Dataset
from calib.device import resolve_device
from calib.errors import ConfigError
from calib.progress import progress

log = logging.getLogger(__name__)

LossHook = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
EvalHook = Callable[[nn.Module], dict[str, float]]


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings shared by both models.

    Attributes:
        epochs: passes over the training part.
        batch_size: samples per step (``None``: each model's default, see its trainer).
        lr: Adam learning rate (cosine-annealed to 0 over the run).
        weight_decay: Adam L2 penalty.
        max_shift: augmentation by random translation of up to this many pixels (0 = off;
            ``None``: :func:`default_shift`, 2 for images of 16 px and more on training parts under
            20,000 images, else 0).
        augment: natural, class-preserving augmentations after the shift (:mod:`calib.train.augment`:
            ``affine``, ``elastic``, ``thickness``); none by default.
        seed: fixes weight init, shuffling, augmentation and dropout; equal seeds on CPU give
            bit-identical weights.
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``.
        progress: show a progress bar with ETA.
    """

    epochs: int = 10
    batch_size: int | None = None
    lr: float = 1e-3
    weight_decay: float = 0.0
    max_shift: int | None = None
    augment: tuple[str, ...] = ()
    seed: int = 0
    device: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1; got {self.epochs}")
        if self.batch_size is not None and self.batch_size < 2:
            raise ConfigError(f"batch_size must be >= 2; got {self.batch_size}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0; got {self.lr}")
        if self.weight_decay < 0 or (self.max_shift is not None and self.max_shift < 0):
            raise ConfigError("weight_decay and max_shift must be >= 0")
        from calib.train.augment import Augment

        Augment(tuple(self.augment))  # validates the names

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("progress")
        d["threads"] = torch.get_num_threads()  # results depend on it in the last bits: recorded
        if not d["augment"]:
            d.pop("augment")  # the key of a run without augmentation is what it always was
        return d


#: shift augmentation by default only below this many training images (see :func:`default_shift`)
SHIFT_MAX_TRAIN = 20_000


def default_shift(train: Dataset) -> int:
    """The default ``max_shift``: 2 px on images of 16 px and more with fewer than
    :data:`SHIFT_MAX_TRAIN` training images, else 0. A small set gains from translated copies; a large
    one of centred objects trains better without them in the few epochs a CPU run affords (Fashion-MNIST
    70k, embedding precision@1 after 8 epochs: 0.889 with shifts of 2 px, 0.905 without)."""
    return 2 if min(train.image_shape[1:]) >= 16 and len(train) < SHIFT_MAX_TRAIN else 0


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image in (N, C, H, W) by its own random offset in [-max_shift, max_shift]^2.

    Vacated pixels are 0 (background), so outputs stay in [0,1].
    """
    if max_shift <= 0:
        return x
    n, _, h, w = x.shape
    s = max_shift
    padded = torch.nn.functional.pad(x, (s, s, s, s)).permute(0, 2, 3, 1)  # N, H+2s, W+2s, C
    dy = torch.randint(0, 2 * s + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * s + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, :]
    out = padded[torch.arange(n)[:, None, None], rows, cols]  # N, H, W, C
    return out.permute(0, 3, 1, 2).contiguous()


def fit(model: nn.Module, train: Dataset, loss_hook: LossHook, config: TrainConfig,
        generator: torch.Generator, evaluate: EvalHook | None = None,
        description: str = "train") -> list[dict[str, float]]:
    """Train ``model`` in place on ``train``; returns per-epoch history (loss, eval metrics, seconds).

    ``generator`` (from :func:`calib.device.seed_everything`) drives shuffling and augmentation.
    """
    if config.batch_size is None:
        raise ConfigError("fit() needs a concrete batch_size; the trainers fill in their default")
    device = resolve_device(config.device)
    model.to(device)
    from calib.distributed import world

    w = world()
    net: nn.Module = model
    if w.parallel:  # the same global batch, split over ranks; gradients averaged (docs/design.md)
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        if not w.leader:
            evaluate = None  # only the leader reports
    x_all = torch.from_numpy(train.images)
    y_all = torch.from_numpy(train.labels)
    n = len(train)
    steps_per_epoch = max(1, -(-n // config.batch_size))
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.epochs * steps_per_epoch)
    max_shift = default_shift(train) if config.max_shift is None else config.max_shift
    augment = None
    if config.augment:
        from calib.train.augment import Augment

        augment = Augment(tuple(config.augment))
    history: list[dict[str, float]] = []
    with progress(config.progress) as bar:
        task = bar.add_task(description, total=config.epochs * steps_per_epoch, status="")
        for epoch in range(config.epochs):
            t0 = time.perf_counter()
            model.train()
            perm = torch.randperm(n, generator=generator)
            total, count = 0.0, 0
            for start in range(0, n, config.batch_size):
                idx = perm[start:start + config.batch_size]
                if idx.numel() < 2 * w.size:
                    bar.advance(task)
                    continue
                xb = random_shift(x_all[idx], max_shift, generator)
                if augment is not None:
                    xb = augment(xb, generator)
                yb = y_all[idx]
                if w.parallel:  # every rank draws the whole batch's augmentation, then keeps its rows (copied
                    # to a standard layout: a strided view made convolutions take channels-last kernels, whose
                    # weight gradients DistributedDataParallel's buckets then had to copy, with a warning per step)
                    xb, yb, idx = xb[w.rank::w.size].contiguous(), yb[w.rank::w.size], idx[w.rank::w.size]
                xb, yb = xb.to(device), yb.to(device)
                loss = loss_hook(net, xb, yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * idx.numel()
                count += idx.numel()
                bar.advance(task)
            record = {"epoch": epoch + 1, "loss": total / max(count, 1)}
            if evaluate is not None:
                record.update(evaluate(model))
            record["seconds"] = time.perf_counter() - t0
            history.append(record)
            status = "  ".join(f"{k}={v:.4f}" for k, v in record.items() if k not in ("epoch", "seconds"))
            bar.update(task, status=status)
            log.info("%s epoch %d/%d %s", description, epoch + 1, config.epochs, status)
    model.eval()
    return history
