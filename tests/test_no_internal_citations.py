"""Users never have the project's internal working material: nothing they read may cite it.

README.md, docs/, configs/ and src/ must not mention the internal method specification ("SPEC") or paths into
the internal ``../shared`` folder; they explain things in their own words or point to docs/method.md and
docs/differences.md instead. Internal notes do not live under docs/.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PATTERN = re.compile(r"SPEC|shared/")
ROOTS = ("README.md", "docs", "configs", "src")
SUFFIXES = {".md", ".py", ".yaml", ".yml", ".txt", ".toml", ".cfg", ".html", ".json"}


def _files():
    for root in ROOTS:
        path = REPO / root
        if path.is_file():
            yield path
        elif path.is_dir():
            for f in sorted(path.rglob("*")):  # configs is a link to src/bce3s/configs: rglob follows the root
                if f.is_file() and f.suffix in SUFFIXES and "__pycache__" not in f.parts:
                    yield f


def test_no_citation_of_internal_material():
    hits = []
    files = list(_files())
    assert len(files) > 50 and any(f.suffix == ".yaml" for f in files)  # the walk sees configs and sources
    for f in files:
        for n, line in enumerate(f.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if PATTERN.search(line):
                hits.append(f"{f.relative_to(REPO)}:{n}: {line.strip()[:100]}")
    assert not hits, "internal material cited (say it in our own words or point to docs/):\n" + "\n".join(hits)


def test_no_internal_notes_under_docs():
    assert not (REPO / "docs" / "dev").exists()
