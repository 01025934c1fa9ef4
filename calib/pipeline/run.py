"""``calib run``: dataset -> classifier f, embedding g (and an independent g2) -> statistics ->
geometric + semantic budgets (the epsilon table) -> attacks (global eps, per-class eps,
embedding-projected PGD) -> audit -> class-mixing probe -> 2-D embedding views -> HTML report.

Every stage is cached under the run folder (:mod:`calib.pipeline.cache`), keyed by its options and
the hashes of the artefacts it reads, so a second identical invocation only checks hashes, an
interrupted run resumes at the stage it was in, and a changed option recomputes only the stages
downstream of it.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import asdict
from typing import Any, Callable

import numpy as np

from calib.budgets import Policy, geometric_table, load_table
from calib.data import Dataset, Splits, load_dataset, split_dataset
from calib.data.split import stratified_indices
from calib.io import write_json, write_npz
from calib.models import load_model
from calib.models.artefact import versions
from calib.pipeline.cache import StageCache, StageRecord, source_hash
from calib.pipeline.config import AttackConfig, RunConfig
from calib.pipeline.stages import semantic_stage, stats_stage
from calib.stats import Stats, StatsConfig
from calib.train import TrainConfig, train_classifier, train_embedding

log = logging.getLogger(__name__)

# bump a stage's version when its code changes what it writes: cached results are then recomputed
STAGE_VERSIONS = {"classifier": 1, "embedding": 1, "embedding2": 1, "stats": 1, "budgets": 1, "attack": 1,
                  "audit": 1, "probe": 1, "projection": 1, "report": 1}


def _model_outputs(stem: str) -> list[str]:
    return [f"models/{stem}.safetensors", f"models/{stem}.json"]


def attack_subset(labels: np.ndarray, n: int | None, seed: int) -> np.ndarray:
    """Positions (sorted) of at most ``n`` examples, stratified by class and seeded; all if ``n`` is None."""
    if n is None or n >= len(labels):
        return np.arange(len(labels))
    frac = n / len(labels)
    keep, _ = stratified_indices(labels, (frac, 1 - frac), seed)
    return keep


def second_split(ds: Dataset, splits: Splits, seed: int) -> tuple[Dataset, Dataset]:
    """Training data of the independent embedding g2: the non-test samples re-split 85/15 with
    another seed (never the test part, which is attacked and audited)."""
    pool = np.sort(np.concatenate([splits.train.indices, splits.calibration.indices]))
    tr, va = stratified_indices(ds.labels[pool], (0.85, 0.15), seed)
    return ds.subset(pool[tr], "train2"), ds.subset(pool[va], "validation2")


def attack_plan(cfg: AttackConfig) -> list[dict[str, Any]]:
    """The attacks of the headline: for each norm, PGD under the global eps, PGD under the table's
    per-class eps and embedding-projected PGD (embedding ball from the table, input cap = global eps)."""
    from calib.attacks.runner import AttackSpec

    plan = []
    for norm in cfg.norms:
        g = float(cfg.global_eps[norm])
        cap = float(cfg.embedding_cap) if cfg.embedding_cap is not None else g
        step = cfg.embedding_step if cfg.embedding_step is not None else 2.5 * cap / cfg.steps
        plan += [
            {"name": f"pgd-global-{norm}", "budget": "global", "ball_space": "input",
             "spec": AttackSpec(attack="pgd", norm=norm, eps=g, steps=cfg.steps, restarts=cfg.restarts)},
            {"name": f"pgd-table-{norm}", "budget": "per-class", "ball_space": "input",
             "spec": AttackSpec(attack="pgd", norm=norm, eps=None, steps=cfg.steps, restarts=cfg.restarts)},
            {"name": f"embedding-pgd-{norm}", "budget": "embedding", "ball_space": "embedding",
             "spec": AttackSpec(attack="embedding-pgd", norm=norm, eps=None, cap=cap, steps=cfg.steps,
                                restarts=cfg.restarts, step_size=step, method=cfg.projection,
                                newton_iters=cfg.newton_iters)},
        ]
    return plan


def run(config: RunConfig, on_stage: Callable[[str, str, StageRecord | None], None] | None = None
        ) -> dict[str, Any]:
    """Run (or resume) the whole pipeline; returns the summary also written to ``summary.json``."""
    t0 = time.perf_counter()
    out = config.run_dir()
    ds = load_dataset(config.dataset, config.data_dir, download=config.download)
    splits = split_dataset(ds, seed=config.seed, fractions=config.fractions)
    out.mkdir(parents=True, exist_ok=True)  # only once the data loaded: a bad dataset leaves nothing behind
    cache = StageCache(out, on_stage)
    data_key = {"dataset": ds.fingerprint, "split_seed": config.seed, "fractions": list(config.fractions),
                **{p: getattr(splits, p).fingerprint for p in ("train", "calibration", "test")}}
    common = {"device": config.device, "progress": config.progress}
    models = out / "models"

    # ---- models ----------------------------------------------------------------------------------
    clf_train = TrainConfig(epochs=config.classifier_epochs, seed=config.seed, **common)

    def do_classifier() -> dict[str, Any]:
        m = train_classifier(splits.train, clf_train, validation=splits.calibration, test=splits.test,
                             split_seed=config.seed)
        return {"metrics": m.metrics, "weights_sha256": m.save(models / "classifier")["weights_sha256"],
                "training_seconds": m.training["seconds"]}

    clf = cache.run("classifier", {"v": STAGE_VERSIONS["classifier"], "data": data_key,
                                   "train": _train_key(clf_train)}, _model_outputs("classifier"), do_classifier)
    emb_train = TrainConfig(epochs=config.embedding_epochs, seed=config.seed, **common)
    emb_opts = {"dim": config.embedding_dim, "margin": config.margin, "miner": config.miner}
    robust = config.robust_embedding.mix() if config.robust_embedding is not None else None

    def do_embedding() -> dict[str, Any]:
        m = train_embedding(splits.train, emb_train, test=splits.test, split_seed=config.seed, adversarial=robust,
                            **emb_opts)
        return {"metrics": m.metrics, "weights_sha256": m.save(models / "embedding")["weights_sha256"],
                "training_seconds": m.training["seconds"]}

    emb = cache.run("embedding", {"v": STAGE_VERSIONS["embedding"], "data": data_key,
                                  "train": _train_key(emb_train), **emb_opts,
                                  **({"robust": robust.describe()} if robust else {})},
                    _model_outputs("embedding"), do_embedding)
    emb2 = None
    if config.second_embedding:
        seed2 = config.seed + 1
        emb2_train = dataclasses.replace(emb_train, seed=seed2)

        def do_embedding2() -> dict[str, Any]:
            train2, _ = second_split(ds, splits, seed2)
            m = train_embedding(train2, emb2_train, test=splits.test, split_seed=seed2, **emb_opts)
            return {"metrics": m.metrics, "weights_sha256": m.save(models / "embedding2")["weights_sha256"],
                    "training_seconds": m.training["seconds"], "train_fingerprint": train2.fingerprint,
                    "split_seed": seed2}

        emb2 = cache.run("embedding2", {"v": STAGE_VERSIONS["embedding2"], "data": data_key,
                                        "train": _train_key(emb2_train), **emb_opts},
                         _model_outputs("embedding2"), do_embedding2)

    # ---- statistics and budgets ----------------------------------------------------------------------
    stats_config = StatsConfig(pairs=tuple(dict.fromkeys(("train-train", config.pair, "test-train"))),
                               matrix_modes=config.matrix_modes, seed=config.seed)

    def do_stats() -> dict[str, Any]:
        s = stats_stage(ds, splits, stats_config, models / "embedding", models / "classifier",
                        show_progress=config.progress)
        s.save(out)
        return {"seconds": s.meta["seconds"]}

    cache.run("stats", {"v": STAGE_VERSIONS["stats"], "data": data_key, "config": asdict(stats_config),
                             "embedding": emb.info["weights_sha256"], "classifier": clf.info["weights_sha256"]},
                   ["stats.json", "stats.npz"], do_stats)
    policy = Policy(q=config.q, s=config.s, rule=config.rule)

    def do_budgets() -> dict[str, Any]:
        stats = Stats.load(out)
        table = geometric_table(stats, policy, pair=config.pair, provenance={"seed": config.seed})
        if config.semantic is not None:
            table = semantic_stage(table, stats, ds, models / "embedding", config.semantic, seed=config.seed,
                                   show_progress=config.progress)
        table.save(out / "eps_table.json")
        return {}

    cache.run("budgets", {"v": STAGE_VERSIONS["budgets"], "stats": cache.output_hash("stats.npz"),
                                "stats_json": cache.output_hash("stats.json"), "policy": asdict(policy),
                                "pair": config.pair, "embedding": emb.info["weights_sha256"],
                                "semantic": asdict(config.semantic) if config.semantic else None},
                    ["eps_table.json", "eps_table.csv"], do_budgets)
    table_hash = cache.output_hash("eps_table.json")

    # ---- attacks and audit -------------------------------------------------------------------------
    attacks: dict[str, Any] = {}
    if config.attack is not None:
        attacks = _attacks_and_audit(config, cache, ds, splits, data_key, clf, emb, emb2, table_hash)
    if config.attack is not None:
        _probe_stage(config, cache, splits, emb, emb2, clf)
    _projection_stage(config, cache, ds, emb)

    stages_so_far = {r.name: r.key for r in cache.records}
    report = None
    if config.report:
        from calib.report import write_report

        def do_report() -> dict[str, Any]:
            write_report(out, out / "report.html", gallery_per_class=config.gallery_per_class,
                         context={"run": asdict(config), "versions": versions()})
            return {}

        report = cache.run("report", {"v": STAGE_VERSIONS["report"], "code": source_hash("calib.report"),
                                      "stages": stages_so_far,
                                      "gallery_per_class": config.gallery_per_class},
                           ["report.html"], do_report)

    summary = {
        "run": asdict(config),
        "dataset": ds.describe(),
        "splits": splits.describe(),
        "models": {"classifier": clf.info, "embedding": emb.info, **({"embedding2": emb2.info} if emb2 else {})},
        "stages": {r.name: {"reused": r.reused, "seconds": r.seconds, "key": r.key} for r in cache.records},
        "attacks": attacks,
        "eps_table": str(out / "eps_table.json"),
        "report": str(out / "report.html") if report else None,
        "versions": versions(),
        "seconds": time.perf_counter() - t0,
        "compute_seconds": sum(r.seconds for r in cache.records),
    }
    write_json(out / "summary.json", summary)
    log.info("run written to %s", out)
    return summary


def _train_key(cfg: TrainConfig) -> dict[str, Any]:
    d = cfg.to_json()
    d.pop("device", None)  # where it ran is provenance, not an input; CUDA users re-run with --fresh
    return d


def _attacks_and_audit(config: RunConfig, cache: StageCache, ds: Dataset, splits: Splits, data_key: dict,
                       clf: StageRecord, emb: StageRecord, emb2: StageRecord | None, table_hash: str
                       ) -> dict[str, Any]:
    from calib.attacks.runner import run_attack, save_attack
    from calib.audit import audit, build_reference
    from calib.device import resolve_device

    out = cache.root
    models = out / "models"
    acfg = config.attack
    test = splits.test
    sel = attack_subset(test.labels, acfg.n, config.seed)
    x, y = test.images[sel], test.labels[sel]
    device = resolve_device(config.device)
    loaded: dict[str, Any] = {}

    def model(name: str):
        if name not in loaded:
            loaded[name] = load_model(models / name, device)[0]
        return loaded[name]

    def embeddings() -> dict[str, Any]:
        """The audit's embeddings: g, and the independent g2 when the run trained it."""
        return {"g": model("embedding")} | ({"g2": model("embedding2")} if emb2 else {})

    table = load_table(out / "eps_table.json")
    ref_holder: dict[str, Any] = {}

    def reference():
        if "ref" not in ref_holder:
            tr = splits.train
            ref_holder["ref"] = build_reference(model("classifier"), embeddings(), tr.images, tr.labels, device)
        return ref_holder["ref"]

    results = {}
    for item in attack_plan(acfg):
        name, spec = item["name"], dataclasses.replace(item["spec"], seed=config.seed)
        uses_table = spec.eps is None
        a_inputs = {"v": STAGE_VERSIONS["attack"], "test": data_key["test"], "selection": sel.tolist(),
                    "spec": asdict(spec), "classifier": clf.info["weights_sha256"],
                    "embedding": emb.info["weights_sha256"] if spec.attack == "embedding-pgd" else None,
                    "table": table_hash if uses_table else None}

        def do_attack(spec=spec, name=name, uses_table=uses_table) -> dict[str, Any]:
            res = run_attack(spec, model("classifier"), model("embedding") if spec.attack == "embedding-pgd" else None,
                             x, y, table=table if uses_table else None, device=device,
                             show_progress=config.progress)
            res["arrays"]["indices"] = test.indices[sel]
            res["arrays"]["x"] = x
            save_attack(res, out / "attacks", name, classifier=clf.info["weights_sha256"],
                        embedding=emb.info["weights_sha256"], table=table_hash if uses_table else None)
            s = res["summary"]
            return {"success_rate": s["success_rate"], "seconds": s["seconds"], "projection": s["projection"]}

        att = cache.run(f"attack-{name}", a_inputs, [f"attacks/{name}.npz", f"attacks/{name}.json"], do_attack)
        ball_space = item["ball_space"]

        def do_audit(name=name, ball_space=ball_space, spec=spec) -> dict[str, Any]:
            with np.load(out / "attacks" / f"{name}.npz", allow_pickle=False) as z:
                x_adv, pred, eps = z["x_adv"], z["pred"], z["eps"]
            if ball_space == "embedding":
                eps = table.eps("embedding", "l2")[y]
            result = audit(x, x_adv, y, pred, norm=spec.norm, eps=eps, reference=reference(), embeddings=embeddings(),
                           config=config.audit, ball_space=ball_space, num_classes=ds.num_classes, device=device)
            result.meta |= {"attack": name, "budget": item["budget"], "spec": asdict(spec)}
            result.arrays["indices"] = test.indices[sel]
            result.save(out / "audit", name, ds.class_names)
            return {"valid_rate": float(result.arrays["valid"].mean()),
                    "success_rate": float(result.arrays["success"].mean())}

        aud = cache.run(f"audit-{name}", {"v": STAGE_VERSIONS["audit"], "attack": att.key,
                                          "attack_npz": cache.output_hash(f"attacks/{name}.npz"),
                                          "g2": emb2.info["weights_sha256"] if emb2 else None,
                                          "reference": data_key["train"], "config": asdict(config.audit),
                                          "code": source_hash("calib.audit"),
                                          "table": table_hash if item["budget"] != "global" else None},
                        [f"audit/{name}.npz", f"audit/{name}.json"], do_audit)
        results[name] = {"budget": item["budget"], "norm": spec.norm, **att.info, **aud.info}
    return results


