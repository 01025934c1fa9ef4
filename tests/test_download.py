"""The optional download path, exercised for real through file:// URLs (no network needed)."""
from __future__ import annotations

import hashlib
import urllib.error

import pytest

from calib.data import download, load_dataset
from calib.errors import DataError


def _mirror(tmp_path, mnist_dir):
    files = {}
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        files[name] = hashlib.md5((mnist_dir / name).read_bytes()).hexdigest()
    return mnist_dir.resolve().as_uri() + "/", files


def test_download_verifies_checksums_and_loads(tmp_path, mnist_dir, monkeypatch):
    monkeypatch.setitem(download.RESOURCES, "mnist", _mirror(tmp_path, mnist_dir))
    ds = load_dataset("mnist", tmp_path / "data", download=True)
    assert len(ds) == 10000
    assert sorted(p.name for p in (tmp_path / "data" / "mnist").iterdir()) == [
        "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


def test_download_checksum_mismatch_keeps_nothing(tmp_path, mnist_dir, monkeypatch):
    base, files = _mirror(tmp_path, mnist_dir)
    files = {k: "0" * 32 for k in files}
    monkeypatch.setitem(download.RESOURCES, "mnist", (base, files))
    with pytest.raises(DataError, match="does not match the published"):
        download.download_idx("mnist", tmp_path / "dl")
    assert list((tmp_path / "dl").iterdir()) == []


def test_offline_download_fails_with_one_line(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(download.urllib.request, "urlopen", offline)
    with pytest.raises(DataError) as err:
        download.download_idx("fashion-mnist", tmp_path / "dl")
    msg = str(err.value)
    assert "\n" not in msg and "offline?" in msg and str(tmp_path / "dl") in msg
    assert list((tmp_path / "dl").iterdir()) == []


def test_published_checksums_match_the_shared_files(mnist_dir):
    _, files = download.RESOURCES["mnist"]
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        assert download.md5_file(mnist_dir / name) == files[name]
