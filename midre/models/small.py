"""midre.models.small: classifier family (being written)."""
