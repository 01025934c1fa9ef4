"""Aligned invariance targets (docs/design.md, "Budgets"; Tramèr et al. 2020's automated attack): before
moving a point x toward an image of another class, the target is rotated and translated to match x.

For every transform T of a small grid (rotations about the image centre, then whole-pixel or sub-pixel
translations), the nearest reference image t_c of each other class c to ``T(x)`` is found (L2 in
pixels); per class the transform with the smallest distance wins, and the target becomes ``T^-1(t_c)``,
the other-class image moved into x's pose. This is what Tramèr et al.'s linf notebook does (they apply
an approximate inverse, rotation and shift in the forward order; calib applies the exact inverse of the
affine map). Without alignment (the default) the targets are the nearest reference images themselves
(:func:`calib.budgets.invariance.nearest_targets`).

Warping is bilinear with zero (background) padding, so aligned targets stay in [0, 1]. The grid is
square-pixel geometry on any H x W; the distance is computed for every transform at once with one
matrix product per class and chunk.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import product

import numpy as np
import torch
import torch.nn.functional as F

from calib.errors import ConfigError


@dataclass(frozen=True)
class AlignGrid:
    """The transforms tried: ``rotations`` in degrees and ``shifts`` in pixels (each axis); every
    combination, the identity included (so alignment can only bring a target closer)."""

    rotations: tuple[float, ...] = (-20.0, -10.0, 0.0, 10.0, 20.0)
    shifts: tuple[float, ...] = (-2.0, -1.0, 0.0, 1.0, 2.0)

    def __post_init__(self) -> None:
        if 0.0 not in self.rotations or 0.0 not in self.shifts:
            raise ConfigError("an alignment grid must contain rotation 0 and shift 0 (the identity)")
        if any(abs(r) > 90 for r in self.rotations):
            raise ConfigError(f"alignment rotations must be within [-90, 90] degrees; got {list(self.rotations)}")

    def transforms(self) -> list[tuple[float, float, float]]:
        """(rotation degrees, shift x, shift y) per transform; the identity first."""
        grid = [(float(r), float(sx), float(sy)) for r, sx, sy in product(self.rotations, self.shifts, self.shifts)]
        grid.sort(key=lambda g: g != (0.0, 0.0, 0.0))
        return grid

    def to_json(self) -> dict:
        return {"rotations": list(self.rotations), "shifts": list(self.shifts)}


def _theta(rotation: float, sx: float, sy: float, h: int, w: int, inverse: bool) -> torch.Tensor:
    """The (2, 3) ``affine_grid`` matrix (normalised coordinates, ``align_corners=False``) of the warp
    ``T(x)(p) = x(R^-1 (p - s))`` (rotate by ``rotation`` about the centre, then shift by s pixels), or of
    its exact inverse ``T^-1(t)(p) = t(R p + s)``. ``affine_grid`` maps output to input positions."""
    a = math.radians(rotation)
    rot = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]], dtype=torch.float64)
    s = torch.tensor([sx, sy], dtype=torch.float64)
    m, b = (rot, s) if inverse else (rot.T, -rot.T @ s)  # input position = m p + b (pixel units)
    scale = torch.tensor([2.0 / w, 2.0 / h], dtype=torch.float64)  # pixel offsets -> normalised
    m_n = torch.diag(scale) @ m @ torch.diag(1.0 / scale)
    return torch.cat([m_n, (scale * b)[:, None]], dim=1).float()


def warp(images: torch.Tensor, transforms: list[tuple[float, float, float]], inverse: bool = False) -> torch.Tensor:
    """Each image (N, C, H, W) under its own transform (N of them): bilinear, zero padding."""
    n, _, h, w = images.shape
    theta = torch.stack([_theta(r, sx, sy, h, w, inverse) for r, sx, sy in transforms])
    grid = F.affine_grid(theta, [n, *images.shape[1:]], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False).clamp(0, 1)


def aligned_targets(x: np.ndarray, y: np.ndarray, ref: np.ndarray, ref_labels: np.ndarray, num_classes: int,
                    grid: AlignGrid, max_elements: int = 2 ** 25) -> tuple[np.ndarray, np.ndarray, dict]:
    """Per point and other class, the nearest reference image to any transform of x, moved into x's pose.

    Args:
        x: (N, C, H, W) points in [0, 1]; y: (N,) their classes.
        ref, ref_labels: (R, C, H, W) reference images (the train part) and labels.
        grid: the transforms tried.
        max_elements: the size of one distance block (points x transforms x a class's references).

    Returns:
        ``(images, targets, info)``: ``images`` (N * K, C, H, W) the aligned targets, ``targets`` (N, K)
        the index into ``images`` of point i's target of class c (-1 for its own class), so that the pair
        drops in wherever ``(ref, nearest_targets(...))`` is used; ``info`` the grid and how often a
        transform other than the identity won.
    """
    transforms = grid.transforms()
    n, k, g = len(x), num_classes, len(transforms)
    xt = torch.from_numpy(np.ascontiguousarray(x, np.float32))
    rf = torch.from_numpy(np.ascontiguousarray(ref.reshape(len(ref), -1), np.float32))
    best_d = torch.full((n, k), math.inf, dtype=torch.float64)
    best_j = torch.zeros((n, k), dtype=torch.int64)
    best_g = torch.zeros((n, k), dtype=torch.int64)
    per_class = []
    for c in range(k):
        idx = np.flatnonzero(ref_labels == c)
        if idx.size == 0:
            raise ConfigError(f"class {c} has no reference image to move toward")
        rc = rf[torch.from_numpy(idx)]
        per_class.append((idx, rc, (rc * rc).sum(1)))
    chunk = max(1, max_elements // (g * max(len(p[0]) for p in per_class)))
    for s in range(0, n, chunk):
        xb = xt[s:s + chunk]
        b = len(xb)
        moved = warp(xb.repeat_interleave(g, 0), transforms * b).reshape(b * g, -1)  # row i*g + j
        m2 = (moved * moved).sum(1).double()
        for c, (idx, rc, r2) in enumerate(per_class):
            d = (r2[None, :] - 2.0 * moved @ rc.T).min(1)  # nearest of class c to each moved point
            d2 = (d.values.double() + m2).reshape(b, g)
            jj = d.indices.reshape(b, g)
            gbest = d2.argmin(1)
            best_d[s:s + b, c] = d2[torch.arange(b), gbest]
            best_g[s:s + b, c] = gbest
            best_j[s:s + b, c] = torch.from_numpy(idx)[jj[torch.arange(b), gbest]]
    own = torch.from_numpy(np.asarray(y, np.int64))
    chosen_t = [transforms[i] for i in best_g.reshape(-1).tolist()]
    targets_raw = torch.from_numpy(np.ascontiguousarray(ref, np.float32))[best_j.reshape(-1)]
    images = warp(targets_raw, chosen_t, inverse=True).numpy()
    targets = np.arange(n * k, dtype=np.int64).reshape(n, k)
    targets[np.arange(n), own.numpy()] = -1
    other = np.ones((n, k), bool)
    other[np.arange(n), own.numpy()] = False
    info = {"grid": grid.to_json(), "transforms": g,
            "aligned_share": float((best_g.numpy()[other] != 0).mean()) if other.any() else 0.0}
    return images, targets, info


def invariance_targets(x: np.ndarray, y: np.ndarray, ref: np.ndarray, ref_labels: np.ndarray, num_classes: int,
                       grid: AlignGrid | None) -> tuple[np.ndarray, np.ndarray, dict]:
    """The targets the invariance paths move toward, as ``(images, targets (N, K) index into images, info)``:
    the nearest reference images themselves (``grid=None``) or aligned ones (:func:`aligned_targets`)."""
    if grid is None:
        from calib.budgets.invariance import nearest_targets

        return ref, nearest_targets(x, y, ref, ref_labels, num_classes), {"aligned": False}
    images, targets, info = aligned_targets(x, y, ref, ref_labels, num_classes, grid)
    return images, targets, {"aligned": True, **info}


__all__ = ["AlignGrid", "warp", "aligned_targets", "invariance_targets"]
