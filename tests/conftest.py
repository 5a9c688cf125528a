"""Shared fixtures for the test suite."""

from __future__ import annotations

import os

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest -n 2 on 2 cores: one thread per worker (and per subprocess it starts);
    # two workers x two threads each ran tiny trainings up to 10x slower.
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"


@pytest.fixture
def generator() -> torch.Generator:
    """A CPU generator with a fixed seed, so every test draws the same numbers each run."""
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def one_thread():
    """Tiny models on a shared CPU: one torch thread, or OpenMP spin-waits dominate (10x)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
