"""The statistics engine behind ``calib stats``: every quantity of docs/design.md, per space and norm.

Spaces: ``input`` (flattened pixels in [0,1]; norms l2, linf, l1) and ``embedding`` (the trained
g's unit vectors; l2). For each (space, norm):

* per query/reference pair (``train-train``, ``calibration-train``, ``test-train``, ...; self
  excluded when a part is its own reference): per-sample ``d_same``, ``d_diff`` and the indices;
  separation ``r = 1/2 min d_diff`` globally and per class; exact-duplicate counts;
* class-pair distance matrices over one set (default ``all``), ``sampled`` and/or ``exact``.

Results are a :class:`Stats` object saved as ``stats.npz`` (arrays; loaded without pickle) and
``stats.json`` (summary and provenance, human-readable).
"""
from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from calib.data import PARTS, Dataset, Splits
from calib.data.split import stratified_subset
from calib.errors import ConfigError, DataError
from calib.io import to_jsonable, versions, write_json, write_npz
from calib.progress import progress
from calib.stats.neighbours import NORMS, SameDiff, same_diff
from calib.stats.pairwise import LEVELS, ClassPairStats, class_pair_stats, n_blocks

log = logging.getLogger(__name__)

SPACES = ("input", "embedding")
SETS = (*PARTS, "all")
DEFAULT_PAIRS = ("train-train", "calibration-train", "test-train")
FORMAT = "calib-stats"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class StatsConfig:
    """What to compute.

    Attributes:
        input_norms: norms in input space (subset of l2, linf, l1).
        embedding: also compute embedding-space (l2) statistics (needs an embedding model).
        pairs: ``query-reference`` part names from train, calibration, test, all.
        matrix_set: the set whose class-pair matrices are computed.
        matrix_modes: ``sampled`` and/or ``exact``.
        n_per_class: points per class in sampled mode.
        exact_max_points: exact mode over a larger set uses a seeded, stratified subset of this many
            points (recorded as ``matrix_subsets`` in the metadata; ``None``: always the whole set).
            All pairs of MNIST's 10k are 5·10^7 (about a minute on 2 cores); Fashion-MNIST's 70k are
            2.45·10^9 (about 40 minutes for L-inf, L1 and L2) for a descriptive heat map; the subset's
            error is measured by ``bench/matrix_subset.py``.
        max_pairs: a pair with more query x reference pairs than this (``train-train`` and ``test-train``
            of Fashion-MNIST's 58,000 training images: 3.4·10^9 and 5.8·10^8) uses a seeded, stratified
            subset of ``max_pairs / references`` queries, each searched exactly against the whole
            reference part (recorded as ``pair_subsets``); ``None``: every query. Pairs whose queries are
            the calibration part, where budgets are measured, always use every query. MNIST 10k's pairs
            (at most 7.2·10^7) are below the limit.
        seed: sampling seed.
        backend: nearest-neighbour backend (``auto``: faiss l2, numba linf/l1; ``faiss`` for all).
        use_gpu: faiss-gpu for l2 searches when available.
    """

    input_norms: tuple[str, ...] = NORMS
    embedding: bool = True
    pairs: tuple[str, ...] = DEFAULT_PAIRS
    matrix_set: str = "all"
    matrix_modes: tuple[str, ...] = ("sampled", "exact")
    n_per_class: int = 100
    exact_max_points: int | None = 10_000
    max_pairs: int | None = 200_000_000
    seed: int = 0
    backend: str = "auto"
    use_gpu: bool = False

    def __post_init__(self) -> None:
        bad = [n for n in self.input_norms if n not in NORMS]
        if bad:
            raise ConfigError(f"unknown norm(s) {bad}; choose from {', '.join(NORMS)}")
        for p in self.pairs:
            parts = p.split("-")
            if len(parts) != 2 or any(s not in SETS for s in parts):
                raise ConfigError(f"bad pair {p!r}: use QUERY-REFERENCE with parts from {', '.join(SETS)}")
        if self.matrix_set not in SETS:
            raise ConfigError(f"unknown matrix set {self.matrix_set!r}; choose from {', '.join(SETS)}")
        bad = [m for m in self.matrix_modes if m not in ("sampled", "exact")]
        if bad:
            raise ConfigError(f"unknown matrix mode(s) {bad}; choose sampled and/or exact")

    def spaces(self) -> list[tuple[str, str]]:
        return [("input", n) for n in self.input_norms] + ([("embedding", "l2")] if self.embedding else [])


