"""midre.models.torchvision_models: classifier family (being written)."""
