"""Data-parallel runs on torch.distributed (docs/design.md, "Where it runs"):
``torchrun --standalone --nproc-per-node=N -m calib run ...``.

Roles: rank 0 (the *leader*) runs the pipeline as one process would: it holds the run-folder lock and is
the only process that writes. The other ranks (*followers*) open the run folder read-only and serve
the leader's *tasks* until it says stop:

* ``points``: a per-point computation (a judge's invariance or adversarial radii) sharded by chunks of
  :data:`CHUNK` points, chunk ``b`` to rank ``b mod N``. A chunk is a whole number of the computation's
  own batches and every random choice is seeded per batch, never per rank, so each chunk is computed
  exactly as one process computes it; the leader gathers the chunks back in order.
* ``train``: every rank trains the same model with DistributedDataParallel on its share of each global
  batch (the global batch size and the seeded shuffle are the same as on one process; gradients are
  averaged over ranks), and the leader saves it.

Messages are numpy ``.npz`` bytes (``allow_pickle=False``) with a JSON header, sent over gloo on CPU and
NCCL on CUDA (each rank on ``cuda:LOCAL_RANK``): nothing is unpickled. A failure on any rank is sent to
the leader with the task's results, which ends the run on every rank with one line; a rank that dies
outright ends the others through torchrun.
"""
from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from calib.errors import CalibError

log = logging.getLogger(__name__)

#: points per shard of a per-point task (a multiple of every per-point computation's batch size)
CHUNK = 256


@dataclass(frozen=True)
class World:
    """This process's place in the run: ``rank`` of ``size`` processes, and the backend (``None``: one
    process)."""

    rank: int = 0
    size: int = 1
    backend: str | None = None
    local_rank: int = 0

    @property
    def leader(self) -> bool:
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.size > 1

    def describe(self) -> dict[str, Any]:
        return {"world_size": self.size, "backend": self.backend}


_WORLD = World()


def world() -> World:
    """The current world (one process unless :func:`init_from_env` joined a torchrun group)."""
    return _WORLD


def init_from_env(device: str = "auto") -> World:
    """Join the process group torchrun describes in the environment (``WORLD_SIZE`` > 1), with NCCL when
    the run uses CUDA and gloo otherwise; a single process stays a world of one."""
    global _WORLD
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1 or _WORLD.parallel:
        return _WORLD
    import torch.distributed as dist

    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    backend = "nccl" if cuda else "gloo"
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local)
    dist.init_process_group(backend=backend)
    _WORLD = World(dist.get_rank(), dist.get_world_size(), backend, local)
    log.info("rank %d of %d (%s)", _WORLD.rank, _WORLD.size, backend)
    return _WORLD


def shutdown() -> None:
    """Leave the process group (before the process exits: a gloo group still open at exit aborts it).

    Every rank first drops what may still hold the group (a DistributedDataParallel reducer kept alive by a
    reference cycle) and meets the others at a barrier, so no rank tears its group down while a peer's last
    message is in flight; a barrier that fails (a peer already gone) is logged, and the group destroyed.
    """
    global _WORLD
    if _WORLD.parallel:
        import gc

        import torch.distributed as dist

        gc.collect()
        try:
            dist.barrier()
        except Exception as exc:  # a peer that died or left: nothing to wait for
            log.debug("rank %d: barrier before leaving the group failed: %s", _WORLD.rank, exc)
        dist.destroy_process_group()
    _WORLD = World()


def rank_device(device: str) -> str:
    """The device this rank computes on: ``cuda:LOCAL_RANK`` when the run uses CUDA."""
    w = world()
    if w.parallel and (device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())):
        return f"cuda:{w.local_rank}"
    return device


# ---- messages -----------------------------------------------------------------------------------------
def pack(header: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, __header__=np.frombuffer(json.dumps(header).encode(), np.uint8), **(arrays or {}))
    return buf.getvalue()


def unpack(data: bytes) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    header = json.loads(arrays.pop("__header__").tobytes().decode())
    return header, arrays


