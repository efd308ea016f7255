"""grulm: the GRU language model of d2l §9.1 as a library and a command."""

from grulm.model import GRULM, GRUConfig

__version__ = "0.1.0"

__all__ = ["GRULM", "GRUConfig", "__version__"]
