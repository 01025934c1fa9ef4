"""calib command line: it parses flags and calls the library, nothing more (``calib --help``,
``python -m calib --help``).

Every user error (a :class:`~calib.errors.CalibError`, an unknown option) becomes one line on stderr and
exit status 2. Anything else is a bug (a broken invariant, an unexpected exception): "internal error:
<one line>" on stderr, the traceback in ``RUN/logs/`` (or a temporary file it names) and exit status 3.
Commands that write a run folder hold its lock (:meth:`calib.runfolder.RunFolder.writing`).
"""
from __future__ import annotations

import errno
import json
import logging
import sys
from pathlib import Path
from typing import Any, Optional

import click
import typer
from rich.console import Console

from calib.errors import CalibError

_RUN_DIRS: list[Path] = []  # the run folder the current command works on (for internal-error logs)

app = typer.Typer(
    help="Calibrate adversarial-perturbation budgets (epsilon) with metric learning.\n\n"
         "Quick start: `calib run` trains the classifier and the triplet embedding on the embedded "
         "digits dataset and writes reports/digits-seed0/.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)
train_app = typer.Typer(help="Train one model and save it as safetensors + JSON.", no_args_is_help=True)
table_app = typer.Typer(help="Inspect epsilon tables.", no_args_is_help=True)
app.add_typer(train_app, name="train")
app.add_typer(table_app, name="table")
judge_app = typer.Typer(help="Judges fitted to people's labels.", no_args_is_help=True)
app.add_typer(judge_app, name="judge")
console = Console()
err_console = Console(stderr=True)

# ---- options shared by subcommands (defined once) -------------------------------------------------
DatasetOpt = typer.Option("digits", "--dataset", "-d",
                          help="digits (embedded), mnist, fashion-mnist, kmnist, npz, or a path to a .npz file.")
RunDatasetOpt = typer.Option(None, "--dataset", "-d", help="The dataset (default: the run's; for a new folder, "
                             "digits).")
DataDirOpt = typer.Option(None, "--data-dir", help="Folder with the IDX files (or the .npz file for "
                          "--dataset npz). Default: $CALIB_DATA_DIR, system folders, download cache.")
RunDataDirOpt = typer.Option(None, "--data-dir", help="Where the run's data lives now, if it moved since the run.")
DownloadOpt = typer.Option(False, "--download", help="Download missing IDX files (checksums verified).")
SeedOpt = typer.Option(0, "--seed", min=0, help="Fixes the split and every random choice in training.")
DeviceOpt = typer.Option("auto", "--device", help="auto (CUDA when present), cpu, cuda or cuda:N.")
EpochsOpt = typer.Option(20, "--epochs", min=1, help="Training epochs.")
NoProgressOpt = typer.Option(False, "--no-progress", help="Hide progress bars.")
RunArg = typer.Argument(..., help="A run folder (from `calib run`).")


def _open(path: Path, device: str = "cpu", data_dir: Optional[Path] = None):
    """The run folder ``path`` (remembered for internal-error logs). Its record is read on first use, so a
    command that writes takes the lock before it reads anything."""
    from calib.device import resolve_device
    from calib.runfolder import RunFolder

    _RUN_DIRS.append(Path(path))
    return RunFolder(path, device=str(resolve_device(device)), data_dir=data_dir)


def _show(*items: Any) -> None:
    for item in items:
        console.print(item, highlight=False, soft_wrap=isinstance(item, str))


@app.callback()
def _main(verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More log output (-vv debug)."),
          quiet: bool = typer.Option(False, "--quiet", "-q", help="Only warnings and errors."),
          threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads of torch, numba and faiss "
                                                "(default: every core up to 4, or $CALIB_THREADS; a run's config key `threads` wins; "
                                                "--threads 1 on a machine other jobs keep busy). "
                                                "Results differ in the last bits between thread counts: runs record "
                                                "it, and it is part of every tensor stage's cache key.")) -> None:
    level = logging.WARNING if quiet else (logging.INFO if verbose == 1 else
                                           logging.DEBUG if verbose > 1 else logging.WARNING)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not quiet:  # progress lines with an ETA where no bar is drawn (--no-progress, a log file, CI)
        logging.getLogger("calib.progress").setLevel(min(level, logging.INFO))
    from calib.device import set_threads

    set_threads(threads)


