"""``calib run``: dataset -> classifier f, embedding g and the models of the run's judges ->
statistics -> the judges' robustness radii -> (validation against people) -> geometric + semantic
budgets (the epsilon table) -> attacks (global eps, per-class eps, embedding-projected PGD) -> audit by
the run's judge -> class-mixing probe -> 2-D embedding views -> HTML report.

:func:`build_stages` declares the graph, one :class:`~calib.pipeline.stage.Stage` per step, and
:func:`run` walks it. Every stage is cached under the run folder, keyed by what it declares it reads
and by the code it runs (:mod:`calib.pipeline.stage`), so a second identical invocation only checks
hashes, an interrupted run resumes at the stage it was in, and a changed option or edited code
recomputes only the stages downstream of it.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import shutil
import time
from dataclasses import asdict
from typing import Any, Callable

import numpy as np

from calib.budgets import Policy, geometric_table
from calib.data import Dataset, Splits, load_dataset, split_dataset
from calib.data.split import stratified_indices, stratified_subset
from calib.io import sha256_file, to_jsonable, versions, write_json, write_npz
from calib.judges import MODEL_OF
from calib.pipeline.cache import StageCache, StageRecord
from calib.pipeline.config import RunConfig, attack_plan
from calib.pipeline.context import RunContext
from calib.pipeline.lock import RunLock
from calib.pipeline.stage import PipelineContext, Stage, model_files
from calib.pipeline.stages import (check_model_data, query_part, run_judge, semantic_radii, semantic_table,
                                   stats_stage)
from calib.stats import Stats, StatsConfig
from calib.train import TrainConfig, train_classifier, train_embedding

log = logging.getLogger(__name__)

#: the code a judge runs (besides the models it reads)
JUDGE_CODE = ("calib.judges", run_judge)


# ---- the main job --------------------------------------------------------------------------------------
def run(config: RunConfig, on_stage: Callable[[str, str, StageRecord | None], None] | None = None,
        fresh: bool = False) -> dict[str, Any]:
    """Run (or resume) the whole pipeline; returns the summary also written to ``summary.json``.

    The run folder is locked for the whole run (:class:`~calib.pipeline.lock.RunLock`): a second writer
    fails at once with :class:`~calib.pipeline.lock.RunFolderLocked`. ``fresh`` forgets every cached
    stage (once the lock is held) and recomputes everything.
    """
    from calib.device import resolve_device

    t0 = time.perf_counter()
    out = config.run_dir()
    with RunLock(out, "calib run"):  # another writer: fail at once, before loading anything
        pass
    ds = load_dataset(config.dataset, config.data_dir, download=config.download)
    human, held = _human_sets(config, ds)
    splits = split_dataset(ds, seed=config.seed, fractions=config.fractions, hold_out=held,
                           max_calibration=config.max_calibration)
    if config.classifier is not None:  # a user's classifier: import, load and check it before writing anything
        from calib.models.external import load_external

        load_external(config.classifier, config.classifier_weights, splits.test.images, ds.num_classes)
    # the folder is created only once the data loaded: a bad dataset leaves nothing behind
    with RunLock(out, "calib run", create=True):
        if fresh and (out / "cache").exists():
            shutil.rmtree(out / "cache")
        ctx = PipelineContext(out, {"run": asdict(config)}, ds, splits, None, str(resolve_device(config.device)),
                              config=config, cache=StageCache(out, on_stage))
        for stage in build_stages(config, ctx, human):
            stage.run(ctx)
        return _summary(ctx, t0)


def build_stages(config: RunConfig, ctx: PipelineContext, human: list[Any] = ()) -> list[Stage]:
    """The stage graph of a run, in execution order (each stage after everything it reads)."""
    stages = _model_stages(config, ctx)
    stages.append(_stats_stage(config, ctx))
    if config.semantic is not None:
        stages += [_semantic_stage(config, ctx, name) for name in config.judge.measured]
    if human:
        stages.append(_validation_stage(config, ctx, human, {s.name for s in stages if s.name in MODEL_STAGES}))
    stages.append(_budgets_stage(config, ctx))
    if config.attack is not None:
        for item in attack_plan(config.attack):
            stages += _attack_stages(config, ctx, item)
        stages.append(_probe_stage(config, ctx))
    stages.append(_projection_stage(config, ctx))
    if config.report:
        stages.append(Stage("report", _report, ("report.html",), {"gallery_per_class": config.gallery_per_class},
                            derived=lambda c: {name: r.key for name, r in c.records.items()},
                            code=("calib.report",), tensors=False))
    return stages


def _summary(ctx: PipelineContext, t0: float) -> dict[str, Any]:
    config, rec = ctx.config, ctx.records
    attacks = {}
    if config.attack is not None:
        for item in attack_plan(config.attack):
            name = item["name"]
            attacks[name] = {"budget": item["budget"], "norm": item["spec"].norm,
                             **rec[f"attack-{name}"].info, **rec[f"audit-{name}"].info}
    summary = {
        "run": asdict(config),
        "dataset": ctx.dataset.describe(),
        "splits": ctx.splits.describe(),
        "models": {k: r.info for k, r in rec.items() if k in MODEL_STAGES},
        "judge": config.judge.name,
        "semantic": {k.removeprefix("semantic-"): r.info for k, r in rec.items() if k.startswith("semantic-")},
        "stages": {r.name: {"reused": r.reused, "seconds": r.seconds, "key": r.key, "device": r.device}
                   for r in ctx.cache.records},
        "attacks": attacks,
        "validation": rec["validation"].info if "validation" in rec else None,
        "eps_table": str(ctx.run_dir / "eps_table.json"),
        "report": str(ctx.run_dir / "report.html") if "report" in rec else None,
        "versions": versions(),
        "seconds": time.perf_counter() - t0,
        "compute_seconds": sum(r.seconds for r in ctx.cache.records),
    }
    summary = to_jsonable(summary)
    write_json(ctx.run_dir / "summary.json", summary)
    log.info("run written to %s", ctx.run_dir)
    return summary


# ---- models --------------------------------------------------------------------------------------------
def second_split(ds: Dataset, splits: Splits, seed: int) -> tuple[Dataset, Dataset]:
    """Training data of the independent embedding g2: the training part re-split 85/15 with
    another seed. Never the calibration part (whose radii the judges measure) nor the test part
    (which is attacked and audited)."""
    pool = splits.train.indices
    tr, va = stratified_indices(ds.labels[pool], (0.85, 0.15), seed)
    return ds.subset(np.sort(pool[tr]), "train2"), ds.subset(np.sort(pool[va]), "validation2")


#: model stages and the training code each runs
MODEL_STAGES = {"classifier": ("calib.train.classifier",), "embedding": ("calib.train.embedding",),
                "embedding2": ("calib.train.embedding", second_split),
                "robust-embedding": ("calib.train.embedding", "calib.train.adversarial"),
                "lipschitz-embedding": ("calib.train.embedding", "calib.models.lipschitz")}


def _data_key(ctx: PipelineContext) -> dict[str, Any]:
    cfg, splits = ctx.config, ctx.splits
    return {"dataset": ctx.dataset.fingerprint, "split_seed": cfg.seed, "fractions": list(cfg.fractions),
            "max_calibration": cfg.max_calibration,
            **{p: getattr(splits, p).fingerprint for p in ("train", "calibration", "test")}}


def _train_key(cfg: TrainConfig) -> dict[str, Any]:
    d = cfg.to_json()
    d.pop("device", None)  # where it ran is provenance, not an input; CUDA users re-run with --fresh
    return d


def _train(ctx: PipelineContext, stem: str, tcfg: TrainConfig, trainer: Callable[..., Any]) -> dict[str, Any]:
    m = trainer(ctx, tcfg)
    ctx.forget_models()
    return {"metrics": m.metrics, "weights_sha256": m.save(ctx.run_dir / "models" / stem)["weights_sha256"],
            "training_seconds": m.training["seconds"]}


def _train_classifier(ctx: PipelineContext, t: TrainConfig) -> Any:
    s = ctx.splits
    return train_classifier(s.train, t, validation=s.calibration, test=s.test, split_seed=ctx.config.seed)


def _train_embedding(ctx: PipelineContext, t: TrainConfig, **opts: Any) -> Any:
    return train_embedding(ctx.splits.train, t, test=ctx.splits.test, split_seed=ctx.config.seed, **opts)


def _train_embedding2(ctx: PipelineContext, t: TrainConfig, **opts: Any) -> Any:
    part, _ = second_split(ctx.dataset, ctx.splits, t.seed)
    m = train_embedding(part, t, test=ctx.splits.test, split_seed=t.seed, **opts)
    m.data["train_parent_fingerprint"] = ctx.splits.train.fingerprint
    return m


def _import_classifier(ctx: PipelineContext) -> dict[str, Any]:
    """A user's classifier (``--classifier``): checked, its clean accuracy measured on the test part,
    saved as the run's ``models/classifier`` (the same safetensors tensors, and a spec naming the
    factory and the sha256 of its module file)."""
    from calib.models import save_model
    from calib.models.external import load_external, module_file
    from calib.models.infer import forward_batched

    cfg, ds, test = ctx.config, ctx.dataset, ctx.splits.test
    t0 = time.perf_counter()
    model = load_external(cfg.classifier, cfg.classifier_weights, test.images, ds.num_classes)
    pred = forward_batched(model, test.images, device=ctx.device).argmax(1).numpy()
    acc = float((pred == test.labels).mean())
    src = module_file(cfg.classifier)
    spec = {"kind": "external", "factory": cfg.classifier, "module_file": str(src) if src else None,
            "module_sha256": sha256_file(src) if src else None, "input_shape": list(ds.image_shape),
            "num_classes": ds.num_classes}
    metrics = {"test_accuracy": acc, "test_n": int(test.labels.size),
               "test_accuracy_per_class": [float((pred[test.labels == c] == c).mean()) for c in range(ds.num_classes)]}
    saved = save_model(model.cpu(), spec, ctx.run_dir / "models" / "classifier", classes=list(ds.class_names),
                       metrics=metrics, data={"external": True, "data_fingerprint": ds.fingerprint,
                                              "trained_on": "unknown to calib (a classifier of your own)"},
                       external={"weights_file": str(cfg.classifier_weights),
                                 "weights_file_sha256": sha256_file(cfg.classifier_weights)})
    ctx.forget_models()
    log.info("classifier %s: clean accuracy %.4f on the %d test images", cfg.classifier, acc, test.labels.size)
    if acc < 2.0 / ds.num_classes:  # a model that fits but does not know this data: say so, then audit it anyway
        log.warning("classifier %s: clean accuracy %.4f is near chance (1/%d); were its weights trained on this "
                    "data set and split?", cfg.classifier, acc, ds.num_classes)
    return {"metrics": metrics, "weights_sha256": saved["weights_sha256"], "training_seconds": 0.0,
            "external": cfg.classifier, "seconds": time.perf_counter() - t0}


def _classifier_stage(config: RunConfig, ctx: PipelineContext) -> Stage:
    from calib.models.external import module_file

    src = module_file(config.classifier)
    return Stage("classifier", _import_classifier, model_files("classifier"),
                 {"data": _data_key(ctx), "classifier": config.classifier,
                  "weights": sha256_file(config.classifier_weights), "module": sha256_file(src) if src else None},
                 code=("calib.models.external",))


def _model_stages(config: RunConfig, ctx: PipelineContext) -> list[Stage]:
    """f, g and every model the measured judges need."""
    common = {"device": ctx.device, "progress": config.progress}
    emb_opts = {"dim": config.embedding_dim, "margin": config.margin, "miner": config.miner}
    n_train = len(ctx.splits.train)
    emb_train = TrainConfig(epochs=config.epochs("embedding", n_train), seed=config.seed, augment=tuple(config.embedding_augment),
                            **common)
    lip = config.lipschitz
    plans: dict[str, tuple[TrainConfig, dict[str, Any], Callable[..., Any]]] = {
        "classifier": (TrainConfig(epochs=config.epochs("classifier", n_train), seed=config.seed, **common), {},
                       _train_classifier),
        "embedding": (emb_train, emb_opts, functools.partial(_train_embedding, **emb_opts)),
    }
    needed = set(config.judge.models()) if config.semantic is not None or config.attack is not None else set()
    if "embedding2" in needed:
        plans["embedding2"] = (dataclasses.replace(emb_train, seed=config.seed + 1), emb_opts,
                               functools.partial(_train_embedding2, **emb_opts))
    if "robust-embedding" in needed:
        mix = config.robust_embedding.mix()
        plans["robust-embedding"] = (emb_train, {**emb_opts, "robust": mix.describe()},
                                     functools.partial(_train_embedding, adversarial=mix, **emb_opts))
    if "lipschitz-embedding" in needed:
        lip_opts = {"dim": config.embedding_dim, "margin": lip.margin, "miner": config.miner, "width": lip.width,
                    "depth": lip.depth, "arch": "lipschitz-mlp"}
        plans["lipschitz-embedding"] = (dataclasses.replace(emb_train, epochs=lip.epochs or emb_train.epochs),
                                        lip_opts, functools.partial(_train_embedding, **lip_opts))
    data = _data_key(ctx)
    if config.classifier is not None:
        del plans["classifier"]
    stages = [Stage(stem, functools.partial(_train, stem=stem, tcfg=tcfg, trainer=trainer), model_files(stem),
                    {"data": data, "train": _train_key(tcfg), **opts},
                    code=(*MODEL_STAGES[stem], trainer))
              for stem, (tcfg, opts, trainer) in plans.items()]
    return ([_classifier_stage(config, ctx)] if config.classifier is not None else []) + stages


# ---- statistics, the judges' radii, validation, budgets ------------------------------------------------
def _stats_config(config: RunConfig, device: str) -> StatsConfig:
    return StatsConfig(pairs=tuple(dict.fromkeys(("train-train", config.pair, "test-train"))),
                       matrix_modes=config.matrix_modes, seed=config.seed, use_gpu=device.startswith("cuda"))


def _stats(ctx: PipelineContext) -> dict[str, Any]:
    models = ctx.run_dir / "models"
    s = stats_stage(ctx.dataset, ctx.splits, _stats_config(ctx.config, ctx.device), models / "embedding",
                    models / "classifier", show_progress=ctx.config.progress, device=ctx.device)
    s.save(ctx.run_dir)
    return {"seconds": s.meta["seconds"]}


def _stats_stage(config: RunConfig, ctx: PipelineContext) -> Stage:
    cfg = dataclasses.replace(_stats_config(config, ctx.device), use_gpu=False)
    return Stage("stats", _stats, ("stats.json", "stats.npz"), {"data": _data_key(ctx), "config": asdict(cfg)},
                 reads=(*model_files("classifier")[:1], *model_files("embedding")[:1]),
                 code=("calib.stats", "calib.models", "calib.train.embedding", stats_stage, check_model_data))


def _judge_options(config: RunConfig, name: str) -> dict[str, Any]:
    return {"name": name, "k": config.judge.k,
            **({"rule": config.judge.rule, "members": list(config.judge.members)} if name == "ensemble" else {})}


def _judge_reads(config: RunConfig, name: str) -> tuple[str, ...]:
    return tuple(model_files(MODEL_OF[s])[0] for s in config.judge.singles(name))


def _semantic(ctx: PipelineContext, name: str) -> dict[str, Any]:
    from calib.budgets.semantic import save_radii

    cfg = ctx.config
    judge = run_judge(name, ctx.run_dir, ctx.dataset, ctx.splits, cfg.judge, ctx.device)
    radii, idx, y = semantic_radii(judge, ctx.dataset, ctx.splits, cfg.pair, cfg.semantic, seed=cfg.seed,
                                   device=ctx.device, show_progress=cfg.progress)
    save_radii(ctx.run_dir / "semantic", name, radii, idx, y, judge.describe())
    info: dict[str, Any] = {"judge": judge.describe()}
    for norm, r in radii.items():  # (per-class budgets depend on q and s: they live in the table)
        info[norm] = {"median_empirical": float(np.median(r.empirical)), "seconds": r.info["seconds"],
                      "certificate_checked": r.checked, "not_found": r.info["not_found"],
                      "clean_wrong": r.info["clean_wrong"]}
    return to_jsonable(info)


def _semantic_stage(config: RunConfig, ctx: PipelineContext, name: str) -> Stage:
    """The judge's robustness radii at the calibration points: ``semantic/<judge>.*``."""
    return Stage(f"semantic-{name}", functools.partial(_semantic, name=name),
                 (f"semantic/{name}.npz", f"semantic/{name}.json"),
                 {"data": _data_key(ctx), "judge": _judge_options(config, name),
                  "semantic": asdict(config.semantic), "pair": config.pair, "seed": config.seed},
                 reads=_judge_reads(config, name),
                 code=("calib.budgets.semantic", semantic_radii, query_part, *JUDGE_CODE))


