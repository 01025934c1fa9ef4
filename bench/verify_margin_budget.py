"""Check a run's embedding margin budget against a plain NumPy computation from the saved embedding.

Recomputes, independently of calib's statistics engine and faiss: the embeddings of the calibration
and training parts with the saved model, every calibration point's d_same_g / d_diff_g by brute force
in float64, ``m = (d_diff_g - d_same_g) / 2``, and per class ``s * Q_q{m}`` (clipped at 0) and its
coverage (the share with m > eps). Prints both and the largest difference; exits 1 on a mismatch.

    python bench/verify_margin_budget.py --run reports/mnist-seed0
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from calib.models.infer import forward_batched
from calib.runfolder import open_run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="reports/mnist-seed0")
    args = ap.parse_args()
    folder = open_run(Path(args.run))
    cfg, ds, sp, table = folder.config, folder.dataset, folder.splits, folder.table()
    q, s = table.q, table.s
    g = folder.model("embedding")
    ec = forward_batched(g, sp.calibration.images).numpy().astype(np.float64)
    et = forward_batched(g, sp.train.images).numpy().astype(np.float64)
    yc, yt = sp.calibration.labels, sp.train.labels
    d_same, d_diff = np.empty(len(yc)), np.empty(len(yc))
    for i in range(0, len(yc), 256):
        d = np.sqrt(np.maximum(((ec[i:i + 256, None, :] - et[None]) ** 2).sum(-1), 0))
        same = yc[i:i + 256, None] == yt[None]
        d_same[i:i + 256] = np.where(same, d, np.inf).min(1)
        d_diff[i:i + 256] = np.where(~same, d, np.inf).min(1)
    m = (d_diff - d_same) / 2
    eps = np.array([max(s * np.quantile(m[yc == c], q), 0.0) for c in range(ds.num_classes)])
    cov = np.array([(m[yc == c] > eps[c]).mean() for c in range(ds.num_classes)])
    got = table.eps("embedding", "l2")
    got_cov = table.budget("embedding", "l2").coverage
    print(f"{cfg['dataset']}: {len(yc)} calibration points vs {len(yt)} training points, q = {q}, s = {s}")
    print(f"{'class':>6} {'table eps':>10} {'numpy eps':>10} {'table cov':>10} {'numpy cov':>10}  "
          f"{'d_same q':>9} {'d_diff/2 q':>10}")
    for c, name in enumerate(ds.class_names):
        print(f"{name:>6} {got[c]:10.5f} {eps[c]:10.5f} {got_cov[c]:10.4f} {cov[c]:10.4f}  "
              f"{np.quantile(d_same[yc == c], q):9.4f} {np.quantile(d_diff[yc == c] / 2, q):10.4f}")
    err = float(np.abs(got - eps).max())
    print(f"largest |table - numpy| = {err:.2e}; coverage equal: {np.allclose(got_cov, cov)}")
    return 0 if err < 1e-4 and np.allclose(got_cov, cov, atol=1e-9) else 1


if __name__ == "__main__":
    sys.exit(main())
