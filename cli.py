"""calib command line: a thin shell over the library (``calib --help``).

Every user error (a :class:`~calib.errors.CalibError`, an unknown option) becomes one line on stderr and
exit status 2. Anything else is a bug (a broken invariant, an unexpected exception): "internal error:
<one line>" on stderr, the traceback in ``RUN/logs/`` (or a temporary file it names) and exit status 3.
Commands that write a run folder hold its lock (:class:`calib.pipeline.lock.RunLock`).
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Optional

import click
import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from calib.errors import CalibError

_RUN_DIRS: list[Path] = []  # the run folder the current command works on (for internal-error logs)


def _writing(folder: Path, command: str, create: bool = False):
    """The run folder's lock for a command that writes it (and remember the folder for error logs)."""
    from calib.pipeline.lock import RunLock

    _RUN_DIRS.append(Path(folder))
    return RunLock(folder, command, create=create)

app = typer.Typer(
    help="Calibrate adversarial-perturbation budgets (epsilon) with metric learning.\n\n"
         "Quick start: `calib run` trains the classifier and the triplet embedding on the embedded "
         "digits dataset and writes reports/digits-seed0/.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)
train_app = typer.Typer(help="Train one model and save it as safetensors + JSON.", no_args_is_help=True)
app.add_typer(train_app, name="train")
console = Console()
err_console = Console(stderr=True)

# ---- options shared by subcommands (defined once) -------------------------------------------------
DatasetOpt = typer.Option("digits", "--dataset", "-d",
                          help="digits (embedded), mnist, fashion-mnist, kmnist, npz, or a path to a .npz file.")
DataDirOpt = typer.Option(None, "--data-dir", help="Folder with the IDX files (or the .npz file for "
                          "--dataset npz). Default: $CALIB_DATA_DIR, system folders, download cache.")
DownloadOpt = typer.Option(False, "--download", help="Download missing IDX files (checksums verified).")
SeedOpt = typer.Option(0, "--seed", min=0, help="Fixes the split and every random choice in training.")
DeviceOpt = typer.Option("auto", "--device", help="auto (CUDA when present), cpu, cuda or cuda:N.")
EpochsOpt = typer.Option(20, "--epochs", min=1, help="Training epochs.")
NoProgressOpt = typer.Option(False, "--no-progress", help="Hide progress bars.")


@app.callback()
def _main(verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More log output (-vv debug)."),
          quiet: bool = typer.Option(False, "--quiet", "-q", help="Only warnings and errors.")) -> None:
    level = logging.WARNING if quiet else (logging.INFO if verbose == 1 else
                                           logging.DEBUG if verbose > 1 else logging.WARNING)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not quiet:  # progress lines with an ETA where no bar is drawn (--no-progress, a log file, CI)
        logging.getLogger("calib.progress").setLevel(min(level, logging.INFO))


def _load_splits(dataset: str, data_dir: Optional[Path], download: bool, seed: int):
    from calib.data import load_dataset, split_dataset

    return split_dataset(load_dataset(dataset, data_dir, download=download), seed=seed)


@app.command()
def describe(dataset: str = DatasetOpt, data_dir: Optional[Path] = DataDirOpt, download: bool = DownloadOpt,
             seed: int = SeedOpt,
             as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """Describe a dataset: shape, class counts per split, fingerprint."""
    from calib.data import load_dataset, split_dataset

    ds = load_dataset(dataset, data_dir, download=download)
    splits = split_dataset(ds, seed=seed)
    info = {"dataset": ds.describe(), "splits": splits.describe()}
    if as_json:
        console.print_json(json.dumps(info))
        return
    d = info["dataset"]
    console.print(f"[bold]{d['name']}[/]  {d['num_samples']} images of shape {tuple(d['image_shape'])}, "
                  f"values in [0,1]\nfingerprint sha256: {d['fingerprint']}")
    table = Table("class", "all", "train", "calibration", "test")
    for c, name in enumerate(ds.class_names):
        table.add_row(name, str(d["classes"][name]),
                      *(str(int(getattr(splits, p).class_counts()[c])) for p in ("train", "calibration", "test")))
    table.add_row("total", str(len(ds)), *(str(len(getattr(splits, p))) for p in ("train", "calibration", "test")))
    console.print(table)


@train_app.command("classifier")
def train_classifier_cmd(dataset: str = DatasetOpt, data_dir: Optional[Path] = DataDirOpt,
                         download: bool = DownloadOpt,
                         out: Path = typer.Option(Path("reports/models"), "--out", help="Output folder."),
                         epochs: int = EpochsOpt, seed: int = SeedOpt, device: str = DeviceOpt,
                         batch_size: Optional[int] = typer.Option(None, "--batch-size", min=2,
                                                                  help="Default: N/40 in [32, 128]."),
                         lr: float = typer.Option(1e-3, "--lr", min=0.0),
                         no_progress: bool = NoProgressOpt) -> None:
    """Train the classifier f (cross-entropy); writes OUT/classifier.{safetensors,json}."""
    from calib.train import TrainConfig, train_classifier

    s = _load_splits(dataset, data_dir, download, seed)
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device,
                      progress=not no_progress)
    result = train_classifier(s.train, cfg, validation=s.calibration, test=s.test, split_seed=seed)
    saved = result.save(out / "classifier")
    console.print(f"classifier test accuracy {result.metrics['test_accuracy']:.4f} on {len(s.test)} held-out "
                  f"images; weights sha256 {saved['weights_sha256'][:16]}… -> {out / 'classifier.json'}")


@train_app.command("embedding")
def train_embedding_cmd(dataset: str = DatasetOpt, data_dir: Optional[Path] = DataDirOpt,
                        download: bool = DownloadOpt,
                        out: Path = typer.Option(Path("reports/models"), "--out", help="Output folder."),
                        epochs: int = EpochsOpt, seed: int = SeedOpt, device: str = DeviceOpt,
                        batch_size: Optional[int] = typer.Option(None, "--batch-size", min=2, help="Default: 256."),
                        lr: float = typer.Option(1e-3, "--lr", min=0.0),
                        dim: int = typer.Option(64, "--dim", min=1, help="Embedding dimension."),
                        margin: float = typer.Option(0.2, "--margin", min=0.0, help="Triplet margin."),
                        miner: str = typer.Option("semihard", "--miner",
                                                  help="semihard (default), hard (batch-hard) or all."),
                        no_progress: bool = NoProgressOpt) -> None:
    """Train the triplet embedding g (pytorch-metric-learning); writes OUT/embedding.{safetensors,json}."""
    from calib.train import TrainConfig, train_embedding

    s = _load_splits(dataset, data_dir, download, seed)
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device,
                      progress=not no_progress)
    result = train_embedding(s.train, cfg, test=s.test, dim=dim, margin=margin, miner=miner, split_seed=seed)
    saved = result.save(out / "embedding")
    m = result.metrics
    console.print(f"embedding precision@1 {m['test_precision_at_1']:.4f}, MAP@R {m['test_map_at_r']:.4f} on "
                  f"{len(s.test)} held-out queries; weights sha256 {saved['weights_sha256'][:16]}… -> "
                  f"{out / 'embedding.json'}")