def _human_sets(config: RunConfig, ds: Dataset) -> tuple[list[Any], np.ndarray | None]:
    """The run's human-labelled sets, checked against the dataset, and their sources' indices."""
    if not config.human.sets:
        return [], None
    from calib.human import load_human_sets

    sets = load_human_sets(list(config.human.sets))
    return sets, np.unique(np.concatenate([s.check(ds) for s in sets]))


def _validate(ctx: PipelineContext, sets: list[Any], judges: list[str]) -> dict[str, Any]:
    from calib.human import save_validation, validate_run

    doc, arrays = validate_run(ctx, sets, judges, seed=ctx.config.seed, device=ctx.device)
    save_validation(ctx.run_dir, doc, arrays)
    return {name: {k: v["all"][k] for k in ("n", "balanced_accuracy", "auc")} for name, v in doc["judges"].items()}


def _validation_stage(config: RunConfig, ctx: PipelineContext, sets: list[Any], trained: set[str]) -> Stage:
    """Every judge whose models the run trains (f always), against the human-labelled sets
    (``validation/``)."""
    judges = [name for name, stem in MODEL_OF.items() if stem in trained]
    if all(m in judges for m in config.judge.members):
        judges.append("ensemble")
    stems = sorted({MODEL_OF[s] for j in judges for s in config.judge.singles(j)})
    files = sorted({s.path for s in sets})
    return Stage("validation", functools.partial(_validate, sets=sets, judges=judges),
                 ("validation/validation.json", "validation/validation.npz"),
                 {"seed": config.seed, "sets": {f: sha256_file(f) for f in files}, "judges": judges,
                  "k": config.judge.k, "rule": config.judge.rule, "members": list(config.judge.members)},
                 reads=tuple(model_files(s)[0] for s in stems),
                 code=("calib.human", "calib.pipeline.context", *JUDGE_CODE))


