"""Datasets: one file per family, all registered in DATASETS (see base.py for the contract)."""
from .base import DATASETS, ImageSet, MISplits, TensorImageSet, load_dataset, load_pretraining  # noqa: F401
from . import synthetic, synthetic2, digits, folders  # noqa: F401  (register the families)