RUN_FLAGS = {"dataset": "dataset", "data_dir": "data_dir", "download": "download", "out": "out", "name": "name",
             "seed": "seed", "device": "device", "q": "q", "s": "s", "rule": "rule", "classifier": "classifier",
             "classifier_weights": "classifier_weights"}


@app.command()
def run(ctx: typer.Context,
        config: Optional[Path] = typer.Option(None, "--config", "-c", help="TOML or YAML file with run options "
                                              "(names as in calib.pipeline.RunConfig); flags given here win."),
        dataset: str = DatasetOpt, data_dir: Optional[Path] = DataDirOpt, download: bool = DownloadOpt,
        out: Optional[Path] = typer.Option(None, "--out", help="Run folder. Default: reports/<name>."),
        name: Optional[str] = typer.Option(None, "--name", help="Run name. Default: <dataset>-seed<seed>."),
        epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="Training epochs of every model "
                                             "(default: 200,000 samples seen, 3 to 20 epochs: 20 on digits and "
                                             "MNIST 10k, 4 on Fashion-MNIST 70k)."),
        seed: int = SeedOpt, device: str = DeviceOpt,
        classifier: Optional[str] = typer.Option(None, "--classifier", help="Attack and audit your own classifier "
                                                 "instead of training one: PACKAGE.MODULE:FACTORY (or "
                                                 "path/to/file.py:FACTORY) returning an nn.Module that maps NCHW "
                                                 "images in [0,1] to logits, normalisation inside forward."),
        classifier_weights: Optional[Path] = typer.Option(None, "--classifier-weights", help="The weights of "
                                                          "--classifier: a .safetensors file (never a pickle)."),
        q: float = typer.Option(0.05, "--q", help="Quantile level of the budgets."),
        s: float = typer.Option(1.0, "--s", help="Safety factor of the budgets."),
        rule: str = typer.Option("quantile", "--rule", help="quantile: s*min(Q_q(d_diff/2), Q_q(d_same)); "
                                 "coverage: the largest eps whose coverage is >= 1-q."),
        attack_n: Optional[int] = typer.Option(None, "--attack-n", min=1, help="Attack at most this many test "
                                               "examples (stratified, seeded). Default: 2000."),
        no_attacks: bool = typer.Option(False, "--no-attacks", help="Stop after the epsilon table."),
        no_report: bool = typer.Option(False, "--no-report", help="Do not write report.html."),
        judge: Optional[str] = typer.Option(None, "--judge", help="Who decides 'the class changed' for the audit "
                                            "and the semantic budgets: classifier, knn (default), knn2, robust, "
                                            "lipschitz or ensemble (config: [judge] name = ...)."),
        semantic_bound: Optional[str] = typer.Option(None, "--semantic-bound", help="Which side of the judge's "
                                                     "robustness radius the final budget uses: empirical (attack, "
                                                     "an upper estimate; default) or certified (a guaranteed "
                                                     "lower bound; lipschitz judge)."),
        human: Optional[list[Path]] = typer.Option(None, "--human", help="A human-labelled set (calib .npz, Tramèr "
                                                   "et al. layout .npy, or a folder of them; repeatable): its "
                                                   "source images stay in the test part and every judge is "
                                                   "validated against it (config: [human] sets = [...])."),
        fresh: bool = typer.Option(False, "--fresh", help="Ignore cached stages and recompute everything."),
        no_progress: bool = NoProgressOpt) -> None:
    """The main job: models, statistics, budgets, attacks, audit, report (stages cached and resumable)."""
    import dataclasses

    from click.core import ParameterSource

    from calib.pipeline import load_run_config, read_config_file, run as run_pipeline, run_config_from_mapping

    given = {k: v for k, v in ctx.params.items()
             if ctx.get_parameter_source(k) not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)}
    overrides = {RUN_FLAGS[k]: (str(v) if isinstance(v, Path) else v) for k, v in given.items() if k in RUN_FLAGS}
    if "epochs" in given:
        overrides |= {"classifier_epochs": epochs, "embedding_epochs": epochs}
    if no_report:
        overrides["report"] = False
    if semantic_bound is not None:
        overrides["semantic_bound"] = semantic_bound
    if human:
        overrides["human"] = {"sets": [str(p) for p in human]}
    if no_progress:
        overrides["progress"] = False
    if judge is not None:
        from calib.judges import check_judge_name

        check_judge_name(judge)
        section = (read_config_file(config).get("judge") if config else None) or {}
        if not isinstance(section, dict):
            section = {}
        overrides["judge"] = {**section, "name": judge}
    cfg = load_run_config(config, overrides) if config else run_config_from_mapping(overrides, "options")
    if no_attacks:
        cfg = dataclasses.replace(cfg, attack=None)
    if attack_n is not None:
        if cfg.attack is None:
            raise typer.BadParameter("--attack-n needs the attacks (drop --no-attacks)")
        cfg = dataclasses.replace(cfg, attack=dataclasses.replace(cfg.attack, n=attack_n))
    _RUN_DIRS.append(cfg.run_dir())

    def on_stage(stage: str, event: str, rec) -> None:
        if event == "reused":
            console.print(f"[dim]· {stage}: cached ({rec.seconds:.1f} s when computed)[/]")
        elif event == "start":
            console.print(f"[bold]▶ {stage}[/]")
        else:
            console.print(f"[green]✓ {stage}[/] {rec.seconds:.1f} s")

    summary = run_pipeline(cfg, on_stage=on_stage, fresh=fresh)
    table = Table("model", "held-out metric", "value", "weights sha256")
    for key, m in summary["models"].items():
        metric, label = ("test_accuracy", "accuracy") if key == "classifier" else ("test_precision_at_1", "precision@1")
        extra = f" (L2 Lipschitz {m['metrics']['lipschitz_l2']:.6f})" if "lipschitz_l2" in m["metrics"] else ""
        who = f"{key} (yours: {m['external']})" if m.get("external") else key
        table.add_row(who, label, f"{m['metrics'][metric]:.4f}{extra}", m["weights_sha256"][:16])
    console.print(f"[bold]{summary['dataset']['name']}[/] fingerprint {summary['dataset']['fingerprint'][:16]}…, "
                  f"seed {cfg.seed}", markup=True, highlight=False)
    console.print(table)
    from calib.budgets import load_table

    _print_table(load_table(summary["eps_table"]))
    if summary["attacks"]:
        t = Table("attack", "budget", "success", "valid", title=f"audit (judge: {summary['judge']})")
        for k, a in summary["attacks"].items():
            t.add_row(k, a["budget"], f"{a['success_rate']:.3f}", f"{a['valid_rate']:.3f}")
        console.print(t)
    if summary.get("validation"):
        _print_validation_summary(summary["validation"])
    reused = sum(v["reused"] for v in summary["stages"].values())
    console.print(f"written to {cfg.run_dir()}/ in {summary['seconds']:.1f} s "
                  f"({reused}/{len(summary['stages'])} stages cached)"
                  + (f"; report: {summary['report']}" if summary["report"] else ""))


