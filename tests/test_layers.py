"""Dependencies point one way: each calib layer imports only layers below it (imports anywhere in a
module count, functions included; ``if TYPE_CHECKING:`` blocks do not)."""
from __future__ import annotations

from pathlib import Path

import pytest

import calib
from calib.pipeline.cache import _imports_of

#: bottom to top: the pipeline's order (data -> models -> train -> stats -> budgets -> attacks -> audit
#: -> report) with the shared layers where their lowest user needs them (the run folder below the audit
#: and the people, who open runs through it), and the glue on top (the pipeline, experiments, the CLI)
LAYERS = [("errors", "io", "progress", "device", "distributed"), ("data",), ("models",), ("perturb",), ("train",), ("stats",),
          ("judges",), ("budgets",), ("attacks",), ("interop",), ("runfolder",), ("audit",), ("human",), ("report",),
          ("pipeline",), ("experiments",), ("cli",), ("__main__",)]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}
ROOT = Path(calib.__file__).parent


def _modules() -> list[str]:
    return sorted(("calib." + ".".join(p.relative_to(ROOT).with_suffix("").parts)).removesuffix(".__init__")
                  for p in ROOT.rglob("*.py"))


def _layer(module: str) -> str:
    return module.split(".")[1]


def test_every_package_has_a_layer():
    assert {_layer(m) for m in _modules() if m.count(".")} <= set(RANK)


@pytest.mark.parametrize("module", [m for m in _modules() if m.count(".")])
def test_imports_point_down(module):
    here = RANK[_layer(module)]
    up = [m for m in _imports_of(module, "calib") if m != "calib" and RANK[_layer(m)] > here]
    assert not up, f"{module} (layer {_layer(module)}) imports higher layers: {up}"


def test_the_check_sees_an_upward_import(tmp_path, monkeypatch):
    """The rule is not vacuous: a low-layer module importing a higher one (inside a function) is caught."""
    from calib.pipeline import cache as pc

    target, real = pc._module_file("calib.stats.kernels"), pc._read_source
    monkeypatch.setattr(pc, "_read_source", lambda p: real(p) + (b"\ndef _x():\n    from calib.report import build\n"
                                                                  if p == target else b""))
    pc._imports_of.cache_clear()
    try:
        with pytest.raises(AssertionError, match="imports higher layers: \\['calib.report.build'"):
            test_imports_point_down("calib.stats.kernels")
    finally:
        pc._imports_of.cache_clear()
