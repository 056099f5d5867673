"""The loss snippet in README.md ("## Use the loss in your own training loop") and in docs/losses.md
("## Quick example") must run as written."""

from __future__ import annotations

import contextlib
import io
import re
import warnings
from pathlib import Path
from typing import Any

import pytest

from bce3s.losses import Bce3sLoss, ContrastiveInactiveWarning
from bce3s.models import NormalizedLinear, Projector

REPO = Path(__file__).resolve().parents[1]
README_HEADING = "## Use the loss in your own training loop"
DOCS_HEADING = "## Quick example"


def first_python_block(text: str, heading: str) -> str | None:
    """The first ```python block after ``heading`` (a line of its own) and before the next ``## `` heading."""
    lines = text.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == heading)
    except StopIteration:
        return None
    section = []
    for line in lines[start + 1 :]:
        if line.startswith("## "):
            break
        section.append(line)
    match = re.search(r"^```python[^\n]*\n(.*?)^```", "\n".join(section) + "\n", flags=re.S | re.M)
    return match.group(1) if match else None


def run_snippet(code: str, namespace: dict[str, Any] | None = None) -> str:
    """Run ``code`` (in ``namespace`` when given, so the caller can inspect it) and return what it printed.

    A :class:`ContrastiveInactiveWarning` (``update``/``set_epoch`` forgotten) fails the run.
    """
    out = io.StringIO()
    scope = namespace if namespace is not None else {}
    scope.setdefault("__name__", "__snippet__")
    with contextlib.redirect_stdout(out), warnings.catch_warnings():
        warnings.simplefilter("error", ContrastiveInactiveWarning)
        exec(compile(code, "<snippet>", "exec"), scope)
    return out.getvalue()


def check_snippet_uses_the_library(code: str, scope: dict[str, Any]) -> None:
    """The snippet uses the library's head and projector, one forward per step, and feeds the memory after it."""
    assert isinstance(scope["head"], NormalizedLinear)
    assert isinstance(scope["projector"], Projector)
    assert "F.normalize" not in code  # no hand-built normalized head
    assert code.count("projector(") == 1 and code.count("backbone(") == 1  # one forward, no second one for update
    assert code.index("opt.step()") < code.index("loss_fn.update(")
    loss = scope["loss_fn"]
    assert isinstance(loss, Bce3sLoss) and bool(loss.class_memory.seen.any())


def test_docs_quick_example_runs():
    code = first_python_block((REPO / "docs" / "losses.md").read_text(), DOCS_HEADING)
    assert code is not None, f"docs/losses.md has no ```python block under {DOCS_HEADING!r}"
    assert len(code.strip().splitlines()) < 30
    scope: dict[str, Any] = {}
    printed = run_snippet(code, scope)
    assert printed.count("\n") == 2 and "contrastive" in printed
    check_snippet_uses_the_library(code, scope)


def test_readme_loss_snippet_runs():
    readme = REPO / "README.md"
    text = readme.read_text() if readme.is_file() else ""
    if README_HEADING not in text:
        pytest.skip(f"README.md has no {README_HEADING!r} section yet (the lead pastes it from docs/losses.md)")
    code = first_python_block(text, README_HEADING)
    if code is None:
        pytest.skip(f"README.md has no ```python block under {README_HEADING!r} yet (paste it from docs/losses.md)")
    scope: dict[str, Any] = {}
    run_snippet(code, scope)
    check_snippet_uses_the_library(code, scope)
