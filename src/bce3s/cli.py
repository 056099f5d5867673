"""The ``bce3s`` command line: ``train``, ``eval``, ``predict``, ``export``, ``report``, ``compare``, ``sweep``,
``demo`` and ``config``.

Usage, config and data errors print one line (``bce3s: error: ...``) and exit with code 2; ``--debug`` shows
the traceback instead. Under ``torchrun`` the same command runs distributed (``torchrun --nproc_per_node=N -m
bce3s train CONFIG ...``); only rank 0 logs and writes files.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from bce3s.errors import BCE3SError, ConfigError, program_name

log = logging.getLogger("bce3s")

#: ``--checkpoint`` of the commands that load a run's model (predict, export).
_MODEL_CHECKPOINT_HELP = "best_val | last | <stage>_last | <stage>_best_val | a .pt file (default best_val)"

PACKAGE_CONFIGS = Path(__file__).resolve().parent / "configs"


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (plus exit code 2) instead of the usage block."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        sys.exit(2)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    p.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (``bce3s --help`` documents every option)."""
    parser = _Parser(
        prog="bce3s",
        description="Long-tailed image recognition with BCE3S: train, evaluate, report, predict and export.",
        epilog="Multi-GPU: torchrun --nproc_per_node=N -m bce3s train CONFIG --out DIR",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    t = sub.add_parser(
        "train",
        help="train a config (all its stages) and evaluate the test split once at the end",
        description="Train every stage of CONFIG into a run directory, select on the validation "
        "split, then evaluate the test split once for the last and best-val checkpoints.",
    )
    t.add_argument("config", nargs="?", help="YAML config file (optional with --resume: the run's own config)")
    t.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set stages.0.epochs=5 (repeatable)",
    )
    t.add_argument("--out", help="run directory (default: runs/<config folder>_<config name>)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from checkpoints/last.pt")
    t.add_argument(
        "--auto-resume",
        action="store_true",
        help="resume when --out holds an unfinished run of this config, else start it (for torchrun "
        "--max-restarts and job schedulers that re-run the same command)",
    )
    t.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    t.add_argument("--device", help="auto | cpu | cuda | cuda:N (overrides runtime.device)")
    t.add_argument("--seed", type=int, help="run seed (overrides runtime.seed)")
    _add_common(t)

    e = sub.add_parser(
        "eval",
        help="evaluate a checkpoint of a run: metrics, calibration, geometry",
        description="Evaluate a run's checkpoint on a split and write eval_<split>_<checkpoint>.json.",
    )
    e.add_argument("run_dir", help="a directory made by 'bce3s train'")
    e.add_argument("--split", default="test", choices=["test", "val"], help="split to evaluate (default test)")
    e.add_argument("--checkpoint", default="last",
                   help="last | best_val | <stage>_last | <stage>_best_val, e.g. stage1_last (default last)")
    e.add_argument("--tta", default="none", choices=["none", "flip"], help="test-time augmentation (default none)")
    e.add_argument("--device", help="auto | cpu | cuda | cuda:N (default: the run's)")
    e.add_argument("--no-geometry", action="store_true", help="skip the feature/classifier geometry diagnostics")
    e.add_argument("--save-features", action="store_true", help="also save features, logits and labels (.pt)")
    _add_common(e)

    pr = sub.add_parser(
        "predict",
        help="classify image files with a trained run (CSV or JSON Lines)",
        description="Classify image files, folders (recursively) or glob patterns with a run's checkpoint, using "
        "the run's evaluation preprocessing. One row per file: predicted class, its probability (the run's kind: "
        "sigmoid for BCE-trained heads, softmax for CE) and the top-k classes; a file that is not a readable "
        "image gets its reason and the others are still predicted. Exit code 1 when any file failed.",
    )
    pr.add_argument("run_dir", help="a directory made by 'bce3s train'")
    pr.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or glob patterns")
    pr.add_argument("--checkpoint", default="best_val", help=_MODEL_CHECKPOINT_HELP)
    pr.add_argument("--top-k", type=int, default=5, help="classes listed per image (default 5)")
    pr.add_argument("--out", help="write FILE.csv or FILE.jsonl (default: CSV on stdout)")
    pr.add_argument("--batch-size", type=int, help="images per forward (default: the run's eval.batch_size)")
    pr.add_argument("--device", help="auto | cpu | cuda | cuda:N (default: the run's)")
    _add_common(pr)

    x = sub.add_parser(
        "export",
        help="write a run's model as one self-contained file (TorchScript, torch.export or ONNX)",
        description="Export a run's checkpoint as a file that loads with plain torch (or onnxruntime) without "
        "bce3s. Input: uint8 images (N, C, H, W); output: logits (N, K); the run's eval preprocessing is inside, "
        "the class names and probability kind are stored with it (docs/using_a_model.md).",
    )
    x.add_argument("run_dir", help="a directory made by 'bce3s train'")
    x.add_argument("--checkpoint", default="best_val", help=_MODEL_CHECKPOINT_HELP)
    x.add_argument("--format", required=True, choices=["torchscript", "exported", "onnx"], help="file format")
    x.add_argument("--out", required=True, help="the file to write")
    x.add_argument("--input-size", type=int,
                   help="exported/onnx: the square image side they take (default: the run's eval input, "
                   "round(S / 0.875) for the imagenet preset); torchscript takes any size")
    _add_common(x)

    r = sub.add_parser(
        "report",
        help="write report.html and report.md for one or more runs",
        description="Write a self-contained HTML report and a Markdown report comparing runs.",
    )
    r.add_argument("run_dirs", nargs="+", help="run directories")
    r.add_argument("--out", help="output directory (default: the run directory, or report/ beside several runs)")
    _add_common(r)

    c = sub.add_parser(
        "compare",
        help="table of mean ± std over seeds, grouped by config",
        description="Group runs by config and print mean ± std over seeds (All, Many, Medium, Few, ECE).",
    )
    c.add_argument("run_dirs", nargs="+", help="run directories")
    c.add_argument("--format", default="md", choices=["md", "csv"], help="output format (default md)")
    c.add_argument("--out", help="also write the table to this file")
    _add_common(c)

    s = sub.add_parser(
        "sweep",
        help="run one or more configs over several seeds, then write one mean ± std table",
        description="Train every CONFIG once per seed into OUT/<config name>/seed<S>, then print and write "
        "OUT/compare.md: mean ± std over seeds per config (All, Many, Medium, Few, ECE; last and best_val, flip-TTA "
        "rows apart); each run's output goes to OUT/logs/<config name>/seed<S>.log. Every (config, seed) is checked "
        "before any training starts. Run again, the same command "
        "skips the finished runs and resumes the interrupted ones (--overwrite trains them all again). A failed "
        "run is reported, the others are still tabulated, and the exit code is 1.",
    )
    s.add_argument("configs", nargs="+", metavar="CONFIG", help="YAML config files (one table row group each)")
    s.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default 0 1 2)")
    s.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value in every config (repeatable)",
    )
    s.add_argument(
        "--out",
        help="parent directory (default runs/<config folder>_<config name>_sweep for one config, runs/sweep for "
        "several); config name = the file name without .yaml, with its folder in front when two share a name",
    )
    s.add_argument(
        "--jobs",
        "--parallel",
        dest="jobs",
        type=int,
        default=1,
        metavar="N",
        help="runs at once, each its own process; on a GPU they share the device (default 1)",
    )
    s.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    s.add_argument("--overwrite", action="store_true", help="train every run again, finished ones included")
    _add_common(s)

    d = sub.add_parser(
        "demo",
        help="CE vs BCE3S on the embedded Digits-LT set over 3 seeds, with a verdict and a report",
        description="Train a CE baseline (with its own class-balanced stage 2) and BCE3S (both "
        "stages) on Digits-LT with the same data, seeds and epochs, for each seed; print mean ± std over seeds, "
        "the paired difference and a verdict (who is ahead, or within seed noise), and write a report.",
    )
    d.add_argument(
        "--out",
        default="runs/demo",
        help="parent directory of the runs, OUT/ce/seedN and OUT/bce3s/seedN (default runs/demo); the demo's own "
        "earlier runs there are replaced, anything else is refused",
    )
    d.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                   help="seeds of each method (default 0 1 2); the verdict needs at least 2")
    d.add_argument("--jobs", type=int, default=1,
                   help="runs trained at once, as separate processes (default 1: one after the other, in this "
                   "process); every run uses one thread, so the numbers do not depend on --jobs or the machine")
    d.add_argument("--device", default="cpu", help="device (default cpu)")
    d.add_argument("--overwrite", action="store_true", help="replace whatever OUT/ce/seedN and OUT/bce3s/seedN hold")
    _add_common(d)

    g = sub.add_parser(
        "config",
        help="print the resolved config (defaults + file + --set) as YAML, after checking it",
        description="Load CONFIG, apply the --set overrides, check every key, type, range and registry name, "
        "and print the full resolved config as YAML (every key, defaults included). Nothing is trained or written.",
    )
    g.add_argument("config", help="YAML config file")
    g.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set stages.0.optim.lr=0.1 (repeatable)",
    )
    _add_common(g)
    return parser


