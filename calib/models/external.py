"""A researcher's own classifier: ``PACKAGE.MODULE:FACTORY`` plus safetensors weights.

Convention (RobustBench / AutoAttack): ``FACTORY()`` returns an ``nn.Module`` that maps images
(N, C, H, W) in [0, 1] to logits (N, K); any normalisation happens inside its ``forward``. calib
attacks that module as it is, so every epsilon is in the [0, 1] units of the data.

The module is imported by name, with the current folder first on ``sys.path`` (so a module file
beside the command works), or from a path: ``path/to/models.py:make``. Its source file's sha256 is
recorded, and a run whose module file changed later refuses to rebuild the model. Weights come from a
safetensors file only (nothing is unpickled) and must fit the module exactly (``strict``).

Importing a module runs its code: pass only modules you trust, as with any Python import.

Every failure is a :class:`~calib.errors.ConfigError` (exit 2 from the CLI) that names the problem:
a module that cannot be imported, a missing or failing factory, a factory that returns no module,
weights that do not fit, an output that is not (N, K) logits.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from calib.errors import ArtefactError, ConfigError

log = logging.getLogger(__name__)

KIND = "external"
_SPEC = re.compile(r"^(?P<module>[^:]+):(?P<factory>[A-Za-z_][A-Za-z0-9_]*)$")


def parse(spec: str) -> tuple[str, str]:
    """``"pkg.mod:make"`` or ``"path/to/file.py:make"`` -> (module or path, factory name)."""
    m = _SPEC.match(spec.strip()) if isinstance(spec, str) else None
    if m is None:
        raise ConfigError(f"--classifier {spec!r}: expected PACKAGE.MODULE:FACTORY (or path/to/file.py:FACTORY)")
    return m["module"], m["factory"]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _import(module: str, module_file: str | None = None) -> Any:
    """Import ``module`` (a dotted name, with the current folder on the path, or a ``.py`` path)."""
    if module.endswith(".py") or os.sep in module:
        path = Path(module if module.endswith(".py") else module_file or module)
        if not path.is_file():
            raise ConfigError(f"classifier module file not found: {path}")
        name = f"calib_user_{path.stem}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ConfigError(f"cannot import classifier module {path}")
        mod = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(mod)
        except Exception as exc:  # noqa: BLE001 - user code: any failure is the user's to fix
            raise ConfigError(f"cannot import classifier module {path} ({_first_line(exc)})") from exc
        return mod
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001
        if module_file and Path(module_file).is_file():  # a saved run opened from another folder
            return _import(str(module_file))
        raise ConfigError(f"cannot import classifier module {module!r} ({_first_line(exc)}); it must be importable "
                          "from the current folder or PYTHONPATH, or give path/to/file.py:FACTORY") from exc
    finally:
        if added and sys.path and sys.path[0] == cwd:
            sys.path.pop(0)


def module_file(spec: str) -> Path | None:
    """The source file of the module ``spec`` names (imported to find it), or None."""
    module, _ = parse(spec)
    mod = _import(module)
    f = getattr(mod, "__file__", None)
    return Path(f).resolve() if f else None


def build(spec: str, module_path: str | None = None) -> nn.Module:
    """Call the factory; the result must be an ``nn.Module``."""
    module, factory = parse(spec)
    mod = _import(module, module_path)
    fn = getattr(mod, factory, None)
    if fn is None or not callable(fn):
        raise ConfigError(f"classifier module {module!r} has no callable {factory!r}")
    try:
        model = fn()
    except Exception as exc:  # noqa: BLE001 - user code
        raise ConfigError(f"classifier factory {spec} raised {_first_line(exc)}") from exc
    if not isinstance(model, nn.Module):
        raise ConfigError(f"classifier factory {spec} returned {type(model).__name__}, not a torch nn.Module")
    return model


def load_weights(model: nn.Module, weights: str | os.PathLike[str], spec: str) -> nn.Module:
    """Load a safetensors file into ``model`` (strict: every tensor, every shape)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(weights)
    if path.suffix != ".safetensors":
        raise ConfigError(f"--classifier-weights {path}: weights must be a .safetensors file (calib never unpickles "
                          "a .pt/.pth); convert with safetensors.torch.save_file(model.state_dict(), PATH)")
    if not path.is_file():
        raise ConfigError(f"classifier weights not found: {path}")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not a readable safetensors file ({_first_line(exc)})") from exc
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [(k, tuple(state[k].shape), tuple(own[k].shape)) for k in sorted(set(own) & set(state))
             if state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            k, a, b = wrong[0]
            parts.append(f"{k} is {a} in the file but {b} in the model" + (f" (+{len(wrong) - 1} more)" if
                                                                            len(wrong) > 1 else ""))
        if missing:
            parts.append(f"missing {missing[:3]}" + ("…" if len(missing) > 3 else ""))
        if unexpected:
            parts.append(f"unexpected {unexpected[:3]}" + ("…" if len(unexpected) > 3 else ""))
        raise ConfigError(f"the weights {path.name} do not fit {spec}: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)
    return model


def check_output(model: nn.Module, images: np.ndarray, num_classes: int, spec: str) -> None:
    """The model must map (n, C, H, W) in [0,1] to finite (n, num_classes) logits."""
    x = torch.from_numpy(np.ascontiguousarray(images[:8], np.float32))
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as exc:  # noqa: BLE001 - user code
        raise ConfigError(f"classifier {spec} fails on images of shape {tuple(x.shape)} ({_first_line(exc)})") from exc
    if not torch.is_tensor(out) or out.dim() != 2 or out.shape != (x.shape[0], num_classes):
        shape = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
        raise ConfigError(f"classifier {spec} returns {shape} for {x.shape[0]} images; expected "
                          f"({x.shape[0]}, {num_classes}) logits, one per class")
    if not torch.isfinite(out).all():
        raise ConfigError(f"classifier {spec} returns NaN or inf logits")


def load_external(spec: str, weights: str | os.PathLike[str], images: np.ndarray, num_classes: int) -> nn.Module:
    """Build, load and check a user classifier (see the module docstring) in eval mode."""
    model = load_weights(build(spec), weights, spec)
    check_output(model, images, num_classes, spec)
    return model.eval()


def rebuild(model_spec: dict[str, Any]) -> nn.Module:
    """The network of a saved external-classifier artefact (``spec`` written by the run), refusing a
    module file that changed since."""
    from calib.io import sha256_file

    factory, path, digest = model_spec.get("factory"), model_spec.get("module_file"), model_spec.get("module_sha256")
    if not factory:
        raise ArtefactError("invalid model spec: an external classifier needs its factory")
    if path and digest and Path(path).is_file() and sha256_file(path) != digest:
        raise ArtefactError(f"the classifier module {path} changed since the run (sha256 differs); re-run "
                            "`calib run` with the module as it is now")
    try:
        return build(factory, path)
    except ConfigError as exc:
        raise ArtefactError(str(exc)) from exc
