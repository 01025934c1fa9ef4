"""``calib run``: dataset -> classifier f, embedding g and the models of the run's judges ->
statistics -> the judges' robustness radii -> geometric + semantic budgets (the epsilon table) ->
attacks (global eps, per-class eps, embedding-projected PGD) -> audit by the run's judge ->
class-mixing probe -> 2-D embedding views -> HTML report.

Every stage is cached under the run folder (:mod:`calib.pipeline.cache`), keyed by its options and
the hashes of the artefacts it reads, so a second identical invocation only checks hashes, an
interrupted run resumes at the stage it was in, and a changed option recomputes only the stages
downstream of it.
"""
from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import numpy as np

from calib.budgets import Policy, geometric_table, load_table
from calib.data import Dataset, Splits, load_dataset, split_dataset
from calib.data.split import stratified_indices, stratified_subset
from calib.io import to_jsonable, versions, write_json, write_npz
from calib.judges import MODEL_OF
from calib.models import load_model
from calib.pipeline.cache import StageCache, StageRecord
from calib.pipeline.config import RunConfig, attack_plan
from calib.pipeline.lock import RunLock
from calib.pipeline.stages import (check_model_data, query_part, run_judge, semantic_radii, semantic_table,
                                   stats_stage)
from calib.stats import Stats, StatsConfig
from calib.train import TrainConfig, train_classifier, train_embedding

log = logging.getLogger(__name__)

# the code each kind of stage runs (besides its own compute function): module names are hashed with
# every calib module they import, functions by their source (calib.pipeline.cache.code_hash)
JUDGE_CODE = ("calib.judges", run_judge)
MODEL_CODE = {"classifier": ("calib.train.classifier",), "embedding": ("calib.train.embedding",),
              "embedding2": ("calib.train.embedding", "calib.data.split"),  # and second_split
              "robust-embedding": ("calib.train.embedding", "calib.train.adversarial"),
              "lipschitz-embedding": ("calib.train.embedding", "calib.models.lipschitz")}


def _model_outputs(stem: str) -> list[str]:
    return [f"models/{stem}.safetensors", f"models/{stem}.json"]


def second_split(ds: Dataset, splits: Splits, seed: int) -> tuple[Dataset, Dataset]:
    """Training data of the independent embedding g2: the training part re-split 85/15 with
    another seed. Never the calibration part (whose radii the judges measure) nor the test part
    (which is attacked and audited)."""
    pool = splits.train.indices
    tr, va = stratified_indices(ds.labels[pool], (0.85, 0.15), seed)
    return ds.subset(np.sort(pool[tr]), "train2"), ds.subset(np.sort(pool[va]), "validation2")


def run(config: RunConfig, on_stage: Callable[[str, str, StageRecord | None], None] | None = None,
        fresh: bool = False) -> dict[str, Any]:
    """Run (or resume) the whole pipeline; returns the summary also written to ``summary.json``.

    The run folder is locked for the whole run (:class:`~calib.pipeline.lock.RunLock`): a second writer
    fails at once with :class:`~calib.pipeline.lock.RunFolderLocked`. ``fresh`` forgets every cached
    stage (once the lock is held) and recomputes everything.
    """
    t0 = time.perf_counter()
    out = config.run_dir()
    with RunLock(out, "calib run"):  # another writer: fail at once, before loading anything
        pass
    ds = load_dataset(config.dataset, config.data_dir, download=config.download)
    human, held = _human_sets(config, ds)
    splits = split_dataset(ds, seed=config.seed, fractions=config.fractions, hold_out=held)
    # the folder is created only once the data loaded: a bad dataset leaves nothing behind
    with RunLock(out, "calib run", create=True):
        if fresh and (out / "cache").exists():
            shutil.rmtree(out / "cache")
        return _run_stages(config, out, ds, splits, human, on_stage, t0)


