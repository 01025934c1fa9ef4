"""Aligned invariance targets: the warp against numpy's exact pixel moves, the exact inverse, the search
against a brute force over the grid, and the identity grid against the unaligned targets."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from calib.budgets.alignment import AlignGrid, _theta, aligned_targets, warp
from calib.budgets.invariance import nearest_targets
from calib.errors import ConfigError


def _img(rng: np.random.Generator, n: int = 3, h: int = 12, w: int = 12, border: int = 3) -> np.ndarray:
    x = np.zeros((n, 1, h, w), np.float32)
    x[:, :, border:h - border, border:w - border] = rng.random((n, 1, h - 2 * border, w - 2 * border))
    return x


@given(sx=st.integers(-3, 3), sy=st.integers(-3, 3), seed=st.integers(0, 2 ** 16))
@settings(max_examples=40, deadline=None)
def test_whole_pixel_shifts_are_exact_moves_and_the_inverse_undoes_them(sx: int, sy: int, seed: int) -> None:
    x = _img(np.random.default_rng(seed))  # zero border of 3 px: nothing leaves the frame
    moved = warp(torch.from_numpy(x), [(0.0, float(sx), float(sy))] * len(x)).numpy()
    expect = np.roll(x, (sy, sx), axis=(2, 3))  # T(x)(p) = x(p - s): content moves by +s
    np.testing.assert_allclose(moved, expect, atol=1e-5)
    back = warp(torch.from_numpy(moved), [(0.0, float(sx), float(sy))] * len(x), inverse=True).numpy()
    np.testing.assert_allclose(back, x, atol=1e-5)


def test_quarter_turn_is_numpys_rotation() -> None:
    x = _img(np.random.default_rng(0), border=0)
    moved = warp(torch.from_numpy(x), [(90.0, 0.0, 0.0)] * len(x)).numpy()
    ccw, cw = np.rot90(x, 1, axes=(2, 3)), np.rot90(x, -1, axes=(2, 3))
    assert min(np.abs(moved - ccw).max(), np.abs(moved - cw).max()) < 1e-5


@given(r=st.floats(-30, 30), sx=st.floats(-3, 3), sy=st.floats(-3, 3), h=st.integers(6, 30), w=st.integers(6, 30))
@settings(max_examples=50, deadline=None)
def test_the_inverse_warp_composes_with_the_warp_to_the_identity(r: float, sx: float, sy: float, h: int,
                                                                 w: int) -> None:
    fwd, inv = _theta(r, sx, sy, h, w, inverse=False), _theta(r, sx, sy, h, w, inverse=True)
    # warp(warp(x, T), T, inverse)(p) = x(fwd(inv(p))): the composed sampling map is the identity
    square = lambda m: torch.cat([m.double(), torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)])  # noqa: E731
    np.testing.assert_allclose((square(fwd) @ square(inv)).numpy(), np.eye(3), atol=1e-5)


@pytest.mark.parametrize("r,sx,sy", [(-20.0, 1.0, -2.0), (10.0, -2.0, 0.0), (20.0, 2.0, 2.0)])
def test_round_trip_of_a_smooth_image_is_close_and_far_closer_than_a_wrong_inverse(r: float, sx: float,
                                                                                    sy: float) -> None:
    yy, xx = np.mgrid[0:28, 0:28]
    blob = np.exp(-(((yy - 13.5) / 6.0) ** 2 + ((xx - 11.0) / 4.0) ** 2)).astype(np.float32)[None, None]
    t = [(r, sx, sy)]
    moved = warp(torch.from_numpy(blob), t)
    err = np.abs(warp(moved, t, inverse=True).numpy() - blob).max()
    wrong = np.abs(warp(moved, [(-r, -sx, -sy)]).numpy() - blob).max()  # rotation and shift in forward order
    # two bilinear resamplings blur a little; the exactness of the inverse is the test above
    assert err < 0.05 and (abs(r) < 20 or err < wrong / 3), (err, wrong)


def test_identity_grid_gives_the_unaligned_targets(digits) -> None:
    x, y = digits.images[:40], digits.labels[:40]
    ref, rl = digits.images[40:400], digits.labels[40:400]
    images, targets, info = aligned_targets(x, y, ref, rl, 10, AlignGrid(rotations=(0.0,), shifts=(0.0,)))
    plain = nearest_targets(x, y, ref, rl, 10)
    own = plain < 0
    assert ((targets < 0) == own).all() and info["aligned_share"] == 0.0
    np.testing.assert_allclose(images[targets[~own]], ref[plain[~own]], atol=1e-6)


def test_search_matches_a_brute_force_over_the_grid(digits) -> None:
    x, y = digits.images[:12], digits.labels[:12]
    ref, rl = digits.images[100:300], digits.labels[100:300]
    grid = AlignGrid(rotations=(-10.0, 0.0, 10.0), shifts=(-1.0, 0.0, 1.0))
    images, targets, info = aligned_targets(x, y, ref, rl, 10, grid, max_elements=500)  # many chunks
    transforms = grid.transforms()
    for i in range(len(x)):
        moved = warp(torch.from_numpy(np.repeat(x[i:i + 1], len(transforms), 0)), transforms).numpy()
        for c in range(10):
            if c == y[i]:
                assert targets[i, c] == -1
                continue
            cand = np.flatnonzero(rl == c)
            d = ((moved[:, None] - ref[cand][None]) ** 2).reshape(len(transforms), len(cand), -1).sum(-1)
            g, j = np.unravel_index(d.argmin(), d.shape)
            want = warp(torch.from_numpy(ref[cand[j]][None]), [transforms[g]], inverse=True).numpy()[0]
            np.testing.assert_allclose(images[targets[i, c]], want, atol=1e-5)
    assert 0.0 < info["aligned_share"] <= 1.0 and info["transforms"] == 27
    assert images.min() >= 0.0 and images.max() <= 1.0


def test_an_image_shifted_from_a_reference_is_aligned_back_onto_it() -> None:
    rng = np.random.default_rng(1)
    ref = _img(rng, n=2, h=14, w=14)
    rl = np.array([0, 1])
    x = np.roll(ref[1:2], (0, 2), axis=(2, 3))  # class 0 point: reference 1 moved right by 2 px
    images, targets, _ = aligned_targets(x, np.array([0]), ref, rl, 2, AlignGrid())
    np.testing.assert_allclose(images[targets[0, 1]], x[0], atol=1e-5)  # the target comes into x's pose


def test_a_grid_without_the_identity_is_refused() -> None:
    with pytest.raises(ConfigError, match="identity"):
        AlignGrid(rotations=(5.0,))


def test_a_run_measures_aligned_radii_and_says_so(tiny_run) -> None:
    from calib.pipeline.config import SemanticConfig
    from calib.pipeline.stages.semantic import measure_radii
    from calib.runfolder import open_run

    folder = open_run(tiny_run[0])
    judge = folder.judge("knn")
    cfg = SemanticConfig(norms=("linf",), iters=1, steps=2, invariance_iters=4, align=True)
    radii, idx, y, curves = measure_radii(folder, judge, "calibration-train", cfg, seed=0, progress=False)
    doc = curves["linf"]
    assert doc["targets"]["aligned"] and doc["targets"]["transforms"] == 125
    assert 0.0 < doc["targets"]["aligned_share"] <= 1.0
    r = radii["linf"]
    assert r.info["invariance"]["targets"]["aligned"]
    found = np.isfinite(r.invariance) & (r.invariance > 0)
    x = folder.dataset.images[idx]
    # every invariance witness lies in its ball and the box, and the judge sees another class there
    gap = np.abs(r.invariance_witnesses - x).reshape(len(x), -1).max(1)
    assert (gap[found] <= r.invariance[found] + 1e-6).all()
    assert r.invariance_witnesses.min() >= 0 and r.invariance_witnesses.max() <= 1
    pred = judge.label(torch.from_numpy(r.invariance_witnesses[found])).numpy()
    assert (pred != y[found]).all()
