"""Every Python snippet of the README runs, as written, on the folder the quick start writes."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), re.S)


def test_the_readme_has_snippets():
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_readme_snippet_runs(i, tiny_run, tmp_path, monkeypatch):
    shutil.copytree(tiny_run[0], tmp_path / "reports" / "digits-seed0")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(BLOCKS[i], f"README.md python block {i + 1}", "exec"), namespace)  # noqa: S102 - our own README
    if "make" in namespace:  # the classifier-of-your-own example
        assert namespace["make"]()(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    if "x_adv" in namespace:
        assert namespace["x_adv"].dtype == torch.float32 and namespace["x_adv"].shape == namespace["x"].shape
