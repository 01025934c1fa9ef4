"""Dataset sources behind one loader, :func:`load_dataset`.

Sources:
    digits          scikit-learn's 1,797 8x8 handwritten digits (embedded; values/16). Default.
    mnist, fashion-mnist, kmnist
                    official IDX files (gzipped or raw) found in, in order: ``data_dir/<name>``,
                    ``data_dir``, ``$CALIB_DATA_DIR/<name>``, ``$CALIB_DATA_DIR``, the source's system
                    folder (fashion-mnist: ``/usr/share/datasets/fashion-mnist``) and the download
                    cache ``~/.cache/calib/<name>``. The ``t10k`` pair is required, the ``train``
                    pair optional (without it the t10k data is split three ways).
    npz             a ``.npz`` file (``data_dir`` is its path, or pass the path as the name) with
                    arrays ``X`` (N,H,W) or (N,C,H,W), uint8 0-255 or float 0-1; ``y`` integer
                    labels; optional ``class_names``. Never unpickled.
"""
from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path

import numpy as np

from calib.data.dataset import Dataset, fingerprint_arrays
from calib.data.download import download_idx
from calib.data.idx import read_idx
from calib.errors import DataError

log = logging.getLogger(__name__)

DIGIT_NAMES = tuple(str(i) for i in range(10))
IDX_SOURCES: dict[str, dict] = {
    "mnist": {"classes": DIGIT_NAMES, "system_dirs": ()},
    "fashion-mnist": {
        "classes": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        "system_dirs": ("/usr/share/datasets/fashion-mnist",),
    },
    "kmnist": {"classes": ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"), "system_dirs": ()},
}
SOURCES = ("digits", *IDX_SOURCES, "npz")
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "calib"


def load_dataset(name: str = "digits", data_dir: str | os.PathLike[str] | None = None,
                 download: bool = False) -> Dataset:
    """Load a dataset by source name; see the module docstring for where files are looked for.

    Returns a validated :class:`Dataset` (float32 N x C x H x W in [0,1], int64 labels).

    Raises:
        DataError: unknown name, missing/corrupt/truncated files, inconsistent or out-of-range data.
    """
    if name.endswith(".npz"):
        return load_npz(name)
    if name == "digits":
        return load_digits()
    if name == "npz":
        if data_dir is None:
            raise DataError("dataset 'npz' needs the file: pass --data-dir PATH.npz (or the path as --dataset)")
        return load_npz(data_dir)
    if name in IDX_SOURCES:
        return load_idx_dataset(name, data_dir, download=download)
    raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(SOURCES)} or a path to a .npz file")


def load_digits() -> Dataset:
    """scikit-learn's digits: 1,797 images 1x8x8, integer values 0..16 scaled by 1/16."""
    from sklearn.datasets import load_digits as _sk_digits

    bunch = _sk_digits()
    raw = bunch.images.astype(np.uint8)  # integers 0..16 stored as float64 by scikit-learn
    labels = bunch.target.astype(np.int64)
    images = (raw.astype(np.float32) / np.float32(16.0))[:, None]
    return Dataset("digits", images, labels, DIGIT_NAMES, fingerprint_arrays(raw, labels))


def _candidate_dirs(name: str, data_dir: str | os.PathLike[str] | None) -> list[Path]:
    dirs: list[Path] = []
    for base in (data_dir, os.environ.get("CALIB_DATA_DIR") or None):
        if base is not None:
            dirs += [Path(base) / name, Path(base)]
    dirs += [Path(d) for d in IDX_SOURCES[name]["system_dirs"]]
    dirs.append(CACHE_DIR / name)
    return dirs


def _find(folder: Path, stem: str) -> Path | None:
    for fname in (stem + ".gz", stem):
        if (folder / fname).is_file():
            return folder / fname
    return None


