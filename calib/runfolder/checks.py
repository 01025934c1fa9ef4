"""Whether a saved model belongs to a run: trained on its data and on its training part."""
from __future__ import annotations

from typing import Any

from calib.data import Dataset, Splits
from calib.errors import ArtefactError


def check_model_data(config: dict[str, Any], dataset: Dataset, splits: Splits, what: str,
                     allow_mismatch: bool = False, subset: bool = False) -> None:
    """Refuse a model trained on other data or another split (its calibration points could have
    been training points), unless ``allow_mismatch``. ``subset``: the model was trained on a
    recorded subset of the training part (g2), whose parent part is checked.

    Raises:
        ArtefactError: the model's recorded data or training part is not this run's.
    """
    data = config.get("data", {})
    if allow_mismatch or data.get("external"):  # a user's classifier: trained elsewhere, on data calib cannot see
        return
    if data.get("data_fingerprint") != dataset.fingerprint:
        raise ArtefactError(f"the {what} was trained on data {str(data.get('data_fingerprint'))[:12]}…, not on "
                            f"{dataset.name} ({dataset.fingerprint[:12]}…); pass --allow-mismatch to use it anyway")
    if subset:
        if data.get("train_parent_fingerprint") != splits.train.fingerprint:
            raise ArtefactError(f"the {what} was not trained on a subset of this run's training part")
        return
    if data.get("train_fingerprint") != splits.train.fingerprint:
        raise ArtefactError(f"the {what} was trained on another split (its training part "
                            f"{str(data.get('train_fingerprint'))[:12]}…, split seed {data.get('split_seed')}; this "
                            f"run's {splits.train.fingerprint[:12]}…, split seed {splits.seed}); pass "
                            "--allow-mismatch to use it anyway")
