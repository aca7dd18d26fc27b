"""Dataset family 'digits' (being implemented; registers its factories in DATASETS)."""
