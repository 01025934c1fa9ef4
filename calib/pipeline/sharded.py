"""The run's per-point data-parallel tasks (:mod:`calib.distributed`): a judge's invariance and
adversarial radii sharded by point (training with DistributedDataParallel is the model stages' own
task, :mod:`calib.pipeline.stages.models`). With one process each function is the plain computation;
under torchrun the leader submits it and every rank runs its share."""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np

from calib import distributed as D

if TYPE_CHECKING:
    from calib.budgets.invariance import Invariance
    from calib.budgets.semantic import Radii
    from calib.judges import Judge, JudgeConfig
    from calib.runfolder import RunFolder

#: judges a follower built, by (run folder, judge name, judge config, the judge's description with its
#: weights' hashes): built once per run and model
_JUDGES: dict[tuple[str, str, str, str], Any] = {}


def _judge_key(folder_path: str, name: str, config: JudgeConfig, stamp: str) -> tuple[str, str, str, str]:
    return str(folder_path), name, json.dumps(asdict(config), sort_keys=True), stamp


def _judge_of(header: dict[str, Any]) -> Judge:
    from calib.judges import JudgeConfig
    from calib.runfolder import RunFolder

    cfg = header["judge_config"]
    config = JudgeConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()})
    key = _judge_key(header["run"], header["judge"], config, header["stamp"])
    if key not in _JUDGES:
        folder = RunFolder.open(header["run"], device=D.rank_device(header["device"]))
        judge = folder.judge(header["judge"], config)
        _JUDGES.clear()  # one judge at a time
        _JUDGES[key] = judge
    return _JUDGES[key]


def _header(folder: RunFolder, judge: Judge, config: JudgeConfig) -> dict[str, Any]:
    stamp = json.dumps(judge.describe(), sort_keys=True, default=str)
    _JUDGES[_judge_key(str(folder.path), judge.name, config, stamp)] = judge  # the leader's own, not rebuilt
    return {"run": str(folder.path), "judge": judge.name, "judge_config": asdict(config), "device": folder.device,
            "stamp": stamp}


# ---- invariance radii ------------------------------------------------------------------------------------
@D.point_task("invariance-radii")
def _invariance_chunk(h: dict[str, Any], a: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    from calib.budgets.invariance import invariance_radii

    judge = _judge_of(h)
    inv = invariance_radii(judge, a["x"], a["y"], a["images"], a["targets"], h["norm"], iters=h["iters"],
                           device=D.rank_device(h["device"]))
    return ({"radius": inv.radius, "target_class": inv.target_class, "witnesses": inv.witnesses,
             "clean_wrong": inv.clean_wrong}, inv.info)


def invariance(folder: RunFolder, judge: Judge, config: JudgeConfig, x: np.ndarray, y: np.ndarray,
               images: np.ndarray, targets: np.ndarray, norm: str, iters: int, progress: bool,
               aligned: bool = False) -> Invariance:
    """:func:`calib.budgets.invariance.invariance_radii`, sharded by point under torchrun. ``aligned``:
    ``images`` holds K targets per point (:func:`calib.budgets.alignment.aligned_targets`), not a shared
    reference set."""
    from calib.budgets.invariance import Invariance, invariance_radii

    if not D.world().parallel:
        return invariance_radii(judge, x, y, images, targets, norm, iters=iters, device=folder.device,
                                show_progress=progress)
    t0 = time.perf_counter()
    # the targets index into images: each chunk gets its own rows of aligned targets, or the shared set
    arrays = {"x": x, "y": y, "targets": targets}
    if not aligned:
        header = {**_header(folder, judge, config), "norm": norm, "iters": iters, "shared_images": True}
        out = _map_shared(header, arrays, images)
    else:
        local = np.arange(targets.size, dtype=np.int64).reshape(targets.shape) - \
            (np.arange(len(x))[:, None] * targets.shape[1])
        local[targets < 0] = -1
        arrays |= {"targets": local, "images": images.reshape(len(x), targets.shape[1], *images.shape[1:])}
        out = D.map_points("invariance-radii-aligned", {**_header(folder, judge, config), "norm": norm,
                                                          "iters": iters}, arrays)
    info = D.merge_info(out.pop("__info__"), time.perf_counter() - t0)
    return Invariance(norm, out["radius"], out["target_class"], out["witnesses"], out["clean_wrong"].astype(bool), info)


def _map_shared(header: dict[str, Any], arrays: dict[str, np.ndarray], images: np.ndarray) -> dict[str, np.ndarray]:
    """Points sharded; the reference images they move toward (only those used) go whole to every chunk."""
    used = np.unique(arrays["targets"][arrays["targets"] >= 0])
    remap = np.full(len(images), -1, np.int64)
    remap[used] = np.arange(len(used))
    t = np.where(arrays["targets"] >= 0, remap[np.maximum(arrays["targets"], 0)], -1)
    return D.map_points("invariance-radii", {**header, "shared": ["images"]},
                        {**arrays, "targets": t, "images": images[used]})


@D.point_task("invariance-radii-aligned")
def _aligned_chunk(h: dict[str, Any], a: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    n, k = a["targets"].shape
    images = a["images"].reshape(n * k, *a["images"].shape[2:])
    t = np.where(a["targets"] >= 0, a["targets"] + np.arange(n)[:, None] * k, -1)
    return _invariance_chunk(h, {"x": a["x"], "y": a["y"], "images": images, "targets": t})


# ---- adversarial radii ----------------------------------------------------------------------------------
@D.point_task("adversarial-radii")
def _adversarial_chunk(h: dict[str, Any], a: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    from calib.budgets.semantic import robustness_radii

    r = robustness_radii(_judge_of(h), a["x"], a["y"], h["norm"], start=a["start"], seed=h["seed"],
                         device=D.rank_device(h["device"]), **h["settings"])
    out = {"empirical": r.empirical, "clean_wrong": r.clean_wrong, "witnesses": r.witnesses}
    if r.certified is not None:
        out["certified"] = r.certified
    return out, {**r.info, "checked": r.checked}


def adversarial(folder: RunFolder, judge: Judge, config: JudgeConfig, x: np.ndarray, y: np.ndarray, norm: str,
                start: np.ndarray, seed: int, progress: bool, **settings: Any) -> Radii:
    """:func:`calib.budgets.semantic.robustness_radii`, sharded by point under torchrun (each chunk a whole
    number of its batches, seeded per batch: the same radii as one process)."""
    from calib.budgets.semantic import Radii, robustness_radii

    if not D.world().parallel:
        return robustness_radii(judge, x, y, norm, start=start, seed=seed, device=folder.device,
                                show_progress=progress, **settings)
    t0 = time.perf_counter()
    out = D.map_points("adversarial-radii", {**_header(folder, judge, config), "norm": norm, "seed": seed,
                                             "settings": settings}, {"x": x, "y": y, "start": start})
    infos = out.pop("__info__")
    info = D.merge_info(infos, time.perf_counter() - t0)
    checked = int(info.pop("checked", 0))
    return Radii(norm, out["empirical"], out.get("certified"), out["clean_wrong"].astype(bool), out["witnesses"],
                 checked, info)


#: the functions the semantic stage runs through here (hashed by source: opening a run folder on a follower
#: must not make the stage depend on every module the folder imports)
CODE = (_judge_of, _header, _invariance_chunk, invariance, _map_shared, _aligned_chunk, _adversarial_chunk,
        adversarial)

__all__ = ["invariance", "adversarial"]
