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
                    labels; optional ``class_names``. Or an explicit split, kept as given:
                    ``X_train``/``y_train``, ``X_test``/``y_test`` and optionally
                    ``X_calibration``/``y_calibration`` (without it, calibration is drawn from train,
                    stratified and seeded). Channels 1 or 3. Never unpickled.
"""
from __future__ import annotations

import hashlib
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
    split_keys = [k for k in arrays if k.split("_")[0] in ("X", "y") and "_" in k]
    if split_keys:
        if "X" in arrays or "y" in arrays:
            raise DataError(f"{path}: holds both X/y and an explicit split ({', '.join(sorted(split_keys))}); "
                            "keep one")
        return _load_npz_split(path, arrays)
    missing = [k for k in ("X", "y") if k not in arrays]
    if missing:
        raise DataError(f"{path}: missing array(s) {missing}; found {sorted(arrays)} (a dataset is X and y, or an "
                        "explicit split X_train/y_train/X_test/y_test with optional X_calibration/y_calibration)")
    images, y = _images(path, "X", arrays["X"]), _labels(path, "y", arrays["y"])
    names = _class_names(path, arrays, y)
    raw = arrays["X"] if arrays["X"].ndim == 4 else arrays["X"][:, None]
    return Dataset(f"npz:{path.stem}", images, y, names, fingerprint_arrays(raw, y))


NPZ_PARTS = ("train", "calibration", "test")
#: channel counts an image array may have
CHANNELS = (1, 3)


def _images(path: Path, key: str, raw: np.ndarray) -> np.ndarray:
    """float32 (N, C, H, W) in [0,1] from uint8 0-255 or float 0-1, (N,H,W), (N,C,H,W) or (N,H,W,C) with
    C = 1 or 3 channels. An (N,H,W,C) array is detected by where its 1 or 3 channels are (and said so in
    the log); a shape where both ends could be the channels, or neither, is refused."""
    shape = raw.shape
    if raw.ndim == 3:
        raw = raw[:, None]
    if raw.ndim != 4:
        raise DataError(f"{path}: {key} must have shape (N,H,W), (N,C,H,W) or (N,H,W,C); got {shape}")
    first, last = raw.shape[1] in CHANNELS, raw.shape[3] in CHANNELS
    if first and last:
        raise DataError(f"{path}: {key} has shape {shape}: both (N,C,H,W) and (N,H,W,C) with 1 or 3 channels fit; "
                        "save it as (N,C,H,W) with H, W > 3")
    if not first and not last:
        raise DataError(f"{path}: {key} has shape {shape}: images need 1 or 3 channels, as (N,C,H,W) or (N,H,W,C)")
    if last:
        log.warning("%s: %s has shape %s; read as (N,H,W,C) images with %d channel(s), stored as (N,C,H,W)", path, key,
                    shape, shape[3])
        raw = np.ascontiguousarray(raw.transpose(0, 3, 1, 2))
    if raw.dtype == np.uint8:
        return raw.astype(np.float32) / np.float32(255.0)
    if np.issubdtype(raw.dtype, np.floating):
        return raw.astype(np.float32)
    raise DataError(f"{path}: {key} must be uint8 (0-255) or float (0-1); got {raw.dtype}")


def _labels(path: Path, key: str, y: np.ndarray) -> np.ndarray:
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: {key} must be a 1-D integer array; got {y.dtype} with shape {y.shape}")
    return y.astype(np.int64)


def _class_names(path: Path, arrays: dict[str, np.ndarray], y: np.ndarray) -> tuple[str, ...]:
    if "class_names" in arrays:
        return tuple(str(s) for s in arrays["class_names"].tolist())
    return tuple(str(i) for i in range(int(y.max()) + 1 if y.size else 0))


def _load_npz_split(path: Path, arrays: dict[str, np.ndarray]) -> Dataset:
    """The user's own split: ``X_train``/``y_train``, ``X_test``/``y_test`` and optionally
    ``X_calibration``/``y_calibration``, kept as given (see :func:`calib.data.split.split_dataset`)."""
    known = {f"{a}_{p}" for a in ("X", "y") for p in NPZ_PARTS} | {"class_names"}
    unknown = sorted(set(arrays) - known)
    if unknown:
        raise DataError(f"{path}: unknown array(s) {unknown} in an explicit split; expected X_/y_ + "
                        f"{'/'.join(NPZ_PARTS)} and optional class_names")
    present = [p for p in NPZ_PARTS if f"X_{p}" in arrays or f"y_{p}" in arrays]
    for part in present:
        if f"X_{part}" not in arrays or f"y_{part}" not in arrays:
            raise DataError(f"{path}: has {'X' if f'X_{part}' in arrays else 'y'}_{part} but not its pair")
    for part in ("train", "test"):
        if part not in present:
            raise DataError(f"{path}: an explicit split needs X_{part}/y_{part}; found {sorted(arrays)}")
    images, labels, raws = {}, {}, {}
    for part in present:
        images[part] = _images(path, f"X_{part}", arrays[f"X_{part}"])
        labels[part] = _labels(path, f"y_{part}", arrays[f"y_{part}"])
        raws[part] = arrays[f"X_{part}"] if arrays[f"X_{part}"].ndim == 4 else arrays[f"X_{part}"][:, None]
        if len(images[part]) != len(labels[part]):
            raise DataError(f"{path}: X_{part} has {len(images[part])} images but y_{part} has "
                            f"{len(labels[part])} labels")
    shapes = {p: images[p].shape[1:] for p in present}
    if len(set(shapes.values())) != 1:
        raise DataError(f"{path}: the parts' images differ in shape: "
                        + ", ".join(f"{p} {tuple(s)}" for p, s in shapes.items()))
    dtypes = {raws[p].dtype.str for p in present}
    if len(dtypes) != 1:
        raise DataError(f"{path}: the parts' images differ in dtype ({', '.join(sorted(dtypes))}); use one")
    all_y = np.concatenate([labels[p] for p in present])
    names = _class_names(path, arrays, all_y)
    k = len(names)
    train_classes = set(np.unique(labels["train"]).tolist())
    for part in present:
        y = labels[part]
        if y.size and (y.min() < 0 or y.max() >= k):
            raise DataError(f"{path}: y_{part} holds labels outside [0, {k - 1}] ({k} classes)")
        missing = sorted(set(range(k)) - set(np.unique(y).tolist()))
        if missing and part != "train":
            raise DataError(f"{path}: the classes of y_{part} do not match y_train: class(es) "
                            f"{', '.join(names[c] for c in missing)} have no {part} sample")
    absent = sorted(set(range(k)) - train_classes)
    if absent:
        raise DataError(f"{path}: the classes of y_train do not match the other parts: class(es) "
                        f"{', '.join(names[c] for c in absent)} have no training sample")
    raw = np.concatenate([raws[p] for p in present])
    sizes = {p: len(labels[p]) for p in present}
    fp = hashlib.sha256(f"{fingerprint_arrays(raw, all_y)}:explicit-split:{sizes}".encode()).hexdigest()
    part_of = np.concatenate([np.full(sizes[p], i) for i, p in enumerate(present)])
    return Dataset(f"npz:{path.stem}", np.concatenate([images[p] for p in present]), all_y, names, fp,
                   official_test=part_of == present.index("test"),
                   official_calibration=(part_of == present.index("calibration")) if "calibration" in present
                   else None)
