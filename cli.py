"""calib command line: a thin shell over the library (``calib --help``).

Every library error becomes one line on stderr and exit status 2; so does an unknown option.
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Optional

import click
import typer
from rich.console import Console
from rich.table import Table

from calib.errors import CalibError

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


@app.command()
def run(dataset: str = DatasetOpt, data_dir: Optional[Path] = DataDirOpt, download: bool = DownloadOpt,
        out: Optional[Path] = typer.Option(None, "--out", help="Run folder. Default: reports/<dataset>-seed<seed>."),
        epochs: int = EpochsOpt, seed: int = SeedOpt, device: str = DeviceOpt,
        no_progress: bool = NoProgressOpt) -> None:
    """The main job: split the data, train classifier and embedding, write the run folder."""
    from calib.pipeline import RunConfig, run as run_pipeline

    cfg = RunConfig(dataset=dataset, data_dir=str(data_dir) if data_dir else None, download=download,
                    out=str(out) if out else None, seed=seed, device=device, classifier_epochs=epochs,
                    embedding_epochs=epochs, progress=not no_progress)
    summary = run_pipeline(cfg)
    table = Table("model", "held-out metric", "value", "weights sha256", "seconds")
    c, e = summary["models"]["classifier"], summary["models"]["embedding"]
    table.add_row("classifier", "accuracy", f"{c['metrics']['test_accuracy']:.4f}", c["weights_sha256"][:16],
                  f"{c['seconds']:.1f}")
    table.add_row("embedding", "precision@1", f"{e['metrics']['test_precision_at_1']:.4f}",
                  e["weights_sha256"][:16], f"{e['seconds']:.1f}")
    table.add_row("", "MAP@R", f"{e['metrics']['test_map_at_r']:.4f}", "", "")
    console.print(f"[bold]{summary['dataset']['name']}[/] fingerprint {summary['dataset']['fingerprint'][:16]}…, "
                  f"seed {seed}")
    console.print(table)
    console.print(f"written to {cfg.run_dir()}/ in {summary['seconds']:.1f} s")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``calib`` command: one line and exit 2 for any user error."""
    command = typer.main.get_command(app)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