@app.command()
def report(run_dir: Path = typer.Argument(..., help="A run folder written by `calib run`."),
           out: Optional[Path] = typer.Option(None, "--out", help="Default: <run>/report.html."),
           check: bool = typer.Option(False, "--check", help="Load the report in headless Chromium: fail on "
                                      "console errors or figures that did not render."),
           screenshots: Optional[Path] = typer.Option(None, "--screenshots", help="Write one PNG per section "
                                                      "into this folder (headless Chromium).")) -> None:
    """(Re)build the HTML report of a run folder; optionally check it in a browser and screenshot it."""
    from calib.report import SECTIONS, write_report
    from calib.report.browser import BrowserError, check_page, screenshot_sections

    with _writing(run_dir, "calib report"):
        path = write_report(run_dir, out)
    console.print(f"report written to {path}")
    if check:
        result = check_page(path)
        if not result.ok:
            raise BrowserError(f"{path}: " + "; ".join(result.problems()))
        console.print(f"chromium: {len(result.figures)} figures rendered, no console errors, nothing fetched")
    if screenshots is not None:
        shots = screenshot_sections(path, screenshots, [sid for sid, _ in SECTIONS])
        console.print(f"{len(shots)} screenshots in {screenshots}")


@app.command("experiment")
def experiment_cmd(name: str = typer.Argument(..., help="transfer, adversarial-training, robust-embedding, "
                                              "linearity or units."),
                   run_dir: Path = typer.Option(..., "--run", help="A finished `calib run` folder."),
                   epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="Training epochs "
                                                        "(default: the run's)."),
                   alpha: Optional[float] = typer.Option(None, "--alpha", help="Clean-loss weight of the "
                                                         "adversarial mixture (default 0.5)."),
                   attack: Optional[str] = typer.Option(None, "--attack", help="fgsm or pgd for adversarial "
                                                        "training (default fgsm; robust-embedding: pgd)."),
                   eps: Optional[float] = typer.Option(None, "--eps", help="robust-embedding: training radius "
                                                       "(default 0.1); linearity: the eps (default 0.05)."),
                   n: Optional[int] = typer.Option(None, "--n", min=1, help="Test examples (stratified); default all."),
                   no_report: bool = typer.Option(False, "--no-report", help="Do not rebuild report.html."),
                   device: str = DeviceOpt, no_progress: bool = NoProgressOpt) -> None:
    """Run one background experiment on a run folder and add its section to the report (cached: the
    same experiment with the same options on unchanged models is reused)."""
    from calib.device import resolve_device
    from calib.experiments.runner import experiment_options, run_experiment

    experiment_options(name, epochs=epochs, alpha=alpha, attack=attack, eps=eps, n=n)  # refuse before locking
    with _writing(run_dir, f"calib experiment {name}"):
        doc, rec = run_experiment(run_dir, name, device=str(resolve_device(device)), progress=not no_progress,
                                  epochs=epochs, alpha=alpha, attack=attack, eps=eps, n=n)
        how = "reused (nothing it reads changed)" if rec.reused else f"done in {doc['seconds']:.1f} s"
        console.print(f"{name}: {how} -> {run_dir / 'experiments' / (name + '.json')}")
        if not no_report:
            from calib.report import write_report

            console.print(f"report updated: {write_report(run_dir)}")


