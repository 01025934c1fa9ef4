"""Model artefacts: safetensors weights + a JSON config. Nothing is ever unpickled.

On disk, a model named ``classifier`` in folder ``out`` is ``out/classifier.safetensors`` and
``out/classifier.json``. The JSON holds the architecture spec (enough to rebuild the network),
classes, data fingerprint, training parameters, metrics, versions, the sha256 of the weights file
(tamper check on load) and ``weights_sha256``, a hash of the tensors alone (name, dtype, shape,
bytes in name order) that is equal for equal weights whatever the file layout.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from calib.errors import ArtefactError
from calib.io import atomic_path, read_json, sha256_file, versions, write_json
from calib.models.nets import build_model

FORMAT = "calib-model"
FORMAT_VERSION = 1


def weights_hash(state: dict[str, torch.Tensor]) -> str:
    """sha256 over (name, dtype, shape, little-endian bytes) of each tensor, in name order."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.view(torch.int16).numpy().tobytes())
    return h.hexdigest()


def _paths(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    p = Path(path)
    if p.suffix in (".json", ".safetensors"):
        p = p.with_suffix("")
    return p.with_suffix(".safetensors"), p.with_suffix(".json")


def save_model(model: nn.Module, spec: dict[str, Any], path: str | os.PathLike[str],
               **info: Any) -> dict[str, Any]:
    """Write ``path.safetensors`` and ``path.json`` atomically; return the JSON config written.

    Args:
        model: network built from ``spec`` (see :func:`calib.models.nets.build_model`).
        spec: architecture spec, stored under ``"spec"``.
        path: artefact path without suffix (``out/classifier``); a ``.json``/``.safetensors``
            suffix is accepted and ignored.
        **info: JSON-serialisable extras (``classes``, ``data_fingerprint``, ``training``,
            ``metrics``...), stored at top level.
    """
    wpath, jpath = _paths(path)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic_path(wpath) as tmp:
        save_file(state, str(tmp), metadata={"format": FORMAT})
        file_hash = sha256_file(tmp)
    config = {"format": FORMAT, "format_version": FORMAT_VERSION, "spec": spec,
              "weights_file": wpath.name, "weights_file_sha256": file_hash,
              "weights_sha256": weights_hash(state), "versions": versions(), **info}
    write_json(jpath, config)
    return config


def read_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check an artefact's JSON config (not the weights)."""
    _, jpath = _paths(path)
    config = read_json(jpath, ArtefactError, "model config")
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ArtefactError(f"{jpath}: not a calib model config (format field is not {FORMAT!r})")
    if config.get("format_version") != FORMAT_VERSION:
        raise ArtefactError(f"{jpath}: format_version {config.get('format_version')!r} is not supported "
                            f"(expected {FORMAT_VERSION})")
    for key in ("spec", "weights_file", "weights_file_sha256", "weights_sha256"):
        if key not in config:
            raise ArtefactError(f"{jpath}: missing field {key!r}")
    return config


def load_model(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Load an artefact written by :func:`save_model`; returns (model in eval mode, config).

    The weights file must have the sha256 recorded in the config (so a swapped or edited file is
    refused) and its tensors must match the architecture exactly.

    Raises:
        ArtefactError: missing, corrupt, tampered or mismatched files.
    """
    config = read_config(path)
    _, jpath = _paths(path)
    wpath = jpath.parent / Path(config["weights_file"]).name
    if not wpath.is_file():
        raise ArtefactError(f"weights file not found: {wpath}")
    if sha256_file(wpath) != config["weights_file_sha256"]:
        raise ArtefactError(f"{wpath}: sha256 does not match {jpath.name}; the weights were modified or "
                            "belong to another model")
    try:
        state = load_file(str(wpath))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ArtefactError(f"{wpath}: corrupt safetensors file ({exc})") from exc
    model = build_model(config["spec"])
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ArtefactError(f"{wpath}: tensors do not match architecture {config['spec'].get('arch')!r} "
                            f"({first})") from exc
    if weights_hash(state) != config["weights_sha256"]:
        raise ArtefactError(f"{wpath}: tensor hash does not match {jpath.name}")
    return model.to(device).eval(), config
