"""Training: the classifier f (cross-entropy) and the triplet embedding g (pytorch-metric-learning)."""
from calib.train.classifier import accuracy, predict, train_classifier
from calib.train.embedding import MINERS, embed, retrieval_metrics, train_embedding
from calib.train.loop import TrainConfig, fit, random_shift
from calib.train.result import TrainedModel

__all__ = ["TrainConfig", "TrainedModel", "fit", "random_shift", "train_classifier", "train_embedding",
           "accuracy", "predict", "embed", "retrieval_metrics", "MINERS"]