def _budgets(ctx: PipelineContext) -> dict[str, Any]:
    from calib.budgets.per_sample import per_sample_arrays, write_per_sample
    from calib.budgets.semantic import load_radii
    from calib.human.table import annotate_table

    cfg, out, ds = ctx.config, ctx.run_dir, ctx.dataset
    policy = Policy(q=cfg.q, s=cfg.s, rule=cfg.rule)
    stats = Stats.load(out)
    table = geometric_table(stats, policy, pair=cfg.pair, provenance={"seed": cfg.seed})
    radii = None
    if cfg.semantic is not None:
        table = semantic_table(table, stats, out, cfg.judge.name, cfg.semantic_bound)
        radii = load_radii(out / "semantic", cfg.judge.name)[0]
    table = annotate_table(out, table, save=False)  # people's relabelling at these budgets, if any
    table.save(out / "eps_table.json")
    ctx.table = None  # reloaded on next use
    meta = {"dataset": ds.name, "fingerprint": ds.fingerprint, "pair": cfg.pair, "q": cfg.q, "s": cfg.s,
            "judge": cfg.judge.name if radii else None, "bound": cfg.semantic_bound if radii else None}
    write_per_sample(out / "per_sample_eps.npz", per_sample_arrays(stats, policy, cfg.pair, radii,
                                                                   cfg.semantic_bound), meta)
    return {}


