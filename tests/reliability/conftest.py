"""Fixtures of the reliability tests (helpers live in reliability_helpers.py)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def keep_threads():
    """Restore torch's thread count after an in-process run that set ``runtime.threads``."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)
