"""Adversarial training (Goodfellow et al. 2015): train on the mixture

    J~(theta, x, y) = alpha * J(theta, x, y) + (1 - alpha) * J(theta, x + delta, y)

where delta is FGSM's ``eps * sign(grad_x J)`` (or a PGD ascent, an option) inside a ball whose
radius is global or per class (an epsilon table's row for the batch's labels).

For the classifier, J is the cross-entropy. For the triplet embedding ("robust triplet
embedding"), the adversarial points are *anchors that maximise the embedding shift*
``||g(x + delta) - g(x)||`` (a random start in the ball, since the shift's gradient vanishes at
delta = 0), and their triplet loss uses the clean batch as positives and negatives, which pulls
g(x + delta) toward g(x)'s class and away from others.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from calib.errors import ConfigError


@dataclass(frozen=True)
class AdversarialMix:
    """The mixture's settings.

    Attributes:
        alpha: weight of the clean loss (Goodfellow et al. use 0.5).
        eps: global radius (a float) or per-class radii (a tuple indexed by label).
        norm: ``linf`` or ``l2``.
        attack: ``fgsm`` (one full step) or ``pgd`` (``steps`` steps of 2.5 eps / steps, random start).
        steps: PGD steps.
    """

    alpha: float = 0.5
    eps: float | tuple[float, ...] = 0.3
    norm: str = "linf"
    attack: str = "fgsm"
    steps: int = 7

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"alpha must lie in [0, 1]; got {self.alpha}")
        if self.norm not in ("linf", "l2"):
            raise ConfigError(f"adversarial-training norm must be linf or l2; got {self.norm!r}")
        if self.attack not in ("fgsm", "pgd"):
            raise ConfigError(f"adversarial-training attack must be fgsm or pgd; got {self.attack!r}")
        if self.steps < 1:
            raise ConfigError("steps must be >= 1")
        vals = self.eps if isinstance(self.eps, tuple) else (self.eps,)
        if not vals or any(not (float(v) >= 0) for v in vals):
            raise ConfigError(f"eps must be >= 0; got {self.eps}")

    def eps_for(self, labels: torch.Tensor) -> torch.Tensor:
        """(N,) radii for a batch's labels."""
        if isinstance(self.eps, tuple):
            table = torch.tensor(self.eps, dtype=torch.float32, device=labels.device)
            if int(labels.max()) >= table.numel():
                raise ConfigError(f"per-class eps has {table.numel()} entries; label {int(labels.max())} found")
            return table[labels]
        return torch.full(labels.shape, float(self.eps), dtype=torch.float32, device=labels.device)

    def describe(self) -> dict[str, Any]:
        d = asdict(self)
        d["eps"] = list(self.eps) if isinstance(self.eps, tuple) else float(self.eps)
        d["budget"] = "per-class" if isinstance(self.eps, tuple) else "global"
        return d


def _seed(generator: torch.Generator | None) -> int:
    return int(torch.randint(0, 2 ** 31 - 1, (1,), generator=generator)) if generator is not None else 0


def classifier_adversarial(model: nn.Module, x: torch.Tensor, y: torch.Tensor, mix: AdversarialMix,
                           generator: torch.Generator | None = None) -> torch.Tensor:
    """FGSM/PGD examples against ``model``'s cross-entropy (the library attacks; model in eval mode)."""
    from calib.perturb.objectives import ClassifierLoss
    from calib.perturb.pgd import fgsm, pgd

    eps = mix.eps_for(y)
    obj = ClassifierLoss(model, y, "ce")
    if mix.attack == "fgsm":
        return fgsm(obj, x, eps, mix.norm, labels=y).x_adv.detach()
    return pgd(obj, x, eps, mix.norm, steps=mix.steps, labels=y, seed=_seed(generator)).x_adv.detach()


def embedding_adversarial(model: nn.Module, x: torch.Tensor, y: torch.Tensor, mix: AdversarialMix,
                          generator: torch.Generator | None = None) -> torch.Tensor:
    """Points in the ball that maximise ``||g(x') - g(x)||`` (random start, then 1 or ``steps`` steps)."""
    from calib.perturb.objectives import EmbeddingShift
    from calib.perturb.pgd import pgd

    steps = 1 if mix.attack == "fgsm" else mix.steps
    return pgd(EmbeddingShift(model, x), x, mix.eps_for(y), mix.norm, steps=steps,
               rel_step=1.0 if steps == 1 else None, labels=y, seed=_seed(generator)).x_adv.detach()


def mixed_cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, mix: AdversarialMix,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """``alpha * CE(f(x), y) + (1 - alpha) * CE(f(x_adv), y)``."""
    x_adv = classifier_adversarial(model, x, y, mix, generator)
    return mix.alpha * F.cross_entropy(model(x), y) + (1 - mix.alpha) * F.cross_entropy(model(x_adv), y)


def mixed_triplet(model: nn.Module, x: torch.Tensor, y: torch.Tensor, mix: AdversarialMix, loss_fn, miner_fn,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """``alpha * L(g(x)) + (1 - alpha) * L(anchors g(x_adv) against the clean batch)``.

    The clean term uses the run's miner; the adversarial term uses every margin-violating triplet
    (anchor g(x_adv_i), positive/negative from the clean batch, including g(x_i) itself)."""
    from pytorch_metric_learning import miners

    x_adv = embedding_adversarial(model, x, y, mix, generator)
    emb = model(x)
    adv = model(x_adv)
    clean = loss_fn(emb, y, miner_fn(emb, y))
    # every margin-violating triplet of the adversarial anchors: a semi-hard miner would skip
    # exactly the anchors the attack moved furthest (their positives are further than negatives)
    adv_miner = miners.TripletMarginMiner(margin=loss_fn.margin, type_of_triplets="all", distance=loss_fn.distance)
    robust = loss_fn(adv, y, adv_miner(adv, y, emb, y), emb, y)
    return mix.alpha * clean + (1 - mix.alpha) * robust