def _comm_device() -> torch.device:
    return torch.device(f"cuda:{world().local_rank}") if world().backend == "nccl" else torch.device("cpu")


def broadcast_bytes(data: bytes | None) -> bytes:
    """The leader's ``data`` on every rank."""
    import torch.distributed as dist

    dev = _comm_device()
    n = torch.tensor([len(data) if data is not None else 0], dtype=torch.int64, device=dev)
    dist.broadcast(n, 0)
    buf = (torch.frombuffer(bytearray(data), dtype=torch.uint8).to(dev) if world().leader
           else torch.empty(int(n.item()), dtype=torch.uint8, device=dev))
    dist.broadcast(buf, 0)
    return bytes(buf.cpu().numpy().tobytes())


def gather_bytes(data: bytes) -> list[bytes]:
    """Every rank's ``data``, in rank order, on every rank."""
    import torch.distributed as dist

    dev = _comm_device()
    n = torch.tensor([len(data)], dtype=torch.int64, device=dev)
    sizes = [torch.zeros_like(n) for _ in range(world().size)]
    dist.all_gather(sizes, n)
    top = int(max(s.item() for s in sizes))
    mine = torch.zeros(top, dtype=torch.uint8, device=dev)
    mine[:len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(dev) if data else mine[:0]
    parts = [torch.empty(top, dtype=torch.uint8, device=dev) for _ in range(world().size)]
    dist.all_gather(parts, mine)
    return [bytes(p[:int(s.item())].cpu().numpy().tobytes()) for p, s in zip(parts, sizes)]


# ---- tasks --------------------------------------------------------------------------------------------
#: task name -> ``fn(header, arrays) -> (header, arrays)`` of this rank's part
TASKS: dict[str, Callable[[dict[str, Any], dict[str, np.ndarray]], tuple[dict[str, Any], dict[str, np.ndarray]]]] = {}


def task(name: str):
    """Register a task every rank can run."""
    def deco(fn):
        TASKS[name] = fn
        return fn
    return deco


def _run_local(header: dict[str, Any], arrays: dict[str, np.ndarray]) -> bytes:
    try:
        out_h, out_a = TASKS[header["task"]](header, arrays)
        return pack({"ok": True, **out_h}, out_a)
    except Exception as exc:  # sent to the leader, which ends the run on every rank
        log.exception("rank %d: task %s failed", world().rank, header.get("task"))
        return pack({"ok": False, "error": f"{type(exc).__name__}: {exc}"})


def submit(name: str, header: dict[str, Any], arrays: dict[str, np.ndarray] | None = None
           ) -> list[tuple[dict[str, Any], dict[str, np.ndarray]]]:
    """Leader: run task ``name`` on every rank (itself included); every rank's result in rank order.

    Raises:
        CalibError: the task failed on some rank (its message, naming the rank).
    """
    header = {"task": name, **header}
    if not world().parallel:
        out_h, out_a = TASKS[name](header, arrays or {})
        return [(out_h, out_a)]
    broadcast_bytes(pack(header, arrays))
    results = [unpack(b) for b in gather_bytes(_run_local(header, arrays or {}))]
    bad = [(r, h["error"]) for r, (h, _) in enumerate(results) if not h.get("ok")]
    if bad:
        r, msg = bad[0]
        raise CalibError(f"rank {r} of {world().size} failed in task {name}: {msg}")
    return results


def serve() -> None:
    """Follower: run the leader's tasks until it says stop."""
    while True:
        header, arrays = unpack(broadcast_bytes(None))
        if header.get("task") == "stop":
            return
        gather_bytes(_run_local(header, arrays))


def stop_followers() -> None:
    """Leader: release the followers (at the end of a run, or when it fails)."""
    if world().parallel and world().leader:
        broadcast_bytes(pack({"task": "stop"}))


# ---- sharding -------------------------------------------------------------------------------------------
def my_chunks(n: int, chunk: int = CHUNK) -> list[int]:
    """The chunks of ``n`` points this rank computes."""
    w = world()
    return [b for b in range(-(-n // chunk)) if b % w.size == w.rank]


def map_points(name: str, header: dict[str, Any], arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Leader: per-point task ``name`` over the rows of ``arrays`` (each (N, ...), except those named in
    ``header["shared"]``, which every chunk gets whole), sharded by chunks of ``header["chunk"]`` points
    (default :data:`CHUNK`);
    returns its per-point result arrays in the original order and, under ``"__info__"``, each chunk's
    info dict (a JSON string array)."""
    shared = set(header.get("shared", ()))
    n = len(next(v for k, v in arrays.items() if k not in shared))
    return collect(submit(name, {**header, "n": n}, arrays), n, name, int(header.get("chunk", CHUNK)))


def even_chunk(n: int) -> int:
    """A chunk size that gives each rank one contiguous block of ``n`` points (for a task whose chunks
    cost a set-up each, such as a search index over the whole reference set)."""
    return max(1, -(-n // world().size))


def collect(results: list[tuple[dict[str, Any], dict[str, np.ndarray]]], n: int, name: str,
            chunk: int = CHUNK) -> dict[str, np.ndarray]:
    """The chunks of a per-point task's results put back in order (see :func:`map_points`)."""
    chunks: dict[int, dict[str, np.ndarray]] = {}
    infos: dict[int, dict[str, Any]] = {}
    for h, a in results:
        for b in h["chunks"]:
            chunks[b] = {k.split("/", 1)[1]: v for k, v in a.items() if k.startswith(f"{b}/")}
            infos[b] = h["infos"][str(b)]
    order = sorted(chunks)
    if order != list(range(-(-n // chunk))):
        raise AssertionError(f"task {name}: chunks {order} do not cover {n} points")  # a bug, not user input
    keys = chunks[order[0]].keys() if order else []
    out = {k: np.concatenate([chunks[b][k] for b in order]) for k in keys}
    out["__info__"] = [infos[b] for b in order]
    return out


def point_task(name: str):
    """Register a per-point task: ``fn(header, arrays_of_one_chunk) -> (arrays (rows, ...), info)``;
    each rank runs it on its chunks."""
    def deco(fn):
        def run(header: dict[str, Any], arrays: dict[str, np.ndarray]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
            out: dict[str, np.ndarray] = {}
            infos: dict[str, Any] = {}
            size = int(header.get("chunk", CHUNK))
            mine = my_chunks(int(header["n"]), size)
            shared = set(header.get("shared", ()))
            for b in mine:
                part = {k: v if k in shared else v[b * size:(b + 1) * size] for k, v in arrays.items()}
                res, info = fn(header, part)
                out |= {f"{b}/{k}": v for k, v in res.items()}
                infos[str(b)] = info
            return {"chunks": mine, "infos": infos}, out
        TASKS[name] = run
        return fn
    return deco


#: integer settings (the same in every chunk), not counts to add up
SETTINGS = ("iters", "steps", "restarts", "seed", "targets", "transforms", "invariance_iters")


def merge_info(infos: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    """One info dict from the chunks' (as one process would have written it): counts added at every
    level, settings from the first chunk, and the leader's wall time for the whole task."""
    out = _merge(infos)
    out["seconds"] = seconds
    out["chunks"] = len(infos)
    out["world_size"] = world().size
    return out


def _merge(infos: list[dict[str, Any]]) -> dict[str, Any]:
    out = dict(infos[0]) if infos else {}
    for k, v in out.items():
        if isinstance(v, dict):
            out[k] = _merge([i.get(k) or {} for i in infos])
        elif isinstance(v, int) and not isinstance(v, bool) and k not in SETTINGS:
            out[k] = sum(int(i.get(k, 0)) for i in infos)
        elif k == "seconds":
            out[k] = sum(float(i.get(k, 0.0)) for i in infos)  # compute time over all ranks
    return out


__all__ = ["World", "world", "init_from_env", "shutdown", "submit", "serve", "stop_followers", "map_points",
           "point_task", "task", "merge_info", "collect", "pack", "unpack", "CHUNK", "rank_device", "even_chunk"]