@app.command()
def describe(dataset: str = DatasetOpt, data_dir: Optional[Path] = DataDirOpt, download: bool = DownloadOpt,
             seed: int = SeedOpt,
             as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """Describe a dataset: shape, class counts per split, fingerprint."""
    from calib.data import SplitSpec, load_dataset
    from calib.report import text

    ds = load_dataset(dataset, data_dir, download=download)
    info = {"dataset": ds.describe(), "splits": SplitSpec(seed=seed).build(ds).describe()}
    if as_json:
        console.print_json(json.dumps(info))
    else:
        _show(*text.describe(info))


def _train(what: str, dataset: str, data_dir: Optional[Path], download: bool, out: Path, seed: int, device: str,
           no_progress: bool, **options: Any) -> None:
    from calib.data import load_dataset
    from calib.report import text
    from calib.train import TrainConfig
    from calib.train.standalone import train_on_split

    cfg = TrainConfig(epochs=options.pop("epochs"), batch_size=options.pop("batch_size"), lr=options.pop("lr"),
                      seed=seed, device=device, progress=not no_progress)
    result = train_on_split(what, load_dataset(dataset, data_dir, download=download), cfg, **options)
    saved = result.save(out / what)
    _show(text.trained(what, result.metrics, saved, out / f"{what}.json"))


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
    _train("classifier", dataset, data_dir, download, out, seed, device, no_progress, epochs=epochs,
           batch_size=batch_size, lr=lr)


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
    _train("embedding", dataset, data_dir, download, out, seed, device, no_progress, epochs=epochs,
           batch_size=batch_size, lr=lr, dim=dim, margin=margin, miner=miner)


#: ``calib run`` flags that are RunConfig fields of the same name
RUN_FLAGS = ("dataset", "data_dir", "download", "out", "name", "seed", "device", "q", "s", "rule", "classifier",
             "classifier_weights", "semantic_bound", "semantic_rule")


def _run_flags(ctx: typer.Context) -> dict[str, Any]:
    """The flags given on the command line, as RunConfig names and sections."""
    from click.core import ParameterSource

    p = {k: v for k, v in ctx.params.items()
         if ctx.get_parameter_source(k) not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)}
    flags: dict[str, Any] = {k: str(p[k]) if isinstance(p[k], Path) else p[k] for k in RUN_FLAGS if k in p}
    if "epochs" in p:
        flags |= {"classifier_epochs": p["epochs"], "embedding_epochs": p["epochs"]}
    flags |= {"report": False} if p.get("no_report") else {}
    flags |= {"progress": False} if p.get("no_progress") else {}
    flags |= {"human": {"sets": [str(h) for h in p["human"]]}} if p.get("human") else {}
    flags |= {"judge": {"name": p["judge"]}} if p.get("judge") is not None else {}
    if p.get("no_attacks"):
        if p.get("attack_n") is not None:
            raise typer.BadParameter("--attack-n needs the attacks (drop --no-attacks)")
        flags["attack"] = False
    elif p.get("attack_n") is not None:
        flags["attack"] = {"n": p["attack_n"]}
    return flags


