"""Analyses of trained models: the word-order-shift attack."""

from .word_order import WordOrderShift, shift_positions

__all__ = ["WordOrderShift", "shift_positions"]
