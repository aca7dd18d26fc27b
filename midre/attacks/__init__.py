"""Model-inversion attacks behind one interface (see base.py): registry ATTACKS, build_attack,
the Reconstructions artefact and the query oracle."""
from .base import (ACCESS_LEVELS, ATTACKS, AccessError, Attack, QueryOracle, Reconstructions,  # noqa: F401
                   adaptive_eraser_from_meta, build_attack)
