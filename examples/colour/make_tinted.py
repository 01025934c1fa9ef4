"""Build a colour data set with an explicit split from real grey images: Fashion-MNIST, tinted.

No colour image data set can be installed from PyPI or Debian without a download at run time, so
this builds one from real images that are installed: Fashion-MNIST (Debian's
``dataset-fashion-mnist``). Each 28x28 image is padded to 32x32 (a CIFAR-like 3x32x32 layout) and
tinted with a foreground and a background colour drawn per image (seeded, independent of the
class): ``x_rgb = bg + (fg - bg) * x``. The class stays in the shape; colour is a nuisance the
models must ignore. The official train/test split is kept: ``--train`` images per class from the
official training files, ``--test`` per class from the official test files.

    python examples/colour/make_tinted.py --out fashion-tinted.npz
    calib run --dataset fashion-tinted.npz
"""
from __future__ import annotations

import argparse
import logging

import numpy as np

from calib.data import load_dataset

log = logging.getLogger("make_tinted")


def tint(grey: np.ndarray, rng: np.random.Generator, pad: int) -> np.ndarray:
    """(N, 1, H, W) in [0,1] -> (N, 3, H + 2 pad, W + 2 pad) uint8."""
    g = np.pad(grey[:, 0], ((0, 0), (pad, pad), (pad, pad)))
    fg = rng.uniform(0.35, 1.0, (len(g), 3, 1, 1))
    bg = rng.uniform(0.0, 0.3, (len(g), 3, 1, 1))
    return np.round(255 * (bg + (fg - bg) * g[:, None])).astype(np.uint8)


def pick(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    return np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class]
                                   for c in np.unique(labels)]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--train", type=int, default=600, help="training images per class")
    ap.add_argument("--test", type=int, default=100, help="test images per class")
    ap.add_argument("--pad", type=int, default=2, help="pixels of padding on each side (28 + 2*2 = 32)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ds = load_dataset("fashion-mnist", args.data_dir)
    if ds.official_test is None or ds.official_test.all():
        raise SystemExit("needs Fashion-MNIST's train and t10k files (apt-get install dataset-fashion-mnist)")
    rng = np.random.default_rng(args.seed)
    tr, te = np.flatnonzero(~ds.official_test), np.flatnonzero(ds.official_test)
    tr, te = tr[pick(ds.labels[tr], args.train, rng)], te[pick(ds.labels[te], args.test, rng)]
    np.savez_compressed(args.out, X_train=tint(ds.images[tr], rng, args.pad), y_train=ds.labels[tr],
                        X_test=tint(ds.images[te], rng, args.pad), y_test=ds.labels[te],
                        class_names=np.array(ds.class_names))
    log.info("wrote %s: %d train + %d test images, 3x%dx%d", args.out, tr.size, te.size, 28 + 2 * args.pad,
             28 + 2 * args.pad)


if __name__ == "__main__":
    main()
