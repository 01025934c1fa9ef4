"""A researcher's own classifier, explicit splits, colour images of any size, and the defaults that
keep large data sets fast (issue: "your model, your data")."""
from __future__ import annotations

import json
import logging
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from calib import cli
from calib.data import load_dataset, split_dataset
from calib.errors import ConfigError, DataError
from conftest import TINY_TOML

MODULE = textwrap.dedent('''
    import torch
    from torch import nn


    class Net(nn.Module):
        """Normalisation inside forward; global pooling, so any image size works."""

        def __init__(self, channels=1, classes=10, hidden=16):
            super().__init__()
            self.register_buffer("mean", torch.full((1, channels, 1, 1), 0.3))
            self.body = nn.Sequential(nn.Conv2d(channels, hidden, 3, padding=1), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(4 * hidden, classes))

        def forward(self, x):
            return self.body(x - self.mean)


    def make():
        return Net()


    def make_wide():
        return Net(hidden=32)


    def make_wrong_output():
        return nn.Sequential(Net(), nn.Linear(10, 4))


    def broken():
        raise RuntimeError("no GPU found")


    def not_a_module():
        return 42
''')


def _train(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, epochs: int = 30) -> torch.nn.Module:
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(epochs):
        for s in range(0, len(yt), 128):
            loss = torch.nn.functional.cross_entropy(model(xt[s:s + 128]), yt[s:s + 128])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def user_model(tmp_path_factory, digits_splits):
    """A module file outside the package and safetensors weights trained on the digits training part."""
    folder = tmp_path_factory.mktemp("user")
    (folder / "mymodels.py").write_text(MODULE)
    import importlib.util

    spec = importlib.util.spec_from_file_location("mymodels_for_training", folder / "mymodels.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    model = _train(mod.make(), digits_splits.train.images, digits_splits.train.labels)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "weights.safetensors"))
    return folder, model


def _run_args(out: Path, folder: Path, *extra: str) -> list[str]:
    cfg = out.parent / f"{out.name}.toml"
    cfg.write_text(TINY_TOML)
    return ["run", "--config", str(cfg), "--out", str(out), "--classifier", f"{folder / 'mymodels.py'}:make",
            "--classifier-weights", str(folder / "weights.safetensors"), *extra]


def test_own_classifier_end_to_end_on_digits(user_model, tmp_path, capsys, digits_splits):
    """Accuracy measured on the test part, attacks and audits judged by that model, provenance recorded."""
    folder, model = user_model
    out = tmp_path / "run"
    assert cli.main(_run_args(out, folder)) == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    test = digits_splits.test
    with torch.no_grad():
        pred = model(torch.from_numpy(test.images)).argmax(1).numpy()
    assert summary["models"]["classifier"]["metrics"]["test_accuracy"] == pytest.approx((pred == test.labels).mean())
    assert summary["models"]["classifier"]["external"].endswith("mymodels.py:make")
    assert "classifier" in summary["stages"] and summary["stages"]["classifier"]["seconds"] < 30
    spec = json.loads((out / "models" / "classifier.json").read_text())["spec"]
    assert spec["kind"] == "external" and len(spec["module_sha256"]) == 64
    # the attack's success is the user's model's verdict on the saved adversarial examples
    with np.load(out / "attacks" / "pgd-global-linf.npz") as z:
        with torch.no_grad():
            own = model(torch.from_numpy(z["x_adv"])).argmax(1).numpy()
        assert np.array_equal(z["pred"], own)
    audit = json.loads((out / "audit" / "pgd-global-linf.json").read_text())
    assert audit["predictions"]["classifier"].endswith("mymodels.py:make")
    # a second identical run reuses the imported classifier; other weights recompute it
    capsys.readouterr()
    assert cli.main(_run_args(out, folder)) == 0
    assert "· classifier: cached" in capsys.readouterr().out


def test_own_classifier_at_chance_is_imported_with_a_warning(user_model, tmp_path, caplog, digits, digits_splits):
    """Weights that fit the module but not the data (here: untrained) are not bad input: the classifier
    stage measures the accuracy, saves the model, and warns that it is near chance."""

    from calib.data import SplitSpec
    from calib.io import sha256_file
    from calib.pipeline.cache import StageCache
    from calib.pipeline.stage import StageContext
    from calib.pipeline.stages.models import ExternalOptions, import_classifier
    from calib.runfolder import RunFolder

    folder, _ = user_model
    untrained = folder / "untrained.safetensors"
    torch.manual_seed(0)
    linear = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    save_file({k: v.contiguous() for k, v in linear.state_dict().items()}, str(untrained))
    (folder / "linear.py").write_text("from torch import nn\n\ndef make():\n"
                                      "    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))\n")
    factory = f"{folder / 'linear.py'}:make"
    run = RunFolder.new(tmp_path, digits, SplitSpec(seed=0), source="digits", splits=digits_splits)
    ctx = StageContext(run, StageCache(tmp_path))
    with caplog.at_level("WARNING", logger="calib.pipeline.stages.models"):
        info = import_classifier(ctx, ExternalOptions(factory, str(untrained), sha256_file(untrained), None))
    assert info["metrics"]["test_accuracy"] < 0.2
    assert any("near chance" in r.getMessage() for r in caplog.records)
    assert (tmp_path / "models" / "classifier.safetensors").exists()


def test_own_classifier_audit_of_imported_examples_records_whose_predictions(user_model, tmp_path, capsys):
    folder, model = user_model
    out = tmp_path / "run"
    assert cli.main(_run_args(out, folder, "--no-attacks")) == 0, capsys.readouterr().err
    from calib.audit import AuditResult
    from calib.runfolder import open_run

    ctx = open_run(out)
    test = ctx.splits.test
    x_adv = np.clip(test.images[:30] + 0.2 * np.sign(np.random.default_rng(0).standard_normal(test.images[:30].shape)),
                    0, 1).astype(np.float32)
    with torch.no_grad():
        own = model(torch.from_numpy(x_adv)).argmax(1).numpy()
        clean_ok = model(torch.from_numpy(test.images[:30])).argmax(1).numpy() == test.labels[:30]
    path = tmp_path / "adv.npz"
    np.savez(path, x_adv=x_adv, indices=test.indices[:30])
    assert cli.main(["audit", str(out), "--adversarial", str(path), "--name", "by-run"]) == 0
    a = AuditResult.load(out / "audit", "by-run")
    assert a.meta["predictions"]["by"] == "the run's classifier"
    assert np.array_equal(a.arrays["success"], (own != test.labels[:30]) & clean_ok)  # clean errors apart
    assert np.array_equal(a.arrays["clean_error"], ~clean_ok)
    other = (own + 1) % 10  # another attacked model's predictions, supplied with the examples
    np.savez(path, x_adv=x_adv, indices=test.indices[:30], pred=other)
    assert cli.main(["audit", str(out), "--adversarial", str(path), "--name", "supplied"]) == 0
    a = AuditResult.load(out / "audit", "supplied")
    assert a.meta["predictions"]["by"].startswith("the attacked model")
    assert np.array_equal(a.arrays["success"], other != test.labels[:30])  # no pred_clean: clean errors unknown
    assert not a.meta["clean_predictions"] and not a.arrays["clean_error"].any()
    capsys.readouterr()
    np.savez(path, x_adv=x_adv, indices=test.indices[:30], pred=np.full(30, 11))
    assert cli.main(["audit", str(out), "--adversarial", str(path), "--name", "bad"]) == 2
    err = capsys.readouterr().err
    assert "pred must lie in [0, 9]" in err and err.count("\n") == 1


@pytest.mark.parametrize("classifier, weights, message", [
    ("no_such_module_xyz:make", None, "cannot import classifier module 'no_such_module_xyz'"),
    ("{dir}/mymodels.py:broken", None, "raised RuntimeError: no GPU found"),
    ("{dir}/mymodels.py:missing", None, "has no callable 'missing'"),
    ("{dir}/mymodels.py:not_a_module", None, "returned int, not a torch nn.Module"),
    ("{dir}/mymodels.py:make_wide", None, "do not fit"),
    ("{dir}/mymodels.py:make_wrong_output", "wrong_output", "expected (8, 10) logits"),
    ("{dir}/mymodels.py:make", "pickle", "must be a .safetensors file"),
    ("{dir}/mymodels.py:make", "truncated", "not a readable safetensors file"),
    ("not-a-spec", None, "expected PACKAGE.MODULE:FACTORY"),
])
def test_own_classifier_bad_input_is_one_line_exit_2_and_nothing_written(user_model, tmp_path, capsys, classifier,
                                                                         weights, message):
    folder, _ = user_model
    w = folder / "weights.safetensors"
    if weights == "wrong_output":
        import importlib.util

        spec = importlib.util.spec_from_file_location("mymodels_wrong", folder / "mymodels.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        w = tmp_path / "wrong.safetensors"
        save_file({k: v.contiguous() for k, v in mod.make_wrong_output().state_dict().items()}, str(w))
    elif weights == "pickle":
        w = tmp_path / "weights.pt"
        torch.save({"x": torch.zeros(1)}, w)
    elif weights == "truncated":
        w = tmp_path / "cut.safetensors"
        w.write_bytes((folder / "weights.safetensors").read_bytes()[:100])
    out = tmp_path / "run"
    rc = cli.main(["run", "--out", str(out), "--classifier", classifier.format(dir=folder),
                   "--classifier-weights", str(w), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.count("\n") == 1, err
    assert not out.exists()


def test_classifier_needs_its_weights(capsys, tmp_path):
    rc = cli.main(["run", "--out", str(tmp_path / "r"), "--classifier", "m:make"])
    err = capsys.readouterr().err
    assert rc == 2 and "--classifier-weights" in err and not (tmp_path / "r").exists()


# ---- explicit splits -------------------------------------------------------------------------------------
def _split_npz(path: Path, digits, calibration: bool = False, **override) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    order = rng.permutation(len(digits))
    raw = np.round(digits.images * 255).astype(np.uint8)
    parts = {"train": order[:1200], "test": order[1500:]}
    if calibration:
        parts["calibration"] = order[1200:1500]
    arrays = {}
    for p, idx in parts.items():
        arrays[f"X_{p}"], arrays[f"y_{p}"] = raw[idx], digits.labels[idx]
    arrays["class_names"] = np.array(digits.class_names)
    arrays |= override
    np.savez(path, **arrays)
    return arrays


def test_explicit_split_is_kept_and_calibration_drawn_from_train(digits, tmp_path):
    path = tmp_path / "split.npz"
    arrays = _split_npz(path, digits)
    s = split_dataset(load_dataset(str(path)), seed=3)
    np.testing.assert_array_equal(s.test.images, arrays["X_test"].astype(np.float32) / 255)
    np.testing.assert_array_equal(s.test.labels, arrays["y_test"])
    train_and_cal = np.concatenate([s.train.images, s.calibration.images])
    assert len(train_and_cal) == 1200
    # calibration is a stratified, seeded part of the given train part: every class, same shares
    counts = np.bincount(s.calibration.labels, minlength=10) / np.bincount(arrays["y_train"], minlength=10)
    assert np.allclose(counts, 0.15 / 0.85, atol=0.02)
    given = {a.tobytes() for a in (arrays["X_train"].astype(np.float32) / 255)}
    assert all(a.tobytes() in given for a in train_and_cal)
    assert not np.array_equal(s.calibration.indices, split_dataset(load_dataset(str(path)), seed=4).calibration.indices)


def test_explicit_calibration_part_is_kept_as_given(digits, tmp_path):
    path = tmp_path / "split.npz"
    arrays = _split_npz(path, digits, calibration=True)
    s = split_dataset(load_dataset(str(path)), seed=0, max_calibration=10)  # the cap applies to drawn parts only
    np.testing.assert_array_equal(s.calibration.labels, arrays["y_calibration"])
    np.testing.assert_array_equal(s.train.labels, arrays["y_train"])
    assert s.describe()["max_calibration"] is None


@pytest.mark.parametrize("override, message", [
    ({"y_test": np.zeros(297, np.int64)}, "the classes of y_test do not match y_train"),
    ({"y_train": np.full(1200, 3)}, "the classes of y_train do not match"),
    ({"y_test": np.full(297, 12)}, "holds labels outside [0, 9]"),
    ({"X_test": np.zeros((297, 9, 9), np.uint8)}, "differ in shape"),
    ({"y_test": np.zeros(5, np.int64)}, "X_test has 297 images but y_test has 5 labels"),
    ({"X": np.zeros((4, 8, 8), np.uint8)}, "holds both X/y and an explicit split"),
    ({"X_calibration": np.zeros((3, 8, 8), np.uint8)}, "has X_calibration but not its pair"),
])
def test_bad_explicit_split_is_one_line_exit_2_and_nothing_written(digits, tmp_path, capsys, override, message):
    path = tmp_path / "split.npz"
    _split_npz(path, digits, **override)
    with pytest.raises(DataError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        load_dataset(str(path))
    out = tmp_path / "run"
    rc = cli.main(["run", "--dataset", str(path), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.count("\n") == 1
    assert not out.exists()


# ---- colour and image sizes ------------------------------------------------------------------------------
def tinted(digits, size: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Digits as colour images: a random foreground and background colour per image (class-free
    nuisance), upsampled to ``size`` pixels (nearest)."""
    rng = np.random.default_rng(seed)
    g = digits.images[:, 0]
    rep = size // 8
    g = np.kron(g, np.ones((rep, rep), np.float32))
    fg, bg = rng.uniform(0.4, 1.0, (len(g), 3, 1, 1)), rng.uniform(0.0, 0.3, (len(g), 3, 1, 1))
    return (bg + (fg - bg) * g[:, None]).astype(np.float32), digits.labels


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 16, 16), (3, 28, 28), (1, 32, 32), (3, 64, 64)])
def test_default_architectures_fit_every_size(shape):
    from calib.models import build_model, default_arch

    arch = default_arch(shape)
    assert arch == ("cnn-small" if shape[1] < 16 else "cnn" if shape[1] < 32 else "cnn-gap")
    for kind, extra in (("classifier", {"num_classes": 10}), ("embedding", {"dim": 8})):
        m = build_model({"kind": kind, "arch": arch, "input_shape": list(shape), **extra})
        out = m(torch.rand(2, *shape))
        assert out.shape == (2, extra.get("num_classes", 8))


def test_colour_ssim_uses_every_channel(digits):
    from skimage.metrics import structural_similarity

    from calib.audit.perceptibility import ssim

    x, _ = tinted(digits)
    a = x[:3]
    b = a.copy()
    b[:, 0, ::2] = np.clip(b[:, 0, ::2] + 0.2, 0, 1)  # the red channel of every other row
    ours = ssim(a, b)
    plain = [structural_similarity(a[i].transpose(1, 2, 0).astype(np.float64), b[i].transpose(1, 2, 0).astype(
        np.float64), data_range=1.0, win_size=7, channel_axis=2) for i in range(3)]
    np.testing.assert_allclose(ours, plain)
    assert (ours < 1).all()


def test_colour_images_are_drawn_in_colour(digits):
    from calib.report.figures import image_trace, perturbation_plane

    x, _ = tinted(digits)
    t = image_trace(x[0])
    assert t.type == "image" and np.asarray(t.z).shape == (16, 16, 3)
    assert image_trace(digits.images[0]).type == "heatmap"
    d, signed = perturbation_plane(x[0], np.clip(x[0] + 0.1, 0, 1))
    assert not signed and d.shape == (16, 16) and d.max() == pytest.approx(0.1, abs=1e-6)


def test_colour_run_with_explicit_split_end_to_end(digits, tmp_path, capsys):
    x, y = tinted(digits)
    raw = np.round(x * 255).astype(np.uint8)
    order = np.random.default_rng(1).permutation(len(y))
    path = tmp_path / "colour.npz"
    np.savez(path, X_train=raw[order[:1400]], y_train=y[order[:1400]], X_test=raw[order[1400:]],
             y_test=y[order[1400:]], class_names=np.array([f"digit {i}" for i in range(10)]))
    out = tmp_path / "run"
    args = _run_args(out, tmp_path)[:5] + ["--dataset", str(path), "--epochs", "3"]
    assert cli.main(args) == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"]["image_shape"] == [3, 16, 16]
    assert summary["splits"]["test"]["num_samples"] == len(y) - 1400
    html = (out / "report.html").read_text(encoding="utf-8")
    assert html.replace(" ", "").count('"type":"image"') > 50  # galleries in colour (plotly's template names it 11 times)
    assert "largest |change| over the RGB channels" in html and "blue = brighter" not in html  # the caption says so
    table = json.loads((out / "eps_table.json").read_text())
    eps = table["budgets"]["input/linf"]["eps"]
    assert len(eps) == 10 and all(0 <= e < 1 for e in eps) and max(eps) > 0


# ---- defaults for large data sets --------------------------------------------------------------------------
def test_default_epochs_follow_training_size():
    from calib.pipeline.config import default_epochs

    assert default_epochs(1259) == 20 and default_epochs(8500) == 20
    assert default_epochs(58000) == 4 and default_epochs(10 ** 7) == 3
    from calib.pipeline import RunConfig

    cfg = RunConfig()
    assert cfg.epochs("classifier", 58000) == 4 and cfg.epochs("embedding", 58000) == 8
    assert cfg.epochs("embedding", 8500) == 20 and cfg.epochs("embedding", 1259) == 20


def test_default_shift_only_on_small_sets_of_large_images(digits):
    from calib.data import Dataset
    from calib.train.loop import default_shift

    def fake(n: int, side: int) -> Dataset:
        return Dataset("fake", np.zeros((n, 1, side, side), np.float32), np.arange(n) % 2, ("a", "b"), "0" * 64)

    assert default_shift(digits) == 0  # 8 px
    assert default_shift(fake(8500, 28)) == 2 and default_shift(fake(58000, 28)) == 0


def test_calibration_cap_is_stratified_and_seeded(digits):
    s = split_dataset(digits, seed=0, max_calibration=100)
    assert 95 <= len(s.calibration) <= 105
    assert (np.bincount(s.calibration.labels, minlength=10) >= 9).all()
    assert len(s.train) + len(s.calibration) + len(s.test) == len(digits)
    full = split_dataset(digits, seed=0, max_calibration=None)
    np.testing.assert_array_equal(full.test.indices, s.test.indices)
    assert set(s.calibration.indices) <= set(full.calibration.indices)
    with pytest.raises(ConfigError):
        split_dataset(digits, seed=0, max_calibration=1)


def test_exact_matrices_over_a_stratified_subset_beyond_the_cap(digits, digits_splits):
    from calib.data.split import stratified_subset
    from calib.stats import StatsConfig, compute_stats
    from calib.stats.pairwise import class_pair_stats

    cfg = StatsConfig(input_norms=("linf",), embedding=False, pairs=("calibration-train",), matrix_modes=("exact",),
                      exact_max_points=500)
    stats = compute_stats(digits, digits_splits, cfg, show_progress=False)
    assert stats.meta["matrix_subsets"]["exact"] == {"points": 500, "of": 1797, "rule": "stratified by class, seeded"}
    sel = stratified_subset(digits.labels, 500, 0)
    plain = class_pair_stats(digits.images[sel].reshape(500, -1), digits.labels[sel], "linf", 10, mode="exact")
    np.testing.assert_allclose(stats.matrices[("input", "linf", "exact")].mean, plain.mean)


def test_progress_lines_with_an_eta_in_a_plain_log(caplog):
    from calib.progress import LogProgress

    p = LogProgress(every=0.0)
    with caplog.at_level(logging.INFO, logger="calib.progress"):
        t = p.add_task("statistics", total=4, status="")
        p.advance(t)
        p.update(t, status="input/linf exact")
        p.advance(t, 3)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("statistics: 1/4 (25 %)") and "ETA" in lines[0]
    assert "[input/linf exact]" in lines[1] and lines[-1].startswith("statistics: 4/4 (100 %)")


def test_pair_cap_searches_a_stratified_subset_of_queries_exactly(digits, digits_splits):
    """train-train with more queries than max_queries: the chosen queries get exactly the distances the
    full search gives them (themselves excluded)."""
    from calib.stats import StatsConfig, compute_stats

    base = dict(input_norms=("linf", "l2"), embedding=False, pairs=("train-train",), matrix_modes=("sampled",))
    full = compute_stats(digits, digits_splits, StatsConfig(**base, max_pairs=None), show_progress=False)
    n_train = len(digits_splits.train)
    sub = compute_stats(digits, digits_splits, StatsConfig(**base, max_pairs=300 * n_train), show_progress=False)
    assert sub.meta["pair_subsets"]["train-train"]["queries"] == pytest.approx(300, abs=10)
    for norm in ("linf", "l2"):
        f, s = full.pair("input", norm, "train-train"), sub.pair("input", norm, "train-train")
        pos = np.searchsorted(f.query_indices, s.query_indices)
        np.testing.assert_array_equal(f.query_indices[pos], s.query_indices)
        np.testing.assert_allclose(s.nn.d_same, f.nn.d_same[pos])
        np.testing.assert_allclose(s.nn.d_diff, f.nn.d_diff[pos])
        assert (s.nn.d_same > 0).mean() > 0.9  # not matched with itself
