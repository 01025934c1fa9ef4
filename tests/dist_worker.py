"""Run by tests/test_distributed.py under torchrun (2 ranks, gloo): not a test module itself."""
from __future__ import annotations

import json
import sys

import numpy as np
import torch

from calib import distributed as D
from calib.errors import CalibError


@D.task("fail-on-rank-1")
def _fail(header, arrays):
    if D.world().rank == 1:
        raise ValueError("rank one refuses")
    return {}, {}


def _train(path: str) -> None:
    """The robust, Lipschitz and abs judges' models trained with DistributedDataParallel for one epoch:
    the training stages' own check finds every rank's replica equal (else it raises)."""
    from calib.judges import JudgeConfig
    from calib.pipeline import RunConfig
    from calib.pipeline.stages.models import model_stages, train
    from calib.runfolder import open_run

    run = open_run(path)
    config = RunConfig(out=path, dataset="digits", embedding_epochs=1,
                       judge=JudgeConfig(name="robust", also=("lipschitz", "abs")))
    stages = {s.name: s for s in model_stages(config, len(run.split("train")))}
    for stem in ("robust-embedding", "lipschitz-embedding", "abs"):
        m = train(run, stages[stem].options, False)
        print("TRAINED", stem, m.weights_sha256[:12], json.dumps(m.metrics, sort_keys=True, default=str)[:200])
    try:
        train(run, stages["lipschitz-embedding"].options, False)
    except AssertionError as exc:
        print("CAUGHT", str(exc)[:80])


def _stages(path: str) -> None:
    """The headline's attacks and their audits, sharded over 2 ranks, against the same functions in a
    world of one process (every rank idle but the leader): equal arrays and summaries."""
    from calib.attacks.runner import AttackSpec
    from calib.audit import AuditConfig, SsimThresholds
    from calib.pipeline import sharded
    from calib.runfolder import open_run

    run = open_run(path)
    test = run.split("test")
    x, y = test.images[:300], test.labels[:300]  # two chunks (256 + the rest)
    assert len(y) > D.CHUNK
    table = run.table()
    judge = run.judge("knn")
    two = D.world()
    for spec in (AttackSpec(attack="pgd", norm="linf", eps=None, steps=3, seed=1),
                 AttackSpec(attack="embedding-pgd", norm="l2", eps=None, cap=2.0, steps=3, step_size=0.1, seed=1)):
        eps = table.eps_for(y, *spec.table_column, as_tensor=False).reshape(-1)
        results = []
        for world in (D.World(), two):  # one process, then two
            D._WORLD = world
            res = sharded.attack(run, spec, x, y, eps, False)
            ball = "embedding" if spec.attack == "embedding-pgd" else "input"
            aud = sharded.audit(run, judge, run.judge_config(), x, res["arrays"]["x_adv"], y, res["arrays"]["pred"],
                                res["arrays"]["eps"], None, norm=spec.norm, config=AuditConfig(), ball_space=ball,
                                thresholds=SsimThresholds.uncalibrated(0.9, len(run.class_names)))
            results.append((res, aud))
        (r1, a1), (r2, a2) = results
        assert r1["arrays"].keys() == r2["arrays"].keys() and a1.arrays.keys() == a2.arrays.keys()
        for k in r1["arrays"]:
            assert np.array_equal(r1["arrays"][k], r2["arrays"][k]), (spec.attack, k)
        for k in a1.arrays:
            assert np.array_equal(a1.arrays[k], a2.arrays[k], equal_nan=True), (spec.attack, "audit", k)
        s1, s2 = (dict(r["summary"], seconds=0) for r in (r1, r2))
        assert s1 == s2, (s1, s2)
        assert json.dumps(a1.summary(run.class_names), default=str) == json.dumps(a2.summary(run.class_names),
                                                                                   default=str)  # (NaN != NaN)
        print("IDENTICAL", spec.attack, len(y), float(r1["summary"]["success_rate"]),
              float(a1.arrays["valid"].mean()))
    from calib.pipeline.stages.stats import measure_stats
    from calib.stats import StatsConfig

    config = StatsConfig(pairs=("train-train", "calibration-train", "test-train"), matrix_modes=("sampled",))
    D._WORLD = D.World()
    one = measure_stats(run, config, progress=False)
    D._WORLD = two
    many = measure_stats(run, config, progress=False)
    assert one.pairs.keys() == many.pairs.keys() and len(one.pairs) >= 6
    for key, p in one.pairs.items():
        for field in ("d_same", "d_diff", "i_same", "i_diff"):
            assert np.array_equal(getattr(p.nn, field), getattr(many.pairs[key].nn, field)), (key, field)
    print("IDENTICAL stats", len(one.pairs))
    from calib.stats import class_pair_stats

    x, y = run.dataset.images, run.dataset.labels  # the exact matrices, pieces dealt over both ranks
    for norm in ("l2", "linf", "l1"):
        D._WORLD = D.World()
        m1 = class_pair_stats(x, y, norm, 10, mode="exact", block=256, pieces=sharded.matrix_pieces)
        D._WORLD = two
        m2 = class_pair_stats(x, y, norm, 10, mode="exact", block=256, pieces=sharded.matrix_pieces)
        for name, arr in m1.arrays().items():
            assert np.array_equal(arr, m2.arrays()[name], equal_nan=True), (norm, name)
    print("IDENTICAL matrices", len(x))


