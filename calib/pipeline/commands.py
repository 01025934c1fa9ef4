"""The library side of the single-stage commands (``calib stats``, ``budgets``, ``attack``,
``validate``): each opens the run folder, takes its dataset, split, models and options from what the
run recorded, overrides only what it is given, and runs the same stage code as ``calib run``. The
caller (the CLI) holds the folder's lock (:meth:`calib.runfolder.RunFolder.writing`)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from typing import Any

from calib.budgets import EpsTable, Policy
from calib.data import SplitSpec, load_dataset
from calib.errors import ConfigError
from calib.pipeline.cache import StageCache
from calib.pipeline.config import RunConfig, SemanticConfig, run_config_from_mapping
from calib.pipeline.stage import StageContext
from calib.pipeline.stages import budgets as budgets_mod, semantic as semantic_mod
from calib.pipeline.stages.stats import measure_stats
from calib.runfolder import RunFolder, artefacts as A
from calib.stats import Stats, StatsConfig


def run_config(folder: RunFolder) -> RunConfig:
    """The options a run folder was made with (as recorded in ``run.json``)."""
    known = {f.name for f in dataclasses.fields(RunConfig)}
    return run_config_from_mapping({k: v for k, v in folder.config.items() if k in known},
                                   str(folder.file(A.RECORD)))


def stats_folder(path: Path, *, dataset: str | None = None, data_dir: str | Path | None = None,
                 download: bool = False, seed: int | None = None, device: str = "cpu",
                 like: RunFolder | None = None) -> RunFolder:
    """The folder ``calib stats`` writes: an existing run (its data and split, refusing a ``dataset`` or
    ``seed`` other than its own), a new folder with the data and split of the run ``like``, or a new
    folder recorded with ``dataset`` and ``seed``'s default split."""
    if like is not None and not (Path(path) / A.RECORD).exists():
        folder = RunFolder(path, device=device, data_dir=data_dir)
        folder._record = {**like.record, "config": {k: like.config.get(k) for k in ("dataset", "data_dir", "seed")}}
        folder._dataset, folder._splits = like.dataset, like.splits
        return folder
    if (Path(path) / A.RECORD).exists():
        folder = RunFolder.open(path, device=device, data_dir=data_dir)
        rec = folder.record["dataset"]
        if dataset is not None and dataset != rec.get("source"):
            raise ConfigError(f"{path} is a run on {rec.get('source')!r}, not {dataset!r}; drop --dataset or use "
                              "another --out")
        if seed is not None and seed != folder.split_spec.seed:
            raise ConfigError(f"{path} was split with seed {folder.split_spec.seed}, not {seed}; drop --seed or use "
                              "another --out")
        return folder
    source = dataset or "digits"
    ds = load_dataset(source, data_dir, download=download)
    return RunFolder.new(path, ds, SplitSpec(seed=seed or 0), source=source, data_dir=data_dir,
                         config={"dataset": source, "data_dir": None if data_dir is None else str(data_dir),
                                 "seed": seed or 0}, device=device)


def compute_stats(folder: RunFolder, config: StatsConfig, *, embedding: str | Path | None = None,
                  allow_mismatch: bool = False, progress: bool = True) -> tuple[Stats, Path]:
    """``calib stats``: the statistics of the folder's data and split, saved as its ``stats.*`` (and, for a
    new folder, its record). A finished run's statistics are replaced only by the same statistics (the
    options ``calib run`` used, the run's embedding); others are refused in one line."""
    from calib.pipeline.stages.stats import stats_config

    config = dataclasses.replace(config, seed=folder.seed)
    if folder.summary() is not None:
        own = stats_config(run_config(folder))
        if config != own or embedding is not None:
            diff = [f"{f.name} {getattr(own, f.name)} -> {getattr(config, f.name)}" for f in dataclasses.fields(own)
                    if getattr(own, f.name) != getattr(config, f.name)] + (["--embedding"] if embedding else [])
            raise ConfigError(f"{folder.file(A.STATS_JSON)} holds the run's own statistics; these differ "
                              f"({', '.join(diff)}): pass --out FOLDER to compute them for this run's split elsewhere")
        from calib.pipeline.stages.stats import stats_stage

        stats_stage(run_config(folder)).run(StageContext(folder, StageCache(folder.path), progress=progress))
        return folder.stats(), folder.file(A.STATS_JSON)
    s = measure_stats(folder, config, embedding=embedding, allow_mismatch=allow_mismatch, progress=progress)
    path = s.save(folder.file(A.STATS))
    if not folder.exists(A.RECORD):
        folder.save_record()
    return s, path


