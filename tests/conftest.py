"""Shared fixtures: real small data only (scikit-learn digits, the shared MNIST test split)."""
from __future__ import annotations

import gzip
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from calib.data import load_dataset, split_dataset
from calib.device import set_threads

set_threads()  # what the command line uses by default; results (and cache keys) depend on the count

ROOT = Path(__file__).resolve().parents[1]
#: MNIST's IDX files: $CALIB_TEST_MNIST, else the shared data folder beside the clone (CI)
SHARED_MNIST = Path(os.environ.get("CALIB_TEST_MNIST") or ROOT.parent / "shared" / "data" / "mnist")


@pytest.fixture(scope="session")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="session")
def digits_splits(digits):
    return split_dataset(digits, seed=0)


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    if not (SHARED_MNIST / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"shared MNIST not found at {SHARED_MNIST}")
    return SHARED_MNIST


@pytest.fixture(scope="session")
def mnist_raw(mnist_dir):
    """Plain, independent parse of the shared MNIST files: (uint8 images N x 28 x 28, labels)."""
    img = gzip.open(mnist_dir / "t10k-images-idx3-ubyte.gz").read()
    lab = gzip.open(mnist_dir / "t10k-labels-idx1-ubyte.gz").read()
    return (np.frombuffer(img, np.uint8, offset=16).reshape(-1, 28, 28),
            np.frombuffer(lab, np.uint8, offset=8))


def write_idx(path: Path, arr: np.ndarray, gz: bool = True) -> Path:
    """Write a uint8 array as an IDX file (the independent writer the reader is tested against)."""
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    data = header + np.ascontiguousarray(arr, dtype=np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


@pytest.fixture()
def mnist_copy(tmp_path, mnist_dir) -> Path:
    """A writable copy of the shared MNIST folder (so tests can damage it)."""
    dst = tmp_path / "mnist"
    shutil.copytree(mnist_dir, dst)
    return dst


@pytest.fixture(scope="session")
def digits_classifier(digits_splits):
    """A classifier trained on the digits train part (10 epochs, seed 0; ~2 s)."""
    from calib.train import TrainConfig, train_classifier

    return train_classifier(digits_splits.train, TrainConfig(epochs=10, seed=0, device="cpu", progress=False)).model


@pytest.fixture(scope="session")
def digits_table(digits, digits_splits):
    """The geometric epsilon table of digits (input space), from real statistics."""
    from calib.budgets import geometric_table
    from calib.stats import StatsConfig, compute_stats

    stats = compute_stats(digits, digits_splits, StatsConfig(embedding=False, matrix_modes=("sampled",)),
                          show_progress=False)
    return geometric_table(stats)


# ---- a tiny complete `calib run` on digits, shared by the pipeline and report tests -------------------
from calib.pipeline import AttackConfig, SemanticConfig  # noqa: E402

TINY = dict(classifier_epochs=3, embedding_epochs=3, tsne_points=300, progress=False,
            semantic=SemanticConfig(norms=("linf",), iters=3, steps=3),
            attack=AttackConfig(n=80, steps=5))


#: the same tiny run as a config file (for CLI tests)
TINY_TOML = """dataset = "digits"
classifier_epochs = 3
embedding_epochs = 3
tsne_points = 300
progress = false
[semantic]
norms = ["linf"]
iters = 3
steps = 3
[attack]
n = 80
steps = 5
"""


def tiny(tmp: Path, **kw):
    from calib.pipeline import RunConfig

    return RunConfig(out=str(tmp), **{**TINY, **kw})


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A complete run on digits with few epochs and steps (~20 s); returns (folder, summary)."""
    out = tmp_path_factory.mktemp("run")
    from calib.pipeline import run

    return out, run(tiny(out))