def _run_stages(config: RunConfig, out: Path, ds: Dataset, splits: Splits, human: list[Any],
                on_stage: Callable[[str, str, StageRecord | None], None] | None, t0: float) -> dict[str, Any]:
    """Every stage of :func:`run`, in order, with the run folder locked."""
    from calib.device import resolve_device

    cache = StageCache(out, on_stage)
    data_key = {"dataset": ds.fingerprint, "split_seed": config.seed, "fractions": list(config.fractions),
                **{p: getattr(splits, p).fingerprint for p in ("train", "calibration", "test")}}
    device = str(resolve_device(config.device))

    models = _train_models(config, cache, ds, splits, data_key, device)
    clf, emb = models["classifier"], models["embedding"]

    # ---- statistics, judges' radii and budgets --------------------------------------------------------
    stats_config = StatsConfig(pairs=tuple(dict.fromkeys(("train-train", config.pair, "test-train"))),
                               matrix_modes=config.matrix_modes, seed=config.seed,
                               use_gpu=device.startswith("cuda"))

    def do_stats() -> dict[str, Any]:
        s = stats_stage(ds, splits, stats_config, out / "models" / "embedding", out / "models" / "classifier",
                        show_progress=config.progress, device=device)
        s.save(out)
        return {"seconds": s.meta["seconds"]}

    cache.run("stats", {"data": data_key,
                        "config": asdict(dataclasses.replace(stats_config, use_gpu=False)),
                        "embedding": emb.info["weights_sha256"], "classifier": clf.info["weights_sha256"]},
              ["stats.json", "stats.npz"], do_stats,
              code=("calib.stats", "calib.models", "calib.train.embedding", stats_stage, check_model_data),
              device=device)
    semantic = _semantic_stages(config, cache, ds, splits, data_key, models, device)
    validation = _validation_stage(config, cache, ds, splits, human, device) if human else None
    policy = Policy(q=config.q, s=config.s, rule=config.rule)

    def do_budgets() -> dict[str, Any]:
        from calib.budgets.per_sample import per_sample_arrays, write_per_sample
        from calib.budgets.semantic import load_radii

        stats = Stats.load(out)
        table = geometric_table(stats, policy, pair=config.pair, provenance={"seed": config.seed})
        radii = None
        if config.semantic is not None:
            table = semantic_table(table, stats, out, config.judge.name, config.semantic_bound)
            radii = load_radii(out / "semantic", config.judge.name)[0]
        from calib.human.table import annotate_table

        table = annotate_table(out, table, save=False)  # people's relabelling at these budgets, if any
        table.save(out / "eps_table.json")
        meta = {"dataset": ds.name, "fingerprint": ds.fingerprint, "pair": config.pair, "q": config.q, "s": config.s,
                "judge": config.judge.name if radii else None, "bound": config.semantic_bound if radii else None}
        write_per_sample(out / "per_sample_eps.npz",
                         per_sample_arrays(stats, policy, config.pair, radii, config.semantic_bound), meta)
        return {}

    cache.run("budgets", {"stats": cache.output_hash("stats.npz"),
                          "stats_json": cache.output_hash("stats.json"), "policy": asdict(policy),
                          "pair": config.pair, "judge": config.judge.name if config.semantic else None,
                          "bound": config.semantic_bound,
                          "semantic": semantic.get(config.judge.name).key if config.semantic else None,
                          "human": _human_inputs(out)},
              ["eps_table.json", "eps_table.csv", "per_sample_eps.npz"], do_budgets,
              code=("calib.budgets", "calib.human.table", semantic_table))
    table_hash = cache.output_hash("eps_table.json")  # provenance; the attacks key on the budgets they use

    # ---- attacks and audit -------------------------------------------------------------------------
    attacks: dict[str, Any] = {}
    judge_key = _judge_key(config, config.judge.name, models)
    if config.attack is not None:
        attacks = _attacks_and_audit(config, cache, ds, splits, data_key, clf, emb, table_hash, judge_key, device)
        _probe_stage(config, cache, ds, splits, clf, judge_key, device)
    _projection_stage(config, cache, ds, emb, device)

    stages_so_far = {r.name: r.key for r in cache.records}
    report = None
    if config.report:
        from calib.report import write_report

        def do_report() -> dict[str, Any]:
            write_report(out, out / "report.html", gallery_per_class=config.gallery_per_class,
                         context={"run": asdict(config), "versions": versions()})
            return {}

        report = cache.run("report", {"stages": stages_so_far, "gallery_per_class": config.gallery_per_class},
                           ["report.html"], do_report, code=("calib.report",))

    summary = {
        "run": asdict(config),
        "dataset": ds.describe(),
        "splits": splits.describe(),
        "models": {stem: rec.info for stem, rec in models.items()},
        "judge": config.judge.name,
        "semantic": {name: rec.info for name, rec in semantic.items()},
        "stages": {r.name: {"reused": r.reused, "seconds": r.seconds, "key": r.key, "device": r.device}
                   for r in cache.records},
        "attacks": attacks,
        "validation": validation.info if validation else None,
        "eps_table": str(out / "eps_table.json"),
        "report": str(out / "report.html") if report else None,
        "versions": versions(),
        "seconds": time.perf_counter() - t0,
        "compute_seconds": sum(r.seconds for r in cache.records),
    }
    summary = to_jsonable(summary)
    write_json(out / "summary.json", summary)
    log.info("run written to %s", out)
    return summary


