"""Benchmark on MNIST: calib's PGD vs torchattacks' PGD, and the cost of embedding-space projection.

1. PGD L-inf eps=0.3 (40 steps, alpha = 2.5 eps / steps, random start) on the held-out test part
   with the run's classifier: success rate and images/s for calib and torchattacks, same model,
   batch and seed; prints the difference in percentage points and the throughput ratio.
2. Embedding-projected PGD vs plain PGD with the settings of ``calib run`` (20 steps, step
   2.5 cap / steps, L-inf cap 0.3, the run's per-class embedding budgets): the old strong setting
   (``newton``, 2 iterations), the default ``tangent`` projection, and the one-probe bisection:
   seconds, ratio to plain PGD, success, projection activity and passes of g.

    calib run --dataset mnist --data-dir ../shared/data      # trains the models (once)
    python bench/pgd_throughput.py --run reports/mnist-seed0 --data-dir ../shared/data
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from calib.attacks import ClassifierLoss, embedding_pgd, pgd
from calib.attacks.embedding_pgd import EmbeddingBall
from calib.runfolder import open_run
from calib.perturb.pgd import eval_mode
from calib.pipeline.config import AttackConfig, embedding_step


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="reports/mnist-seed0")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--skip-torchattacks", action="store_true")
    ap.add_argument("--reps", type=int, default=3, help="alternating repetitions; the best time is kept")
    args = ap.parse_args()
    import torchattacks

    folder = open_run(Path(args.run))
    test = folder.split("test")
    f, g = folder.model("classifier"), folder.model("embedding")
    x, y = torch.from_numpy(test.images), torch.from_numpy(test.labels)
    eps, steps, b = 0.3, args.steps, args.batch

    def ours(eps):
        return torch.cat([pgd(ClassifierLoss(f, y[s:s + b]), x[s:s + b], eps, "linf", steps=steps,
                              rel_step=2.5 / steps, seed=s).success for s in range(0, len(y), b)])

    def theirs(eps):
        torch.manual_seed(0)
        atk = torchattacks.PGD(f, eps=eps, alpha=2.5 * eps / steps, steps=steps, random_start=True)
        advs = [atk(x[s:s + b], y[s:s + b]) for s in range(0, len(y), b)]
        with torch.no_grad():
            return torch.cat([f(a).argmax(1) for a in advs]) != y

    pgd(ClassifierLoss(f, y[:64]), x[:64], 0.3, "linf", steps=2)  # warm-up
    print(f"MNIST test part: {len(y)} images, PGD Linf, {steps} steps, alpha = 2.5 eps / steps, random start; "
          f"times are the best of {args.reps} alternating runs")
    for eps in (() if args.skip_torchattacks else (0.1, 0.3)):
        t_o, t_t = [], []
        for _ in range(args.reps):
            s_ours, t = timed(lambda: ours(eps))
            t_o.append(t)
            s_theirs, t = timed(lambda: theirs(eps))
            t_t.append(t)
        so, st = s_ours.float().mean(), s_theirs.float().mean()
        print(f"  eps={eps}: calib success {so:.4f} {len(y) / min(t_o):6.1f} img/s | torchattacks success {st:.4f} "
              f"{len(y) / min(t_t):6.1f} img/s | difference {100 * (so - st):+.2f} pp | throughput ratio "
              f"calib/torchattacks x{min(t_t) / min(t_o):.2f}")

    table = folder.table()
    eps_emb = table.eps_for(y, "embedding", "l2").view(-1)
    cfg = AttackConfig()  # what `calib run` attacks with
    steps, cap = cfg.steps, float(cfg.global_eps["linf"])
    step = embedding_step(cfg, "linf")

    def plain():
        return [pgd(ClassifierLoss(f, y[s:s + b]), x[s:s + b], cap, "linf", steps=steps, step_size=step,
                    random_start=False) for s in range(0, len(y), b)]

    def projected(method, kw):
        return [embedding_pgd(f, g, x[s:s + b], y[s:s + b], eps_emb[s:s + b], cap=cap, method=method, steps=steps,
                              step_size=step, **kw) for s in range(0, len(y), b)]

    def floor():
        """Plain PGD plus, per step, the one forward+backward pass of g that the tangent projection takes
        (``EmbeddingBall._value_and_normal``), without projecting: the least any method that checks every
        iterate in embedding space and uses its ball's normal must pay."""
        out = []
        with eval_mode(f, g):
            for s in range(0, len(y), b):
                ball = EmbeddingBall(g, x[s:s + b], eps_emb[s:s + b])
                idx = torch.arange(len(y[s:s + b]))

                def one_pass(x0, x_prev, cand, ball=ball, idx=idx):
                    ball._value_and_normal(cand, idx)
                    return cand

                out.append(pgd(ClassifierLoss(f, y[s:s + b]), x[s:s + b], cap, "linf", steps=steps, step_size=step,
                               random_start=False, projector=one_pass, check=False))
        return out

    variants = [("newton", {"newton_iters": 2}), ("tangent", {"newton_iters": 1}), ("tangent", {"newton_iters": 2}),
                ("bisection", {"segment": "previous", "iters": 1})]
    times: dict[str, list[float]] = {"plain": []}
    results = {}
    for _ in range(args.reps):  # alternate, keep the best time of each
        res, t = timed(plain)
        times["plain"].append(t)
        results["plain"] = res
        res, t = timed(floor)
        times.setdefault("floor", []).append(t)
        results["floor"] = res
        for method, kw in variants:
            label = f"{method} {' '.join(f'{k}={v}' for k, v in kw.items())}"
            res, t = timed(lambda: projected(method, kw))
            times.setdefault(label, []).append(t)
            results[label] = res
    t_plain = min(times["plain"])
    succ_plain = torch.cat([r.success for r in results["plain"]]).float().mean()
    print(f"embedding-projected PGD vs plain PGD, as `calib run` attacks: {steps} steps of {step:g} (L-inf cap "
          f"{cap}), per-class eps_emb from the run's table; best of {args.reps}:")
    print(f"  {'plain PGD (L-inf ball only)':<34} {t_plain:6.1f} s  success {succ_plain:.4f}")
    t_floor = min(times["floor"])
    print(f"  {'floor: plain + 1 g fwd+bwd per step':<34} {t_floor:6.1f} s  x{t_floor / t_plain:.2f} of plain "
          f"(no projection; what one pass of g per step costs)")
    for label, res in results.items():
        if label in ("plain", "floor"):
            continue
        t = min(times[label])
        n_cand = sum(r.info["projection"]["candidates"] for r in res)
        act = sum(r.info["projection"]["active"] for r in res) / n_cand
        fwd = sum(r.info["projection"]["g_forward"] for r in res) / n_cand
        bwd = sum(r.info["projection"]["g_backward"] for r in res) / n_cand
        fb = sum(r.info["projection"]["newton_fallback"] for r in res)
        succ = torch.cat([r.success for r in res]).float().mean()
        print(f"  {label:<34} {t:6.1f} s  x{t / t_plain:.2f} of plain | success {succ:.4f} | projection active "
              f"{act:.1%}, g passes per sample-step {fwd:.2f} forward + {bwd:.2f} backward, fallbacks {fb}")

if __name__ == "__main__":
    main()