def _in_package(arg: str) -> Path | None:
    """Where a ``configs/...`` argument lies inside the installed package (any other argument: None)."""
    parts = Path(arg).parts
    return PACKAGE_CONFIGS.joinpath(*parts[1:]) if parts and parts[0] == "configs" else None


def _config_path(arg: str) -> str:
    """A config path as given, or resolved inside the installed package (``configs/...`` works anywhere)."""
    if Path(arg).is_file():
        return str(Path(arg))
    packaged = _in_package(arg)
    return str(packaged) if packaged is not None and packaged.is_file() else arg


def _default_out(config: str) -> Path:
    p = Path(config)
    return Path("runs") / f"{p.parent.name}_{p.stem}" if p.parent.name else Path("runs") / p.stem


def _cmd_train(args: argparse.Namespace) -> int:
    from bce3s.config import load_config
    from bce3s.engine.run import train
    from bce3s.engine.validate import validate_config

    overrides = list(args.overrides)
    if args.device:
        overrides.append(f"runtime.device={args.device}")
    if args.seed is not None:
        overrides.append(f"runtime.seed={args.seed}")
    restart_unstarted = False
    if args.auto_resume and args.out:
        from bce3s.rundir import RunDir

        rd = RunDir(Path(args.out))
        if rd.is_run() and rd.read_run_info().get("status") != "finished":
            if rd.checkpoint("last").is_file():
                args.resume = True
            else:  # stopped before its first checkpoint: nothing to resume, start it again if it is this config
                restart_unstarted = True
    if args.resume:
        if not args.out:
            raise ConfigError("--resume needs --out RUN_DIR (the run to continue)")
        from bce3s.rundir import RunDir

        RunDir(Path(args.out)).require_run()
        # without a CONFIG the run's own config is used (device/seed/--set still apply and are checked)
        cfg = load_config(_config_path(args.config) if args.config else Path(args.out) / "config.yaml", overrides)
        validate_config(cfg)
        result = train(cfg, args.out, resume=True, quiet=args.quiet, config_path=args.config, command=sys.argv)
    else:
        if not args.config:
            raise ConfigError(
                "train needs a CONFIG file (e.g. configs/digits_lt/bce3s.yaml), or --resume --out RUN_DIR"
            )
        path = _config_path(args.config)
        cfg = load_config(path, overrides)
        validate_config(cfg)
        out = Path(args.out) if args.out else _default_out(args.config)
        if restart_unstarted and _same_run_config(out, cfg):
            args.overwrite = True
        result = train(cfg, out, overwrite=args.overwrite, quiet=args.quiet, config_path=args.config, command=sys.argv)
    if int(os.environ.get("RANK", "0")) == 0:
        _print_final(result.final, result.run_dir)
    return 0