@app.command("audit")
def audit_cmd(run_dir: Path = typer.Argument(..., help="A run folder (from `calib run`)."),
              adversarial: Optional[Path] = typer.Option(None, "--adversarial", help="Audit examples made "
                                                         "elsewhere: an .npz with x_adv (N,C,H,W) in [0,1] and "
                                                         "indices (N,) of the clean images in the dataset "
                                                         "(optional eps (N,) or scalar, and pred (N,): the "
                                                         "attacked model's predictions; without it the run's "
                                                         "classifier judges success)."),
              name: Optional[str] = typer.Option(None, "--name", help="Name of the imported attack "
                                                 "(default: the file's stem)."),
              norm: str = typer.Option("linf", "--norm", help="The imported attack's norm: linf or l2."),
              as_json: bool = typer.Option(False, "--json", help="Print the audit summaries as JSON.")) -> None:
    """Print the audit of every attack in a run folder (per attack and class, the verdict rates);
    with --adversarial, first audit imported adversarial examples and add them to the run and report."""
    from calib.audit import AuditResult
    from calib.errors import DataError

    _RUN_DIRS.append(run_dir)
    if adversarial is not None:
        from calib.pipeline.stages import import_adversarial

        with _writing(run_dir, "calib audit --adversarial"):
            n = import_adversarial(run_dir, adversarial, name or adversarial.stem, norm)
        console.print(f"audited {n} imported examples as {name or adversarial.stem!r}; report updated")
    files = sorted((run_dir / "audit").glob("*.json"))
    if not files:
        raise DataError(f"{run_dir} has no audit/ results; run `calib run` (with attacks) first")
    names = json.loads((run_dir / "stats.json").read_text(encoding="utf-8"))["dataset"]["class_names"]
    results = {p.stem: AuditResult.load(run_dir / "audit", p.stem) for p in files}
    if as_json:
        console.print_json(json.dumps({k: _jsonable(a.summary(names)) for k, a in results.items()}))
        return
    for k, a in results.items():
        judge = (a.meta.get("judge") or {}).get("name", "?")
        t = Table("class", "n", "success", "perceptible", f"class changed ({judge})", "interpolated", "VALID",
                  title=k)
        for c, n in enumerate(names):
            m = a.arrays["labels"] == c
            if m.any():
                r = a.rates(m)
                t.add_row(n, str(r["n"]), *(f"{r[f + '_rate']:.3f}" for f in
                                            ("success", "perceptible", "class_changed", "interpolated", "valid")))
        r = a.rates()
        t.add_row("all", str(r["n"]), *(f"{r[f + '_rate']:.3f}" for f in
                                        ("success", "perceptible", "class_changed", "interpolated", "valid")))
        console.print(t)


def _print_validation_summary(per_judge: dict) -> None:
    t = Table("judge", "n", "balanced accuracy", "ROC AUC", title="agreement with people on 'the class changed'")
    for name, a in per_judge.items():
        t.add_row(name, str(a["n"]), _num(a["balanced_accuracy"]), _num(a["auc"]))
    console.print(t)


