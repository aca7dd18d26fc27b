"""Dataset family 'synthetic' (being implemented; registers its factories in DATASETS)."""