@dataclass
class PairStats:
    """Nearest-neighbour distances of one query set against one reference set."""

    query_labels: np.ndarray
    query_indices: np.ndarray  # indices into the whole dataset
    reference_indices: np.ndarray
    nn: SameDiff

    def summary(self, class_names: tuple[str, ...]) -> dict[str, Any]:
        """Separation (global, per class), duplicate counts and d_same/d_diff quantiles per class."""
        d_same, d_diff, y = self.nn.d_same, self.nn.d_diff, self.query_labels
        per_class = {}
        for c, name in enumerate(class_names):
            m = y == c
            if not m.any():
                continue
            per_class[name] = {
                "n": int(m.sum()),
                "separation": float(0.5 * d_diff[m].min()),
                "d_same_quantiles": [float(v) for v in np.quantile(d_same[m], LEVELS)],
                "d_diff_quantiles": [float(v) for v in np.quantile(d_diff[m], LEVELS)],
                "same_class_duplicates": int((d_same[m] == 0).sum()),
                "cross_class_duplicates": int((d_diff[m] == 0).sum()),
            }
        return {"n": int(y.size), "separation": float(0.5 * d_diff.min()),
                "same_class_duplicates": int((d_same == 0).sum()),
                "cross_class_duplicates": int((d_diff == 0).sum()),
                "quantile_levels": list(LEVELS), "per_class": per_class}


