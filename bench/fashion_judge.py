"""Benchmark: the Fashion-MNIST knn judge's precision@1 (embedding g on the train part, queried by the
test part, split as a default run makes it) and the classifier's accuracy, for a training length and
shift augmentation. What set calib's defaults for large data sets (450,000 samples seen by g, no random
shifts on training parts of 20,000 images or more).

    python bench/fashion_judge.py emb 8 0      # g: 8 epochs, max_shift 0   (measured: 0.905, 579 s)
    python bench/fashion_judge.py emb 4 2      #                            (0.868 in a full run)
    python bench/fashion_judge.py clf 4 0      # f: 4 epochs, no shift      (0.886)

Needs Fashion-MNIST (``apt-get install dataset-fashion-mnist``); 2 threads.
"""
from __future__ import annotations

import sys
import time

import torch

from calib.data.sources import load_dataset
from calib.data.split import SplitSpec
from calib.train.classifier import train_classifier
from calib.train.embedding import train_embedding
from calib.train.loop import TrainConfig


def main() -> None:
    which, epochs, shift = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    torch.set_num_threads(2)
    sp = SplitSpec().build(load_dataset("fashion-mnist"))
    cfg = TrainConfig(epochs=epochs, seed=0, max_shift=shift, progress=False, device="cpu")
    t0 = time.perf_counter()
    if which == "emb":
        m = train_embedding(sp.train, cfg, test=sp.test)
        metric = f"precision@1 {m.metrics['test_precision_at_1']:.4f}"
    else:
        m = train_classifier(sp.train, cfg, test=sp.test)
        metric = f"accuracy {m.metrics['test_accuracy']:.4f}"
    print(f"{which} epochs {epochs} max_shift {shift}: {metric} on {len(sp.test)} test images, "
          f"{time.perf_counter() - t0:.0f} s, {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
