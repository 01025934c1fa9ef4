"""The background experiments as library functions (``calib experiment <name>``), each reading a
finished run folder and writing ``<run>/experiments/<name>.{json,npz}`` for the report."""
from calib.experiments.adversarial_training import adversarial_training
from calib.experiments.context import load_experiments, save_experiment
from calib.experiments.linearity import linearity
from calib.experiments.robust_embedding import robust_embedding
from calib.experiments.transfer import transferability
from calib.experiments.units import units_vs_random

EXPERIMENTS = {"transfer": transferability, "adversarial-training": adversarial_training,
               "robust-embedding": robust_embedding, "linearity": linearity, "units": units_vs_random}

__all__ = ["EXPERIMENTS", "load_experiments", "save_experiment", "adversarial_training",
           "linearity", "robust_embedding", "transferability", "units_vs_random"]
