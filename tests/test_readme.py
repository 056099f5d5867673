"""The loss snippet in README.md ("## Use the loss in your own training loop") and in docs/losses.md
("## Quick example") must run as written."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

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


def run_snippet(code: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "<snippet>", "exec"), {"__name__": "__snippet__"})
    return out.getvalue()


def test_docs_quick_example_runs():
    code = first_python_block((REPO / "docs" / "losses.md").read_text(), DOCS_HEADING)
    assert code is not None, f"docs/losses.md has no ```python block under {DOCS_HEADING!r}"
    assert len(code.strip().splitlines()) < 30
    printed = run_snippet(code)
    assert printed.count("\n") == 2 and "contrastive" in printed


def test_readme_loss_snippet_runs():
    readme = REPO / "README.md"
    text = readme.read_text() if readme.is_file() else ""
    if README_HEADING not in text:
        pytest.skip(f"README.md has no {README_HEADING!r} section yet (the lead pastes it from docs/losses.md)")
    code = first_python_block(text, README_HEADING)
    if code is None:
        pytest.skip(f"README.md has no ```python block under {README_HEADING!r} yet (paste it from docs/losses.md)")
    run_snippet(code)