def _num(v, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


@app.command("validate")
def validate_cmd(run_dir: Path = typer.Argument(..., help="A run folder (from `calib run`)."),
                 human: list[Path] = typer.Option(..., "--human", help="Human-labelled set(s): calib .npz, "
                                                  "Tramèr et al. layout .npy, or folders (repeatable)."),
                 judge: Optional[list[str]] = typer.Option(None, "--judge", help="Judges to validate (repeatable; "
                                                           "default: every judge whose models the run has)."),
                 as_json: bool = typer.Option(False, "--json", help="Print the results as one JSON document."),
                 no_report: bool = typer.Option(False, "--no-report", help="Do not rebuild report.html."),
                 device: str = DeviceOpt) -> None:
    """Measure every judge of a run against people: balanced accuracy, ROC AUC and confusion counts on
    'did the class change?', agreement on the label (Wilson 95% intervals), per set, per class and over
    all sets; writes RUN/validation/ and records the run judge's agreement in the epsilon table."""
    from calib.device import resolve_device
    from calib.human import load_human_sets, save_validation, validate_run
    from calib.human.table import annotate_table
    from calib.judges import check_judge_name
    from calib.pipeline.context import load_run

    for j in judge or []:
        check_judge_name(j)
    sets = load_human_sets(human)
    ctx = load_run(run_dir, device=str(resolve_device(device)))
    doc, arrays = validate_run(ctx, sets, list(judge) if judge else None, seed=ctx.seed, device=ctx.device)
    save_validation(run_dir, doc, arrays)
    annotate_table(run_dir)
    if not no_report:
        from calib.report import write_report

        write_report(run_dir)
    if as_json:
        console.print_json(json.dumps(_jsonable({"judges": {
            name: {"sets": {s: {k: v for k, v in r.items() if k != "roc"} for s, r in j["sets"].items()},
                   "all": {k: v for k, v in j["all"].items() if k != "roc"},
                   "per_class": j["per_class"]}
            for name, j in doc["judges"].items()}, "sets": doc["sets"]})))
        return
    for s, info in doc["sets"].items():
        console.print(f"[bold]{s}[/]: {info['n']} images, people relabelled {info['relabelled']}"
                      f" ({info['unclear']} unclear)", highlight=False, markup=True)
    t = Table("judge", "set", "n", "balanced acc. [95%]", "ROC AUC [95%]", "TP", "FP", "TN", "FN",
              "label agreement [95%]", title="agreement with people on 'the class changed'")
    for name, j in doc["judges"].items():
        for s, r in [*j["sets"].items(), ("all sets", j["all"])]:
            c = r["confusion"]
            la = r["label_agreement"]
            t.add_row(name, s, str(r["n"]), _with_ci(r["balanced_accuracy"], r["balanced_accuracy_ci95"]),
                      _with_ci(r["auc"], r["auc_ci95"]), *(str(c[k]) for k in ("tp", "fp", "tn", "fn")),
                      _with_ci(la["value"], la["wilson95"]))
    console.print(t)
    console.print(f"written to {run_dir / 'validation'}")


def _with_ci(v, ci) -> str:
    return _num(v) + ("" if not ci else f" [{ci[0]:.2f}, {ci[1]:.2f}]")


@app.command("label")
def label_cmd(run_dir: Path = typer.Argument(..., help="A run folder (from `calib run`, with attacks)."),
              session: str = typer.Option("session1", "--session", help="Session name; an existing one resumes."),
              attack: Optional[str] = typer.Option(None, "--attack", help="Attack whose examples to label "
                                                   "(default: pgd-table-<norm>, the per-class budgets)."),
              n: int = typer.Option(100, "--n", min=1, help="Adversarial examples (stratified by class)."),
              controls: float = typer.Option(0.1, "--controls", min=0.0, max=0.9, help="Share of clean controls."),
              port: int = typer.Option(0, "--port", min=0, max=65535, help="Port on 127.0.0.1 (0 = any free one)."),
              seed: int = SeedOpt) -> None:
    """Label a run's adversarial examples yourself on a local page (127.0.0.1 only): one image at a
    time, the class key, u = unclear, Backspace = back. Answers are saved at once to
    RUN/human/<session>.npz (calib's human-labelled format); reopening resumes the session."""
    with _writing(run_dir, f"calib label --session {session}"):
        _label(run_dir, session, attack, n, controls, port, seed)


def _label(run_dir: Path, session: str, attack: Optional[str], n: int, controls: float, port: int,
           seed: int) -> None:
    from calib.human.server import HOST, serve
    from calib.human.session import open_session

    s = open_session(run_dir, session, attack=attack, n=n, controls=controls, seed=seed)
    server = serve(s, port)
    url = f"http://{HOST}:{server.server_address[1]}/"
    typer.echo(f"labelling session {s.name!r}: {int((s.answers >= -1).sum())} of {len(s.answers)} answered")
    typer.echo(f"serving {url} (Ctrl-C to stop; every answer is saved when given)")
    sys.stdout.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    from calib.human.table import annotate_table

    annotate_table(run_dir)
    console.print(f"session saved to {s.path}")


def _jsonable(obj):
    from calib.io import to_jsonable

    return to_jsonable(obj)


def _csv(value: str, what: str) -> tuple[str, ...]:
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    if not items:
        raise typer.BadParameter(f"{what} must be a comma-separated list")
    return items


@app.command()
def stats(dataset: str = DatasetOpt, data_dir: Optional[Path] = DataDirOpt, download: bool = DownloadOpt,
          seed: int = SeedOpt,
          out: Optional[Path] = typer.Option(None, "--out", help="Folder for stats.json/.npz. "
                                             "Default: reports/<dataset>-seed<seed>."),
          embedding: Optional[Path] = typer.Option(None, "--embedding", help="Embedding artefact. "
                                                   "Default: OUT/models/embedding.json."),
          no_embedding: bool = typer.Option(False, "--no-embedding", help="Input space only."),
          norms: str = typer.Option("l2,linf,l1", "--norms", help="Input-space norms."),
          pairs: str = typer.Option("train-train,calibration-train,test-train", "--pairs",
                                    help="QUERY-REFERENCE parts (train, calibration, test, all)."),
          matrix_set: str = typer.Option("all", "--matrix-set", help="Set for the class-pair matrices."),
          modes: str = typer.Option("sampled,exact", "--modes", help="Class-pair matrix modes."),
          n_per_class: int = typer.Option(100, "--n-per-class", min=2, help="Points per class, sampled mode."),
          backend: str = typer.Option("auto", "--backend", help="auto (faiss L2, exact numba Linf/L1) or faiss."),
          device: str = DeviceOpt,
          allow_mismatch: bool = typer.Option(False, "--allow-mismatch",
                                              help="Accept an embedding trained on other data or split."),
          no_progress: bool = NoProgressOpt) -> None:
    """Distance statistics: d_same/d_diff, separation, duplicates, class-pair matrices."""
    from calib.data import load_dataset, split_dataset
    from calib.device import resolve_device
    from calib.pipeline import default_run_dir, stats_stage
    from calib.stats import StatsConfig

    folder = out or default_run_dir(dataset, seed)
    dev = resolve_device(device)
    cfg = StatsConfig(input_norms=_csv(norms, "--norms"), embedding=not no_embedding, pairs=_csv(pairs, "--pairs"),
                      matrix_set=matrix_set, matrix_modes=_csv(modes, "--modes"), n_per_class=n_per_class,
                      seed=seed, backend=backend, use_gpu=dev.type == "cuda")
    ds = load_dataset(dataset, data_dir, download=download)
    splits = split_dataset(ds, seed=seed)
    emb_path = None if no_embedding else (embedding or folder / "models" / "embedding.json")
    with _writing(folder, "calib stats", create=True):
        result = stats_stage(ds, splits, cfg, emb_path, folder / "models" / "classifier.json", allow_mismatch,
                             show_progress=not no_progress, device=str(dev))
        path = result.save(folder)
    summary = result.summary()["neighbours"]
    table = Table("space/norm/pair", "separation r", "median d_same", "median d_diff", "dup same", "dup cross")
    for key, v in summary.items():
        med_same = sorted(c["d_same_quantiles"][2] for c in v["per_class"].values())
        med_diff = sorted(c["d_diff_quantiles"][2] for c in v["per_class"].values())
        table.add_row(key, f"{v['separation']:.4g}", f"{med_same[len(med_same) // 2]:.4g}",
                      f"{med_diff[len(med_diff) // 2]:.4g}", str(v["same_class_duplicates"]),
                      str(v["cross_class_duplicates"]))
    console.print(table)
    console.print(f"(medians: the median class's median) written to {path} in {result.meta['seconds']:.1f} s")


def _print_table(table) -> None:
    sem = (table.policy.get("semantic") or {})
    judge = (sem.get("judge") or {}).get("name") if isinstance(sem.get("judge"), dict) else sem.get("judge")
    title = "epsilon (coverage)" + (f"; semantic [certified, empirical] of judge {judge}, final uses the "
                                    f"{sem.get('bound')} bound" if judge else "")
    cols = []
    for key, b in table.budgets.items():
        cols.append(key)
        if (b.get("components") or {}).get("semantic"):
            cols.append(f"{key} semantic")
    t = Table("class", *cols, title=title)
    for c, name in enumerate(table.class_names):
        row = [name]
        for b in table.budgets.values():
            row.append(f"{b['eps'][c]:.4g} ({b['coverage'][c]:.2f})")
            sb = (b.get("components") or {}).get("semantic")
            if sb:
                emp = sb["empirical"][c]
                cert = sb["certified"][c] if sb.get("certified") else None
                lo = "–" if cert is None else f"{cert:.4g}"
                row.append(f"[{lo}, {'none found' if emp is None else f'{emp:.4g}'}]")
        t.add_row(*row)
    console.print(t)
    for key, base in table.baselines.items():
        for eps, v in base.items():
            worst = max(v["either"])
            console.print(f"global {key} eps={eps}: balls unsafe (same-class image inside or halfway to another "
                          f"class) for {min(v['either']):.0%}-{worst:.0%} of each class's points")


@app.command()
def budgets(run_dir: Optional[Path] = typer.Option(None, "--run", help="Folder with stats.json/.npz "
                                                    "(default reports/<dataset>-seed<seed>)."),
            dataset: str = DatasetOpt, seed: int = SeedOpt,
            q: float = typer.Option(0.05, "--q", min=0.0, max=0.999, help="Quantile level."),
            s: float = typer.Option(1.0, "--s", min=1e-9, help="Safety factor."),
            pair: str = typer.Option("calibration-train", "--pair", help="Statistics pair to calibrate on."),
            rule: str = typer.Option("quantile", "--rule", help="quantile: s*min(Q_q(d_diff/2), Q_q(d_same)); "
                                     "coverage: largest eps whose coverage is >= 1-q."),
            out: Optional[Path] = typer.Option(None, "--out", help="Table path (default RUN/eps_table.json)."),
            semantic: bool = typer.Option(False, "--semantic", help="Final budgets = min(geometric, semantic): the "
                                          "judge's robustness radius; needs the run's models and the dataset."),
            judge: str = typer.Option("knn", "--judge", help="The judge whose robustness radius sets the semantic "
                                      "budget: classifier, knn, knn2, robust, lipschitz or ensemble (its models "
                                      "must be in RUN/models)."),
            semantic_bound: str = typer.Option("empirical", "--semantic-bound", help="empirical (attack: upper "
                                               "estimate) or certified (guaranteed lower bound)."),
            semantic_norms: str = typer.Option("linf,l2", "--semantic-norms"),
            semantic_iters: int = typer.Option(8, "--semantic-iters", min=0, help="Bisection probes per point."),
            semantic_steps: int = typer.Option(10, "--semantic-steps", min=1, help="PGD steps per probe."),
            data_dir: Optional[Path] = DataDirOpt, device: str = DeviceOpt,
            no_progress: bool = NoProgressOpt) -> None:
    """Per-class epsilon budgets from saved statistics -> eps_table.json + .csv."""
    from calib.budgets import Policy
    from calib.device import resolve_device
    from calib.judges import check_judge_name
    from calib.pipeline import SemanticConfig, budgets_stage, default_run_dir

    folder = run_dir or default_run_dir(dataset, seed)
    check_judge_name(judge)
    if semantic_bound not in ("empirical", "certified"):
        raise typer.BadParameter(f"--semantic-bound must be empirical or certified; got {semantic_bound!r}")
    sem = ds = None
    if semantic:
        from calib.data import load_dataset

        sem = SemanticConfig(norms=_csv(semantic_norms, "--semantic-norms"), iters=semantic_iters,
                             steps=semantic_steps)
        ds = load_dataset(dataset, data_dir)
    with _writing(folder, "calib budgets"):
        table, path = budgets_stage(folder, Policy(q=q, s=s, rule=rule), pair, out, semantic=sem, dataset=ds,
                                    judge=judge, bound=semantic_bound, device=str(resolve_device(device)),
                                    show_progress=not no_progress)
    _print_table(table)
    console.print(f"written to {path} and {path.with_suffix('.csv')}")


@app.command()
def attack(run_dir: Optional[Path] = typer.Option(None, "--run", help="Run folder with models/ (and "
                                                  "eps_table.json). Default: reports/<dataset>-seed<seed>."),
           dataset: str = DatasetOpt, data_dir: Optional[Path] = DataDirOpt, seed: int = SeedOpt,
           name: str = typer.Option("pgd", "--attack", help="fgsm, pgd, embedding-pgd, shift or probe."),
           norm: str = typer.Option("linf", "--norm", help="linf or l2 (embedding-pgd: norm of --cap)."),
           eps: Optional[float] = typer.Option(None, "--eps", help="Global budget; omit to use the eps table "
                                               "(embedding-pgd: the embedding radius)."),
           table_path: Optional[Path] = typer.Option(None, "--table", help="Eps table (default RUN/eps_table.json)."),
           split: str = typer.Option("test", "--split", help="train, calibration or test."),
           n: int = typer.Option(0, "--n", min=0, help="Attack N images of the split, stratified by class and "
                                 "seeded, as `calib run --attack-n` (0 = all)."),
           steps: Optional[int] = typer.Option(None, "--steps", min=1, help="PGD steps (default: calib run's, 20)."),
           restarts: int = typer.Option(1, "--restarts", min=1),
           step_size: Optional[float] = typer.Option(None, "--step-size", min=0.0, help="embedding-pgd input step "
                                                     "(default: calib run's, 2.5 * cap / steps; without --cap the "
                                                     "cap in that rule is the global budget, 0.3 L-inf / 2.0 L2)."),
           method: Optional[str] = typer.Option(None, "--projection", help="embedding-pgd: tangent (calib run's "
                                                "default: a Newton step on the ball's linearisation at the last "
                                                "iterate, then fresh Newton steps for misses), newton (from the "
                                                "candidate; slower) or bisection (cheapest, weakest)."),
           newton_iters: Optional[int] = typer.Option(None, "--newton-iters", min=1, help="embedding-pgd: Newton "
                                                      "steps (tangent: for points still outside; default: calib "
                                                      "run's, 2)."),
           cap: Optional[float] = typer.Option(None, "--cap", help="embedding-pgd: input-norm cap."),
           out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default RUN/attacks)."),
           device: str = DeviceOpt, no_progress: bool = NoProgressOpt) -> None:
    """Attack a split with a global eps or the eps table; writes examples, outcomes and a summary."""
    import dataclasses

    from calib.data import PARTS, load_dataset, split_dataset
    from calib.data.split import stratified_subset
    from calib.device import resolve_device
    from calib.errors import ConfigError
    from calib.models import load_model
    from calib.pipeline import AttackConfig, check_model_data, default_run_dir
    from calib.pipeline.config import embedding_step

    defaults = AttackConfig()  # the same settings as `calib run`'s attacks
    steps = steps or defaults.steps
    method = method or defaults.projection
    newton_iters = newton_iters or defaults.newton_iters
    if norm not in defaults.global_eps:
        raise ConfigError(f"--norm must be linf or l2; got {norm!r}")
    if step_size is None:
        step_size = embedding_step(dataclasses.replace(defaults, steps=steps), norm, cap)
    folder = run_dir or default_run_dir(dataset, seed)
    if split not in PARTS:
        raise ConfigError(f"unknown split {split!r}; choose {', '.join(PARTS)}")
    dev = resolve_device(device)
    ds = load_dataset(dataset, data_dir)
    splits = split_dataset(ds, seed=seed)
    part = getattr(splits, split)
    sel = stratified_subset(part.labels, n or None, seed)
    images, labels = part.images[sel], part.labels[sel]
    if name == "probe":
        from calib.attacks.probe import class_mixing_probe

        emb, _ = load_model(folder / "models" / "embedding.json")
        res = class_mixing_probe(images, labels, eps if eps is not None else 0.3, seed=seed, embedding=emb)
        console.print(f"class-mixing probe eps={res.eps}: {len(res.index0)} probes; embedding distance to x0 "
                      f"median {float(np.median(res.embedding_to_x0)):.3f}, to x1 "
                      f"{float(np.median(res.embedding_to_x1)):.3f}")
        return
    from calib.attacks.runner import AttackSpec, run_attack, save_attack
    from calib.budgets import load_table

    spec = AttackSpec(attack=name, norm=norm, eps=eps, steps=steps, restarts=restarts, step_size=step_size,
                      method=method, newton_iters=newton_iters, cap=cap, seed=seed)
    table = None
    if eps is None:
        table = load_table(table_path or folder / "eps_table.json")
        table.check_fingerprint(ds.fingerprint)
    clf, clf_cfg = load_model(folder / "models" / "classifier.json", dev)
    check_model_data(clf_cfg, ds, splits, "classifier")
    emb = None
    if name in ("embedding-pgd", "shift"):
        emb, _ = load_model(folder / "models" / "embedding.json", dev)
    tag = f"{name}-{norm}-" + (f"eps{eps:g}" if eps is not None else "table")
    with _writing(folder, "calib attack"):
        result = run_attack(spec, clf, emb, images, labels, table=table, device=dev,
                            show_progress=not no_progress)
        path = save_attack(result, out or folder / "attacks", tag, dataset=ds.fingerprint,
                           classifier_sha256=clf_cfg["weights_sha256"], split=split, seed=seed)
    s_ = result["summary"]
    t = Table("class", "n", "success", "mean eps", "mean Linf", "mean L2")
    for c, v in s_["per_class"].items():
        t.add_row(ds.class_names[int(c)], str(v["n"]), f"{v['success_rate']:.3f}", f"{v['mean_eps']:.4g}",
                  f"{v['mean_linf']:.4g}", f"{v['mean_l2']:.4g}")
    console.print(t)
    if s_["projection"]:
        p = s_["projection"]
        console.print(f"projection active in {p['active_rate']:.1%} of steps; {p['g_forward_per_candidate']:.2f} "
                      f"extra forward passes of g per sample-step; backward {int(p.get('g_backward', 0))}")
    console.print(f"success rate {s_['success_rate']:.3f} on {s_['n']} images in {s_['seconds']:.1f} s -> {path}")