def _same_run_config(out: Path, cfg: Any) -> bool:
    """Whether the run in ``out`` was started with ``cfg`` (up to the settings a resume may change)."""
    from bce3s.config import load_config
    from bce3s.engine.state import RESUME_FREE, config_diff

    try:
        old = load_config(out / "config.yaml")
    except BCE3SError:
        return False
    return not config_diff(old, cfg, ignore=RESUME_FREE)


def _one_line(err: BaseException) -> str:
    """The one-line message of a user-facing error.

    A DataLoader worker re-raises its error as ``Caught DataError in DataLoader worker process N.`` followed by
    the worker's traceback; the line that matters (e.g. the path of an image that fails to decode) is the last.
    """
    lines = [x for x in str(err).strip().splitlines() if x.strip()]
    if not lines:
        return type(err).__name__
    if len(lines) > 1 and lines[0].startswith("Caught ") and "DataLoader worker" in lines[0]:
        last = lines[-1].strip()
        for prefix in (f"{type(err).__module__}.{type(err).__qualname__}: ", f"{type(err).__qualname__}: "):
            if last.startswith(prefix):
                return last[len(prefix) :]
        return last
    return lines[0]


def _fmt(v: Any) -> str:
    return "–" if v is None else f"{v:.2f}"


def _print_empty_groups(train_counts: Any) -> None:
    """One line per empty shot group (shown as a dash in the tables) saying why it is empty."""
    from bce3s.eval.metrics import empty_group_reasons

    if not isinstance(train_counts, list) or not train_counts:
        return
    for name, reason in empty_group_reasons(train_counts).items():
        print(f"{name.capitalize()} –: {reason} (the group is empty)")


