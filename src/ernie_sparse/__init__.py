"""ernie-sparse: block-sparse attention and long-sequence transformers."""

from . import patterns
from .attention import sparse_attention

__version__ = "0.1.0"
__all__ = ["__version__", "patterns", "sparse_attention"]


def _register_with_transformers() -> None:
    """AutoConfig / AutoModel* learn ``model_type: ernie_sparse`` when transformers is here."""
    from importlib.util import find_spec

    if find_spec("transformers") is None:
        return
    try:
        from .models.hf import register
    except ImportError as error:  # e.g. a transformers too old for the integration
        import warnings

        warnings.warn(f"ernie_sparse: no Hugging Face integration ({error})", stacklevel=2)
        return
    register()


_register_with_transformers()
