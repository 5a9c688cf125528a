"""Training objectives: SAOR (and R-Drop, which shares its loss), and the token roll
that SAOR's second pass and the word-order-shift attack share."""

from .roll import (
    TokenRoll,
    bind_to_model,
    restore_token_logits,
    roll_batch,
    roll_local_tokens,
    shift_positions,
)
from .saor import (
    SAOROutput,
    saor_forward,
    saor_loss,
    saor_terms,
    symmetric_kl,
)

__all__ = [
    "SAOROutput",
    "TokenRoll",
    "bind_to_model",
    "restore_token_logits",
    "roll_batch",
    "roll_local_tokens",
    "saor_forward",
    "saor_loss",
    "saor_terms",
    "shift_positions",
    "symmetric_kl",
]