def run_budgets_options(folder: RunFolder) -> budgets_mod.BudgetsOptions:
    """The budget options of the run as recorded (a folder ``calib stats`` made: geometric only)."""
    if folder.summary() is None and not folder.exists(A.EPS_TABLE):
        return budgets_mod.BudgetsOptions(Policy(), seed=folder.seed)
    return budgets_mod.budgets_options(run_config(folder))


def compute_budgets(folder: RunFolder, *, q: float | None = None, s: float | None = None, rule: str | None = None,
                    pair: str | None = None, judge: str | None = None, geometric: bool = False,
                    bound: str | None = None, semantic_rule: str | None = None, measure: SemanticConfig | None = None,
                    out: Path | None = None, progress: bool = True) -> tuple[EpsTable, Path]:
    """``calib budgets``: the run's epsilon table, with the given options replacing the run's own.

    ``measure``: first measure the judge's robustness radii with these settings (``semantic/<judge>.*``);
    otherwise the radii the run measured are used. ``geometric``: no semantic budget.

    The table is written to ``out``; without ``out`` it replaces the run's ``eps_table.json`` only when
    the options are the run's own (the table ``calib run`` would write), else it is refused (one line
    saying how), so the table users import is never replaced behind the run's back.
    """
    base = run_budgets_options(folder)
    judge = None if geometric else (judge or base.judge or ("knn" if measure is not None else None))
    o = budgets_mod.BudgetsOptions(
        Policy(q=base.policy.q if q is None else q, s=base.policy.s if s is None else s,
               rule=base.policy.rule if rule is None else rule),
        pair or base.pair, judge, bound or base.bound, base.seed, semantic_rule or base.rule)
    ctx = StageContext(folder, StageCache(folder.path), progress=progress)
    if measure is not None:
        if judge is None:
            raise ConfigError("--semantic measures a judge's radii; it cannot be combined with --geometric")
        cfg = dataclasses.replace(run_config(folder) if folder.summary() is not None else RunConfig(),
                                  semantic=measure, pair=o.pair, seed=folder.seed)
        stage = semantic_mod.semantic_stage(cfg, judge)
        ctx.judge(judge, stage.options.judge)  # a judge whose models the run lacks: its own one-line error
        stage.run(ctx)
    if out is not None:
        table = budgets_mod.make_table(folder, o)
        return table, table.save(out)
    if o != base and folder.summary() is not None:
        was = {"q": base.policy.q, "s": base.policy.s, "rule": base.policy.rule, "pair": base.pair, "judge": base.judge,
               "bound": base.bound, "semantic rule": base.rule}
        now = {"q": o.policy.q, "s": o.policy.s, "rule": o.policy.rule, "pair": o.pair, "judge": o.judge,
               "bound": o.bound, "semantic rule": o.rule}
        changed = ", ".join(f"{k} {was[k]} -> {now[k]}" for k in was if was[k] != now[k])
        raise ConfigError(f"{folder.file(A.EPS_TABLE)} is the run's own table; these options differ from the run's "
                          f"({changed}): pass --out FILE to write this table elsewhere")
    budgets_mod.budgets_stage_from(o).run(ctx)
    folder.forget_table()
    return folder.table(), folder.file(A.EPS_TABLE)


def validate(folder: RunFolder, paths: list[Path], judges: list[str] | None = None,
             report: bool = True) -> dict[str, Any]:
    """``calib validate``: every judge of the run (or ``judges``) against the human-labelled sets at
    ``paths``; writes ``validation/``, records the run judge's agreement in the table and rebuilds the
    report when the run has one. Returns the validation document."""
    from calib.human import load_human_sets, save_validation, validate_run
    from calib.human.table import annotate_table
    from calib.report import write_report

    sets = load_human_sets(paths)
    doc, arrays = validate_run(folder, sets, judges, seed=folder.seed)
    save_validation(folder, doc, arrays)
    if folder.exists(A.EPS_TABLE):
        annotate_table(folder)
        if report and folder.exists(A.STATS_JSON):
            write_report(folder)
    return doc


def fit_judge(folder: RunFolder, paths: list[Path], name: str = "fitted", judges: list[str] | None = None,
              max_features: int = 3) -> dict[str, Any]:
    """``calib judge fit``: a judge fitted to people's labels on the sets at ``paths``
    (:func:`calib.human.fit.fit_judge`), saved atomically to ``models/judges/<name>.json``; returns its
    document."""
    from calib.human import load_human_sets
    from calib.human.fit import fit_judge as fit

    from calib.io import to_jsonable, write_json

    doc = fit(folder, load_human_sets(paths), name=name, judges=judges, max_features=max_features)
    path = folder.file(A.fitted_judge(name))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, to_jsonable(doc))
    folder.forget_models()
    return doc