def _print_final(final: dict[str, Any], run_dir: Path) -> None:
    print(f"run directory: {run_dir}")
    print(f"{'checkpoint':<22}{'All':>8}{'Many':>8}{'Medium':>8}{'Few':>8}{'ECE':>8}")
    for name, m in final.get("test", {}).items():
        label = name.replace("_tta_flip", " (flip TTA)")
        ece = m.get("ece")
        print(
            f"{label:<22}{_fmt(m.get('top1')):>8}{_fmt(m.get('many')):>8}{_fmt(m.get('medium')):>8}"
            f"{_fmt(m.get('few')):>8}{_fmt(ece):>8}"
        )
    _print_empty_groups(final.get("train_counts"))
    sel = final.get("selection", {}).get("best_val") or {}
    if sel.get("metric"):
        print(
            f"best_val: {sel['stage']} epoch {sel['epoch'] + 1} (val {sel['metric']} {sel['value']:.2f}); "
            "test split used only for these rows"
        )


def _run_train_counts(run_dir: Path) -> list[int] | None:
    """The training counts of a run (``data.json``, else ``final.json``), or None when neither has them."""
    import json

    for name in ("data.json", "final.json"):
        try:
            counts = json.loads((run_dir / name).read_text()).get("train_counts")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(counts, list) and counts:
            return counts
    return None


def _cmd_eval(args: argparse.Namespace) -> int:
    from bce3s.engine.evaluate import evaluate_run

    res = evaluate_run(
        args.run_dir,
        split=args.split,
        checkpoint=args.checkpoint,
        tta=args.tta,
        device=args.device,
        geometry=not args.no_geometry,
        save_features=args.save_features,
    )
    m = res["metrics"]
    print(f"{args.run_dir}: {args.split} split, checkpoint {args.checkpoint}, TTA {args.tta}")
    print(
        f"top1 {_fmt(m.get('top1'))}  mean per class {_fmt(m.get('mean_per_class'))}  many {_fmt(m.get('many'))}  "
        f"medium {_fmt(m.get('medium'))}  few {_fmt(m.get('few'))}  ECE {_fmt(m.get('ece'))}"
    )
    _print_empty_groups(_run_train_counts(Path(args.run_dir)))
    g = res.get("geometry")
    if g:
        from bce3s.eval.geometry import GEOMETRY_MEANINGS

        print("geometry (mean over all classes):")
        for key in ("compactness", "feature_separability", "classifier_separability"):
            v = g.get("summary", {}).get(key, {}).get("all", {}).get("mean")
            value = "–" if v is None else f"{v:.3f}"
            print(f"  {key.replace('_', ' '):<25}{value:>7}  ({GEOMETRY_MEANINGS[key]})")
    suffix = "_tta_flip" if args.tta == "flip" else ""
    print(f"written: {Path(args.run_dir) / f'eval_{args.split}_{args.checkpoint}{suffix}.json'}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from bce3s.inference import collect_inputs, load_run_model, predict_files, write_predictions
    from bce3s.inference.predict import output_format

    output_format(args.out)  # a bad --out fails before the model loads
    rm = load_run_model(args.run_dir, args.checkpoint, args.device)
    files = collect_inputs(args.inputs)
    bar = None
    if not args.quiet and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=len(files), desc="predict", unit="img", leave=False, dynamic_ncols=True)
    try:
        result = predict_files(
            rm, files, top_k=args.top_k, batch_size=args.batch_size, progress=bar.update if bar else None
        )
    finally:
        if bar is not None:
            bar.close()
    text = write_predictions(result, args.out, args.top_k)
    if args.out is None:
        print(text, end="")
    for row in result.failed:
        print(f"bce3s: {row.path}: {row.error}", file=sys.stderr)
    kind = result.probability + (" with post-hoc logit adjustment" if result.logit_adjusted else "")
    done = len(result.rows) - len(result.failed)
    where = f" -> {args.out}" if args.out else ""
    print(f"predicted {done} of {len(result.rows)} files ({kind} probabilities, checkpoint {result.checkpoint}){where}",
          file=sys.stderr)
    return 1 if result.failed else 0