def main() -> None:
    mode = sys.argv[1]
    torch.set_num_threads(1)
    w = D.init_from_env("cpu")
    from calib.pipeline import sharded

    if not w.leader:
        if mode == "train":  # the fourth model rank 1 trains comes back altered: the leader must notice
            from calib.pipeline.stages import models

            real, calls = models.fit_model, []

            def altered(*args, **kwargs):
                m = real(*args, **kwargs)
                calls.append(1)
                if len(calls) == 4:
                    with torch.no_grad():
                        next(m.model.parameters()).add_(1e-3)
                return m

            models.fit_model = altered
        D.serve()
        D.shutdown()
        return
    try:
        if mode == "fail":
            try:
                D.submit("fail-on-rank-1", {})
            except CalibError as exc:
                print("CAUGHT", exc)
            return
        if mode == "stages":
            return _stages(sys.argv[2])
        if mode == "train":
            return _train(sys.argv[2])
        from calib.budgets.invariance import invariance_radii, nearest_targets
        from calib.budgets.semantic import robustness_radii
        from calib.runfolder import open_run

        run = open_run(sys.argv[2])
        judge = run.judge("knn")
        cal, tr = run.split("calibration"), run.split("train")
        x, y = cal.images, cal.labels
        targets = nearest_targets(x, y, tr.images, tr.labels, 10)
        for norm in ("linf", "l2"):
            one = invariance_radii(judge, x, y, tr.images, targets, norm, iters=4)
            many = sharded.invariance(run, judge, run.judge_config(), x, y, tr.images, targets, norm, 4, False)
            assert np.array_equal(one.radius, many.radius) and np.array_equal(one.witnesses, many.witnesses)
            assert np.array_equal(one.target_class, many.target_class)
            assert many.info["chunks"] == -(-len(y) // D.CHUNK) and many.info["world_size"] == 2
            a1 = robustness_radii(judge, x, y, norm, method="fmn", fmn_steps=5, start=one.witnesses)
            a2 = sharded.adversarial(run, judge, run.judge_config(), x, y, norm, one.witnesses, 0, False,
                                     method="fmn", fmn_steps=5)
            assert np.array_equal(a1.empirical, a2.empirical) and np.array_equal(a1.witnesses, a2.witnesses)
            for key in ("found", "not_found", "clean_wrong"):  # the counts one process would record
                assert many.info[key] == one.info[key] and a2.info[key] == a1.info[key], key
                assert a2.info["fmn"][key] == a1.info["fmn"][key], key
            print("IDENTICAL", norm, len(y), many.info["chunks"])
        from calib.budgets.alignment import AlignGrid, aligned_targets

        images, at, _ = aligned_targets(x, y, tr.images, tr.labels, 10, AlignGrid(rotations=(0.0, 10.0), shifts=(0.0,)))
        one = invariance_radii(judge, x, y, images, at, "linf", iters=4)
        many = sharded.invariance(run, judge, run.judge_config(), x, y, images, at, "linf", 4, False, aligned=True)
        assert np.array_equal(one.radius, many.radius) and np.array_equal(one.witnesses, many.witnesses)
        print("IDENTICAL aligned", len(y))
    finally:
        D.stop_followers()
        D.shutdown()


if __name__ == "__main__":
    main()
