"""One model trained on its own (``calib train classifier|embedding``): a dataset's default split for a
seed, the model trained on its training part and scored on its test part."""
from __future__ import annotations

from typing import Any

from calib.data import Dataset, SplitSpec
from calib.errors import ConfigError
from calib.train.classifier import train_classifier
from calib.train.embedding import train_embedding
from calib.train.loop import TrainConfig
from calib.train.result import TrainedModel


def train_on_split(what: str, dataset: Dataset, config: TrainConfig, **options: Any) -> TrainedModel:
    """Train the ``classifier`` or the ``embedding`` (``options``: dim, margin, miner) on the training part
    of ``dataset``'s default split with seed ``config.seed``."""
    splits = SplitSpec(seed=config.seed).build(dataset)
    if what == "classifier":
        return train_classifier(splits.train, config, validation=splits.calibration, test=splits.test,
                                split_seed=config.seed)
    if what == "embedding":
        return train_embedding(splits.train, config, test=splits.test, split_seed=config.seed, **options)
    raise ConfigError(f"unknown model {what!r}; choose classifier or embedding")