def attack_spec(attack: str = "pgd", norm: str = "linf", eps: float | None = None, *, steps: int | None = None,
                restarts: int = 1, step_size: float | None = None, method: str | None = None,
                newton_iters: int | None = None, cap: float | None = None, seed: int = 0) -> Any:
    """An :class:`~calib.attacks.runner.AttackSpec` with ``calib run``'s defaults for what is not given
    (20 steps, the tangent projection with 2 Newton steps, embedding step 2.5 * cap / steps, the cap
    being the global budget when none is given)."""
    from calib.attacks.runner import AttackSpec
    from calib.pipeline.config import AttackConfig, embedding_step

    defaults = AttackConfig()
    if norm not in defaults.global_eps:
        raise ConfigError(f"--norm must be linf or l2; got {norm!r}")
    steps = steps or defaults.steps
    if step_size is None:
        step_size = embedding_step(dataclasses.replace(defaults, steps=steps), norm, cap)
    return AttackSpec(attack=attack, norm=norm, eps=eps, steps=steps, restarts=restarts, step_size=step_size,
                      method=method or defaults.projection, newton_iters=newton_iters or defaults.newton_iters,
                      cap=cap, seed=seed)


def own_attack(folder: RunFolder, name: str) -> bool:
    """Whether ``attacks/<name>`` is one of the attacks ``calib run`` made (and its report shows)."""
    return folder.exists(A.manifest(f"attack-{name}"))


def attack(folder: RunFolder, spec: Any, *, split: str = "test", n: int | None = None, table: Path | None = None,
           out: Path | None = None, name: str | None = None, progress: bool = True) -> tuple[dict[str, Any], Path]:
    """``calib attack``: attack (at most ``n``, stratified, seeded) images of a part of the run's split with
    the run's models, under ``spec.eps`` or the per-class budgets of ``table`` (default: the run's);
    writes ``attacks/<name>.{npz,json}`` (or into ``out``) with the dataset indices of the clean images,
    so ``calib audit RUN --adversarial`` audits it. ``name`` defaults to the run's naming,
    ``<attack>-<budget>-<norm>``, followed by the split (``pgd-table-linf-test``); one of the run's own
    attacks is never replaced."""
    from calib.pipeline.imported import NAME

    budget = "table" if spec.eps is None else f"eps{spec.eps:g}"
    name = name or f"{spec.attack}-{budget}-{spec.norm}-{split}"
    if not NAME.fullmatch(name):
        raise ConfigError(f"attack name {name!r}: use letters, digits, '.', '_' and '-' (at most 64)")
    if out is None and own_attack(folder, name):
        raise ConfigError(f"{folder.file(A.attack(name)[0])} is the run's own attack; pass another --name")
    from calib.attacks.runner import run_attack, save_attack
    from calib.budgets import load_table
    from calib.data.split import stratified_subset

    part = folder.split(split)
    sel = stratified_subset(part.labels, n, spec.seed)
    images, labels = part.images[sel], part.labels[sel]
    eps_table = None
    if spec.eps is None:
        eps_table = load_table(table) if table is not None else folder.table()
        eps_table.check_fingerprint(folder.dataset.fingerprint)
    emb = folder.model("embedding") if "embedding" in spec.models else None
    result = run_attack(spec, folder.model("classifier"), emb, images, labels, table=eps_table, device=folder.device,
                        show_progress=progress)
    result["arrays"] |= {"indices": part.indices[sel], "x": images}
    arrays = result["arrays"]
    arrays["eps"] = np.asarray(arrays["eps"], np.float64).reshape(len(labels))
    if spec.attack == "embedding-pgd":  # its eps is the embedding radius; the input ball is the cap (if any)
        arrays["eps_embedding"] = arrays["eps"]
        arrays["eps"] = np.full(len(labels), spec.cap) if spec.cap is not None else arrays[f"dist_{spec.norm}"]
    path = save_attack(result, out or folder.file(A.ATTACKS), name, dataset=folder.dataset.fingerprint,
                       classifier_sha256=folder.model_config("classifier")["weights_sha256"], split=split,
                       seed=spec.seed)
    return result, path


def probe(folder: RunFolder, eps: float, *, split: str = "test", n: int | None = None, seed: int = 0) -> Any:
    """The class-mixing probe ``x0 + eps sign(x1)`` on (at most ``n``) images of a part of the run's split."""
    from calib.attacks.probe import class_mixing_probe
    from calib.data.split import stratified_subset

    part = folder.split(split)
    sel = stratified_subset(part.labels, n, seed)
    return class_mixing_probe(part.images[sel], part.labels[sel], eps, seed=seed, embedding=folder.model("embedding"))
