"""Human-labelled sets: perturbed images with the class a person saw, and the clean source image's index.

Two layouts load (every problem is one :class:`~calib.errors.DataError` line naming the file):

* **calib's** ``.npz`` (no pickled objects):

  =================  ==========================================================================
  ``x``              (N, H, W) or (N, C, H, W) perturbed images, uint8 0-255 or float 0-1
  ``human_label``    (N,) the class a person gave; -1 = "unclear"
  ``source_index``   (N,) the dataset index of the clean image (as ``calib describe`` counts)
  ``norm``, ``eps``  optional: the threat model the images were made under (``linf``/``l2``/``l0``)
  ``name``           optional: the set's name (default: the file's stem)
  =================  ==========================================================================

* **Tramèr et al. 2020** (``invariance_examples/`` of ftramer/Excessive-Invariance), as published:
  ``<set>.npy`` (uint8, or float32 holding 0-255 values, (N, 28, 28)) with ``<set>_labels.npy``
  beside it; source indices into the official MNIST *test* split in ``indexs.npy`` (in the set's
  folder or the one above it), or ``<folder>/manual_indexs.npy`` for the ``manual_*`` sets. The norm
  and radius come from the path (``linf/automated_eps04`` = L-inf 0.4; ``l0/automated`` = L0).

A folder path loads every set under it. :meth:`HumanSet.check` then validates a set against the
dataset it is judged on: image shape, labels among the classes, indices inside the dataset, and,
for an L-inf set with a radius, that every image lies within it of its source image (a wrong index
mapping would not).
"""
from __future__ import annotations

import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from calib.errors import DataError

#: tolerance of the L-inf consistency check: 8-bit rounding of eps * 255, and a little more
LINF_SLACK = 1.5 / 255
LAYOUTS = ("calib-npz", "tramer")


@dataclass
class HumanSet:
    """One labelled set.

    Attributes:
        name: e.g. ``linf/automated_eps04`` (Tramèr) or the ``.npz``'s name.
        x: (N, C, H, W) float32 in [0,1].
        human_label: (N,) int64; -1 = unclear.
        source_index: (N,) int64, in ``index_space`` coordinates.
        index_space: ``dataset`` (calib's indices) or ``official-test`` (Tramèr: the source's own test
            split, mapped by :meth:`dataset_indices`).
        norm, eps: the threat model, when known; path: where it was read; layout: its layout.
    """

    name: str
    x: np.ndarray
    human_label: np.ndarray
    source_index: np.ndarray
    index_space: str
    norm: str | None
    eps: float | None
    path: str
    layout: str

    def __len__(self) -> int:
        return len(self.human_label)

    def dataset_indices(self, dataset: Any) -> np.ndarray:
        """Source indices in the dataset's own numbering (Tramèr's official-test indices are mapped
        through the dataset's official test samples, when it has them in another order)."""
        idx = self.source_index
        if self.index_space == "official-test" and dataset.official_test is not None:
            positions = np.flatnonzero(dataset.official_test)
            if idx.size and (idx.min() < 0 or idx.max() >= positions.size):
                raise DataError(f"{self.path}: source indices must lie in [0, {positions.size - 1}] (the "
                                f"official test split of {dataset.name})")
            return positions[idx]
        return idx

    def check(self, dataset: Any) -> np.ndarray:
        """Validate against ``dataset``; returns the dataset indices of the sources.

        Raises:
            DataError: shapes, labels, indices or distances that do not fit the dataset.
        """
        if tuple(self.x.shape[1:]) != tuple(dataset.image_shape):
            raise DataError(f"{self.path}: images of shape {tuple(self.x.shape[1:])} but {dataset.name} has "
                            f"{tuple(dataset.image_shape)}")
        k = dataset.num_classes
        bad = (self.human_label < -1) | (self.human_label >= k)
        if bad.any():
            raise DataError(f"{self.path}: labels {sorted(set(self.human_label[bad].tolist()))[:5]} are outside the "
                            f"{k} classes (and -1 = unclear)")
        idx = self.dataset_indices(dataset)
        if idx.size and (idx.min() < 0 or idx.max() >= len(dataset)):
            raise DataError(f"{self.path}: source indices must lie in [0, {len(dataset) - 1}] (dataset indices of "
                            f"{dataset.name})")
        if self.norm == "linf" and self.eps is not None:
            d = np.abs(self.x - dataset.images[idx]).reshape(len(idx), -1).max(1)
            far = d > self.eps + LINF_SLACK
            if far.any():
                raise DataError(f"{self.path}: {int(far.sum())} image(s) lie farther than L-inf {self.eps:g} from "
                                f"their source image (up to {float(d.max()):.3f}): wrong source indices or wrong "
                                "dataset?")
        return idx