def _read_pair(folder: Path, prefix: str) -> tuple[np.ndarray, np.ndarray] | None:
    img = _find(folder, f"{prefix}-images-idx3-ubyte")
    lab = _find(folder, f"{prefix}-labels-idx1-ubyte")
    if img is None and lab is None:
        return None
    if img is None or lab is None:
        missing = f"{prefix}-images-idx3-ubyte" if img is None else f"{prefix}-labels-idx1-ubyte"
        raise DataError(f"{folder}: found one {prefix} file but not {missing}[.gz]")
    images, labels = read_idx(img, expect_ndim=3), read_idx(lab, expect_ndim=1)
    if images.dtype != np.uint8 or labels.dtype != np.uint8:
        raise DataError(f"{folder}: {prefix} IDX files must hold uint8 values; got {images.dtype}/{labels.dtype}")
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{folder}: {img.name} has {images.shape[0]} images but {lab.name} "
                        f"has {labels.shape[0]} labels")
    return images, labels


def load_idx_dataset(name: str, data_dir: str | os.PathLike[str] | None = None,
                     download: bool = False) -> Dataset:
    """Load an MNIST-family dataset from its official IDX files (see module docstring)."""
    info = IDX_SOURCES[name]
    dirs = _candidate_dirs(name, data_dir)
    folder = next((d for d in dirs if _find(d, "t10k-images-idx3-ubyte")), None)
    if folder is None and download:
        folder = download_idx(name, Path(data_dir) / name if data_dir else CACHE_DIR / name)
    if folder is None:
        where = ", ".join(str(d) for d in dict.fromkeys(dirs))
        raise DataError(f"{name}: no t10k-images-idx3-ubyte[.gz] found (looked in {where}); put the IDX "
                        f"files there, pass --data-dir, set CALIB_DATA_DIR or use --download")
    test = _read_pair(folder, "t10k")
    if test is None:  # images present but labels missing is caught inside _read_pair
        raise DataError(f"{folder}: no t10k files")
    train = _read_pair(folder, "train")
    parts = [p for p in (train, test) if p is not None]
    raw = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts]).astype(np.int64)
    official_test = np.zeros(labels.shape[0], dtype=bool)
    official_test[labels.shape[0] - test[1].shape[0]:] = True
    images = (raw.astype(np.float32) / np.float32(255.0))[:, None]
    log.info("loaded %s from %s (%d samples%s)", name, folder, labels.size, "" if train else ", t10k only")
    return Dataset(name, images, labels, info["classes"], fingerprint_arrays(raw, labels),
                   official_test=official_test)


def load_npz(path: str | os.PathLike[str]) -> Dataset:
    """Load ``X``, ``y`` and optional ``class_names`` from a ``.npz`` file (``allow_pickle=False``)."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            if fh.read(4) != b"PK\x03\x04":  # otherwise np.load falls back to pickle and blames that
                raise DataError(f"{path}: not a readable .npz file (no zip signature; truncated or not an npz)")
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except DataError:
        raise
    except FileNotFoundError as exc:
        raise DataError(f"npz file not found: {path}") from exc
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc})") from exc
    except ValueError as exc:  # object arrays need pickle, which is refused
        raise DataError(f"{path}: contains pickled objects, which calib never loads ({exc})") from exc
    missing = [k for k in ("X", "y") if k not in arrays]
    if missing:
        raise DataError(f"{path}: missing array(s) {missing}; found {sorted(arrays)}")
    raw, y = arrays["X"], arrays["y"]
    if raw.ndim == 3:
        raw = raw[:, None]
    if raw.ndim != 4:
        raise DataError(f"{path}: X must have shape (N,H,W) or (N,C,H,W); got {arrays['X'].shape}")
    if raw.dtype == np.uint8:
        images = raw.astype(np.float32) / np.float32(255.0)
    elif np.issubdtype(raw.dtype, np.floating):
        images = raw.astype(np.float32)
    else:
        raise DataError(f"{path}: X must be uint8 (0-255) or float (0-1); got {raw.dtype}")
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: y must be a 1-D integer array; got {y.dtype} with shape {y.shape}")
    if "class_names" in arrays:
        names = tuple(str(s) for s in arrays["class_names"].tolist())
    else:
        names = tuple(str(i) for i in range(int(y.max()) + 1 if y.size else 0))
    return Dataset(f"npz:{path.stem}", images, y.astype(np.int64), names, fingerprint_arrays(raw, y))

