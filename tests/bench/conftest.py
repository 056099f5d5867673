"""The scripts under bench/ are plain files, not a package: their folder goes on ``sys.path`` so that the tests
here import them by name (``import recipe_run``), as ``python bench/<script>.py`` itself does."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))