# ---- reading ----------------------------------------------------------------------------------------------
def _load_array(path: Path, what: str) -> np.ndarray:
    try:
        a = np.load(path, allow_pickle=False)
    except FileNotFoundError as exc:
        raise DataError(f"{what} not found: {path}") from exc
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise DataError(f"{path}: holds pickled objects, which calib never loads") from exc
        raise DataError(f"{path}: not a readable .npy/.npz ({exc})") from exc
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: truncated or not a .npy/.npz file ({exc})") from exc
    return a


def _images(raw: np.ndarray, path: Path, scale_255: bool) -> np.ndarray:
    """(N, C, H, W) float32 in [0,1] from uint8, float 0-255 (``scale_255``) or float 0-1."""
    if raw.ndim == 3:
        raw = raw[:, None]
    if raw.ndim != 4 or raw.shape[0] == 0:
        raise DataError(f"{path}: images must be (N, H, W) or (N, C, H, W); got shape {raw.shape}")
    if raw.dtype == np.uint8:
        return raw.astype(np.float32) / 255
    if not np.issubdtype(raw.dtype, np.floating):
        raise DataError(f"{path}: images must be uint8 or float; got {raw.dtype}")
    if not np.isfinite(raw).all():
        raise DataError(f"{path}: images contain NaN or inf")
    hi = 255.0 if scale_255 else 1.0
    if raw.min() < 0 or raw.max() > hi:
        raise DataError(f"{path}: image values must lie in [0, {hi:g}]; found [{float(raw.min()):.4g}, "
                        f"{float(raw.max()):.4g}]")
    return (raw.astype(np.float32) / 255) if scale_255 else raw.astype(np.float32)