def _human_inputs(ctx: PipelineContext) -> dict[str, str]:
    """Hashes of what the table's ``human`` blocks read: labelling sessions and validation results."""
    from calib.human.table import session_files

    out = ctx.run_dir
    files = session_files(out) + [p for p in (out / "validation" / "validation.json",) if p.exists()]
    return {str(p.relative_to(out)): sha256_file(p) for p in files}


def _budgets_stage(config: RunConfig, ctx: PipelineContext) -> Stage:
    semantic = config.semantic is not None
    name = config.judge.name
    return Stage("budgets", _budgets, ("eps_table.json", "eps_table.csv", "per_sample_eps.npz"),
                 {"policy": asdict(Policy(q=config.q, s=config.s, rule=config.rule)), "pair": config.pair,
                  "judge": name if semantic else None, "bound": config.semantic_bound},
                 reads=("stats.npz", "stats.json", *((f"semantic/{name}.npz",) if semantic else ())),
                 derived=lambda c: {"human": _human_inputs(c)},
                 code=("calib.budgets", "calib.human.table", semantic_table), tensors=False)


# ---- attacks and their audits --------------------------------------------------------------------------
def _eps_key(table: Any, space: str, norm: str) -> str:
    """sha256 of one column of per-class budgets: what an attack under the table depends on (edits
    elsewhere in the table, such as a judge's bracket or people's labels, do not redo it)."""
    return hashlib.sha256(json.dumps([repr(float(v)) for v in table.eps(space, norm)]).encode()).hexdigest()