@app.command()
def run(ctx: typer.Context,
        config: Optional[Path] = typer.Option(None, "--config", "-c", help="TOML or YAML file with run options "
                                              "(names as in calib.pipeline.RunConfig); flags given here win."),
        dataset: str = DatasetOpt, data_dir: Optional[Path] = DataDirOpt, download: bool = DownloadOpt,
        out: Optional[Path] = typer.Option(None, "--out", help="Run folder. Default: reports/<name>."),
        name: Optional[str] = typer.Option(None, "--name", help="Run name. Default: <dataset>-seed<seed>."),
        epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="Training epochs of every model "
                                             "(default: 200,000 samples seen by the classifier and 450,000 by the "
                                             "embedding, 3 to 20 epochs: 20 on digits and MNIST 10k, 4 and 8 on "
                                             "Fashion-MNIST 70k)."),
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
        semantic_rule: Optional[str] = typer.Option(None, "--semantic-rule", help="Which radius the semantic budget "
                                                    "is: invariance (default: how far x moves toward an image of "
                                                    "another class before the judge sees that class) or adversarial "
                                                    "(the judge's worst-case robustness radius)."),
        human: Optional[list[Path]] = typer.Option(None, "--human", help="A human-labelled set (calib .npz, Tramèr "
                                                   "et al. layout .npy, or a folder of them; repeatable): its "
                                                   "source images stay in the test part and every judge is "
                                                   "validated against it (config: [human] sets = [...])."),
        fresh: bool = typer.Option(False, "--fresh", help="Ignore cached stages and recompute everything."),
        no_progress: bool = NoProgressOpt) -> None:
    """The main job: models, statistics, budgets, attacks, audit, report (stages cached and resumable)."""
    from calib.pipeline import RunConfig, run as run_pipeline
    from calib.report import text

    cfg = RunConfig.from_sources(config, _run_flags(ctx))
    _RUN_DIRS.append(cfg.run_dir())

    def on_stage(stage: str, event: str, rec) -> None:
        _show({"reused": f"[dim]· {stage}: cached ({rec.seconds:.1f} s when computed)[/]" if rec else "",
               "start": f"[bold]▶ {stage}[/]"}.get(event) or f"[green]✓ {stage}[/] {rec.seconds:.1f} s")

    summary = run_pipeline(cfg, on_stage=on_stage, fresh=fresh)
    if summary is not None:  # (None: a torchrun follower, which served rank 0's tasks)
        _show(*text.run_summary(summary, cfg.seed))


@app.command()
def report(run_dir: Path = RunArg,
           out: Optional[Path] = typer.Option(None, "--out", help="Default: <run>/report.html."),
           check: bool = typer.Option(False, "--check", help="Load the report in headless Chromium: fail on "
                                      "console errors or figures that did not render."),
           screenshots: Optional[Path] = typer.Option(None, "--screenshots", help="Write one PNG per section "
                                                      "into this folder (headless Chromium).")) -> None:
    """(Re)build the HTML report of a run folder; optionally check it in a browser and screenshot it."""
    from calib.report import SECTIONS, write_report
    from calib.report.browser import BrowserError, check_page, screenshot_sections

    folder = _open(run_dir)
    with folder.writing("calib report"):
        path = write_report(folder, out)
    _show(f"report written to {path}")
    if check:
        _show(f"loading {path} in headless Chromium (up to 30 s of page time)…")
        result = check_page(path)
        if not result.ok:
            raise BrowserError(f"{path}: " + "; ".join(result.problems()))
        _show(f"chromium: {len(result.figures)} figures rendered, no console errors, nothing fetched")
    if screenshots is not None:
        shots = screenshot_sections(path, screenshots, [sid for sid, _ in SECTIONS], show_progress=True)
        _show(f"{len(shots)} screenshots in {screenshots}")


