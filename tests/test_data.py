"""Datasets: values checked against plain, independent parses of the real files."""
from __future__ import annotations

import gzip
import hashlib

import numpy as np
import pytest
from conftest import write_idx
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.datasets import load_digits as sk_digits

from calib.data import Dataset, load_dataset, read_idx, split_dataset, stratified_indices
from calib.data import sources
from calib.errors import ConfigError, DataError


def test_digits_matches_scikit_learn(digits):
    ref = sk_digits()
    assert digits.images.shape == (1797, 1, 8, 8) and digits.images.dtype == np.float32
    np.testing.assert_array_equal(digits.images[:, 0] * 16, ref.images)
    np.testing.assert_array_equal(digits.labels, ref.target)
    assert digits.class_names == tuple("0123456789")
    assert 0.0 <= digits.images.min() and digits.images.max() <= 1.0


def test_fingerprint_is_sha256_of_raw_data(digits):
    ref = sk_digits()
    raw, y = ref.images.astype(np.uint8), ref.target.astype("<i8")
    h = hashlib.sha256(b"calib-data-v1")
    h.update(f"{raw.dtype.str}{raw.shape}".encode() + raw.tobytes())
    h.update(f"{y.dtype.str}{y.shape}".encode() + y.tobytes())
    assert digits.fingerprint == h.hexdigest()
    assert load_dataset("digits").fingerprint == digits.fingerprint


def test_mnist_t10k_matches_plain_parse(mnist_dir, mnist_raw):
    ds = load_dataset("mnist", mnist_dir)
    img, lab = mnist_raw
    assert ds.images.shape == (10000, 1, 28, 28)
    np.testing.assert_array_equal(ds.images[:, 0], img.astype(np.float32) / 255)
    np.testing.assert_array_equal(ds.labels, lab)
    assert ds.class_counts().tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    # L-inf distances between images are multiples of 1/255 (DESIGN.md)
    d = np.abs(ds.images[0] - ds.images[1]).max() * 255
    assert abs(d - round(d)) < 1e-4
    assert ds.official_test.all()


def test_gzip_and_raw_idx_give_same_data_and_fingerprint(tmp_path, mnist_raw):
    img, lab = mnist_raw[0][:300], mnist_raw[1][:300]
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    write_idx(a / "t10k-images-idx3-ubyte.gz", img), write_idx(a / "t10k-labels-idx1-ubyte.gz", lab)
    write_idx(b / "t10k-images-idx3-ubyte", img, gz=False), write_idx(b / "t10k-labels-idx1-ubyte", lab, gz=False)
    da, db = load_dataset("kmnist", a), load_dataset("kmnist", b)
    np.testing.assert_array_equal(da.images, db.images)
    assert da.fingerprint == db.fingerprint
    assert da.class_names[1] == "ki"


def test_data_dir_subfolder_and_env_var(tmp_path, monkeypatch, mnist_dir):
    monkeypatch.setenv("CALIB_DATA_DIR", str(mnist_dir.parent))  # ../shared/data has mnist/ inside
    assert len(load_dataset("mnist")) == 10000


def test_fashion_mnist_system_folder_is_searched(tmp_path, monkeypatch, mnist_raw):
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", mnist_raw[0][:100])
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", mnist_raw[1][:100])
    monkeypatch.setitem(sources.IDX_SOURCES["fashion-mnist"], "system_dirs", (str(tmp_path),))
    monkeypatch.delenv("CALIB_DATA_DIR", raising=False)
    ds = load_dataset("fashion-mnist")
    assert len(ds) == 100 and ds.class_names[-1] == "Ankle boot"


def test_train_and_test_files_keep_official_test_as_test_part(tmp_path, mnist_raw):
    img, lab = mnist_raw
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", img[:2000])
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", lab[:2000])
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", img[2000:2500])
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", lab[2000:2500])
    ds = load_dataset("mnist", tmp_path)
    assert len(ds) == 2500 and ds.official_test.sum() == 500
    s = split_dataset(ds, seed=3)
    np.testing.assert_array_equal(s.test.indices, np.arange(2000, 2500))
    assert len(s.train) + len(s.calibration) == 2000
    assert abs(len(s.train) / 2000 - 0.7 / 0.85) < 0.01


def test_split_is_stratified_disjoint_and_seeded(digits):
    s = split_dataset(digits, seed=0)
    parts = [s.train.indices, s.calibration.indices, s.test.indices]
    allidx = np.concatenate(parts)
    assert len(np.unique(allidx)) == len(digits) == allidx.size
    for c in range(10):
        n_c = (digits.labels == c).sum()
        for p, frac in zip(parts, (0.7, 0.15, 0.15)):
            assert abs((digits.labels[p] == c).sum() - frac * n_c) <= 1
    np.testing.assert_array_equal(s.test.images, digits.images[s.test.indices])
    again, other = split_dataset(digits, seed=0), split_dataset(digits, seed=1)
    np.testing.assert_array_equal(again.test.indices, s.test.indices)
    assert not np.array_equal(other.test.indices, s.test.indices)
    assert s.train.fingerprint != other.train.fingerprint
    assert s.train.source_fingerprint == digits.fingerprint
    assert s.train.name == "digits:train"


@settings(max_examples=50, deadline=None)
@given(counts=st.lists(st.integers(3, 40), min_size=2, max_size=6),
       f=st.tuples(st.floats(0.05, 1), st.floats(0.05, 1), st.floats(0.05, 1)), seed=st.integers(0, 2**16))
