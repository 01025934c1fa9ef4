"""Network architectures: a classifier f and an embedding g sharing one convolutional trunk design.

Both take images in the box [0,1] directly (no external normalisation), shape (N, C, H, W), so an
attack's epsilon is in the same units as the data.

Architectures (``arch``):
    ``cnn-small``  for small images (< 16 px, e.g. 8x8 digits): 2 conv (32, 64) + pool + FC 128.
    ``cnn``        for 16 to 31 px (28x28 MNIST family): 4 conv (32, 32, 64, 64) + 2 pools + FC 128.
    ``cnn-gap``    from 32 px up (CIFAR-like 32x32, 64x64): 5 padded conv (32, 32, 64, 64, 128), each with
                   batch norm, 2 pools, then global average pooling, so the head has 128 inputs whatever
                   the image size. Batch norm is what lets a pooled trunk train in a few epochs (tinted
                   Fashion-MNIST 3x32x32, 6k images: test accuracy 0.72 after 20 epochs without it, 0.81
                   after 5 with it); attacks and inference run it in eval mode (running statistics,
                   which the cosine learning-rate schedule lets settle by the last epoch).
    ``mlp``        any size: one hidden layer of 256 + FC 128 (a different architecture family,
                   e.g. the second model of the transferability experiment).
    ``lipschitz-mlp``  embeddings only: orthogonal linear layers and MaxMin activations, with a
                   computed L2 Lipschitz constant (:mod:`calib.models.lipschitz`); not unit-normalised.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from calib.errors import ArtefactError, ConfigError


def _small_trunk(in_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(),
    )


def _mnist_trunk(in_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, 32, 3), nn.ReLU(),
        nn.Conv2d(32, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3), nn.ReLU(),
        nn.Conv2d(64, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
    )


def _gap_trunk(in_channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip((in_channels, 32, 32, 64, 64), (32, 32, 64, 64, 128))):
        layers += [nn.Conv2d(a, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU()]
        if i in (1, 3):
            layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())


def _mlp_trunk(input_shape: tuple[int, int, int]) -> nn.Sequential:
    n = input_shape[0] * input_shape[1] * input_shape[2]
    return nn.Sequential(nn.Flatten(), nn.Linear(n, 256), nn.ReLU())


TRUNKS: dict[str, Callable[[int], nn.Sequential]] = {"cnn-small": _small_trunk, "cnn": _mnist_trunk,
                                                     "cnn-gap": _gap_trunk}
ARCHS = (*TRUNKS, "mlp")
#: the certified-Lipschitz embedding (:mod:`calib.models.lipschitz`), embeddings only
LIPSCHITZ_ARCH = "lipschitz-mlp"
HIDDEN = 128


def default_arch(input_shape: tuple[int, int, int]) -> str:
    """By the smaller side: ``cnn-small`` below 16 px, ``cnn`` below 32 px, else ``cnn-gap``; any
    number of channels (1 grey, 3 colour)."""
    side = min(input_shape[1:])
    return "cnn-small" if side < 16 else "cnn" if side < 32 else "cnn-gap"


def _trunk(arch: str, input_shape: tuple[int, int, int]) -> tuple[nn.Sequential, int]:
    if arch not in ARCHS:
        raise ConfigError(f"unknown architecture {arch!r}; choose one of {sorted(ARCHS)}")
    trunk = _mlp_trunk(input_shape) if arch == "mlp" else TRUNKS[arch](input_shape[0])
    with torch.no_grad():
        try:
            n_flat = trunk(torch.zeros(1, *input_shape)).shape[1]
        except RuntimeError as exc:
            raise ConfigError(f"architecture {arch!r} does not fit input shape {tuple(input_shape)}") from exc
    return trunk, int(n_flat)


class Classifier(nn.Module):
    """Image classifier f: (N, C, H, W) in [0,1] -> logits (N, K)."""

    def __init__(self, *, arch: str, input_shape: tuple[int, int, int], num_classes: int,
                 dropout: float = 0.25) -> None:
        super().__init__()
        trunk, n_flat = _trunk(arch, input_shape)
        self.trunk = trunk
        self.head = nn.Sequential(nn.Linear(n_flat, HIDDEN), nn.ReLU(), nn.Dropout(dropout),
                                  nn.Linear(HIDDEN, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))


class EmbeddingNet(nn.Module):
    """Embedding g: (N, C, H, W) in [0,1] -> unit-norm vectors (N, dim); L2 distance = dissimilarity."""

    def __init__(self, *, arch: str, input_shape: tuple[int, int, int], dim: int = 64) -> None:
        super().__init__()
        trunk, n_flat = _trunk(arch, input_shape)
        self.trunk = trunk
        self.head = nn.Sequential(nn.Linear(n_flat, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(self.trunk(x)), p=2, dim=1)


def build_model(spec: dict) -> nn.Module:
    """Instantiate a network from its JSON spec (``kind``, ``arch``, ``input_shape``, sizes).

    Raises:
        ArtefactError: the spec is not one calib can build.
    """
    if isinstance(spec, dict) and spec.get("kind") == "external":
        from calib.models.external import rebuild

        return rebuild(spec)
    try:
        kind, arch = spec["kind"], spec["arch"]
        shape = tuple(int(s) for s in spec["input_shape"])
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"input_shape must be (C, H, W); got {spec['input_shape']}")
        if kind == "classifier":
            return Classifier(arch=arch, input_shape=shape, num_classes=int(spec["num_classes"]),
                              dropout=float(spec.get("dropout", 0.25)))
        if kind == "embedding" and arch == LIPSCHITZ_ARCH:
            from calib.models.lipschitz import LipschitzEmbedding

            return LipschitzEmbedding(input_shape=shape, width=int(spec["width"]), depth=int(spec["depth"]),
                                      dim=int(spec["dim"]))
        if kind == "embedding":
            return EmbeddingNet(arch=arch, input_shape=shape, dim=int(spec["dim"]))
        if kind == "abs":
            from calib.models.vae import ClassVAEs

            return ClassVAEs(input_shape=shape, num_classes=int(spec["num_classes"]), latent=int(spec["latent"]),
                             width=int(spec["width"]), arch=arch)
        raise ValueError(f"unknown model kind {kind!r}")
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtefactError(f"invalid model spec: {exc}") from exc
