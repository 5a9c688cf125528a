"""Word Order Shift Attack (ERNIE-Sparse section 5.2, Table 7).

The adversarial version of a dataset rolls each input's local tokens right by k
(global tokens and padding stay), exactly like SAOR's second pass. A dense
Transformer with learned positions would see a different sentence too, but a
sparse one additionally sees its blocks cut in other places; the attack measures
how much a model depends on where the pattern's blocks fall.

What rolls is what the model's head declares (``SEQUENCE_INPUTS``, see
``models.heads``): every token sequence along its token axis (multiple choice's
[B, C, n] included), token labels with their tokens, span labels remapped to where
their tokens went. ``objectives.roll`` does the rolling, for SAOR and the attack.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..objectives.roll import TokenRoll, shift_positions

__all__ = ["WordOrderShift", "shift_positions"]


@dataclass(frozen=True)
class WordOrderShift(TokenRoll):
    """Batch transform for evaluation: ``WordOrderShift(shift=8, num_global=128)``.

    The tasks' ``evaluate`` binds it to the model it scores (``for_model``), so the
    roll follows that head's declaration; to call it on a batch directly, bind it
    first: ``WordOrderShift(shift=8).for_model(model)(batch)``, or pass
    ``inputs=Head.SEQUENCE_INPUTS``. Span QA's evaluation maps the rolled pass's
    logits back (``restore_logits``) before cutting answers from the context.
    """
