"""Training objectives: SAOR (and R-Drop, which shares its loss)."""

from .saor import (
    SAOROutput,
    roll_local_tokens,
    saor_forward,
    saor_loss,
    saor_terms,
    symmetric_kl,
)

__all__ = [
    "SAOROutput",
    "roll_local_tokens",
    "saor_forward",
    "saor_loss",
    "saor_terms",
    "symmetric_kl",
]