def _attacked(ctx: PipelineContext) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The attacked test examples: positions in the test part, images, labels."""
    test = ctx.splits.test
    sel = stratified_subset(test.labels, ctx.config.attack.n, ctx.config.seed)
    return sel, test.images[sel], test.labels[sel]


def _budget_column(ctx: PipelineContext, spec: Any) -> dict[str, Any]:
    if spec.eps is not None:
        return {"budgets": None}
    space, norm = ("embedding", "l2") if spec.attack == "embedding-pgd" else ("input", spec.norm)
    return {"budgets": _eps_key(ctx.eps_table(), space, norm)}


def _attack(ctx: PipelineContext, name: str, spec: Any) -> dict[str, Any]:
    from calib.attacks.runner import run_attack, save_attack

    sel, x, y = _attacked(ctx)
    uses_table, emb = spec.eps is None, spec.attack == "embedding-pgd"
    res = run_attack(spec, ctx.model("classifier"), ctx.model("embedding") if emb else None, x, y,
                     table=ctx.eps_table() if uses_table else None, device=ctx.device,
                     show_progress=ctx.config.progress)
    res["arrays"]["indices"] = ctx.splits.test.indices[sel]
    res["arrays"]["x"] = x
    out = ctx.run_dir
    save_attack(res, out / "attacks", name, classifier=sha256_file(out / model_files("classifier")[0]),
                embedding=sha256_file(out / model_files("embedding")[0]),
                table=sha256_file(out / "eps_table.json") if uses_table else None)
    s = res["summary"]
    return {"success_rate": s["success_rate"], "seconds": s["seconds"], "projection": s["projection"]}


def _audit(ctx: PipelineContext, name: str, spec: Any, ball_space: str, budget: str) -> dict[str, Any]:
    from calib.audit import audit

    sel, x, y = _attacked(ctx)
    with np.load(ctx.run_dir / "attacks" / f"{name}.npz", allow_pickle=False) as z:
        x_adv, pred, eps = z["x_adv"], z["pred"], z["eps"]
    if ball_space == "embedding":
        eps = ctx.eps_table().eps("embedding", "l2")[y]
    result = audit(x, x_adv, y, pred, norm=spec.norm, eps=eps, reference=ctx.reference(), judge=ctx.judge(),
                   config=ctx.config.audit, ball_space=ball_space, embedding=ctx.model("embedding"),
                   num_classes=ctx.dataset.num_classes, device=ctx.device)
    result.meta |= {"attack": name, "budget": budget, "spec": asdict(spec),
                    "predictions": {"by": "the attacked classifier",
                                    "classifier": ctx.config.classifier or "trained by calib"}}
    result.arrays["indices"] = ctx.splits.test.indices[sel]
    result.save(ctx.run_dir / "audit", name, ctx.dataset.class_names)
    return {"valid_rate": float(result.arrays["valid"].mean()),
            "success_rate": float(result.arrays["success"].mean()), "judge": ctx.config.judge.name}


def _attack_stages(config: RunConfig, ctx: PipelineContext, item: dict[str, Any]) -> list[Stage]:
    """One attack of the headline and its audit by the run's judge."""
    name, spec = item["name"], dataclasses.replace(item["spec"], seed=config.seed)
    sel = stratified_subset(ctx.splits.test.labels, config.attack.n, config.seed)
    column = functools.partial(_budget_column, spec=spec)
    models = ("classifier", "embedding") if spec.attack == "embedding-pgd" else ("classifier",)
    attack = Stage(f"attack-{name}", functools.partial(_attack, name=name, spec=spec),
                   (f"attacks/{name}.npz", f"attacks/{name}.json"),
                   {"test": ctx.splits.test.fingerprint, "selection": sel.tolist(), "spec": asdict(spec)},
                   reads=tuple(model_files(m)[0] for m in models), derived=column,
                   code=("calib.attacks.runner", "calib.models", _attacked))
    audit = Stage(f"audit-{name}", functools.partial(_audit, name=name, spec=spec, ball_space=item["ball_space"],
                                                     budget=item["budget"]),
                  (f"audit/{name}.npz", f"audit/{name}.json"),
                  {"judge": _judge_options(config, config.judge.name), "reference": ctx.splits.train.fingerprint,
                   "config": asdict(config.audit)},
                  reads=(f"attacks/{name}.npz", *_judge_reads(config, config.judge.name),
                         model_files("classifier")[0], model_files("embedding")[0]),
                  derived=column, code=("calib.audit", RunContext.reference, _attacked, *JUDGE_CODE))
    return [attack, audit]