def _ints(a: np.ndarray, n: int, path: Path, what: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 1 or a.shape[0] != n:
        raise DataError(f"{path}: {what} has shape {a.shape}; expected ({n},), one per image")
    if np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all() or (a != np.round(a)).any():
            raise DataError(f"{path}: {what} must be integers")
    elif not np.issubdtype(a.dtype, np.integer):
        raise DataError(f"{path}: {what} must be integers; got {a.dtype}")
    return a.astype(np.int64)


def load_calib_npz(path: str | os.PathLike[str]) -> HumanSet:
    """A set in calib's ``.npz`` layout (see the module docstring)."""
    path = Path(path)
    z = _load_array(path, "human-labelled set")
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: not an .npz archive")
    with z:
        missing = [k for k in ("x", "human_label", "source_index") if k not in z.files]
        if missing:
            raise DataError(f"{path}: missing array(s) {', '.join(missing)} (need x, human_label, source_index)")
        try:
            arrays = {k: z[k] for k in z.files}
        except ValueError as exc:
            raise DataError(f"{path}: holds pickled objects, which calib never loads") from exc
    x = _images(arrays["x"], path, scale_255=False)
    n = len(x)
    norm = str(arrays["norm"]) if "norm" in arrays else None
    if norm is not None and norm not in ("linf", "l2", "l0", "l1"):
        raise DataError(f"{path}: norm must be linf, l2, l1 or l0; got {norm!r}")
    eps = None
    if "eps" in arrays:
        eps = float(arrays["eps"])
        if not np.isfinite(eps) or eps < 0:
            raise DataError(f"{path}: eps must be a number >= 0; got {eps}")
    name = str(arrays["name"]) if "name" in arrays else path.stem
    return HumanSet(name, x, _ints(arrays["human_label"], n, path, "human_label"),
                    _ints(arrays["source_index"], n, path, "source_index"), "dataset", norm, eps, str(path),
                    "calib-npz")


_EPS = re.compile(r"eps(\d)(\d+)")


def load_tramer_set(path: str | os.PathLike[str]) -> HumanSet:
    """One set ``<set>.npy`` of the Tramèr et al. layout (labels and indices found beside it)."""
    path = Path(path)
    labels_path = path.with_name(path.stem + "_labels.npy")
    if path.stem.startswith("manual"):
        index_path = path.with_name("manual_indexs.npy")
    else:
        index_path = next((p for p in (path.with_name("indexs.npy"), path.parent.parent / "indexs.npy")
                           if p.exists()), path.parent.parent / "indexs.npy")
    x = _images(_load_array(path, "human-labelled set"), path, scale_255=True)
    n = len(x)
    labels = _ints(_load_array(labels_path, "labels of the set"), n, labels_path, "labels")
    idx = _ints(_load_array(index_path, "source indices (indexs.npy)"), n, index_path, "source indices")
    folder = path.parent.name
    norm = folder if folder in ("linf", "l2", "l0", "l1") else None
    m = _EPS.search(path.stem)
    eps = float(f"{m.group(1)}.{m.group(2)}") if m else None
    return HumanSet(f"{folder}/{path.stem}", x, labels, idx, "official-test", norm, eps, str(path), "tramer")


def _is_tramer_set(p: Path) -> bool:
    stem = p.stem
    return (p.suffix == ".npy" and not stem.endswith("_labels") and stem not in ("indexs", "manual_indexs")
            and p.with_name(stem + "_labels.npy").exists())


def load_human_sets(paths: Any) -> list[HumanSet]:
    """Every set under ``paths`` (a file or folder, or a list of them); names must be unique."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list[HumanSet] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.suffix == ".npz" or _is_tramer_set(q))
            if not found:
                raise DataError(f"{p}: no human-labelled sets found (calib .npz files, or <set>.npy with "
                                "<set>_labels.npy beside it)")
            out += [load_calib_npz(q) if q.suffix == ".npz" else load_tramer_set(q) for q in found]
        elif p.suffix == ".npz":
            out.append(load_calib_npz(p))
        elif p.suffix == ".npy":
            if p.stem.endswith("_labels") or p.stem in ("indexs", "manual_indexs"):
                raise DataError(f"{p}: give the images (<set>.npy) or the folder, not the labels or indices")
            out.append(load_tramer_set(p))
        elif not p.exists():
            raise DataError(f"human-labelled set not found: {p}")
        else:
            raise DataError(f"{p}: a human-labelled set is an .npz (calib), an .npy (Tramèr layout) or a folder")
    names = [s.name for s in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DataError(f"human-labelled sets with the same name: {', '.join(dup)} (give each a distinct name)")
    return out


def save_human_set(path: str | os.PathLike[str], x: np.ndarray, human_label: np.ndarray, source_index: np.ndarray,
                   *, name: str | None = None, norm: str | None = None, eps: float | None = None,
                   extra: dict[str, np.ndarray] | None = None) -> Path:
    """Write a set in calib's ``.npz`` layout, atomically (x as float 0-1)."""
    from calib.io import write_npz

    arrays: dict[str, Any] = {"x": np.asarray(x, np.float32), "human_label": np.asarray(human_label, np.int64),
                              "source_index": np.asarray(source_index, np.int64), **(extra or {})}
    if name is not None:
        arrays["name"] = np.array(name)
    if norm is not None:
        arrays["norm"] = np.array(norm)
    if eps is not None:
        arrays["eps"] = np.float64(eps)
    write_npz(path, arrays)
    return Path(path)


__all__ = ["HumanSet", "load_human_sets", "load_calib_npz", "load_tramer_set", "save_human_set", "LAYOUTS"]