def _human_inputs(out: Any) -> dict[str, str]:
    """Hashes of what the table's ``human`` blocks read: labelling sessions and validation results."""
    from calib.human.table import session_files
    from calib.io import sha256_file

    files = session_files(out) + [p for p in (out / "validation" / "validation.json",) if p.exists()]
    return {str(p.relative_to(out)): sha256_file(p) for p in files}


def _human_sets(config: RunConfig, ds: Dataset) -> tuple[list[Any], np.ndarray | None]:
    """The run's human-labelled sets, checked against the dataset, and their sources' indices."""
    if not config.human.sets:
        return [], None
    from calib.human import load_human_sets

    sets = load_human_sets(list(config.human.sets))
    return sets, np.unique(np.concatenate([s.check(ds) for s in sets]))


def _validation_stage(config: RunConfig, cache: StageCache, ds: Dataset, splits: Splits,
                      sets: list[Any], device: str) -> StageRecord:
    """Every judge the run has, against the human-labelled sets (``validation/``)."""
    from calib.human import available_judges, save_validation, validate_run
    from calib.io import sha256_file
    from calib.pipeline.context import RunContext

    out = cache.root
    judges = available_judges(out, tuple(config.judge.members))

    def do() -> dict[str, Any]:
        ctx = RunContext(out, {"run": asdict(config)}, ds, splits, None, device)
        doc, arrays = validate_run(ctx, sets, judges, seed=config.seed, device=device)
        save_validation(out, doc, arrays)
        return {name: {k: v["all"][k] for k in ("n", "balanced_accuracy", "auc")} for name, v in doc["judges"].items()}

    files = sorted({p for s in sets for p in (s.path,)})
    return cache.run("validation", {"seed": config.seed,
                                    "sets": {f: sha256_file(f) for f in files},
                                    "judges": judges,
                                    "models": {s: _weights_hash(out, s) for s in _stems(config, judges)},
                                    "k": config.judge.k, "rule": config.judge.rule,
                                    "members": list(config.judge.members)},
                     ["validation/validation.json", "validation/validation.npz"], do,
                     code=("calib.human", "calib.pipeline.context", *JUDGE_CODE), device=device)


def _stems(config: RunConfig, judges: list[str]) -> list[str]:
    return sorted({MODEL_OF[s] for j in judges for s in config.judge.singles(j)})


def _weights_hash(out: Any, stem: str) -> str:
    from calib.models import read_config

    return read_config(out / "models" / stem)["weights_sha256"]


def _train_key(cfg: TrainConfig) -> dict[str, Any]:
    d = cfg.to_json()
    d.pop("device", None)  # where it ran is provenance, not an input; CUDA users re-run with --fresh
    return d