def _probe(ctx: PipelineContext) -> dict[str, Any]:
    """The class-mixing probe ``x0 + eps sign(x1)`` on test images, with f's prediction and the run
    judge's label."""
    from calib.attacks.probe import class_mixing_probe
    from calib.audit.audit import judge_verdicts
    from calib.models.infer import forward_batched

    cfg, test = ctx.config, ctx.splits.test
    p = class_mixing_probe(test.images, test.labels, cfg.attack.probe_eps, seed=cfg.seed,
                           embedding=ctx.model("embedding"))
    arrays = {"images": p.images, "index0": test.indices[p.index0], "index1": test.indices[p.index1],
              "class0": p.class0, "class1": p.class1,
              "pred": forward_batched(ctx.model("classifier"), p.images, device=ctx.device).argmax(1).numpy(),
              "x0": test.images[p.index0], "x1": test.images[p.index1],
              **{f"dist_{k}": v for k, v in p.input_distance.items()}}
    v = judge_verdicts(ctx.judge(), test.images[p.index0], p.images, p.class0, device=ctx.device)
    arrays |= {"judge_label": v["judge_label"], "judge_changed": v["class_changed"], "judge_score": v["judge_score"]}
    write_npz(ctx.run_dir / "probe.npz", {"eps": np.float64(p.eps), "judge": np.array(cfg.judge.name), **arrays})
    return {"eps": p.eps, "classifier_fooled": float((arrays["pred"] != arrays["class0"]).mean()),
            "judge_changed": float(arrays["judge_changed"].mean()), "judge": cfg.judge.name}


