"""The in-memory dataset every stage consumes, validated once at construction.

Threat-model convention: images live in the box [0, 1] (float32, shape N x C x H x W); every
epsilon in calib is measured in these units (an MNIST L-inf budget of 0.3 is 0.3 here).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from calib.errors import DataError

FINGERPRINT_VERSION = "calib-data-v1"


def fingerprint_arrays(raw_images: np.ndarray, labels: np.ndarray) -> str:
    """sha256 of the raw data: images as stored (dtype, shape, bytes) followed by the labels.

    Independent of container (gzip or not, IDX or npz with the same arrays give the same value).
    """
    h = hashlib.sha256(FINGERPRINT_VERSION.encode())
    for arr in (np.ascontiguousarray(raw_images), np.ascontiguousarray(labels, dtype="<i8")):
        h.update(f"{arr.dtype.str}{arr.shape}".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


@dataclass(frozen=True, eq=False)
class Dataset:
    """Images in [0,1], integer labels and their class names, identified by a fingerprint.

    Attributes:
        name: dataset name (``digits``, ``mnist``, ...), with the part after a colon for splits
            (``mnist:train``).
        images: float32 array, shape (N, C, H, W), values in [0, 1].
        labels: int64 array, shape (N,), values in [0, K).
        class_names: K names, index = label.
        fingerprint: sha256 identifying exactly these samples (see :func:`fingerprint_arrays`).
        official_test: optional bool mask (N,), True where a sample came from the source's own test
            file; :func:`calib.data.split.split_dataset` then keeps those as the test part.
        official_calibration: optional bool mask (N,), True where the user's explicit split put a
            sample in the calibration part (``X_calibration`` of a ``.npz``).
        source_fingerprint: for a subset (e.g. a part of a split), the fingerprint of the dataset
            it was taken from.
    """

    name: str
    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    fingerprint: str
    official_test: np.ndarray | None = None
    official_calibration: np.ndarray | None = None
    source_fingerprint: str | None = None
    indices: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        validate_arrays(self.images, self.labels, self.class_names, where=self.name)
        object.__setattr__(self, "images", standard_layout(self.images))
        object.__setattr__(self, "labels", self.labels.astype(np.int64, copy=False))
        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        if self.official_test is not None and self.official_test.shape != self.labels.shape:
            raise DataError(f"{self.name}: official_test mask has shape {self.official_test.shape}, "
                            f"expected {self.labels.shape}")
        if self.official_calibration is not None and self.official_calibration.shape != self.labels.shape:
            raise DataError(f"{self.name}: official_calibration mask has shape {self.official_calibration.shape}, "
                            f"expected {self.labels.shape}")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(int(s) for s in self.images.shape[1:])  # type: ignore[return-value]

    def class_counts(self) -> np.ndarray:
        """Number of samples per class, shape (K,)."""
        return np.bincount(self.labels, minlength=self.num_classes)

    def subset(self, indices: np.ndarray, part: str) -> "Dataset":
        """The samples at ``indices`` as a new Dataset named ``<name>:<part>``.

        Its fingerprint hashes the parent fingerprint, the part name and the indices, so two
        different splits of the same data never share a fingerprint.
        """
        idx = np.asarray(indices, dtype=np.int64)
        h = hashlib.sha256(f"{self.fingerprint}:{part}:".encode())
        h.update(idx.astype("<i8").tobytes())
        return Dataset(
            name=f"{self.name.split(':')[0]}:{part}",
            images=self.images[idx],
            labels=self.labels[idx],
            class_names=self.class_names,
            fingerprint=h.hexdigest(),
            source_fingerprint=self.fingerprint,
            indices=idx,
        )

    def describe(self) -> dict:
        """JSON-ready summary: name, count, image shape, classes with counts, fingerprint."""
        counts = self.class_counts()
        return {
            "name": self.name,
            "num_samples": len(self),
            "image_shape": list(self.image_shape),
            "num_classes": self.num_classes,
            "classes": {name: int(c) for name, c in zip(self.class_names, counts)},
            "fingerprint": self.fingerprint,
            "source_fingerprint": self.source_fingerprint,
            "official_test_samples": None if self.official_test is None else int(self.official_test.sum()),
            "official_calibration_samples": None if self.official_calibration is None
            else int(self.official_calibration.sum()),
        }


def standard_layout(images: np.ndarray) -> np.ndarray:
    """``images`` with C-order strides in every dimension (a copy only when needed).

    NumPy calls an (N, 1, H, W) array contiguous whatever the stride of its size-1 channel (``x[:, None]``
    gives 0, a fancy-indexed subset of it the item size), and PyTorch reads such strides as channels-last
    and picks other convolution kernels, whose results differ in the last bit: the same rows would give
    different attacks depending on how they were sliced (one process against a shard, for one)."""
    want = tuple(int(np.prod(images.shape[i + 1:])) * images.itemsize for i in range(images.ndim))
    return images if images.strides == want else np.array(images, order="C")


def validate_arrays(images: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...] | list[str],
                    where: str = "dataset", min_per_class: int = 2) -> None:
    """Raise :class:`DataError` unless images/labels/class names form a usable dataset.

    Checks: float32 (N,C,H,W); finite; within [0,1]; integer labels (N,) in [0,K); K >= 2 names;
    every class has at least ``min_per_class`` samples (distances to a same-class neighbour need 2).
    """
    if not isinstance(images, np.ndarray) or images.ndim != 4:
        shape = getattr(images, "shape", None)
        raise DataError(f"{where}: images must have shape (N, C, H, W); got {shape}")
    if images.dtype != np.float32:
        raise DataError(f"{where}: images must be float32 in [0,1]; got dtype {images.dtype}")
    if not isinstance(labels, np.ndarray) or labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{where}: labels must be a 1-D integer array; got "
                        f"{getattr(labels, 'dtype', type(labels))} with shape {getattr(labels, 'shape', None)}")
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{where}: {images.shape[0]} images but {labels.shape[0]} labels")
    if images.shape[0] == 0:
        raise DataError(f"{where}: no samples")
    if not np.isfinite(images).all():
        bad = int((~np.isfinite(images)).sum())
        raise DataError(f"{where}: images contain {bad} NaN/inf values")
    lo, hi = float(images.min()), float(images.max())
    if lo < 0.0 or hi > 1.0:
        raise DataError(f"{where}: image values must lie in [0,1]; found range [{lo:g}, {hi:g}]")
    k = len(class_names)
    if k < 2:
        raise DataError(f"{where}: need at least 2 classes; got {k}")
    if len(set(class_names)) != k:
        raise DataError(f"{where}: class names are not unique: {list(class_names)}")
    if labels.min() < 0 or labels.max() >= k:
        raise DataError(f"{where}: labels must lie in [0, {k - 1}] for {k} class names; "
                        f"found [{int(labels.min())}, {int(labels.max())}]")
    counts = np.bincount(labels.astype(np.int64), minlength=k)
    small = [(class_names[c], int(counts[c])) for c in range(k) if counts[c] < min_per_class]
    if small:
        desc = ", ".join(f"{n!r} has {c}" for n, c in small)
        raise DataError(f"{where}: every class needs at least {min_per_class} samples; {desc}")