def _cmd_export(args: argparse.Namespace) -> int:
    from bce3s.inference import export_model, load_run_model

    rm = load_run_model(args.run_dir, args.checkpoint, "cpu")
    out = export_model(rm, args.format, args.out, input_size=args.input_size)
    print(f"exported {args.format}: {out} (input uint8 (N, {rm.in_channels}, H, W); logits (N, {rm.num_classes}); "
          f"probabilities: {rm.probability})")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from bce3s.report.writer import write_report

    dirs = [Path(d) for d in args.run_dirs]
    out = Path(args.out) if args.out else (dirs[0] if len(dirs) == 1 else dirs[0].parent / "report")
    html, md = write_report(dirs, out)
    print(f"report: {html}")
    print(f"markdown: {md}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from bce3s.report.compare import compare_runs, format_csv, format_markdown

    rows = compare_runs([Path(d) for d in args.run_dirs])
    text = format_markdown(rows) if args.format == "md" else format_csv(rows)
    print(text)
    if args.out:
        from bce3s.rundir import RunDir

        RunDir(Path(args.out).parent).write_text(Path(args.out), text)
    return 0


def _expand_configs(configs: list[str]) -> list[str]:
    """Config arguments with any wildcard the shell left alone (``configs/x/ablation/*.yaml`` outside a checkout)
    expanded, in the current directory or else inside the installed package, sorted."""
    import glob

    out = []
    for arg in configs:
        if not glob.has_magic(arg) or Path(arg).is_file():
            out.append(arg)
            continue
        found = sorted(glob.glob(arg))
        packaged = _in_package(arg)
        if not found and packaged is not None:
            found = [f"configs/{Path(p).relative_to(PACKAGE_CONFIGS).as_posix()}"
                     for p in sorted(glob.glob(str(packaged)))]
        if not found:
            raise ConfigError(f"no config file matches {arg}")
        out += found
    return out


def _sweep_labels(configs: list[str]) -> list[str]:
    """The folder name of each config in a sweep: its file stem, with parent folders in front while two clash."""
    paths = [Path(c) for c in configs]
    resolved = [str(Path(_config_path(c)).resolve()) for c in configs]
    if len(set(resolved)) < len(resolved):
        dup = next(c for c, r in zip(configs, resolved) if resolved.count(r) > 1)
        raise ConfigError(f"sweep: config {dup} is given twice")
    depth = 1
    while True:
        labels = ["_".join(p.with_suffix("").parts[-depth:]) for p in paths]
        if len(set(labels)) == len(labels):
            return labels
        if depth > max(len(p.parts) for p in paths):
            raise ConfigError("sweep: two configs have the same name and folders; give distinct files")
        depth += 1


def _sweep_plan(args: argparse.Namespace, parent: Path) -> list[dict[str, Any]]:
    """Every (config, seed) of a sweep, checked: its resolved config, run directory and what to do with it.

    ``action`` is ``train`` (new or ``--overwrite``), ``resume`` (an unfinished run of this config) or ``skip``
    (a finished run of this config). A run directory that holds another config's run stops the sweep before
    any training, unless ``--overwrite``.
    """
    from bce3s.config import load_config
    from bce3s.engine.validate import validate_config
    from bce3s.rundir import RunDir

    base = [*args.overrides] + ([f"runtime.device={args.device}"] if args.device else [])
    plan = []
    for config, label in zip(args.configs, _sweep_labels(args.configs)):
        path = _config_path(config)
        for seed in args.seeds:
            cfg = load_config(path, [*base, f"runtime.seed={seed}"])
            validate_config(cfg)
            out = parent / label / f"seed{seed}"
            rd = RunDir(out)
            action = "train"
            if not args.overwrite and out.exists():
                if rd.is_run() and not _same_run_config(out, cfg):
                    raise ConfigError(
                        f"{out} holds a run of another config or settings; pass --overwrite to replace it, or "
                        "choose another --out"
                    )
                if rd.is_run():
                    action = "skip" if (out / "final.json").is_file() else "resume"
            plan.append({"config": config, "path": path, "label": label, "seed": seed, "out": out,
                         "action": action})
    return plan


def _sweep_command(item: dict[str, Any], args: argparse.Namespace) -> list[str]:
    cmd = [sys.executable, "-m", "bce3s", "train", item["path"], "--out", str(item["out"]),
           "--seed", str(item["seed"]), "--quiet"]
    cmd += [x for o in args.overrides for x in ("--set", o)]
    if args.device:
        cmd += ["--device", args.device]
    cmd.append("--overwrite" if args.overwrite else "--auto-resume")
    return cmd


def _last_line(path: Path) -> str:
    try:
        lines = [x for x in path.read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""


def _run_processes(
    items: list[Any],
    jobs: int,
    start: Callable[[Any], tuple[subprocess.Popen, Any]],
    finish: Callable[[Any, subprocess.Popen, Any, float], None],
) -> None:
    """Run one process per item, ``jobs`` at a time, in order.

    ``start(item)`` launches the item's process and returns it with the file it writes to; ``finish(item, process,
    file, seconds)`` is called when it has exited, and the file is closed after it. On Ctrl-C the runs still going
    (they got the same SIGINT and save their checkpoints) are waited for.
    """
    import time

    pending = list(items)
    active: list[tuple[Any, subprocess.Popen, Any, float]] = []
    try:
        while pending or active:
            while pending and len(active) < jobs:
                item = pending.pop(0)
                proc, handle = start(item)
                active.append((item, proc, handle, time.monotonic()))
            finished = next((a for a in active if a[1].poll() is not None), None)
            if finished is None:
                time.sleep(0.2)
                continue
            active.remove(finished)
            item, proc, handle, began = finished
            try:
                finish(item, proc, handle, time.monotonic() - began)
            finally:
                handle.close()
    except KeyboardInterrupt:
        for _, proc, handle, _ in active:
            proc.wait()
            handle.close()
        raise


def _run_sweep_jobs(todo: list[dict[str, Any]], args: argparse.Namespace, logs: Path) -> list[dict[str, Any]]:
    """Train the sweep's runs, ``args.jobs`` processes at a time, each logging to ``logs``; the failed items."""
    failed: list[dict[str, Any]] = []
    done = [0]

    def start(item: dict[str, Any]) -> tuple[subprocess.Popen, Any]:
        log_path = logs / item["label"] / f"seed{item['seed']}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        item["log"] = log_path
        handle = log_path.open("w")
        cmd = _sweep_command(item, args)
        log.info("%s seed %d: %s", item["label"], item["seed"], " ".join(cmd))
        return subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT), handle

    def finish(item: dict[str, Any], proc: subprocess.Popen, handle: Any, took: float) -> None:
        handle.close()  # before its last line is read back
        done[0] += 1
        status = "done" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})"
        line = f"[{done[0]}/{len(todo)}] {item['label']} seed {item['seed']}: {status} in {took:.0f} s"
        if proc.returncode != 0:
            failed.append(item)
            line += f": {_last_line(item['log'])} (log: {item['log']})"
        print(line, flush=True)

    _run_processes(todo, args.jobs, start, finish)
    return failed


