"""A classifier of your own, in the RobustBench / AutoAttack convention calib expects.

``make()`` returns an ``nn.Module`` that takes images (N, C, H, W) in [0, 1] and returns logits
(N, classes); its input normalisation lives inside ``forward`` (as buffers, so they travel with the
weights). Global average pooling makes it work for any image size from 8x8 up.

    calib run --classifier tiny_net:make --classifier-weights tiny_net-digits.safetensors
"""
from __future__ import annotations

import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, channels: int = 1, classes: int = 10, mean: float = 0.5, std: float = 0.5) -> None:
        super().__init__()
        self.register_buffer("mean", torch.full((1, channels, 1, 1), mean))
        self.register_buffer("std", torch.full((1, channels, 1, 1), std))
        self.features = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features((x - self.mean) / self.std))


def make() -> nn.Module:
    """Grey images, 10 classes (digits, MNIST, Fashion-MNIST)."""
    return TinyNet()


def make_rgb() -> nn.Module:
    """Colour images, 10 classes."""
    return TinyNet(channels=3)
