"""Dataset family 'folders' (being implemented; registers its factories in DATASETS)."""
