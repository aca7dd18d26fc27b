"""Classifier registry (see base.py for the contract) and GAN generators for priors."""
from . import faces, small, torchvision_models  # noqa: F401  (register the families)
from .base import IMAGENET_MEAN, IMAGENET_STD, MODELS, Classifier, create_model  # noqa: F401