def _train_models(config: RunConfig, cache: StageCache, ds: Dataset, splits: Splits, data_key: dict,
                  device: str) -> dict[str, StageRecord]:
    """Train (or reuse) f, g and every model the measured judges need; stem -> stage record."""
    out = cache.root / "models"
    common = {"device": device, "progress": config.progress}
    emb_opts = {"dim": config.embedding_dim, "margin": config.margin, "miner": config.miner}
    emb_train = TrainConfig(epochs=config.embedding_epochs, seed=config.seed, augment=tuple(config.embedding_augment),
                            **common)
    lip = config.lipschitz
    # stem -> (training config, options in the key, trainer)
    plans: dict[str, tuple[TrainConfig, dict[str, Any], Callable[[TrainConfig], Any]]] = {}
    clf_train = TrainConfig(epochs=config.classifier_epochs, seed=config.seed, **common)
    plans["classifier"] = (clf_train, {}, lambda t: train_classifier(
        splits.train, t, validation=splits.calibration, test=splits.test, split_seed=config.seed))
    plans["embedding"] = (emb_train, emb_opts, lambda t: train_embedding(
        splits.train, t, test=splits.test, split_seed=config.seed, **emb_opts))
    extra_code: tuple[Callable[..., Any], ...] = ()
    needed = set(config.judge.models()) if config.semantic is not None or config.attack is not None else set()
    if "embedding2" in needed:
        seed2 = config.seed + 1

        def train2(t: TrainConfig):
            part, _ = second_split(ds, splits, seed2)
            m = train_embedding(part, t, test=splits.test, split_seed=seed2, **emb_opts)
            m.data["train_parent_fingerprint"] = splits.train.fingerprint
            return m

        plans["embedding2"] = (dataclasses.replace(emb_train, seed=seed2), emb_opts, train2)
        extra_code = (second_split,)
    if "robust-embedding" in needed:
        mix = config.robust_embedding.mix()
        plans["robust-embedding"] = (emb_train, {**emb_opts, "robust": mix.describe()}, lambda t: train_embedding(
            splits.train, t, test=splits.test, split_seed=config.seed, adversarial=mix, **emb_opts))
    if "lipschitz-embedding" in needed:
        lip_opts = {"dim": config.embedding_dim, "margin": lip.margin, "miner": config.miner, "width": lip.width,
                    "depth": lip.depth, "arch": "lipschitz-mlp"}
        lip_train = dataclasses.replace(emb_train, epochs=lip.epochs or config.embedding_epochs)
        plans["lipschitz-embedding"] = (lip_train, lip_opts, lambda t: train_embedding(
            splits.train, t, test=splits.test, split_seed=config.seed, **lip_opts))
    records = {}
    for stem, (tcfg, opts, trainer) in plans.items():
        def do(stem=stem, tcfg=tcfg, trainer=trainer) -> dict[str, Any]:
            m = trainer(tcfg)
            return {"metrics": m.metrics, "weights_sha256": m.save(out / stem)["weights_sha256"],
                    "training_seconds": m.training["seconds"]}

        records[stem] = cache.run(stem, {"data": data_key, "train": _train_key(tcfg), **opts},
                                  _model_outputs(stem), do,
                                  code=(*MODEL_CODE[stem], trainer, *(extra_code if stem == "embedding2" else ())),
                                  device=device)
    return records


def _judge_key(config: RunConfig, name: str, models: dict[str, StageRecord]) -> dict[str, Any]:
    """What a judge's verdicts depend on: its models' weights and its settings."""
    singles = config.judge.singles(name)
    return {"name": name, "k": config.judge.k, "models": {MODEL_OF[s]: models[MODEL_OF[s]].info["weights_sha256"]
                                                          for s in singles},
            **({"rule": config.judge.rule, "members": list(config.judge.members)} if name == "ensemble" else {})}


