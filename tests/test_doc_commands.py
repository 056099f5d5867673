"""Every command block of README.md and docs/*.md is real.

A command block is a fenced block labelled ``bash`` (or ``sh``/``shell``/``console``); an unlabelled block that
starts with a command fails the fast test (label it). A block that cannot run here (downloads, GPUs, real data
sets, hours of CPU, installs, the test suite itself) has a marker on the line(s) before its fence, with the reason:

    <!-- skip-test: needs ImageNet-LT -->

The fast test parses every block, skipped or not: each ``bce3s`` command (also as ``python -m bce3s`` or under
``torchrun ... -m bce3s``) must parse with the real argparse parser (so a doc naming a flag or subcommand that does
not exist fails), its config must exist and its ``--set`` keys must validate; ``make`` targets must exist in the
Makefile; a Python script must exist and define every ``--flag`` the doc gives it; every other command must be in a
skipped block. The slow test runs the blocks that are not skipped, in order, one temporary working directory per
document, with every training cut to one epoch per stage of 2 steps (``--set runtime.max_steps=2``).
"""

from __future__ import annotations

import ast
import glob
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from bce3s.cli import _config_path, build_parser, main
from bce3s.config import load_config
from bce3s.engine.validate import validate_config
from bce3s.errors import BCE3SError

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL_LANGS = {"bash", "sh", "shell", "console"}
SKIP_RE = re.compile(r"<!--\s*skip-test:(.*?)-->")
COMMAND_START = re.compile(r"^(\.venv/bin/\S+|bce3s|python3?|make|torchrun|pip|mkdir|tar|bash|[A-Z_]+=\S*)$")


@dataclass
class Block:
    """One fenced command block of a document."""

    doc: str
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    skip: str | None  # the skip-test reason, or None

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"


def blocks_of(path: Path) -> list[Block]:
    """Every fenced block (any language) with the skip-test marker just before its fence."""
    lines = path.read_text().splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = re.match(r"^\s*```(\w*)", lines[i])
        if not m:
            i += 1
            continue
        start, lang = i, m.group(1)
        indent = len(lines[i]) - len(lines[i].lstrip())
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith("```"):
            j += 1
        body = "\n".join(x[indent:] if x[:indent].strip() == "" else x for x in lines[start + 1 : j])
        k, reason = start - 1, None
        while k >= 0 and lines[k].strip() == "":
            k -= 1
        if k >= 0 and (sm := SKIP_RE.search(lines[k])):
            reason = sm.group(1).strip()
        out.append(Block(str(path.relative_to(REPO)), start + 1, lang, body, reason))
        i = j + 1
    return out


def command_blocks() -> list[Block]:
    return [b for doc in DOCS for b in blocks_of(doc) if b.lang in SHELL_LANGS]


def commands_of(block: Block) -> list[list[str]]:
    """The commands of a block as argv lists: continuation lines joined, comments dropped, ``&&`` / ``;`` split,
    leading ``NAME=value`` environment assignments removed, and a ``$ `` console prompt stripped."""
    text = re.sub(r"\\\n\s*", " ", block.text)
    cmds: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("$ "):
            line = line[2:]
        if not line or line.startswith("#"):
            continue
        tokens = shlex.split(line, comments=True)
        current: list[str] = []
        for tok in [*tokens, "&&"]:
            if tok in ("&&", ";", "||"):
                while current and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", current[0]):
                    current.pop(0)
                if current:
                    cmds.append(current)
                current = []
            else:
                current.append(tok)
    return cmds


def bce3s_argv(argv: list[str]) -> list[str] | None:
    """The arguments after ``bce3s`` when ``argv`` runs bce3s (directly, as a module, or under torchrun)."""
    if Path(argv[0]).name == "bce3s":
        return argv[1:]
    for i in range(len(argv) - 1):
        if argv[i] == "-m" and argv[i + 1] == "bce3s" and Path(argv[0]).name in ("python", "python3", "torchrun"):
            return argv[i + 2 :]
    return None


def makefile_targets() -> set[str]:
    text = (REPO / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z][\w-]*):", text, flags=re.M))


def script_flags(path: Path) -> set[str]:
    """Every ``--flag`` a script declares with ``add_argument`` (read with ast, nothing imported)."""
    flags: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
            flags |= {a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)}
    return flags


def check_bce3s(args: list[str], where: str) -> None:
    """``args`` parse with the real parser; a config exists and its ``--set`` overrides validate."""
    try:
        ns = build_parser().parse_args(args)
    except SystemExit as exc:
        raise AssertionError(f"{where}: 'bce3s {' '.join(args)}' does not parse (see the error above)") from exc
    assert ns.command, f"{where}: no subcommand in 'bce3s {' '.join(args)}'"
    config = getattr(ns, "config", None)
    if config and "<" not in config:
        path = _config_path(config)
        assert Path(path).is_file(), f"{where}: config {config} does not exist"
        validate_config(load_config(path, list(getattr(ns, "overrides", []))))


