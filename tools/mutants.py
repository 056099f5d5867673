#!/usr/bin/env python3
"""Mutation experiment: does the test suite notice when an engine feature is deleted?

usage: python3 mutants.py TREE TEST [TEST ...] [--python PY] [--only NAME ...] [--timeout S] [--keep]

For each mutant below, copy TREE/src to a temporary directory, apply the mutant's edits there (TREE itself is
never modified), and run ``PY -m pytest -x TEST ...`` in TREE with ``PYTHONPATH=<copy>/src``. The tests
therefore import the mutated ``bce3s``. A run with no edit comes first: it must pass, otherwise every "killed"
below it means nothing. Prints a markdown table ``mutant | killed? | first failing test``; the exit status is 0
only when the unmutated run passes and every mutant is killed.

Mutants are data (MUTATIONS): ``(name, file relative to src/, old snippet, new snippet)``. Entries with the same
name are applied together as one mutant (a feature whose code sits in two places). ``old`` must occur exactly
once in its file; a snippet that is missing (e.g. after a refactor moved the code) or ambiguous is reported as
such, never counted as a survivor or a kill. After a refactor, update ``file`` and the snippets here.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

S = "bce3s/engine/stages.py"
B = "bce3s/engine/build.py"
R = "bce3s/engine/run.py"
ST = "bce3s/engine/step.py"
TR = "bce3s/data/transforms.py"

# (name, file relative to src/, old snippet, new snippet); same name = one mutant with several edits
MUTATIONS: list[tuple[str, str, str, str]] = [
    (
        "logit_adjust_tau (post-hoc logit adjustment)",
        S,
        "        model.set_logit_adjustment(ctx.data.train_counts, stage.logit_adjust_tau)\n",
        "        pass\n",
    ),
    ("reset_head", S, "    if stage.reset_head:\n", "    if False:\n"),
    (
        "max_norm (apply MaxNorm)",
        S,
        "            apply_max_norm(ctx.model.head.weight, st.maxnorm)\n",
        "            pass\n",
    ),
    (
        "bn_mode: eval",
        S,
        '    if stage.freeze_backbone and stage.bn_mode == "eval":\n        model.backbone.eval()\n',
        "",
    ),
    (
        "init_from: best_val",
        S,
        'src = f"{ctx.cfg.stages[si - 1].name}_{stage.init_from}"',
        'src = f"{ctx.cfg.stages[si - 1].name}_last"',
    ),
    (
        "eval.tta_flip (the flip)",
        TR,
        "return 0.5 * (model_fn(x) + model_fn(torch.flip(x, dims=(-1,))))",
        "return 0.5 * (model_fn(x) + model_fn(x))",
    ),
    (
        "optim.grad_clip",
        ST,
        'max_norm = rt.grad_clip if rt.grad_clip is not None else float("inf")',
        'max_norm = float("inf")',
    ),
    # freeze: both the requires_grad switch and the head-only optimizer (either alone still freezes)
    ("freeze_backbone", S, "    freeze = stage.freeze_backbone\n", "    freeze = False\n"),
    ("freeze_backbone", S, "    if stage.freeze_backbone:\n        named = [", "    if False:\n        named = ["),
    (
        "sampler: class_balanced (main batch)",
        B,
        "sampler=stage.mixing.sampler if mixing else stage.sampler,",
        'sampler=stage.mixing.sampler if mixing else "instance",',
    ),
    (
        "model.channels_last (model conversion)",
        R,
        "        model = model.to(memory_format=torch.channels_last)\n",
        "        pass\n",
    ),
    ("resume (optimizer state not restored)", S, '        optimizer.load_state_dict(resume["optimizer"])\n', ""),
    ("stage augment: false (eval transform)", B, "train_transform=stage.augment)", "train_transform=True)"),
    (
        "logit adjustment of best_val",
        S,
        '            _adjust_saved(ctx, f"{stage.name}_best_val", model.logit_bias)\n',
        "            pass\n",
    ),
    ("stop during an epoch's last step", S, "        if all_reduce_flag(ctx.stop(), ctx.dist):", "        if False:"),
]


def default_python(tree: Path) -> str:
    for cand in (tree / ".venv/bin/python",):
        if cand.is_file():
            return str(cand)
    return sys.executable


def group(mutations: list[tuple[str, str, str, str]]) -> dict[str, list[tuple[str, str, str]]]:
    out: dict[str, list[tuple[str, str, str]]] = {}
    for name, rel, old, new in mutations:
        out.setdefault(name, []).append((rel, old, new))
    return out


def apply_edits(src: Path, edits: list[tuple[str, str, str]]) -> str | None:
    """Apply edits under ``src``; returns a problem ("snippet not found ...") or None."""
    for rel, old, new in edits:
        path = src / rel
        if not path.is_file():
            return f"snippet not found (no file {rel})"
        text = path.read_text()
        n = text.count(old)
        if n != 1:
            first = old.strip().splitlines()[0][:60] if old.strip() else repr(old)
            return f"snippet {'not found' if n == 0 else f'ambiguous ({n} matches)'} in {rel}: `{first}`"
        path.write_text(text.replace(old, new))
    return None


FAIL_RE = re.compile(r"^(FAILED|ERROR) (\S+)", re.M)


def run_tests(py: str, tree: Path, src: Path, tests: list[str], timeout: float) -> tuple[bool, str, float]:
    """(passed, first failing test or note, seconds)."""
    env = {k: v for k, v in os.environ.items() if k not in ("BCE3S_FAULT_INJECT",)}
    env.update({"PYTHONPATH": str(src), "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"})
    cmd = [py, "-m", "pytest", "-x", "-q", "-rfE", "-p", "no:cacheprovider", *tests]
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"timeout after {timeout:.0f} s", time.time() - t0
    dt = time.time() - t0
    if proc.returncode == 0:
        return True, "", dt
    m = FAIL_RE.search(proc.stdout)
    if m:
        return False, m.group(2), dt
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or ["?"]
    return False, f"pytest rc {proc.returncode}: {tail[0][:100]}", dt


def check_import(py: str, tree: Path, src: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run(
        [py, "-c", "import bce3s; print(bce3s.__file__)"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tree", type=Path, help="source tree (a checkout with src/ and tests/)")
    ap.add_argument("tests", nargs="+", help="test files (relative to TREE) to run against each mutant")
    ap.add_argument("--python", help="interpreter with torch and pytest (default: TREE/.venv, else this interpreter)")
    ap.add_argument("--only", nargs="*", help="run only mutants whose name contains one of these strings")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per pytest run (default 900)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary copies (printed)")
    args = ap.parse_args()
    tree = args.tree.resolve()
    if not (tree / "src" / "bce3s").is_dir():
        ap.error(f"{tree} has no src/bce3s")
    py = args.python or default_python(tree)
    mutants = group(MUTATIONS)
    if args.only:
        mutants = {k: v for k, v in mutants.items() if any(s in k for s in args.only)}

    work = Path(tempfile.mkdtemp(prefix="bce3s-mutants-"))
    rows: list[tuple[str, str, str, str]] = []
    ok = True
    try:
        # unmutated copy first: the tests must pass on it, and must import the copy, not an installed bce3s
        clean = work / "clean"
        shutil.copytree(tree / "src", clean / "src")
        where = check_import(py, tree, clean / "src")
        if not where.startswith(str(clean)):
            print(f"error: with PYTHONPATH={clean / 'src'} bce3s imports from {where!r}", file=sys.stderr)
            return 2
        passed, note, dt = run_tests(py, tree, clean / "src", args.tests, args.timeout)
        rows.append(("(none: unmutated copy)", "passes" if passed else "FAILS", note, f"{dt:.0f}"))
        ok &= passed
        print(f"unmutated: {'pass' if passed else 'FAIL ' + note} ({dt:.0f} s)", file=sys.stderr, flush=True)
        for i, (name, edits) in enumerate(mutants.items()):
            dest = work / f"m{i}"
            shutil.copytree(tree / "src", dest / "src")
            problem = apply_edits(dest / "src", edits)
            if problem is not None:
                rows.append((name, problem, "", "-"))
                ok = False
            else:
                passed, note, dt = run_tests(py, tree, dest / "src", args.tests, args.timeout)
                rows.append((name, "no (SURVIVED)" if passed else "yes", note, f"{dt:.0f}"))
                ok &= not passed
            print(f"{name}: {rows[-1][1]} {rows[-1][2]}", file=sys.stderr, flush=True)
            if not args.keep:
                shutil.rmtree(dest, ignore_errors=True)
    finally:
        if args.keep:
            print(f"copies kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)

    print(f"tests: {' '.join(args.tests)} (tree {tree})\n")
    print("| mutant | killed? | first failing test | s |")
    print("|---|---|---|---|")
    for name, killed, first, dt in rows:
        print(f"| {name} | {killed} | {f'`{first}`' if first else ''} | {dt} |")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