def _probe_stage(config: RunConfig, cache: StageCache, splits: Splits, emb: StageRecord,
                 emb2: StageRecord | None, clf: StageRecord) -> StageRecord:
    """The class-mixing probe ``x0 + eps sign(x1)`` on test images, with f's prediction and the
    embeddings' k-NN labels (cached)."""
    out = cache.root

    def do_probe() -> dict[str, Any]:
        from calib.attacks.probe import class_mixing_probe
        from calib.audit import build_reference, knn_labels
        from calib.models.infer import forward_batched

        f = load_model(out / "models" / "classifier")[0]
        g = load_model(out / "models" / "embedding")[0]
        embs = {"g": g} | ({"g2": load_model(out / "models" / "embedding2")[0]} if emb2 else {})
        test = splits.test
        p = class_mixing_probe(test.images, test.labels, config.attack.probe_eps, seed=config.seed, embedding=g)
        ref = build_reference(f, embs, splits.train.images, splits.train.labels)
        arrays = {"images": p.images, "index0": test.indices[p.index0], "index1": test.indices[p.index1],
                  "class0": p.class0, "class1": p.class1, "pred": forward_batched(f, p.images).argmax(1).numpy(),
                  "x0": test.images[p.index0], "x1": test.images[p.index1],
                  **{f"dist_{k}": v for k, v in p.input_distance.items()}}
        for name, model in embs.items():
            arrays[f"knn_{name}"] = knn_labels(forward_batched(model, p.images).numpy(), ref.embeddings[name],
                                               ref.labels, config.audit.k)
        write_npz(out / "probe.npz", {"eps": np.float64(p.eps), **arrays})
        return {"eps": p.eps, "classifier_fooled": float((arrays["pred"] != arrays["class0"]).mean()),
                "knn_g_changed": float((arrays["knn_g"] != arrays["class0"]).mean())}

    return cache.run("probe", {"v": STAGE_VERSIONS["probe"], "test": splits.test.fingerprint,
                               "eps": config.attack.probe_eps, "seed": config.seed,
                               "classifier": clf.info["weights_sha256"], "embedding": emb.info["weights_sha256"],
                               "g2": emb2.info["weights_sha256"] if emb2 else None, "k": config.audit.k},
                     ["probe.npz"], do_probe)


def _projection_stage(config: RunConfig, cache: StageCache, ds: Dataset, emb: StageRecord) -> StageRecord:
    """PCA and t-SNE of the embedding of (a seeded, stratified sample of) the whole dataset."""
    out = cache.root

    def do_projection() -> dict[str, Any]:
        from calib.report.projection import project

        g = load_model(out / "models" / "embedding")[0]
        sel = attack_subset(ds.labels, config.tsne_points, config.seed)
        arrays = project(g, ds.images[sel], seed=config.seed)
        write_npz(out / "projection.npz", {"indices": sel, "labels": ds.labels[sel], **arrays})
        return {"points": int(sel.size)}

    return cache.run("projection", {"v": STAGE_VERSIONS["projection"], "data": ds.fingerprint,
                                    "embedding": emb.info["weights_sha256"], "points": config.tsne_points,
                                    "seed": config.seed}, ["projection.npz"], do_projection)
