"""Model artefacts: safetensors + JSON round trip, and every way a bad artefact is refused."""
from __future__ import annotations

import json
import struct

import pytest
import torch

from calib.errors import ArtefactError
from calib.models import build_model, load_model, read_config, save_model, weights_hash
from calib.models import artefact

SPECS = [
    {"kind": "classifier", "arch": "cnn-small", "input_shape": [1, 8, 8], "num_classes": 10},
    {"kind": "classifier", "arch": "cnn", "input_shape": [1, 28, 28], "num_classes": 10},
    {"kind": "embedding", "arch": "cnn-small", "input_shape": [1, 8, 8], "dim": 16},
    {"kind": "embedding", "arch": "cnn", "input_shape": [1, 28, 28], "dim": 64},
]


@pytest.fixture()
def saved(tmp_path):
    torch.manual_seed(0)
    model = build_model(SPECS[0])
    save_model(model, SPECS[0], tmp_path / "clf", metrics={"test_accuracy": 0.5})
    return tmp_path / "clf", model


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s['kind']}-{s['arch']}")
def test_round_trip_same_outputs(tmp_path, spec):
    torch.manual_seed(0)
    model = build_model(spec).eval()
    cfg = save_model(model, spec, tmp_path / "m.json")
    loaded, cfg2 = load_model(tmp_path / "m")
    x = torch.rand(5, *spec["input_shape"])
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert cfg2["weights_sha256"] == cfg["weights_sha256"] == weights_hash(model.state_dict())
    if spec["kind"] == "embedding":
        torch.testing.assert_close(loaded(x).norm(dim=1), torch.ones(5))


def test_weights_file_is_plain_safetensors(saved):
    path, _ = saved
    raw = (path.with_suffix(".safetensors")).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    assert "trunk.0.weight" in header and header["trunk.0.weight"]["dtype"] == "F32"
    assert b"\x80\x04" not in raw[:16]  # no pickle protocol marker at the start


def test_tampered_weights_refused(saved):
    path, _ = saved
    w = path.with_suffix(".safetensors")
    raw = bytearray(w.read_bytes())
    raw[-5] ^= 0xFF
    w.write_bytes(bytes(raw))
    with pytest.raises(ArtefactError, match="sha256 does not match"):
        load_model(path)


def test_truncated_weights_refused_even_with_matching_hash(saved):
    path, _ = saved
    w, j = path.with_suffix(".safetensors"), path.with_suffix(".json")
    w.write_bytes(w.read_bytes()[:1000])
    cfg = json.loads(j.read_text())
    cfg["weights_file_sha256"] = artefact.sha256_file(w)
    j.write_text(json.dumps(cfg))
    with pytest.raises(ArtefactError, match="corrupt safetensors"):
        load_model(path)


def test_corrupt_or_foreign_json_refused(saved):
    path, _ = saved
    j = path.with_suffix(".json")
    good = j.read_text()
    j.write_text(good[:-20])
    with pytest.raises(ArtefactError, match="not valid JSON for model config"):
        load_model(path)
    j.write_text(json.dumps({"hello": 1}))
    with pytest.raises(ArtefactError, match="not a calib model config"):
        read_config(path)
    cfg = json.loads(good)
    cfg["format_version"] = 99
    j.write_text(json.dumps(cfg))
    with pytest.raises(ArtefactError, match="format_version 99"):
        load_model(path)


def test_architecture_mismatch_refused(saved):
    path, _ = saved
    j = path.with_suffix(".json")
    cfg = json.loads(j.read_text())
    cfg["spec"]["num_classes"] = 7
    j.write_text(json.dumps(cfg))
    with pytest.raises(ArtefactError, match="do not match architecture"):
        load_model(path)
    cfg["spec"]["arch"] = "resnet9000"
    j.write_text(json.dumps(cfg))
    with pytest.raises(ArtefactError, match="invalid model spec: unknown architecture"):
        load_model(path)


def test_missing_files(tmp_path, saved):
    path, _ = saved
    with pytest.raises(ArtefactError, match="model config not found"):
        load_model(tmp_path / "nothing")
    path.with_suffix(".safetensors").unlink()
    with pytest.raises(ArtefactError, match="weights file not found"):
        load_model(path)


def test_failed_save_leaves_no_files(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(artefact, "save_file", boom)
    with pytest.raises(OSError):
        save_model(build_model(SPECS[0]), SPECS[0], tmp_path / "clf")
    assert list(tmp_path.iterdir()) == []


def test_architecture_must_fit_input():
    with pytest.raises(ArtefactError, match="does not fit"):
        build_model({"kind": "classifier", "arch": "cnn", "input_shape": [1, 8, 8], "num_classes": 10})
