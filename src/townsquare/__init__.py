"""townsquare: a self-hostable AI layer for social, community and marketplace apps."""

__version__ = "0.1.0"

__all__ = ["__version__"]