@dataclass
class Stats:
    """All statistics of one dataset; ``pairs[(space, norm, pair)]``, ``matrices[(space, norm, mode)]``."""

    meta: dict[str, Any]
    pairs: dict[tuple[str, str, str], PairStats] = field(default_factory=dict)
    matrices: dict[tuple[str, str, str], ClassPairStats] = field(default_factory=dict)

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.meta["dataset"]["class_names"])

    def pair(self, space: str, norm: str, pair: str) -> PairStats:
        try:
            return self.pairs[(space, norm, pair)]
        except KeyError:
            have = sorted({"/".join(k) for k in self.pairs})
            raise ConfigError(f"no statistics for {space}/{norm}/{pair}; computed: {', '.join(have)}") from None

    def summary(self) -> dict[str, Any]:
        return {
            **self.meta,
            "neighbours": {"/".join(k): v.summary(self.class_names) for k, v in self.pairs.items()},
            "matrices": {"/".join(k): {"mode": m.mode, "mean": m.mean.tolist(), "std": m.std.tolist(),
                                       "min": m.min.tolist(), "max": m.max.tolist(),
                                       "count": m.count.tolist(), "levels": list(m.levels),
                                       "quantiles": m.quantiles.tolist(),
                                       "quantile_resolution": m.quantile_resolution,
                                       "n_per_class": m.n_per_class, "seed": m.seed}
                         for k, m in self.matrices.items()},
        }

    # ---- persistence -----------------------------------------------------------------------------
    def save(self, stem: str | os.PathLike[str]) -> Path:
        """Write ``<stem>.npz`` (arrays) then ``<stem>.json`` (summary + provenance), atomically; returns
        the JSON path. A run folder's stem is :data:`calib.runfolder.artefacts.STATS`."""
        stem = Path(stem)
        arrays: dict[str, np.ndarray] = {}
        for (space, norm, pair), p in self.pairs.items():
            key = f"pair__{space}__{norm}__{pair}__"
            arrays |= {key + "query_labels": p.query_labels, key + "query_indices": p.query_indices,
                       key + "reference_indices": p.reference_indices,
                       **{key + f: getattr(p.nn, f) for f in ("d_same", "i_same", "d_diff", "i_diff")}}
        for (space, norm, mode), m in self.matrices.items():
            key = f"matrix__{space}__{norm}__{mode}__"
            arrays |= {key + f: v for f, v in m.arrays().items()}
        write_npz(stem.with_name(stem.name + ".npz"), arrays)
        write_json(stem.with_name(stem.name + ".json"), to_jsonable(self.summary()))
        return stem.with_name(stem.name + ".json")

    @classmethod
    def load(cls, stem: str | os.PathLike[str]) -> "Stats":
        """Read saved ``<stem>.json`` + ``<stem>.npz`` (``allow_pickle=False``); ``stem`` may also name
        either file."""
        stem = Path(stem)
        if stem.suffix in (".json", ".npz"):
            stem = stem.with_suffix("")
        js, npz = stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".npz")
        try:
            summary = json.loads(js.read_text(encoding="utf-8"))
            with np.load(npz, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except FileNotFoundError as exc:
            raise DataError(f"no saved statistics at {stem} ({exc.filename} missing); run `calib stats`") from exc
        except (OSError, ValueError, json.JSONDecodeError) as exc:
            raise DataError(f"{stem}: corrupt statistics files ({exc})") from exc
        if not isinstance(summary, dict) or summary.get("format") != FORMAT or \
                summary.get("format_version") != FORMAT_VERSION:
            raise DataError(f"{js}: not calib statistics version {FORMAT_VERSION}")
        try:
            meta = {k: v for k, v in summary.items() if k not in ("neighbours", "matrices")}
            out = cls(meta)
            for name, info in summary["matrices"].items():
                space, norm, mode = name.split("/")
                key = f"matrix__{space}__{norm}__{mode}__"
                out.matrices[(space, norm, mode)] = ClassPairStats(
                    mode, arrays[key + "count"], arrays[key + "mean"], arrays[key + "std"], arrays[key + "min"],
                    arrays[key + "max"], tuple(info["levels"]), arrays[key + "quantiles"],
                    info["quantile_resolution"], info["n_per_class"], info["seed"])
            for name in summary["neighbours"]:
                space, norm, pair = name.split("/")
                key = f"pair__{space}__{norm}__{pair}__"
                nn = SameDiff(*(arrays[key + f] for f in ("d_same", "i_same", "d_diff", "i_diff")))
                out.pairs[(space, norm, pair)] = PairStats(arrays[key + "query_labels"], arrays[key + "query_indices"],
                                                           arrays[key + "reference_indices"], nn)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DataError(f"{js}: not calib statistics (malformed: {type(exc).__name__} {exc})") from exc
        return out


def _part(splits: Splits, dataset: Dataset, name: str) -> np.ndarray:
    return np.arange(len(dataset)) if name == "all" else getattr(splits, name).indices


def compute_stats(dataset: Dataset, splits: Splits, config: StatsConfig = StatsConfig(), *,
                  embeddings: np.ndarray | None = None, provenance: dict[str, Any] | None = None,
                  show_progress: bool = True, search: Callable[..., SameDiff] = same_diff,
                  pieces: Callable[..., list] | None = None) -> Stats:
    """Compute every requested statistic.

    Args:
        dataset: the whole dataset (images (N, C, H, W) in [0,1]); ``splits`` must be its split.
        embeddings: (N, dim) float32 embedding of every image, required when ``config.embedding``.
        provenance: extra fields for ``meta`` (e.g. embedding weights hash).
        search: the nearest same/different-class search, :func:`calib.stats.neighbours.same_diff` or a
            function with its signature and results (the run's, sharded by query under torchrun:
            :func:`calib.pipeline.sharded.same_diff`).
        pieces: how the exact class-pair matrices' pieces are computed (``pieces=`` of
            :func:`calib.stats.pairwise.class_pair_stats`; the run's deals them over torchrun ranks:
            :func:`calib.pipeline.sharded.matrix_pieces`).
    """
    if splits.train.source_fingerprint != dataset.fingerprint:
        raise DataError("the splits do not belong to this dataset (fingerprints differ)")
    if config.embedding and (embeddings is None or len(embeddings) != len(dataset)):
        raise ConfigError("embedding statistics need one embedding per image (pass embeddings=)")
    t0 = time.perf_counter()
    flat = {"input": dataset.images.reshape(len(dataset), -1)}
    if config.embedding:
        flat["embedding"] = np.ascontiguousarray(embeddings, dtype=np.float32)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION,
            "dataset": {"name": dataset.name, "fingerprint": dataset.fingerprint,
                        "class_names": list(dataset.class_names), "image_shape": list(dataset.image_shape),
                        "num_samples": len(dataset)},
            "split": {"seed": splits.seed, "fractions": list(splits.fractions), "held_out": list(splits.held_out),
                      "max_calibration": splits.max_calibration,
                      **{p: getattr(splits, p).fingerprint for p in PARTS}},
            "config": asdict(config), "versions": versions(), **(provenance or {})}
    stats = Stats(meta)
    mset = _part(splits, dataset, config.matrix_set)
    msets = {m: mset for m in config.matrix_modes}
    if "exact" in msets and config.exact_max_points is not None and len(mset) > config.exact_max_points:
        msets["exact"] = mset[stratified_subset(dataset.labels[mset], config.exact_max_points, config.seed)]
        meta["matrix_subsets"] = {"exact": {"points": int(len(msets["exact"])), "of": int(len(mset)),
                                            "rule": "stratified by class, seeded"}}
        log.info("exact class-pair matrices over a stratified subset of %d of the %d points", len(msets["exact"]),
                 len(mset))
    # progress in millions of distances (times the dimension): the units of work, so the ETA means something
    dims = {space: flat[space].shape[1] for space in flat}
    queries = {p: _part(splits, dataset, p.split("-")[0]) for p in config.pairs}
    for p, qi in queries.items():
        n_ref = len(_part(splits, dataset, p.split("-")[1]))
        if (config.max_pairs is not None and p.split("-")[0] != "calibration"
                and len(qi) * n_ref > config.max_pairs):
            keep = max(config.max_pairs // max(n_ref, 1), 10 * dataset.num_classes)
            queries[p] = qi[stratified_subset(dataset.labels[qi], keep, config.seed)]
            meta.setdefault("pair_subsets", {})[p] = {"queries": int(len(queries[p])), "of": int(len(qi)),
                                                      "rule": "stratified by class, seeded; exact search"}
            log.info("pair %s: %d of the %d queries (stratified), each searched exactly", p, len(queries[p]), len(qi))
    n_pair = {p: len(queries[p]) * len(_part(splits, dataset, p.split("-")[1])) for p in config.pairs}
    n_matrix = {m: (len(msets[m]) ** 2 / 2 if m == "exact" else (config.n_per_class * dataset.num_classes) ** 2)
                for m in config.matrix_modes}
    work = {(space, key): dims[space] * n / 1e9 for space, _ in config.spaces()
            for key, n in (*n_pair.items(), *n_matrix.items())}
    total = sum(work[(space, key)] for space, _ in config.spaces() for key in (*config.pairs, *config.matrix_modes))
    with progress(show_progress) as bar:
        task = bar.add_task("statistics (10^9 distance terms)", total=round(total, 1), status="")
        for space, norm in config.spaces():
            x = flat[space]
            shape = dataset.image_shape if space == "input" else None
            for pair in config.pairs:
                qname, rname = pair.split("-")
                bar.update(task, status=f"{space}/{norm} {pair}")
                qi, ri = queries[pair], _part(splits, dataset, rname)
                nn = search(x[qi], dataset.labels[qi], x[ri], dataset.labels[ri], norm,
                               self_match=qname == rname, backend=config.backend, use_gpu=config.use_gpu,
                               image_shape=shape, self_index=np.searchsorted(ri, qi) if qname == rname else None)
                stats.pairs[(space, norm, pair)] = PairStats(dataset.labels[qi], qi, ri, nn)
                bar.advance(task, work[(space, pair)])
            for mode in config.matrix_modes:
                bar.update(task, status=f"{space}/{norm} {mode} class-pair matrix")
                step = work[(space, mode)] / n_blocks(len(msets[mode]), mode, dataset.num_classes)
                stats.matrices[(space, norm, mode)] = class_pair_stats(
                    x[msets[mode]], dataset.labels[msets[mode]], norm, dataset.num_classes, mode=mode,
                    n_per_class=config.n_per_class, seed=config.seed,
                    on_block=lambda step=step: bar.advance(task, step), pieces=pieces)
    stats.meta["seconds"] = time.perf_counter() - t0
    log.info("statistics computed in %.1f s", stats.meta["seconds"])
    return stats
