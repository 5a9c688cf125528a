"""ernie-sparse: block-sparse attention and long-sequence transformers."""

from . import patterns
from .attention import sparse_attention

__version__ = "0.1.0"
__all__ = ["__version__", "patterns", "sparse_attention"]
