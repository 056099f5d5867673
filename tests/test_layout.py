"""The package's dependency rules, read from the source with ``ast`` (lazy imports inside functions included).

- Data flows one way: the import graph between ``bce3s`` subpackages has no cycle.
- ``bce3s.eval`` is pure (metrics and geometry): it imports nothing from ``engine``, ``data`` or ``report``.
- ``bench/`` uses only public names of ``bce3s`` (no ``_private`` module or name).
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "bce3s"


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, imported names) of every ``import``/``from`` statement of a file, at any depth."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, [alias.name for alias in node.names]))
    return out


def _unit(module: str) -> str | None:
    """The layout unit of a ``bce3s`` module: its subpackage (``bce3s.engine``) or top-level module."""
    parts = module.split(".")
    if parts[0] != "bce3s":
        return None
    return ".".join(parts[:2]) if len(parts) > 1 else "bce3s"


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        src = _unit(name)
        for module, names in _imports(path):
            targets = [module] + ([f"{module}.{n}" for n in names] if module == "bce3s" else [])
            for target in targets:
                dst = _unit(target)
                if dst and src and dst != src and dst != "bce3s":
                    graph.setdefault(src, set()).add(dst)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_cycle_detector_finds_a_planted_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}}) is None


def test_subpackage_import_graph_has_no_cycle():
    graph = _graph()
    assert "bce3s.engine" in graph  # the graph was read (the engine imports other units)
    assert _cycle(graph) is None


def test_eval_is_pure():
    banned = {"bce3s.engine", "bce3s.data", "bce3s.report", "bce3s.cli"}
    assert not _graph().get("bce3s.eval", set()) & banned


def test_bench_uses_public_names_only():
    offenders = []
    for path in sorted((REPO / "bench").glob("*.py")):
        for module, names in _imports(path):
            if not module.startswith("bce3s"):
                continue
            private = [p for p in module.split(".") if p.startswith("_")] + [n for n in names if n.startswith("_")]
            if private:
                offenders.append(f"{path.name}: {module} {private}")
    assert offenders == []


def test_gitignore_keeps_data_and_runs_out_of_git() -> None:
    """The default data root (``data/``, anchored at the repository root) and run directories are ignored."""
    lines = {line.strip() for line in (REPO / ".gitignore").read_text().splitlines()}
    assert "/data/" in lines and "runs/" in lines