table_app = typer.Typer(help="Inspect epsilon tables.", no_args_is_help=True)
app.add_typer(table_app, name="table")


@table_app.command("check")
def table_check(path: Path = typer.Argument(..., help="eps_table.json or .csv"),
                dataset: Optional[str] = typer.Option(None, "--dataset", "-d",
                                                      help="Also check the table belongs to this dataset."),
                data_dir: Optional[Path] = DataDirOpt,
                allow_mismatch: bool = typer.Option(False, "--allow-mismatch")) -> None:
    """Validate an epsilon table (and optionally its dataset fingerprint) and print it."""
    from calib.budgets import load_table

    table = load_table(path)
    if dataset:
        from calib.data import load_dataset

        table.check_fingerprint(load_dataset(dataset, data_dir).fingerprint, allow_mismatch)
    _print_table(table)
    pol = {k: v for k, v in table.policy.items() if k in ("method", "rule", "q", "s", "pair")}
    sem = table.policy.get("semantic") or {}
    if sem:
        judge = sem.get("judge")
        pol |= {"judge": judge.get("name") if isinstance(judge, dict) else judge, "semantic bound": sem.get("bound")}
    console.print(f"{path}: valid calib eps table v{table.version} for {table.dataset['name']} "
                  f"({table.fingerprint[:12]}…), policy {pol}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``calib`` command: one line and exit 2 for any user error."""
    command = typer.main.get_command(app)
    _RUN_DIRS.clear()
    try:
        command.main(args=argv, prog_name="calib", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else "calib --help")
        return 0
    except click.UsageError as exc:
        err_console.print(f"error: {exc.format_message()}", markup=False, highlight=False)
        return 2
    except CalibError as exc:
        err_console.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        return 2
    except click.exceptions.Abort:
        err_console.print("aborted", markup=False)
        return 130
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except Exception as exc:  # noqa: BLE001 - anything else is a bug, reported as one
        return _internal_error(exc)
    return 0


def _internal_error(exc: BaseException) -> int:
    """Exit status 3: one line, the traceback in RUN/logs/ (or a temporary file), how to report it."""
    import tempfile
    import time
    import traceback

    from calib.io import versions

    text = "".join(traceback.format_exception(exc))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    doc = f"calib internal error, {stamp}\nargv: {sys.argv}\nversions: {versions()}\n\n{text}"
    path = None
    run_dir = _RUN_DIRS[-1] if _RUN_DIRS else None
    if run_dir is not None and run_dir.is_dir():
        try:
            (run_dir / "logs").mkdir(exist_ok=True)
            path = run_dir / "logs" / f"internal-error-{stamp}.txt"
            path.write_text(doc, encoding="utf-8")
        except OSError:
            path = None
    if path is None:
        with tempfile.NamedTemporaryFile("w", prefix="calib-internal-error-", suffix=".txt", delete=False,
                                         encoding="utf-8") as f:
            f.write(doc)
            path = Path(f.name)
    line = " ".join(str(exc).split()) or type(exc).__name__
    err_console.print(f"internal error: {type(exc).__name__}: {line}", markup=False, highlight=False, soft_wrap=True)
    err_console.print(f"this is a bug in calib, not in your input; the traceback is in {path}; please report it "
                      "with that file", markup=False, highlight=False, soft_wrap=True)
    return 3


if __name__ == "__main__":
    sys.exit(main())