def _cmd_sweep(args: argparse.Namespace) -> int:
    import json

    from bce3s.report.compare import aggregate_groups, format_groups_markdown

    if args.jobs < 1:
        raise ConfigError("--jobs: must be >= 1")
    if len(set(args.seeds)) < len(args.seeds):
        raise ConfigError("--seeds: a seed is given twice")
    args.configs = _expand_configs(args.configs)
    if args.out:
        parent = Path(args.out)
    elif len(args.configs) == 1:
        parent = Path(f"{_default_out(args.configs[0])}_sweep")
    else:
        parent = Path("runs") / "sweep"
    plan = _sweep_plan(args, parent)  # every (config, seed) checked before any training starts
    todo = [item for item in plan if item["action"] != "skip"]
    skipped = len(plan) - len(todo)
    print(
        f"sweep: {len(args.configs)} config(s) x {len(args.seeds)} seed(s) = {len(plan)} runs in {parent}; "
        f"{skipped} finished already (skipped), {sum(i['action'] == 'resume' for i in todo)} to resume",
        flush=True,
    )
    logs = parent / "logs"
    failed = _run_sweep_jobs(todo, args, logs)
    groups: dict[str, list[dict[str, Any]]] = {}
    for item in plan:
        runs = groups.setdefault(item["label"], [])
        try:
            final = json.loads((item["out"] / "final.json").read_text())
        except (OSError, ValueError):
            continue
        if isinstance(final, dict) and isinstance(final.get("test"), dict):
            runs.append(final["test"])
    text = format_groups_markdown(aggregate_groups(groups))
    seeds = " ".join(map(str, args.seeds))
    sets = "".join(f" --set {o}" for o in args.overrides)
    header = f"Sweep of {len(args.configs)} config(s) over seeds {seeds}{sets}; runs in {parent}/<config>/seed<S>.\n\n"
    if failed:
        text += "\nFailed runs (left out of the means): " + ", ".join(
            f"{i['label']} seed {i['seed']}" for i in failed) + "\n"
    parent.mkdir(parents=True, exist_ok=True)
    (parent / "compare.md").write_text(header + text)
    print(text, end="")
    print(f"table: {parent / 'compare.md'}")
    if failed:
        print(
            f"bce3s: error: {len(failed)} of {len(plan)} runs failed; their logs are under {logs}",
            file=sys.stderr,
        )
        return 1
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    from bce3s.config import dump_config, load_config
    from bce3s.engine.validate import validate_config

    cfg = load_config(_config_path(args.config), list(args.overrides))
    validate_config(cfg)
    print(dump_config(cfg), end="")
    return 0