def _probe_stage(config: RunConfig, ctx: PipelineContext) -> Stage:
    return Stage("probe", _probe, ("probe.npz",),
                 {"test": ctx.splits.test.fingerprint, "eps": config.attack.probe_eps, "seed": config.seed,
                  "judge": _judge_options(config, config.judge.name)},
                 reads=(model_files("classifier")[0], model_files("embedding")[0],
                        *_judge_reads(config, config.judge.name)),
                 code=("calib.attacks.probe", "calib.audit.audit", "calib.models", *JUDGE_CODE))


def _projection(ctx: PipelineContext) -> dict[str, Any]:
    """PCA and t-SNE of the embedding of (a seeded, stratified sample of) the whole dataset."""
    from calib.report.projection import project

    ds, cfg = ctx.dataset, ctx.config
    sel = stratified_subset(ds.labels, cfg.tsne_points, cfg.seed)
    arrays = project(ctx.model("embedding"), ds.images[sel], seed=cfg.seed, device=ctx.device)
    write_npz(ctx.run_dir / "projection.npz", {"indices": sel, "labels": ds.labels[sel], **arrays})
    return {"points": int(sel.size)}


def _projection_stage(config: RunConfig, ctx: PipelineContext) -> Stage:
    return Stage("projection", _projection, ("projection.npz",),
                 {"data": ctx.dataset.fingerprint, "points": config.tsne_points, "seed": config.seed},
                 reads=(model_files("embedding")[0],), code=("calib.report.projection", "calib.models"))


def _report(ctx: PipelineContext) -> dict[str, Any]:
    from calib.report import write_report

    write_report(ctx.run_dir, ctx.run_dir / "report.html", gallery_per_class=ctx.config.gallery_per_class,
                 context={"run": asdict(ctx.config), "versions": versions()})
    return {}
