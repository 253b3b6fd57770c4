"""Data sets: a registry of named sets, a user's own files, and binarization for training."""
from genzoo.data.download import DataError, data_dir
from genzoo.data.files import load_examples
from genzoo.data.registry import DATASETS, DatasetInfo, dataset_info, list_datasets, load_dataset, load_labels, load_splits
from genzoo.data.training_data import TrainingData, make_training_data

__all__ = [
    "DATASETS", "DataError", "DatasetInfo", "TrainingData", "data_dir", "dataset_info",
    "list_datasets", "load_dataset", "load_examples", "load_labels", "load_splits", "make_training_data",
]