DEMO_RUNS = (("CE", "ce"), ("BCE3S", "bce3s"))
"""(label, name) of the demo's methods: ``configs/digits_lt/<name>.yaml``, trained into ``OUT/<name>/seed<N>``."""


def check_demo_out(out: Path, cfg: Any) -> None:
    """Refuse to let the demo replace ``out`` unless it is empty or holds the demo's own run (``cfg``).

    The demo's runs are replaced on every demo (``make demo`` twice works); a run of another config, a damaged
    run or a folder of other files is the user's and is kept: the demo then needs ``--overwrite``.

    Raises:
        RunDirError: ``out`` holds something that is not a run of ``cfg``.
    """
    from bce3s.errors import RunDirError
    from bce3s.rundir import RunDir

    rd = RunDir(out)
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    if not rd.is_run():
        raise RunDirError(
            f"{out} exists and is not a run of the demo; pass --overwrite to write the demo there anyway, or choose "
            "another --out"
        )
    if not _same_run_config(out, cfg):
        raise RunDirError(
            f"{out} holds a run that is not the demo's (another config); pass --overwrite to replace it, or choose "
            "another --out"
        )


def demo_run_dir(parent: Path, name: str, seed: int) -> Path:
    """Where ``bce3s demo --out PARENT`` trains method ``name`` (``ce`` / ``bce3s``) with ``seed``."""
    return parent / name / f"seed{seed}"


def _demo_parallel(parent: Path, todo: list[tuple[str, str, int]], sets: dict[tuple[str, int], list[str]],
                   jobs: int) -> None:
    """Train the demo's runs as ``jobs`` parallel ``bce3s train`` processes; one line per finished run."""
    import tempfile

    failed: list[str] = []

    def start(item: tuple[str, str, int]) -> tuple[subprocess.Popen, Any]:
        _, name, seed = item
        cmd = [sys.executable, "-m", "bce3s", "train", str(PACKAGE_CONFIGS / "digits_lt" / f"{name}.yaml"),
               "--out", str(demo_run_dir(parent, name, seed)), "--overwrite", "--quiet"]
        cmd += [x for o in sets[name, seed] for x in ("--set", o)]
        log_file = tempfile.TemporaryFile("w+")  # stderr in a file: a full pipe would block the run
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log_file, text=True), log_file

    def finish(item: tuple[str, str, int], proc: subprocess.Popen, log_file: Any, took: float) -> None:
        label, name, seed = item
        if proc.returncode:
            log_file.seek(0)
            err = log_file.read().strip()
            last = err.splitlines()[-1] if err else f"exit code {proc.returncode}"
            failed.append(f"{label} seed {seed}: {last}")
        else:
            print(f"trained {label}, seed {seed} -> {demo_run_dir(parent, name, seed)} ({took:.0f} s)", flush=True)

    print(f"training {len(todo)} runs, {jobs} at a time, into {parent}", flush=True)
    _run_processes(todo, jobs, start, finish)
    if failed:
        raise BCE3SError("demo runs failed: " + "; ".join(failed))