def _semantic_stages(config: RunConfig, cache: StageCache, ds: Dataset, splits: Splits, data_key: dict,
                     models: dict[str, StageRecord], device: str) -> dict[str, StageRecord]:
    """Each measured judge's robustness radii at the calibration points: ``semantic/<judge>.*``."""
    if config.semantic is None:
        return {}
    out = cache.root
    records = {}
    for name in config.judge.measured:
        def do(name=name) -> dict[str, Any]:
            from calib.budgets.semantic import save_radii

            judge = run_judge(name, out, ds, splits, config.judge, device)
            radii, idx, y = semantic_radii(judge, ds, splits, config.pair, config.semantic, seed=config.seed,
                                           device=device, show_progress=config.progress)
            save_radii(out / "semantic", name, radii, idx, y, judge.describe())
            info: dict[str, Any] = {"judge": judge.describe()}
            for norm, r in radii.items():  # (per-class budgets depend on q and s: they live in the table)
                info[norm] = {"median_empirical": float(np.median(r.empirical)), "seconds": r.info["seconds"],
                              "certificate_checked": r.checked, "not_found": r.info["not_found"],
                              "clean_wrong": r.info["clean_wrong"]}
            return to_jsonable(info)

        records[name] = cache.run(f"semantic-{name}", {
            "data": data_key, "judge": _judge_key(config, name, models),
            "semantic": asdict(config.semantic), "pair": config.pair, "seed": config.seed},
            [f"semantic/{name}.npz", f"semantic/{name}.json"], do,
            code=("calib.budgets.semantic", semantic_radii, query_part, *JUDGE_CODE), device=device)
    return records


def _attacks_and_audit(config: RunConfig, cache: StageCache, ds: Dataset, splits: Splits, data_key: dict,
                       clf: StageRecord, emb: StageRecord, table_hash: str, judge_key: dict[str, Any],
                       device: str) -> dict[str, Any]:
    from calib.attacks.runner import run_attack, save_attack
    from calib.audit import audit, build_reference

    out = cache.root
    models = out / "models"
    acfg = config.attack
    test = splits.test
    sel = stratified_subset(test.labels, acfg.n, config.seed)
    x, y = test.images[sel], test.labels[sel]
    loaded: dict[str, Any] = {}

    def model(name: str):
        if name not in loaded:
            loaded[name] = load_model(models / name, device)[0]
        return loaded[name]

    def judge():
        if "judge" not in loaded:
            loaded["judge"] = run_judge(config.judge.name, out, ds, splits, config.judge, device)
        return loaded["judge"]

    table = load_table(out / "eps_table.json")

    def reference():
        if "ref" not in loaded:
            tr = splits.train
            loaded["ref"] = build_reference(model("classifier"), {"g": model("embedding")}, tr.images, tr.labels,
                                            device)
        return loaded["ref"]

    results = {}
    for item in attack_plan(acfg):
        name, spec = item["name"], dataclasses.replace(item["spec"], seed=config.seed)
        uses_table = spec.eps is None
        budget_key = (_eps_key(table, "embedding", "l2") if spec.attack == "embedding-pgd" else
                      _eps_key(table, "input", spec.norm)) if uses_table else None
        a_inputs = {"test": data_key["test"], "selection": sel.tolist(),
                    "spec": asdict(spec), "classifier": clf.info["weights_sha256"],
                    "embedding": emb.info["weights_sha256"] if spec.attack == "embedding-pgd" else None,
                    "budgets": budget_key}

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

        att = cache.run(f"attack-{name}", a_inputs, [f"attacks/{name}.npz", f"attacks/{name}.json"], do_attack,
                        code=("calib.attacks.runner", "calib.models", model), device=device)
        ball_space = item["ball_space"]

        def do_audit(name=name, ball_space=ball_space, spec=spec) -> dict[str, Any]:
            with np.load(out / "attacks" / f"{name}.npz", allow_pickle=False) as z:
                x_adv, pred, eps = z["x_adv"], z["pred"], z["eps"]
            if ball_space == "embedding":
                eps = table.eps("embedding", "l2")[y]
            result = audit(x, x_adv, y, pred, norm=spec.norm, eps=eps, reference=reference(), judge=judge(),
                           config=config.audit, ball_space=ball_space, embedding=model("embedding"),
                           num_classes=ds.num_classes, device=device)
            result.meta |= {"attack": name, "budget": item["budget"], "spec": asdict(spec)}
            result.arrays["indices"] = test.indices[sel]
            result.save(out / "audit", name, ds.class_names)
            return {"valid_rate": float(result.arrays["valid"].mean()),
                    "success_rate": float(result.arrays["success"].mean()), "judge": config.judge.name}

        aud = cache.run(f"audit-{name}", {"attack": att.key, "attack_npz": cache.output_hash(f"attacks/{name}.npz"),
                                          "judge": judge_key, "reference": data_key["train"],
                                          "config": asdict(config.audit),
                                          "budgets": budget_key},
                        [f"audit/{name}.npz", f"audit/{name}.json"], do_audit,
                        code=("calib.audit", model, reference, judge, *JUDGE_CODE), device=device)
        results[name] = {"budget": item["budget"], "norm": spec.norm, **att.info, **aud.info}
    return results


