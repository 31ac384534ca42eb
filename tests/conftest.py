"""Shared settings of the test suite."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """Run each test on one intra-op thread: the models here are tiny, and on a busy machine OpenMP's thread
    hand-offs cost milliseconds per op (``torch.softmax`` on a 4x4 tensor: ~8 ms with 2 threads, 3 us with 1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
