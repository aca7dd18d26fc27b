"""Datasets: one file per family, all registered in DATASETS (see base.py for the contract)."""
from . import digits, folders, synthetic, synthetic2  # noqa: F401  (register the families)
from .base import DATASETS, ImageSet, MISplits, TensorImageSet, load_dataset, load_pretraining  # noqa: F401
