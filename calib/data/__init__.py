"""Datasets: one loader API returning validated images in [0,1] (N x C x H x W) and splits."""
from calib.data.dataset import Dataset, fingerprint_arrays, validate_arrays
from calib.data.idx import read_idx
from calib.data.sources import SOURCES, load_dataset
from calib.data.split import DEFAULT_FRACTIONS, PARTS, SplitSpec, Splits, split_dataset, stratified_indices

__all__ = ["Dataset", "Splits", "SplitSpec", "SOURCES", "PARTS", "DEFAULT_FRACTIONS", "load_dataset", "split_dataset",
           "stratified_indices", "fingerprint_arrays", "validate_arrays", "read_idx"]