def _cmd_demo(args: argparse.Namespace) -> int:
    import time

    from bce3s.config import load_config
    from bce3s.engine.run import train
    from bce3s.engine.validate import validate_config
    from bce3s.report.rundata import load_run
    from bce3s.report.summary import summarize_methods, summary_text
    from bce3s.report.writer import write_report

    parent = Path(args.out)
    seeds = list(dict.fromkeys(args.seeds))
    jobs = args.jobs
    if jobs < 1:
        raise ConfigError("--jobs: must be >= 1")
    cfgs, sets = {}, {}
    for _, name in DEMO_RUNS:  # look at every run directory before training any
        for seed in seeds:
            # one thread per run: the numbers do not depend on the machine's core count or on --jobs
            sets[name, seed] = [f"runtime.device={args.device}", f"runtime.seed={seed}", "runtime.threads=1"]
            cfg = load_config(PACKAGE_CONFIGS / "digits_lt" / f"{name}.yaml", sets[name, seed])
            validate_config(cfg)
            if not args.overwrite:
                check_demo_out(demo_run_dir(parent, name, seed), cfg)
            cfgs[name, seed] = cfg
    if not args.quiet:  # one line per run instead of one per epoch
        logging.getLogger("bce3s.engine").setLevel(logging.WARNING)
        logging.getLogger("bce3s.data").setLevel(logging.WARNING)
    start = time.perf_counter()
    todo = [(label, name, seed) for seed in seeds for label, name in DEMO_RUNS]
    if jobs == 1:
        for label, name, seed in todo:
            out = demo_run_dir(parent, name, seed)
            print(f"training {label}, seed {seed} -> {out}", end="", flush=True)
            t0 = time.perf_counter()
            train(cfgs[name, seed], out, overwrite=True, quiet=args.quiet,
                  config_path=f"configs/digits_lt/{name}.yaml", command=sys.argv)
            print(f" ({time.perf_counter() - t0:.0f} s)", flush=True)
    else:
        _demo_parallel(parent, todo, sets, jobs)
    groups = [(label, [load_run(demo_run_dir(parent, name, s)) for s in seeds]) for label, name in DEMO_RUNS]
    methods = summarize_methods(groups)
    first = groups[0][1][0]
    print()
    print(f"Digits-LT test accuracy (%), mean ± std over seeds {', '.join(map(str, seeds))}. CE: softmax CE, then a "
          "class-balanced CE stage 2; BCE3S: BCE3S, then a class-balanced BCE stage 2; same data, seeds and epochs. "
          "best_val is chosen on the validation split.")
    print(summary_text(methods, first.train_counts, first.test_counts))
    print("8x8 digits, a small CNN and 40 epochs do not test the paper's claim (long-tailed CIFAR/ImageNet with "
          "ResNets); docs/results.md has what was measured at scale.")
    html, _ = write_report([runs[0].path for _, runs in groups], parent / "report",
                           seed_runs=[r.path for _, runs in groups for r in runs[1:]],
                           title=f"bce3s demo: CE vs BCE3S on Digits-LT, seeds {', '.join(map(str, seeds))}")
    print()
    print(f"runs: {parent}/{{{','.join(n for _, n in DEMO_RUNS)}}}/seed{{{','.join(map(str, seeds))}}} "
          f"(trained in {time.perf_counter() - start:.0f} s)")
    print(f"report: {html}")
    return 0


COMMANDS = {
    "train": _cmd_train,
    "eval": _cmd_eval,
    "predict": _cmd_predict,
    "export": _cmd_export,
    "report": _cmd_report,
    "compare": _cmd_compare,
    "sweep": _cmd_sweep,
    "demo": _cmd_demo,
    "config": _cmd_config,
}


def _setup_logging(quiet: bool) -> None:
    rank = int(os.environ.get("RANK", "0"))
    level = logging.WARNING if (quiet or rank != 0) else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``bce3s`` and ``python -m bce3s``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    _setup_logging(args.quiet)
    try:
        return COMMANDS[args.command](args)
    except BCE3SError as err:
        if args.debug:
            raise
        print(f"bce3s: error: {_one_line(err)}", file=sys.stderr)
        return int(getattr(err, "exit_code", 2))
    except KeyboardInterrupt:
        hint = ""
        out = getattr(args, "out", None)
        if args.command == "train" and out and (Path(out) / "checkpoints" / "last.pt").is_file():
            hint = f"; resume with: {program_name()} train --resume --out {out}"
        elif args.command == "sweep":
            hint = "; run the same command again to resume (finished runs are skipped)"
        print(f"bce3s: interrupted{hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
