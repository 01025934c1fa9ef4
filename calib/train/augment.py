"""Natural, class-preserving augmentation for training: small affine changes and elastic distortion.

Both act on batches (N, C, H, W) in [0,1] with a seeded generator, resample bilinearly
(``torch.nn.functional.grid_sample``, zeros outside the image) and keep values in [0,1].

* ``affine``: rotation up to +-``degrees``, scale in [1 - ``scale``, 1 + ``scale``], shear up to
  +-``shear`` radians, per image;
* ``elastic`` (Simard et al. 2003): a random displacement field, smoothed with a Gaussian of width
  ``sigma`` pixels and scaled to ``alpha`` pixels, per image.

Stroke width is changed too, by ``thickness``: a grey-level dilation (3x3 max) or erosion (3x3 min)
of a random share of the images.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from calib.errors import ConfigError

KINDS = ("affine", "elastic", "thickness")


@dataclass(frozen=True)
class Augment:
    """Which augmentations run (``kinds``, a subset of :data:`KINDS`) and how strong they are."""

    kinds: tuple[str, ...] = ()
    degrees: float = 12.0
    scale: float = 0.1
    shear: float = 0.15
    alpha: float = 2.0
    sigma: float = 4.0
    thickness: float = 0.3

    def __post_init__(self) -> None:
        bad = [k for k in self.kinds if k not in KINDS]
        if bad:
            raise ConfigError(f"unknown augmentation {bad}; choose from {', '.join(KINDS)}")
        if min(self.degrees, self.scale, self.shear, self.alpha, self.thickness) < 0 or self.sigma <= 0:
            raise ConfigError("augmentation strengths must be >= 0 (sigma > 0)")

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if "affine" in self.kinds:
            x = random_affine(x, generator, self.degrees, self.scale, self.shear)
        if "elastic" in self.kinds:
            x = elastic(x, generator, self.alpha, self.sigma)
        if "thickness" in self.kinds:
            x = stroke_width(x, generator, self.thickness)
        return x


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def random_affine(x: torch.Tensor, gen: torch.Generator, degrees: float, scale: float, shear: float) -> torch.Tensor:
    """Per-image random rotation, isotropic scale and shear about the centre."""
    n = x.shape[0]
    a = _uniform(n, -degrees, degrees, gen) * math.pi / 180
    s = _uniform(n, 1 - scale, 1 + scale, gen)
    sh = _uniform(n, -shear, shear, gen)
    cos, sin = torch.cos(a), torch.sin(a)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos / s, (-sin + sh * cos) / s
    theta[:, 1, 0], theta[:, 1, 1] = sin / s, (cos + sh * sin) / s
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False).clamp(0, 1)


def elastic(x: torch.Tensor, gen: torch.Generator, alpha: float, sigma: float) -> torch.Tensor:
    """Elastic distortion: a Gaussian-smoothed random field of displacements of about ``alpha`` pixels."""
    n, _, h, w = x.shape
    field = torch.rand(n, 2, h, w, generator=gen) * 2 - 1
    k = int(2 * round(3 * sigma) + 1)
    t = torch.arange(k, dtype=torch.float32) - k // 2
    g = torch.exp(-t ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    field = F.conv2d(F.pad(field.reshape(-1, 1, h, w), (k // 2, k // 2, 0, 0), mode="reflect")
                     if k // 2 < w else field.reshape(-1, 1, h, w), g.view(1, 1, 1, k))
    field = F.conv2d(F.pad(field, (0, 0, k // 2, k // 2), mode="reflect") if k // 2 < h else field,
                     g.view(1, 1, k, 1)).reshape(n, 2, h, w)
    field = field / field.abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12) * alpha
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    base = torch.stack([xs, ys], -1).expand(n, h, w, 2)
    disp = torch.stack([field[:, 0] * 2 / max(w - 1, 1), field[:, 1] * 2 / max(h - 1, 1)], -1)
    grid = (base + disp).to(x.device, x.dtype)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True).clamp(0, 1)


def stroke_width(x: torch.Tensor, gen: torch.Generator, share: float) -> torch.Tensor:
    """Thicker (3x3 grey dilation) or thinner (3x3 grey erosion) strokes for a random ``share`` of images."""
    n = x.shape[0]
    u = torch.rand(n, generator=gen)
    thick = (u < share / 2).view(-1, 1, 1, 1).to(x.device)
    thin = ((u >= share / 2) & (u < share)).view(-1, 1, 1, 1).to(x.device)
    dil = F.max_pool2d(x, 3, 1, 1)
    ero = -F.max_pool2d(-x, 3, 1, 1)
    return torch.where(thick, dil, torch.where(thin, ero, x))


__all__ = ["Augment", "KINDS", "random_affine", "elastic", "stroke_width"]