def test_stratified_indices_properties(counts, f, seed):
    labels = np.repeat(np.arange(len(counts)), counts)
    fr = tuple(x / sum(f) for x in f)
    parts = stratified_indices(labels, fr, seed)
    joined = np.concatenate(parts)
    assert np.array_equal(np.sort(joined), np.arange(labels.size))
    for p in parts:  # every class in every part
        assert set(labels[p]) == set(range(len(counts)))


def test_split_rejects_bad_fractions(digits):
    with pytest.raises(ConfigError, match="sum to 1"):
        split_dataset(digits, fractions=(0.5, 0.5, 0.5))


# ---- bad input: precise exceptions ---------------------------------------------------------------

def test_wrong_magic(tmp_path):
    p = tmp_path / "x"
    p.write_bytes(b"\x08\x03\x00\x00" + b"\x00" * 100)
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(p)


def test_truncated_raw_and_gzip(mnist_copy):
    f = mnist_copy / "t10k-images-idx3-ubyte.gz"
    data = gzip.decompress(f.read_bytes())
    raw = mnist_copy / "raw"
    raw.write_bytes(data[:-100])
    with pytest.raises(DataError, match="truncated IDX data"):
        read_idx(raw)
    raw.write_bytes(data + b"\x00")
    with pytest.raises(DataError, match="trailing bytes"):
        read_idx(raw)
    f.write_bytes(f.read_bytes()[:50000])
    with pytest.raises(DataError, match="corrupt or truncated gzip"):
        load_dataset("mnist", mnist_copy)


def test_image_label_count_mismatch(tmp_path, mnist_raw):
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", mnist_raw[0][:100])
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", mnist_raw[1][:99])
    with pytest.raises(DataError, match="100 images but .* 99 labels"):
        load_dataset("mnist", tmp_path)


def test_missing_files(tmp_path, monkeypatch):
    monkeypatch.delenv("CALIB_DATA_DIR", raising=False)
    monkeypatch.setattr(sources, "CACHE_DIR", tmp_path / "cache")
    with pytest.raises(DataError, match="no t10k-images"):
        load_dataset("kmnist", tmp_path)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((3, 2, 2), np.uint8))
    with pytest.raises(DataError, match="not t10k-labels"):
        load_dataset("kmnist", tmp_path)


def test_unknown_dataset():
    with pytest.raises(DataError, match="unknown dataset 'cifar'"):
        load_dataset("cifar")


def _npz(tmp_path, **arrays):
    p = tmp_path / "d.npz"
    np.savez(p, **arrays)
    return p


def test_npz_uint8_and_float(tmp_path, mnist_raw):
    img, lab = mnist_raw[0][:200], mnist_raw[1][:200].astype(np.int64)
    a = load_dataset(str(_npz(tmp_path, X=img, y=lab)))
    b = load_dataset("npz", _npz(tmp_path, X=img.astype(np.float32) / 255, y=lab,
                                 class_names=np.array(list("abcdefghij"))))
    np.testing.assert_allclose(a.images, b.images)
    assert b.class_names[0] == "a" and a.name == "npz:d"


@pytest.mark.parametrize("X, y, match", [
    (np.full((20, 4, 4), np.nan, np.float32), np.arange(20) % 2, "NaN"),
    (np.full((20, 4, 4), 2.0, np.float32), np.arange(20) % 2, r"\[0,1\]"),
    (np.zeros((20, 4, 4), np.int16), np.arange(20) % 2, "uint8"),
    (np.zeros((20, 4, 4), np.uint8), np.r_[np.zeros(19, int), 1], "at least 2 samples"),
    (np.zeros((20, 4, 4), np.uint8), np.arange(21) % 2, "20 images but 21 labels"),
    (np.zeros((20, 4), np.uint8), np.arange(20) % 2, "shape"),
])
def test_npz_bad_content(tmp_path, X, y, match):
    with pytest.raises(DataError, match=match):
        load_dataset("npz", _npz(tmp_path, X=X, y=y))


def test_npz_never_unpickles(tmp_path):
    p = _npz(tmp_path, X=np.zeros((4, 2, 2), np.uint8), y=np.array([0, 0, 1, 1]),
             class_names=np.array([{"a": 1}, {"b": 2}], dtype=object))
    with pytest.raises(DataError, match="pickled"):
        load_dataset("npz", p)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match="not a readable .npz"):
        load_dataset("npz", bad)


def test_dataset_constructor_validates():
    img = np.zeros((4, 1, 2, 2), np.float32)
    with pytest.raises(DataError, match="float32"):
        Dataset("x", img.astype(np.float64), np.array([0, 0, 1, 1]), ("a", "b"), "f")
    with pytest.raises(DataError, match=r"labels must lie in \[0, 1\]"):
        Dataset("x", img, np.array([0, 0, 1, 2]), ("a", "b"), "f")
    with pytest.raises(DataError, match="unique"):
        Dataset("x", img, np.array([0, 0, 1, 1]), ("a", "a"), "f")


def test_npz_truncated_is_not_blamed_on_pickle(tmp_path):
    p = tmp_path / "t.npz"
    p.write_bytes(b"x")
    with pytest.raises(DataError, match="no zip signature") as err:
        load_dataset(str(p))
    assert "pickled" not in str(err.value)
