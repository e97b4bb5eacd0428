"""Cave: a Jupyter kernel in which an LLM operates a persistent Python runtime, under authority."""

from ._errors import CaveError

__version__ = "0.1.0"

__all__ = ["CaveError", "__version__"]
