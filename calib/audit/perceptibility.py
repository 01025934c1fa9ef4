"""Perceptibility of a perturbation ``x -> x'``: norms, changed pixels, background changes, SSIM.

Threat model: a person (or a trivial detector) compares x and x'. A pixel counts as changed when
``|x' - x| > tol`` (default 1/255, one grey level). *Background* pixels are those with ``x == 0``
(MNIST-like data is mostly exact zeros); the trivial background detector flags any changed
background pixel. SSIM is scikit-image's ``structural_similarity`` (data range 1, Gaussian-free
uniform window of 7, or the largest odd window that fits small images such as 8x8 digits).
"""
from __future__ import annotations

import numpy as np

from calib.errors import DataError

ONE_LEVEL = 1.0 / 255.0


def _skimage_ssim():
    try:
        from skimage.metrics import structural_similarity
    except ImportError as exc:  # pragma: no cover - scikit-image is a declared dependency
        raise ImportError("the audit's SSIM needs scikit-image: pip install scikit-image") from exc
    return structural_similarity


def ssim(x: np.ndarray, x_adv: np.ndarray) -> np.ndarray:
    """SSIM of each pair of images (N, C, H, W) in [0,1]; returns (N,) float64 (1 = identical)."""
    structural_similarity = _skimage_ssim()
    h, w = x.shape[-2:]
    win = min(7, h, w)
    win -= 1 - win % 2  # odd
    if win < 3:
        raise DataError(f"images of {h}x{w} pixels are too small for SSIM (needs at least 3x3)")
    out = np.empty(len(x))
    for i in range(len(x)):
        a, b = x[i].astype(np.float64), x_adv[i].astype(np.float64)
        if a.shape[0] == 1:
            out[i] = structural_similarity(a[0], b[0], data_range=1.0, win_size=win)
        else:
            out[i] = structural_similarity(a, b, data_range=1.0, win_size=win, channel_axis=0)
    return out


def perceptibility(x: np.ndarray, x_adv: np.ndarray, tol: float = ONE_LEVEL) -> dict[str, np.ndarray]:
    """Per-example perceptibility measures of ``x_adv`` against ``x`` (both (N, C, H, W) in [0,1]).

    Returns (N,) arrays: ``linf``, ``l2``, ``l0`` (pixels changed by more than ``tol``),
    ``background_changed`` (changed pixels where ``x == 0``), ``background_share`` (their share of
    the background), ``detected`` (the trivial background detector fires) and ``ssim``.
    """
    if x.shape != x_adv.shape:
        raise DataError(f"clean and adversarial images differ in shape: {x.shape} vs {x_adv.shape}")
    if not (np.isfinite(x).all() and np.isfinite(x_adv).all()):
        raise DataError("images contain NaN or inf")
    n = len(x)
    d = (x_adv.astype(np.float64) - x.astype(np.float64)).reshape(n, -1)
    changed = np.abs(d) > tol
    background = x.reshape(n, -1) == 0
    bg_changed = (changed & background).sum(1)
    return {
        "linf": np.abs(d).max(1) if d.shape[1] else np.zeros(n),
        "l2": np.sqrt((d * d).sum(1)),
        "l0": changed.sum(1).astype(np.int64),
        "background_changed": bg_changed.astype(np.int64),
        "background_share": bg_changed / np.maximum(background.sum(1), 1),
        "detected": bg_changed > 0,
        "ssim": ssim(x, x_adv),
    }
