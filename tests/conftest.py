"""Shared fixtures for the test suite."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def generator() -> torch.Generator:
    """A CPU generator with a fixed seed, so every test draws the same numbers each run."""
    return torch.Generator().manual_seed(1234)
