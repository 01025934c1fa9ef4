"""Optional download of the MNIST-family IDX files for users who are online.

Every file is checked against its published md5 before it is moved into place (atomically);
offline, the download fails with one line saying where to put the files instead.
"""
from __future__ import annotations

import hashlib
import logging
import urllib.error
import urllib.request
from pathlib import Path

from calib.errors import DataError
from calib.io import atomic_path

log = logging.getLogger(__name__)

#: name -> (mirror base URL, {file name: published md5})
RESOURCES: dict[str, tuple[str, dict[str, str]]] = {
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/", {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    }),
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/", {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    }),
    "kmnist": ("http://codh.rois.ac.jp/kmnist/dataset/kmnist/", {
        "train-images-idx3-ubyte.gz": "bdb82020997e1d708af4cf47b453dcf7",
        "train-labels-idx1-ubyte.gz": "e144d726b3acfaa3e44228e80efcd344",
        "t10k-images-idx3-ubyte.gz": "5c965bf0a639b31b8f53240b1b52f4d7",
        "t10k-labels-idx1-ubyte.gz": "7320c461ea6c1c855c0b718fb2a4b134",
    }),
}


def md5_file(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def download_idx(name: str, dest: Path, timeout: float = 30.0) -> Path:
    """Download the four IDX files of ``name`` into ``dest``, verifying published md5 sums.

    Files already present with the right checksum are kept. Returns ``dest``.

    Raises:
        DataError: unknown dataset, network failure (one line: where to put the files instead),
            or a checksum mismatch (the bad file is not kept).
    """
    if name not in RESOURCES:
        raise DataError(f"no download source for dataset {name!r}; known: {sorted(RESOURCES)}")
    base, files = RESOURCES[name]
    dest.mkdir(parents=True, exist_ok=True)
    for fname, md5 in files.items():
        target = dest / fname
        if target.exists() and md5_file(target) == md5:
            continue
        url = base + fname
        log.info("downloading %s", url)
        with atomic_path(target) as tmp:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as resp, open(tmp, "wb") as out:
                    while block := resp.read(1 << 20):
                        out.write(block)
            except (urllib.error.URLError, OSError, TimeoutError) as exc:
                reason = getattr(exc, "reason", exc)
                raise DataError(f"cannot download {name} from {url} ({reason}); offline? put the files "
                                f"{', '.join(files)} in {dest} or pass --data-dir") from exc
            got = md5_file(tmp)
            if got != md5:
                raise DataError(f"{url}: md5 {got} does not match the published {md5}; file discarded")
    return dest