def check_command(argv: list[str], block: Block) -> None:
    """One command of a block (see the module docstring for the rules)."""
    where = block.where
    args = bce3s_argv(argv)
    if args is not None:
        check_bce3s(args, where)
        return
    name = Path(argv[0]).name
    if name == "make":
        missing = [t for t in argv[1:] if not t.startswith("-") and "=" not in t and t not in makefile_targets()]
        assert not missing, f"{where}: no Makefile target {missing}"
        return
    if name in ("python", "python3") and len(argv) > 1 and argv[1].endswith(".py"):
        script = REPO / argv[1]
        assert script.is_file(), f"{where}: {argv[1]} does not exist"
        declared = script_flags(script)
        unknown = [a.split("=")[0] for a in argv[2:] if a.startswith("--") and a.split("=")[0] not in declared]
        assert not unknown, f"{where}: {argv[1]} has no option {unknown}"
        return
    if name == "bash" and len(argv) > 1 and argv[1].endswith(".sh"):
        assert (REPO / argv[1]).is_file(), f"{where}: {argv[1]} does not exist"
    assert block.skip is not None, (
        f"{where}: '{' '.join(argv)}' cannot be run by this test; add <!-- skip-test: REASON --> before the block"
    )


def test_there_are_command_blocks_and_runnable_ones() -> None:
    blocks = command_blocks()
    assert len(blocks) >= 20
    assert any(b.doc == "README.md" and b.skip is None for b in blocks)


def test_every_skip_marker_states_a_reason_and_belongs_to_a_block() -> None:
    for doc in DOCS:
        text = doc.read_text()
        marked = {b.line for b in blocks_of(doc) if b.skip is not None}
        for m in SKIP_RE.finditer(text):
            line = text[: m.start()].count("\n") + 1
            assert len(m.group(1).strip()) >= 10, f"{doc.name}:{line}: a skip-test marker needs its reason"
            assert any(0 < b - line <= 2 for b in marked), f"{doc.name}:{line}: skip-test marker is not before a block"


def test_unlabelled_command_blocks_are_labelled() -> None:
    bad = []
    for doc in DOCS:
        for b in blocks_of(doc):
            first = next((x.split()[0] for x in b.text.splitlines() if x.strip()), "")
            if b.lang == "" and COMMAND_START.match(first):
                bad.append(f"{b.where} ({first})")
    assert not bad, f"command blocks without a language: {bad}; label them ```bash"


@pytest.mark.parametrize("block", command_blocks(), ids=lambda b: b.where)
def test_every_command_parses(block: Block) -> None:
    cmds = commands_of(block)
    assert cmds, f"{block.where}: an empty command block"
    for argv in cmds:
        check_command(argv, block)


def test_a_doc_naming_a_flag_that_does_not_exist_fails() -> None:
    """The check above catches a wrong flag, a wrong subcommand and a wrong --set key."""
    block = Block("x.md", 1, "bash", "", None)
    for text in ("bce3s train configs/digits_lt/bce3s.yaml --epochs 3", "bce3s fit configs/digits_lt/bce3s.yaml",
                 "bce3s train configs/digits_lt/bce3s.yaml --set stages.0.lr=0.1", "make demos",
                 "python bench/losses.py --no-such-flag", "pip install bce3s"):
        block.text = text
        with pytest.raises((AssertionError, BCE3SError)):
            for argv in commands_of(block):
                check_command(argv, block)


def test_readme_reports_only_runs_its_commands_made() -> None:
    """Run directories a README/docs block reads were made by an earlier command of the same document."""
    for doc in DOCS:
        made: set[str] = set()
        for block in (b for b in blocks_of(doc) if b.lang in SHELL_LANGS):
            for argv in commands_of(block):
                args = bce3s_argv(argv)
                if not args:
                    continue
                ns = build_parser().parse_args(args)
                if ns.command in ("train", "sweep") and getattr(ns, "out", None):
                    made.add(ns.out.rstrip("/"))
                for run in getattr(ns, "run_dirs", None) or ([ns.run_dir] if getattr(ns, "run_dir", None) else []):
                    assert any(run == m or run.startswith(m + "/") for m in made), (
                        f"{block.where}: '{run}' is not made by an earlier command of {block.doc}")


# --------------------------------------------------------------------------------------------- running them


def _budget(args: list[str]) -> list[str]:
    """``args`` of a train/sweep with every stage cut to 1 epoch of 2 steps (no budget for a resume)."""
    ns = build_parser().parse_args(args)
    configs = getattr(ns, "configs", None) or ([ns.config] if getattr(ns, "config", None) else [])
    if ns.command not in ("train", "sweep") or getattr(ns, "resume", False) or not configs:
        return args
    # a sweep's --set applies to every config: cut only the stages all of them have (max_steps caps the rest)
    stages = min(len(load_config(_config_path(c), list(ns.overrides)).stages) for c in configs)
    cut = ["runtime.max_steps=2"] + [f"stages.{i}.epochs=1" for i in range(stages)]
    return args + [x for o in cut for x in ("--set", o)]


@pytest.mark.slow
@pytest.mark.parametrize("doc", [d for d in DOCS if any(b.skip is None for b in blocks_of(d)
                                                         if b.lang in SHELL_LANGS)],
                         ids=lambda d: d.name)
def test_command_blocks_run_in_order(doc: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(REPO / "src"))  # sweep's subprocesses import this checkout
    ran = 0
    for block in (b for b in blocks_of(doc) if b.lang in SHELL_LANGS and b.skip is None):
        for argv in commands_of(block):
            args = bce3s_argv(argv)
            assert args is not None, f"{block.where}: only bce3s commands run here; mark the block skip-test"
            expanded = [x for a in args for x in (sorted(glob.glob(a)) or [a] if "*" in a else [a])]
            rc = main(_budget(expanded))
            out = capsys.readouterr()
            assert rc == 0, f"{block.where}: 'bce3s {' '.join(args)}' exited {rc}: {out.err[-2000:]}"
            ran += 1
    assert ran
