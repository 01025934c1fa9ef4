"""Reader for the IDX format of MNIST-family files (gzipped or raw).

Format: 2 zero bytes, a type code, the number of dimensions, one big-endian uint32 per dimension,
then the values in C order. The reader checks all of it and refuses truncated or padded files.
"""
from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from calib.errors import DataError

_IDX_TYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_bytes(path: Path) -> bytes:
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as exc:
            raise DataError(f"{path}: corrupt or truncated gzip data ({exc})") from exc
    return raw


def read_idx(path: str | Path, expect_ndim: int | None = None) -> np.ndarray:
    """Read one IDX file into a native-endian numpy array.

    Args:
        path: ``.gz`` (detected by magic bytes, not by name) or raw IDX file.
        expect_ndim: if given, the number of dimensions the file must declare (3 images, 1 labels).

    Raises:
        DataError: unreadable, wrong magic, unknown type code, wrong rank, truncated or padded.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise DataError(f"{path}: truncated IDX file ({len(data)} bytes, no header)")
    zero, code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or code not in _IDX_TYPES:
        raise DataError(f"{path}: not an IDX file (magic 0x{data[:4].hex()}, expected 0x000008NN)")
    if expect_ndim is not None and ndim != expect_ndim:
        raise DataError(f"{path}: IDX file has {ndim} dimensions, expected {expect_ndim}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = _IDX_TYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    payload = len(data) - header
    if payload < expected:
        raise DataError(f"{path}: truncated IDX data ({payload} bytes for shape {dims}, expected {expected})")
    if payload > expected:
        raise DataError(f"{path}: {payload - expected} unexpected trailing bytes after IDX data of shape {dims}")
    arr = np.frombuffer(data, dtype=dtype, count=expected // dtype.itemsize, offset=header)
    return arr.reshape(dims).astype(dtype.newbyteorder("="), copy=True)
