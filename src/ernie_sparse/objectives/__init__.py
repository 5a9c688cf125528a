"""Training objectives: SAOR (and R-Drop, which shares its loss)."""

from .saor import roll_local_tokens, saor_loss, saor_terms, symmetric_kl

__all__ = ["roll_local_tokens", "saor_loss", "saor_terms", "symmetric_kl"]
