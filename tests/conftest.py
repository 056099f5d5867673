"""Shared pytest setup: markers, device/dtype from the environment, data location."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", default=False, help="also run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    run_slow = config.getoption("--run-slow") or os.environ.get("BCE3S_RUN_SLOW") == "1"
    has_cuda = torch.cuda.is_available()
    skip_slow = pytest.mark.skip(reason="slow test: run with --run-slow (CI does)")
    skip_gpu = pytest.mark.skip(reason="needs CUDA; none on this machine")
    for item in items:
        if item.get_closest_marker("slow") is not None and not run_slow:
            item.add_marker(skip_slow)
        if item.get_closest_marker("gpu") is not None and not has_cuda:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def device() -> torch.device:
    """Test device from BCE3S_TEST_DEVICE (default cpu)."""
    return torch.device(os.environ.get("BCE3S_TEST_DEVICE", "cpu"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real-data folder (BCE3S_DATA, default ../shared/data); tests skip when it is absent."""
    path = Path(os.environ.get("BCE3S_DATA", REPO.parent / "shared" / "data"))
    if not path.is_dir():
        pytest.skip(f"real data folder {path} not found (set BCE3S_DATA)")
    return path


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of small-tensor tests (more only add contention on a shared 2-core machine).

    Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