@app.command("experiment")
def experiment_cmd(name: str = typer.Argument(..., metavar="NAME", help="The experiment: transfer, "
                                              "adversarial-training, robust-embedding, linearity or units."),
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
    """Run one background experiment on a run folder, print what it found and add its section to the
    report (cached: the same experiment with the same options on unchanged models is reused).

    NAME is one of: transfer (transferability between two classifiers), adversarial-training (global
    vs per-class eps), robust-embedding (a robust triplet judge vs the plain one), linearity (the linear
    explanation), units (embedding coordinates vs random directions)."""
    from calib.experiments.runner import experiment_options, run_experiment
    from calib.report import text, write_report
    from calib.runfolder import artefacts as A

    options = dict(epochs=epochs, alpha=alpha, attack=attack, eps=eps, n=n)
    experiment_options(name, **options)  # refuse before locking
    folder = _open(run_dir, device)
    with folder.writing(f"calib experiment {name}"):
        doc, rec = run_experiment(folder, name, progress=not no_progress, **options)
        how = "reused (nothing it reads changed)" if rec.reused else f"done in {doc['seconds']:.1f} s"
        _show(*text.experiment(name, doc), f"{name}: {how} -> {folder.file(A.experiment(name)[0])}")
        if not no_report:
            _show(f"report updated: {write_report(folder)}")


@app.command("audit")
def audit_cmd(run_dir: Path = RunArg,
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
    from calib.audit import load_audits
    from calib.io import to_jsonable
    from calib.report import text

    folder = _open(run_dir)
    if adversarial is not None:
        from calib.pipeline.imported import import_adversarial

        with folder.writing("calib audit --adversarial"):
            n = import_adversarial(folder, adversarial, name or adversarial.stem, norm)
        _show(f"audited {n} imported examples as {name or adversarial.stem!r}; report updated")
    results = load_audits(folder)
    if as_json:
        console.print_json(json.dumps({k: to_jsonable(a.summary(folder.class_names)) for k, a in results.items()}))
        return
    _show(*(text.audit(k, a, folder.class_names) for k, a in results.items()))


@app.command("validate")
def validate_cmd(run_dir: Path = RunArg,
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
    from calib.io import to_jsonable
    from calib.judges import check_judge_name
    from calib.pipeline.commands import validate
    from calib.report import text
    from calib.runfolder import artefacts as A

    for j in judge or []:
        check_judge_name(j)
    folder = _open(run_dir, device)
    with folder.writing("calib validate"):
        doc = validate(folder, list(human), list(judge) if judge else None, report=not no_report)
    if as_json:
        console.print_json(json.dumps(to_jsonable(text.validation_json(doc))))
        return
    _show(*text.validation_sets(doc), text.validation(doc), f"written to {folder.file(A.VALIDATION)}")


@judge_app.command("fit")
def judge_fit_cmd(run_dir: Path = RunArg,
                  human: list[Path] = typer.Option(..., "--human", help="Human-labelled set(s) to fit on: calib "
                                                   ".npz, Tramèr et al. layout .npy, or folders (repeatable)."),
                  name: str = typer.Option("fitted", "--name", help="The judge's name (models/judges/NAME.json); "
                                           "then --judge NAME uses it."),
                  judge: Optional[list[str]] = typer.Option(None, "--judge", help="Candidate member judges "
                                                            "(repeatable; default: every single judge the run has)."),
                  max_features: int = typer.Option(3, "--max-features", min=1, help="Most judges combined."),
                  as_json: bool = typer.Option(False, "--json", help="Print the fitted judge's summary as JSON."),
                  device: str = DeviceOpt) -> None:
    """Fit a judge to people's "the class changed" labels: a logistic combination of the run's judges'
    standardised margins, its members and regularisation chosen by cross-validation grouped by source
    image, and scored by nested cross-validation (never on the labels it was fitted on)."""
    from calib.io import to_jsonable
    from calib.pipeline.commands import fit_judge
    from calib.runfolder import artefacts as A

    folder = _open(run_dir, device)
    with folder.writing(f"calib judge fit --name {name}"):
        doc = fit_judge(folder, list(human), name=name, judges=list(judge) if judge else None,
                        max_features=max_features)
    cv = doc["cross_validation"]["agreement"]
    summary = {"name": name, "members": doc["members"], "coef": doc["coef"], "intercept": doc["intercept"],
               "C": doc["selection"]["chosen_C"], "n": cv["n"], "balanced_accuracy": cv["balanced_accuracy"],
               "balanced_accuracy_ci95": cv["balanced_accuracy_ci95"], "auc": cv["auc"], "auc_ci95": cv["auc_ci95"],
               "protocol": doc["cross_validation"]["protocol"], "file": str(folder.file(A.fitted_judge(name)))}
    if as_json:
        console.print_json(json.dumps(to_jsonable(summary)))
        return

    def ci(v: Any) -> str:
        return "" if not v else f" [{v[0]:.3f}, {v[1]:.3f}]"

    ba, auc = cv["balanced_accuracy"], cv["auc"]
    _show(f"judge {name}: " + " ".join(f"{w:+.3f}·{m}" for w, m in zip(doc["coef"], doc["members"])) +
          f" {doc['intercept']:+.3f} (standardised margins; C = {doc['selection']['chosen_C']:g})",
          f"nested cross-validation on {cv['n']} answers: balanced accuracy "
          f"{'–' if ba is None else f'{ba:.3f}'}{ci(cv['balanced_accuracy_ci95'])}, ROC AUC "
          f"{'–' if auc is None else f'{auc:.3f}'}{ci(cv['auc_ci95'])}",
          f"written to {summary['file']}; use it with --judge {name}")


@app.command("label")
def label_cmd(run_dir: Path = RunArg,
              session: str = typer.Option("session1", "--session", help="Session name; an existing one resumes."),
              task: str = typer.Option("relabel", "--task", help="relabel: which class do you see? (one image at "
                                       "a time); perceptibility: same or different? (a clean image beside a "
                                       "perturbed copy at a ladder of sizes, identical pairs as controls)."),
              attack: Optional[str] = typer.Option(None, "--attack", help="Attack whose examples to label "
                                                   "(default: pgd-table-<norm> and invariance-table-<norm>, the "
                                                   "per-class budgets)."),
              n: Optional[int] = typer.Option(None, "--n", min=1, help="Adversarial examples (stratified by "
                                              "class; default 100), or with --task perceptibility perturbed "
                                              "pairs (7 sizes per example; default 280)."),
              controls: Optional[float] = typer.Option(None, "--controls", min=0.0, max=0.9, help="Share of clean "
                                                       "controls (default 0.1; perceptibility: identical pairs, "
                                                       "0.12)."),
              port: int = typer.Option(0, "--port", min=0, max=65535, help="Port on 127.0.0.1 (0 = any free one)."),
              seed: int = SeedOpt) -> None:
    """Label a run's adversarial examples yourself on a local page (127.0.0.1 only). --task relabel: one
    image at a time, the class key, u = unclear, Backspace = back; answers go to RUN/human/<session>.npz
    (calib's human-labelled format). --task perceptibility: two images side by side, s/f = same, d/j =
    different; answers go to RUN/human/perceptibility/ and people's fitted SSIM thresholds to
    RUN/human/perceptibility.json, which the audit then uses. Reopening resumes a session."""
    from calib.errors import ConfigError

    if task not in ("relabel", "perceptibility"):
        raise ConfigError(f"--task {task!r}: use relabel or perceptibility")
    folder = _open(run_dir)
    with folder.writing(f"calib label --task {task} --session {session}"):
        if task == "relabel":
            from calib.human.server import label

            path = label(folder, session, attack=attack, n=100 if n is None else n,
                         controls=0.1 if controls is None else controls, port=port, seed=seed, say=typer.echo)
        else:
            from calib.human.pairs_page import label_perceptibility

            path = label_perceptibility(folder, session, attack=attack, n=280 if n is None else n,
                                        controls=0.12 if controls is None else controls, port=port, seed=seed,
                                        say=typer.echo)
    _show(f"session saved to {path}")


@app.command()
def stats(run_dir: Optional[Path] = typer.Option(None, "--run", help="A run folder: its data, split and embedding."),
          out: Optional[Path] = typer.Option(None, "--out", help="Write here instead (a new folder gets --run's "
                                             "split, or --dataset/--seed's default one). Default: --run, else "
                                             "reports/<dataset>-seed<seed>."),
          dataset: Optional[str] = RunDatasetOpt, data_dir: Optional[Path] = DataDirOpt,
          download: bool = DownloadOpt,
          seed: Optional[int] = typer.Option(None, "--seed", min=0, help="A new folder's split seed (default 0)."),
          embedding: Optional[Path] = typer.Option(None, "--embedding", help="Embedding artefact. "
                                                   "Default: the run's models/embedding."),
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
    from calib.device import resolve_device
    from calib.pipeline import default_run_dir
    from calib.pipeline.commands import compute_stats, stats_folder
    from calib.stats import StatsConfig
    from calib.report import text
    from calib.runfolder import artefacts as A

    dev = str(resolve_device(device))
    like = _open(run_dir, device, data_dir) if run_dir is not None and out is not None else None
    path = out or run_dir or default_run_dir(dataset or "digits", seed or 0)
    _RUN_DIRS.append(path)
    cfg = StatsConfig(input_norms=_csv(norms, "--norms"), embedding=not no_embedding, pairs=_csv(pairs, "--pairs"),
                      matrix_set=matrix_set, matrix_modes=_csv(modes, "--modes"), n_per_class=n_per_class,
                      backend=backend)
    folder = stats_folder(path, dataset=dataset, data_dir=data_dir, download=download, seed=seed, device=dev,
                          like=like)
    if like is not None and embedding is None and not no_embedding:
        embedding = like.file(A.model("embedding")[1])
    with folder.writing("calib stats", create=True):
        result, saved = compute_stats(folder, cfg, embedding=embedding, allow_mismatch=allow_mismatch,
                                      progress=not no_progress)
    _show(text.stats_summary(result.summary()),
          f"(medians: the median class's median) written to {saved} in {result.meta['seconds']:.1f} s")


@app.command()
def budgets(run_dir: Path = typer.Option(..., "--run", help="A run folder with statistics (stats.json/.npz)."),
            q: Optional[float] = typer.Option(None, "--q", min=0.0, max=0.999, help="Quantile level (default: the "
                                              "run's)."),
            s: Optional[float] = typer.Option(None, "--s", min=1e-9, help="Safety factor (default: the run's)."),
            pair: Optional[str] = typer.Option(None, "--pair", help="Statistics pair to calibrate on (default: the "
                                               "run's, calibration-train)."),
            rule: Optional[str] = typer.Option(None, "--rule", help="quantile: s*min(Q_q(d_diff/2), Q_q(d_same)); "
                                               "coverage: largest eps whose coverage is >= 1-q (default: the run's)."),
            out: Optional[Path] = typer.Option(None, "--out", help="Write the table here. Without it the table "
                                               "replaces RUN/eps_table.json only when its options are the run's."),
            semantic: bool = typer.Option(False, "--semantic", help="Measure the judge's robustness radii first "
                                          "(semantic/<judge>.*); needs the run's models."),
            geometric: bool = typer.Option(False, "--geometric", help="Geometric budgets only (no judge)."),
            judge: Optional[str] = typer.Option(None, "--judge", help="The judge whose radii set the semantic "
                                                "budget (default: the run's): classifier, knn, knn2, robust, "
                                                "lipschitz or ensemble."),
            semantic_bound: Optional[str] = typer.Option(None, "--semantic-bound", help="empirical (attack: upper "
                                                         "estimate) or certified (guaranteed lower bound)."),
            semantic_rule: Optional[str] = typer.Option(None, "--semantic-rule", help="invariance or adversarial "
                                                        "(default: the run's)."),
            semantic_norms: str = typer.Option("linf,l2", "--semantic-norms"),
            semantic_iters: int = typer.Option(8, "--semantic-iters", min=0, help="Bisection probes per point."),
            semantic_steps: int = typer.Option(10, "--semantic-steps", min=1, help="PGD steps per probe."),
            data_dir: Optional[Path] = RunDataDirOpt, device: str = DeviceOpt,
            no_progress: bool = NoProgressOpt) -> None:
    """Per-class epsilon budgets from a run's statistics (and a judge's radii) -> an eps table (.json + .csv)."""
    from calib.judges import check_judge_name
    from calib.pipeline import SemanticConfig
    from calib.pipeline.commands import compute_budgets
    from calib.report import text

    if judge is not None:
        check_judge_name(judge)
    measure = SemanticConfig(norms=_csv(semantic_norms, "--semantic-norms"), iters=semantic_iters,
                             steps=semantic_steps) if semantic else None
    folder = _open(run_dir, device, data_dir)
    with folder.writing("calib budgets"):
        table, path = compute_budgets(folder, q=q, s=s, rule=rule, pair=pair, judge=judge, geometric=geometric,
                                      bound=semantic_bound, semantic_rule=semantic_rule, measure=measure, out=out,
                                      progress=not no_progress)
    _show(text.eps_table(table), *text.baselines(table), f"written to {path} and {path.with_suffix('.csv')}")


@app.command()
def attack(run_dir: Path = typer.Option(..., "--run", help="A run folder with models/ (and eps_table.json)."),
           name: str = typer.Option("pgd", "--attack", help="fgsm, pgd, embedding-pgd, shift or probe."),
           norm: str = typer.Option("linf", "--norm", help="linf or l2 (embedding-pgd: norm of --cap)."),
           eps: Optional[float] = typer.Option(None, "--eps", help="Global budget; omit to use the eps table "
                                               "(embedding-pgd: the embedding radius)."),
           table_path: Optional[Path] = typer.Option(None, "--table", help="Eps table (default: the run's)."),
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
           attack_name: Optional[str] = typer.Option(None, "--name", help="Its name (default "
                                                     "<attack>-<budget>-<norm>-<split>, e.g. pgd-table-linf-test)."),
           data_dir: Optional[Path] = RunDataDirOpt, device: str = DeviceOpt,
           no_progress: bool = NoProgressOpt) -> None:
    """Attack a part of a run's split with a global eps or the eps table; writes examples (with the
    clean images' dataset indices), outcomes and a summary."""
    from calib.pipeline import commands
    from calib.report import text

    folder = _open(run_dir, device, data_dir)
    if name == "probe":
        res = commands.probe(folder, eps if eps is not None else 0.3, split=split, n=n or None, seed=folder.seed)
        _show(text.probe(res))
        return
    spec = commands.attack_spec(name, norm, eps, steps=steps, restarts=restarts, step_size=step_size, method=method,
                                newton_iters=newton_iters, cap=cap, seed=folder.seed)
    with folder.writing("calib attack"):
        result, path = commands.attack(folder, spec, split=split, n=n or None, table=table_path, out=out,
                                       name=attack_name, progress=not no_progress)
    _show(text.attack(result["summary"], folder.class_names), *text.attack_lines(result["summary"], path))


@app.command("list")
def list_cmd(folder: Path = typer.Argument(Path("reports"), help="Where to look (default reports/)."),
             depth: int = typer.Option(3, "--depth", min=0, help="How many folder levels down."),
             as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """The run folders under a folder: dataset, seed, judge, budgets, whether finished, date."""
    from calib.runfolder.listing import list_runs
    from calib.report import text

    rows = list_runs(folder, depth)
    if as_json:
        console.print_json(json.dumps(rows))
    else:
        _show(text.run_list(rows) if rows else f"no run folders under {folder}")


@app.command("compare")
def compare_cmd(run_a: Path = typer.Argument(..., help="Run A."), run_b: Path = typer.Argument(..., help="Run B."),
                as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Two runs' epsilon tables side by side: per budget and class, each run's eps and coverage, and B/A."""
    from calib.report import text
    from calib.runfolder.listing import compare_tables

    doc = compare_tables(_open(run_a), _open(run_b))
    if as_json:
        console.print_json(json.dumps(doc))
    else:
        _show(*text.comparison(doc))


@table_app.command("check")
def table_check(path: Path = typer.Argument(..., help="eps_table.json or .csv"),
                dataset: Optional[str] = typer.Option(None, "--dataset", "-d",
                                                      help="Also check the table belongs to this dataset."),
                data_dir: Optional[Path] = DataDirOpt,
                allow_mismatch: bool = typer.Option(False, "--allow-mismatch")) -> None:
    """Validate an epsilon table (and optionally its dataset fingerprint) and print it."""
    from calib.budgets import load_table
    from calib.report import text

    table = load_table(path)
    if dataset:
        from calib.data import load_dataset

        table.check_fingerprint(load_dataset(dataset, data_dir).fingerprint, allow_mismatch)
    _show(text.eps_table(table), *text.baselines(table), text.table_check_line(path, table))


def _csv(value: str, what: str) -> tuple[str, ...]:
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    if not items:
        raise typer.BadParameter(f"{what} must be a comma-separated list")
    return items


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``calib`` command: one line and exit 2 for any user error."""
    command = typer.main.get_command(app)
    _RUN_DIRS.clear()
    try:
        rv = command.main(args=argv, prog_name="calib", standalone_mode=False)
        if rv == 130:  # typer turns Ctrl-C into exit code 130
            return _interrupted()
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else "calib --help")
        return 0
    except click.UsageError as exc:
        err_console.print(f"error: {exc.format_message()}", markup=False, highlight=False)
        return 2
    except CalibError as exc:
        err_console.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        return 2
    except (click.exceptions.Abort, KeyboardInterrupt):
        return _interrupted()
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except OSError as exc:
        if exc.errno not in _USER_OS_ERRORS:
            return _internal_error(exc)
        where = exc.filename or (_RUN_DIRS[-1] if _RUN_DIRS else "")
        err_console.print(f"error: {exc.strerror or exc}{f': {where}' if where else ''}", markup=False,
                          highlight=False, soft_wrap=True)
        return 2
    except Exception as exc:  # noqa: BLE001 - anything else is a bug, reported as one
        return _internal_error(exc)
    return 0


#: what the machine refuses (permissions, a file where a folder must be, a busy port, a full or read-only
#: disk): the user's to fix, not a bug in calib
_USER_OS_ERRORS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENOSPC,
                   errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EDQUOT}


def _interrupted() -> int:
    """Exit status 130 for Ctrl-C, with one line saying what was kept and how to resume."""
    from calib.runfolder import artefacts as A

    run_dir = _RUN_DIRS[-1] if _RUN_DIRS else None
    done = len(list((run_dir / A.CACHE).glob("*.json"))) if run_dir is not None and (run_dir / A.CACHE).is_dir() else 0
    where = f" in {run_dir}" if run_dir is not None else ""
    err_console.print(f"interrupted: every finished file is kept whole{where} ({done} finished stages cached) and "
                      "nothing half-written; run the same command again to resume", markup=False, highlight=False,
                      soft_wrap=True)
    return 130


def _internal_error(exc: BaseException) -> int:
    """Exit status 3: one line, the traceback in RUN/logs/ (or a temporary file), how to report it."""
    import tempfile
    import time
    import traceback

    from calib.io import versions
    from calib.runfolder import artefacts as A

    text = "".join(traceback.format_exception(exc))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    doc = f"calib internal error, {stamp}\nargv: {sys.argv}\nversions: {versions()}\n\n{text}"
    path = None
    run_dir = _RUN_DIRS[-1] if _RUN_DIRS else None
    if run_dir is not None and run_dir.is_dir():
        try:
            (run_dir / A.LOGS).mkdir(exist_ok=True)
            path = run_dir / A.LOGS / f"internal-error-{stamp}.txt"
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
