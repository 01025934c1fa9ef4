"""The run's per-point data-parallel tasks (:mod:`calib.distributed`): a judge's invariance and
adversarial radii, the headline's attacks and their audits, sharded by point (training with
DistributedDataParallel is the model stages' own task, :mod:`calib.pipeline.stages.models`).

Each computation runs in chunks of :data:`calib.distributed.CHUNK` points, one process or many: the
radii and the attacks in batches that divide a chunk, seeded per batch, and the audit chunk by chunk
(one process runs every chunk itself), so N processes give exactly what one computes at the same
thread count. Under torchrun the leader submits a task and every rank runs its share; the followers
open the run folder read-only and build the models, the judge and the audit's reference set from it."""
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


# ---- statistics ---------------------------------------------------------------------------------------------
@D.point_task("same-diff")
def _same_diff_chunk(h: dict[str, Any], a: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    from calib.stats.neighbours import same_diff as plain

    nn = plain(a["query"], a["query_labels"], a["reference"], a["reference_labels"], h["norm"],
               self_match=h["self_match"], backend=h["backend"], use_gpu=h["use_gpu"],
               image_shape=tuple(h["image_shape"]) if h["image_shape"] else None,
               self_index=a["self_index"] if h["self_match"] else None)
    return asdict(nn), {}


def same_diff(query: np.ndarray, query_labels: np.ndarray, reference: np.ndarray, reference_labels: np.ndarray,
              norm: str = "l2", *, self_match: bool = False, backend: str = "auto", use_gpu: bool = False,
              image_shape: tuple[int, ...] | None = None, self_index: np.ndarray | None = None) -> Any:
    """:func:`calib.stats.neighbours.same_diff`, sharded by query under torchrun: each rank searches one
    contiguous block of the queries against the whole reference set. The distances are exact (float64
    re-ranking, exact kernels), so they equal one process's; so do the neighbours, but for a query with
    two references at exactly the same distance, where either may be named."""
    from calib.stats.neighbours import SameDiff
    from calib.stats.neighbours import same_diff as plain

    if not D.world().parallel or len(query) == 0:
        return plain(query, query_labels, reference, reference_labels, norm, self_match=self_match,
                     backend=backend, use_gpu=use_gpu, image_shape=image_shape, self_index=self_index)
    if self_match and self_index is None:
        self_index = np.arange(len(query))
    header = {"norm": norm, "self_match": self_match, "backend": backend, "use_gpu": use_gpu,
              "image_shape": list(image_shape) if image_shape else None, "shared": ["reference", "reference_labels"],
              "chunk": D.even_chunk(len(query))}
    arrays = {"query": query, "query_labels": np.asarray(query_labels, np.int64), "reference": reference,
              "reference_labels": np.asarray(reference_labels, np.int64)}
    if self_match:
        arrays["self_index"] = np.asarray(self_index, np.int64)
    out = D.map_points("same-diff", header, arrays)
    out.pop("__info__")
    return SameDiff(**out)


#: the leader's progress callback while its own share of a matrix task runs (followers report none)
_ON_BLOCK: list[Any] = [None]


@D.task("matrix-pieces")
def _matrix_pieces_task(h: dict[str, Any], a: dict[str, np.ndarray]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    from calib.stats.pairwise import exact_pieces

    w = D.world()
    mine = [p for p in range(int(h["n_pieces"])) if p % w.size == w.rank]
    part = exact_pieces(a["x"], a["labels"], h["norm"], int(h["k"]), mine, block=int(h["block"]),
                        bins=int(h["bins"]), width=float(h["width"]), on_block=_ON_BLOCK[0] if w.leader else None)
    hist = part.pop("hist")
    nz = np.flatnonzero(hist)  # most of the K * K * bins histogram is empty: send what is not
    return {}, {**part, "hist_index": nz, "hist_count": hist[nz]}


def matrix_pieces(x: np.ndarray, labels: np.ndarray, norm: str, k: int, n_pieces: int, *, block: int, bins: int,
                  width: float, on_block: Any = None) -> list[dict[str, np.ndarray]]:
    """The exact class-pair matrices' pieces (:func:`calib.stats.pairwise.exact_pieces`), dealt round-robin
    over the torchrun ranks; :func:`calib.stats.pairwise.reduce_exact` adds their sums in one fixed order,
    so the matrices are one process's, bit for bit. One process computes them all here."""
    from calib.stats.pairwise import exact_pieces

    if not D.world().parallel:
        return [exact_pieces(x, labels, norm, k, range(n_pieces), block=block, bins=bins, width=width,
                             on_block=on_block)]
    _ON_BLOCK[0] = on_block
    try:
        results = D.submit("matrix-pieces", {"norm": norm, "k": k, "n_pieces": n_pieces, "block": block,
                                             "bins": bins, "width": width}, {"x": x, "labels": labels})
    finally:
        _ON_BLOCK[0] = None
    parts = []
    for r, (_, a) in enumerate(results):
        hist = np.zeros(k * k * bins, np.int64)
        hist[a.pop("hist_index")] = a.pop("hist_count")
        parts.append({**a, "hist": hist})
        if r > 0 and on_block:  # the other ranks' pieces, reported when they arrive
            for _ in range(len(a["pieces"])):
                on_block()
    return parts


# ---- the run folder on a follower -------------------------------------------------------------------------
#: run folders a follower opened, by (run folder, device, the classifier's and embedding's weights hashes)
_FOLDERS: dict[tuple[str, str, str], Any] = {}
#: audit reference sets, by the same key
_REFERENCES: dict[tuple[str, str, str], Any] = {}


def _models_stamp(folder: RunFolder) -> str:
    return json.dumps({m: folder.model_config(m)["weights_sha256"] for m in ("classifier", "embedding")
                       if folder.has_model(m)}, sort_keys=True)


def _folder_header(folder: RunFolder) -> dict[str, Any]:
    """What a follower needs to open ``folder`` as the leader has it (the leader's own folder and, if it
    built one, its reference set are registered, not rebuilt)."""
    stamp = _models_stamp(folder)
    key = (str(folder.path), folder.device, stamp)
    _FOLDERS[key] = folder
    if getattr(folder, "_reference", None) is not None:
        _REFERENCES[key] = folder._reference
    return {"run": str(folder.path), "device": folder.device, "models_stamp": stamp}


def _folder_of(h: dict[str, Any]) -> RunFolder:
    from calib.runfolder import RunFolder

    key = (h["run"], h["device"], h["models_stamp"])
    if key not in _FOLDERS:
        folder = RunFolder.open(h["run"], device=D.rank_device(h["device"]))
        if _models_stamp(folder) != h["models_stamp"]:
            raise AssertionError(f"rank {D.world().rank}: the run's models changed under the leader")  # a bug
        _FOLDERS.clear()
        _REFERENCES.clear()
        _FOLDERS[key] = folder
    return _FOLDERS[key]


def _reference_of(h: dict[str, Any]) -> Any:
    key = (h["run"], h["device"], h["models_stamp"])
    if key not in _REFERENCES:
        from calib.audit import build_reference

        folder = _folder_of(h)
        tr = folder.splits.train
        _REFERENCES[key] = build_reference(folder.model("classifier"), {"g": folder.model("embedding")},
                                           tr.images, tr.labels, D.rank_device(h["device"]))
    return _REFERENCES[key]


# ---- attacks ------------------------------------------------------------------------------------------------
@D.point_task("attack")
def _attack_chunk(h: dict[str, Any], a: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    from calib.attacks.runner import AttackSpec, attack_batches

    folder = _folder_of(h)
    spec = AttackSpec(**h["spec"])
    embedding = folder.model("embedding") if "embedding" in spec.models else None
    arrays, proj = attack_batches(spec, folder.model("classifier"), embedding, a["x"], a["y"],
                                  eps=a.get("eps"), batch_size=D.CHUNK, device=D.rank_device(h["device"]),
                                  show_progress=False)
    return arrays, {"projection": proj}


def attack(folder: RunFolder, spec: Any, x: np.ndarray, y: np.ndarray, eps: np.ndarray | None,
           progress: bool) -> dict[str, Any]:
    """:func:`calib.attacks.runner.run_attack` with the run's models on (N, C, H, W) ``x``, (N,) ``y``
    under ``spec.eps`` or the (N,) budgets ``eps``, in batches of one chunk, sharded by point under
    torchrun (every batch is seeded with ``spec.seed``: the same examples as one process)."""
    from calib.attacks.runner import run_attack, summarise_attack

    if not D.world().parallel:
        embedding = folder.model("embedding") if "embedding" in spec.models else None
        return run_attack(spec, folder.model("classifier"), embedding, x, y, eps=eps, batch_size=D.CHUNK,
                          device=folder.device, show_progress=progress)
    t0 = time.perf_counter()
    arrays = {"x": x, "y": y} | ({"eps": np.asarray(eps, np.float32)} if eps is not None else {})
    out = D.map_points("attack", {**_folder_header(folder), "spec": asdict(spec)}, arrays)
    proj: dict[str, float] = {}
    for info in out.pop("__info__"):  # summed in chunk order, as one process sums its batches
        for key, v in info["projection"].items():
            proj[key] = proj.get(key, 0) + v
    return summarise_attack(spec, x, y, out, proj, time.perf_counter() - t0, int(y.max(initial=-1)) + 1,
                            "global" if spec.eps is not None else "eps table")


# ---- audits -------------------------------------------------------------------------------------------------
@D.point_task("audit")
def _audit_chunk(h: dict[str, Any], a: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    from calib.audit import AuditConfig, SsimThresholds, audit

    folder = _folder_of(h)
    t = h["thresholds"]
    r = audit(a["x"], a["x_adv"], a["y"], a["pred_adv"], norm=h["norm"], eps=a["eps"], reference=_reference_of(h),
              judge=_judge_of(h), config=AuditConfig(**h["config"]), ball_space=h["ball_space"],
              embedding=folder.model("embedding") if h["ball_space"] == "embedding" else None,
              num_classes=h["num_classes"], device=D.rank_device(h["device"]),
              pred_clean=a["pred_clean"] if "pred_clean" in a else None,
              thresholds=SsimThresholds(tuple(t["values"]), tuple(t["sources"])))
    return r.arrays, r.meta


def audit(folder: RunFolder, judge: Judge, judge_config: JudgeConfig, x: np.ndarray, x_adv: np.ndarray,
          y: np.ndarray, pred_adv: np.ndarray, eps: np.ndarray, pred_clean: np.ndarray | None, *, norm: str,
          config: Any, ball_space: str, thresholds: Any) -> Any:
    """:func:`calib.audit.audit` of one attack's outputs against the run's reference set (its training
    part), chunk by chunk, sharded by point under torchrun; the arguments as there."""
    from calib.audit import AuditResult

    header = {**_header(folder, judge, judge_config), **_folder_header(folder), "norm": norm,
              "config": asdict(config), "ball_space": ball_space, "num_classes": len(folder.class_names),
              "thresholds": {"values": list(thresholds.values), "sources": list(thresholds.sources)}}
    arrays = {"x": x, "x_adv": x_adv, "y": y, "pred_adv": pred_adv, "eps": np.asarray(eps, np.float64)}
    if pred_clean is not None:
        arrays["pred_clean"] = pred_clean
    out = D.map_points("audit", header, arrays)
    metas = out.pop("__info__")
    if any(json.dumps(m, sort_keys=True, default=str) != json.dumps(metas[0], sort_keys=True, default=str)
           for m in metas):
        raise AssertionError("audit chunks disagree on the audit's settings")  # a bug, not user input
    return AuditResult(out, dict(metas[0]) if metas else {})


#: the functions the semantic stage runs through here (hashed by source: opening a run folder on a follower
#: must not make the stage depend on every module the folder imports)
CODE = (_judge_of, _header, _invariance_chunk, invariance, _map_shared, _aligned_chunk, _adversarial_chunk,
        adversarial)
#: the functions the statistics stage runs through here
STATS_CODE = (_same_diff_chunk, same_diff, _matrix_pieces_task, matrix_pieces)
#: the functions the attack and audit stages run through here
ATTACK_CODE = (_models_stamp, _folder_header, _folder_of, _attack_chunk, attack)
AUDIT_CODE = (_judge_of, _header, _models_stamp, _folder_header, _folder_of, _reference_of, _audit_chunk, audit)

__all__ = ["invariance", "adversarial", "attack", "audit", "same_diff", "matrix_pieces"]
