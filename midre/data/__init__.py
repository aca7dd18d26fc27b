"""Datasets: one file per family, all registered in DATASETS (see base.py for the contract)."""
from .base import DATASETS, ImageSet, MISplits, TensorImageSet, load_dataset  # noqa: F401
from . import synthetic, digits, folders  # noqa: F401  (register the families)
