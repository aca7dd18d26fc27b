"""midre: defend image classifiers against model-inversion attacks and measure any defense.

Data flow::

    dataset -> defense -> trainer -> target checkpoint
    public data -> prior -> attack(target) -> reconstructions
    reconstructions + evaluation model + private data -> metrics -> results table -> report
"""
__version__ = "0.1.0"

from . import plugins  # noqa: F401,E402  (installs the registries' entry-point plugin loader)
from .errors import MidreError  # noqa: F401
