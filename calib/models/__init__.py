"""Models: classifier f and triplet embedding g, stored as safetensors + JSON."""
from calib.models.artefact import load_model, read_config, save_model, weights_hash
from calib.models.nets import TRUNKS, Classifier, EmbeddingNet, build_model, default_arch

__all__ = ["Classifier", "EmbeddingNet", "TRUNKS", "build_model", "default_arch", "save_model",
           "load_model", "read_config", "weights_hash"]
