"""Classifier registry (see base.py for the contract) and GAN generators for priors."""
from .base import MODELS, Classifier, create_model, IMAGENET_MEAN, IMAGENET_STD  # noqa: F401
from . import small, faces, torchvision_models  # noqa: F401  (register the families)
