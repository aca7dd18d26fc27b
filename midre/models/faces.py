"""midre.models.faces: classifier family (being written)."""
