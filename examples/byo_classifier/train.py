"""Train ``tiny_net`` on the training part of calib's split and save its weights as safetensors.

This stands for *your* training code: calib never trains this model, it only imports it. Training
on calib's training part with the same ``--seed`` as the run keeps the run's calibration and test
images unseen by the model.

    python examples/byo_classifier/train.py --dataset digits --out tiny_net-digits.safetensors
    python examples/byo_classifier/train.py --dataset mnist --data-dir DATA --out tiny_net-mnist.safetensors
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_net import TinyNet  # noqa: E402

from calib.data import SplitSpec, load_dataset  # noqa: E402

log = logging.getLogger("train")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--seed", type=int, default=0, help="the run's seed: the same split")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ds = load_dataset(args.dataset, args.data_dir)
    train = SplitSpec(seed=args.seed).build(ds).train  # the split `calib run --seed` makes by default
    torch.manual_seed(args.seed)
    model = TinyNet(channels=ds.image_shape[0], classes=ds.num_classes)
    x, y = torch.from_numpy(train.images), torch.from_numpy(train.labels)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(args.seed)
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(y), generator=gen)
        total = 0.0
        for s in range(0, len(y), 128):
            b = perm[s:s + 128]
            loss = nn.functional.cross_entropy(model(x[b]), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss) * len(b)
        log.info("epoch %d: training loss %.4f", epoch + 1, total / len(y))
    # batch-norm statistics of the final weights (the running averages lag behind the last steps)
    model.train()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over this pass
    with torch.no_grad():
        for s in range(0, len(y), 512):
            model(x[s:s + 512])
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, args.out)
    log.info("saved %s", args.out)


if __name__ == "__main__":
    main()