def _eps_key(table: Any, space: str, norm: str) -> str:
    """sha256 of one column of per-class budgets: what an attack under the table depends on (edits
    elsewhere in the table, such as a judge's bracket or people's labels, do not redo it)."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps([repr(float(v)) for v in table.eps(space, norm)]).encode()).hexdigest()


def _probe_stage(config: RunConfig, cache: StageCache, ds: Dataset, splits: Splits, clf: StageRecord,
                 judge_key: dict[str, Any], device: str) -> StageRecord:
    """The class-mixing probe ``x0 + eps sign(x1)`` on test images, with f's prediction and the
    run judge's label (cached)."""
    out = cache.root

    def do_probe() -> dict[str, Any]:
        from calib.attacks.probe import class_mixing_probe
        from calib.audit.audit import judge_verdicts
        from calib.models.infer import forward_batched

        f = load_model(out / "models" / "classifier", device)[0]
        g = load_model(out / "models" / "embedding", device)[0]
        judge = run_judge(config.judge.name, out, ds, splits, config.judge, device)
        test = splits.test
        p = class_mixing_probe(test.images, test.labels, config.attack.probe_eps, seed=config.seed, embedding=g)
        arrays = {"images": p.images, "index0": test.indices[p.index0], "index1": test.indices[p.index1],
                  "class0": p.class0, "class1": p.class1,
                  "pred": forward_batched(f, p.images, device=device).argmax(1).numpy(),
                  "x0": test.images[p.index0], "x1": test.images[p.index1],
                  **{f"dist_{k}": v for k, v in p.input_distance.items()}}
        v = judge_verdicts(judge, test.images[p.index0], p.images, p.class0, device=device)
        arrays |= {"judge_label": v["judge_label"], "judge_changed": v["class_changed"],
                   "judge_score": v["judge_score"]}
        write_npz(out / "probe.npz", {"eps": np.float64(p.eps), "judge": np.array(config.judge.name), **arrays})
        return {"eps": p.eps, "classifier_fooled": float((arrays["pred"] != arrays["class0"]).mean()),
                "judge_changed": float(arrays["judge_changed"].mean()), "judge": config.judge.name}

    return cache.run("probe", {"test": splits.test.fingerprint,
                               "eps": config.attack.probe_eps, "seed": config.seed,
                               "classifier": clf.info["weights_sha256"], "judge": judge_key},
                     ["probe.npz"], do_probe,
                     code=("calib.attacks.probe", "calib.audit.audit", "calib.models", *JUDGE_CODE), device=device)


def _projection_stage(config: RunConfig, cache: StageCache, ds: Dataset, emb: StageRecord, device: str
                      ) -> StageRecord:
    """PCA and t-SNE of the embedding of (a seeded, stratified sample of) the whole dataset."""
    out = cache.root

    def do_projection() -> dict[str, Any]:
        from calib.report.projection import project

        g = load_model(out / "models" / "embedding", device)[0]
        sel = stratified_subset(ds.labels, config.tsne_points, config.seed)
        arrays = project(g, ds.images[sel], seed=config.seed, device=device)
        write_npz(out / "projection.npz", {"indices": sel, "labels": ds.labels[sel], **arrays})
        return {"points": int(sel.size)}

    return cache.run("projection", {"data": ds.fingerprint, "embedding": emb.info["weights_sha256"],
                                    "points": config.tsne_points, "seed": config.seed},
                     ["projection.npz"], do_projection, code=("calib.report.projection", "calib.models"),
                     device=device)
