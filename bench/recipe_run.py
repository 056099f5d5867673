"""Train the CIFAR-10-LT (IF 100) BCE3S recipe and its CE baseline (each with its own stage 2) over seeds.

Used by ``bench/device_check.sh``. Every run uses the CIFAR-10 JPEG copy (an ImageFolder tree) made long-tailed at
IF 100, ResNet-32, the GPU-resident pipeline and the run's default step (``runtime.step: auto``: a CUDA graph on
one GPU). The runs (2 methods x the seeds) go ``--parallel`` at a time as separate processes sharing the device.

With ``--budget-s`` short probes (2 + 1 epochs) measure the epoch time first: of every run at once, and, when
those do not all fit, of the BCE3S seed-0 run alone; the epoch time of k concurrent runs is interpolated between
the two. What gives way when the paper's 320 + 10 epochs do not fit for every run is ``--fit``:

- ``runs`` (default): keep the paper's schedule and drop runs from the end of the order BCE3S seed 0, CE seed 0,
  BCE3S seed 1, CE seed 1, ... (pairs, so both methods keep the same seeds; BCE3S seed 0 alone as the last
  resort). A full-schedule number is worth more than several shortened ones. If not even one run fits, it falls
  back to ``epochs``;
- ``epochs``: keep every run and shorten stage 1 (never lengthen it) to the longest that fits.

If every run of the first probe fails and no ``runtime.step`` was set, the probe is repeated with
``runtime.step=eager`` (the reference step) and the runs use it: a captured step that cannot run on this machine
costs speed, not the numbers. The table then says what was dropped or by how much the schedule was short, and
gives the projected wall time of the full schedule. It gives mean ± std over the seeds of test accuracy for
``last`` and ``best_val`` (no TTA; TTA rows apart), the wall time per run and the runs per device-minute. Usage::

    python bench/recipe_run.py --data-root /tmp/data/cifar10-jpeg --out runs/device           # paper epochs
    python bench/recipe_run.py --data-root ROOT --out OUT --budget-s 480                       # fit a budget
    python bench/recipe_run.py --data-root ROOT --out OUT --budget-s 480 --fit epochs          # all seeds, cut
    python bench/recipe_run.py --data-root ROOT --out OUT --smoke                              # CPU smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

METHODS = (
    ("BCE3S + CB-BCE stage 2", "bce3s", "configs/cifar10_lt/bce3s_r32.yaml"),
    ("CE + CB-softmax stage 2", "ce", "configs/cifar10_lt/ce_r32.yaml"),
)
#: Published CIFAR-10-LT IF 100 top-1 (ResNet-32, 320 + 10 epochs) to compare with: the BCE3S paper and GLMC.
PAPER = {"BCE3S (paper)": 90.08, "GLMC (paper)": 89.58}
PAPER_EPOCHS = (320, 10)
GROUPS = (("All", "top1"), ("Many", "many"), ("Med", "medium"), ("Few", "few"))


def _cmd(config: str, out: Path, sets: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "bce3s", "train", config, "--out", str(out), "--overwrite", "--quiet"]
    for s in sets:
        cmd += ["--set", s]
    return cmd


def _history(run: Path) -> list[dict]:
    p = run / "metrics.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines()] if p.is_file() else []


def _run_all(jobs: list[tuple[str, list[str]]], out: Path, parallel: int) -> dict[str, tuple[int, float]]:
    """Run ``(name, command)`` jobs, ``parallel`` at a time; name -> (exit code, wall seconds)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    pending, active, ends = list(jobs), [], {}
    while pending or active:
        while pending and len(active) < parallel:
            name, cmd = pending.pop(0)
            log = open(out / f"{name}.log", "w")  # noqa: SIM115 - closed when the process ends
            active.append((name, subprocess.Popen(cmd, env=env, stdout=log, stderr=log), log, time.time()))
        time.sleep(0.2)
        for item in list(active):
            name, proc, log, t0 = item
            if proc.poll() is not None:
                log.close()
                ends[name] = (proc.returncode, time.time() - t0)
                active.remove(item)
    return ends


def _mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def _log_tail(path: Path, lines: int = 6) -> str:
    text = path.read_text(errors="replace").strip().splitlines() if path.is_file() else []
    return "\n".join("    " + line for line in text[-lines:])


def _probe(base: list[str], runs: list[tuple[str, str, int]], out: Path, name: str = "probe") -> Probe | None:
    """Train 2 + 1 epochs of ``runs`` ((name, config, seed) each) all at once: the epoch times under that load.

    Returns None when every probe run failed (their log tails are printed).
    """
    probe = out / name
    probe.mkdir(parents=True, exist_ok=True)
    jobs = [
        (
            f"{name}_seed{seed}",
            _cmd(
                config,
                probe / f"{name}_seed{seed}",
                [*base, f"runtime.seed={seed}", "stages.0.epochs=2", "stages.1.epochs=1"],
            ),
        )
        for name, config, seed in runs
    ]
    ends = _run_all(jobs, probe, len(jobs))
    t1, t2, fixed = [], [], []
    for name, (rc, wall) in ends.items():
        hist = _history(probe / name)
        log = probe / f"{name}.log"
        if log.is_file() and "CUDA graph failed" in log.read_text(errors="replace"):
            print(f"probe {name}: the CUDA graph capture failed, the run stepped eagerly:\n{_log_tail(log, 3)}")
        if len(hist) < 3:
            print(f"probe {name} failed (exit {rc}); end of {log}:\n{_log_tail(log)}", flush=True)
            continue
        t1.append(hist[1]["time_s"])  # the second epoch: no warm-up or capture
        t2.append(hist[2]["time_s"])
        fixed.append(max(wall - sum(h["time_s"] for h in hist), 0.0))
    if not t1:
        return None
    return Probe(max(t1), max(t2), max(fixed))


class Probe(NamedTuple):
    """Seconds per stage-1 epoch, per stage-2 epoch, and fixed per run (start, data, evaluation), under a load."""

    epoch1: float
    epoch2: float
    fixed: float

    def run_s(self, e1: int, e2: int) -> float:
        """Wall seconds of one run of ``e1`` + ``e2`` epochs."""
        return self.fixed + e1 * self.epoch1 + e2 * self.epoch2


def interpolate(alone: Probe, together: Probe, runs: int, k: int) -> Probe:
    """The probe of ``k`` concurrent runs, linear between one run alone and ``runs`` runs together."""
    if runs <= 1:
        return together
    w = (k - 1) / (runs - 1)
    return Probe(*(a + w * (b - a) for a, b in zip(alone, together)))


def run_counts(runs: int) -> list[int]:
    """The run counts ``--fit runs`` may keep, most first: every run, then pairs fewer, then one."""
    counts = list(range(runs, 1, -2)) if runs % 2 == 0 else [runs, *range(runs - 1, 1, -2)]
    return [*counts, 1] if runs > 1 else counts


def plan(
    remaining_s: float, runs: int, together: Probe, alone: Probe | None, e1: int, e2: int, fit: str
) -> tuple[int, int, str]:
    """How many runs (from the front of the order) and how many stage-1 epochs fit ``remaining_s`` seconds.

    Returns:
        (runs kept, stage-1 epochs, a sentence saying what was given up, empty when nothing was).
    """
    if together.run_s(e1, e2) <= remaining_s:
        return runs, e1, ""
    if fit == "runs" and alone is not None:
        for k in run_counts(runs)[1:]:
            need = interpolate(alone, together, runs, k).run_s(e1, e2)
            if need <= remaining_s:
                said = f"the full schedule fits {k} of {runs} runs at once ({need:.0f} s of {remaining_s:.0f} s left)"
                return k, e1, f"{said}; the other {runs - k} are not run"
    need = together.run_s(e1, e2)
    cut = max(1, int((remaining_s - together.fixed - e2 * together.epoch2) / together.epoch1))
    return (
        runs,
        min(cut, e1),
        (
            f"the full schedule does not fit: short by {need - remaining_s:.0f} s ({need / remaining_s:.2f}x); "
            f"stage 1 cut to {min(cut, e1)} of {e1} epochs"
        ),
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", required=True, help="ImageFolder tree with train/ and test/ (the JPEG copy)")
    ap.add_argument("--out", required=True, help="parent directory of the runs")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--parallel", type=int, default=None, help="runs at once on the device (default: all)")
    ap.add_argument("--budget-s", type=float, default=None, help="wall-time budget for all runs (probe first)")
    ap.add_argument(
        "--fit",
        choices=("runs", "epochs"),
        default="runs",
        help="--budget-s: keep the paper's epochs and drop runs (runs), or keep every run and cut stage 1 (epochs)",
    )
    ap.add_argument("--epochs1", type=int, default=None, help="stage-1 epochs (default: the config's, 320)")
    ap.add_argument("--epochs2", type=int, default=None, help="stage-2 epochs (default: the config's, 10)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="extra overrides for every run")
    ap.add_argument("--smoke", action="store_true", help="tiny CPU run (1 + 1 epochs, small batch) for tests")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = [
        "data.dataset=imagefolder_lt",
        f"data.root={args.data_root}",
        "data.imbalance_factor=100",
        f"runtime.device={args.device}",
        "eval.tta_flip=true",
    ]
    if args.smoke:
        base += [
            "data.val_per_class=2",
            "stages.0.batch_size=16",
            "stages.1.batch_size=16",
            "data.imbalance_factor=5",
            "eval.batch_size=64",
            "runtime.threads=1",
        ]
        args.epochs1, args.epochs2 = 1, 1
    else:
        base += ["data.val_per_class=50"]
    base += args.sets  # last, so they win
    runs = len(METHODS) * len(args.seeds)
    parallel = max(1, min(args.parallel or runs, runs))
    e1 = args.epochs1 or PAPER_EPOCHS[0]
    e2 = args.epochs2 or PAPER_EPOCHS[1]
    t_start = time.time()
    order = [(name, config, seed) for seed in args.seeds for _, name, config in METHODS]  # pairs, seed by seed
    probes: dict[str, dict] = {}  # what the probes measured: how runs sharing the device slow each other
    if args.budget_s and not args.smoke:
        if args.parallel is not None:
            raise SystemExit("recipe_run.py: --budget-s runs the chosen runs all at once; drop --parallel")
        together = _probe(base, order, out)
        if together is None and not any(s.startswith("runtime.step=") for s in base):
            print("every probe run failed with the default step; probing again with runtime.step=eager", flush=True)
            base.append("runtime.step=eager")
            together = _probe(base, order, out / "eager")
        if together is None:
            raise SystemExit(f"probe failed; see the logs under {out / 'probe'}")
        remaining = args.budget_s - (time.time() - t_start)
        print(
            f"probe ({runs} runs at once): stage-1 epoch {together.epoch1:.2f} s, stage-2 epoch "
            f"{together.epoch2:.2f} s, fixed {together.fixed:.0f} s per run; {e1} + {e2} epochs need "
            f"{together.run_s(e1, e2):.0f} s, {remaining:.0f} s left",
            flush=True,
        )
        probes[f"{runs}_at_once"] = together._asdict()
        alone = None
        if together.run_s(e1, e2) > remaining and args.fit == "runs" and runs > 1:
            alone = _probe(base, order[:1], out, "probe_alone")
            remaining = args.budget_s - (time.time() - t_start)
        if alone is not None:
            probes["1_alone"] = alone._asdict()
            print(
                f"probe (1 run): stage-1 epoch {alone.epoch1:.2f} s, stage-2 epoch {alone.epoch2:.2f} s, fixed "
                f"{alone.fixed:.0f} s; {remaining:.0f} s left",
                flush=True,
            )
        kept, e1, given_up = plan(remaining, runs, together, alone, e1, e2, args.fit)
        if given_up:
            print(given_up, flush=True)
        order, runs, parallel = order[:kept], kept, kept
    step_mode = next((s.split("=", 1)[1] for s in reversed(base) if s.startswith("runtime.step=")), "auto")
    sets = [*base, f"stages.0.epochs={e1}", f"stages.1.epochs={e2}"]
    jobs = [
        (f"{name}_seed{seed}", _cmd(config, out / f"{name}_seed{seed}", [*sets, f"runtime.seed={seed}"]))
        for name, config, seed in order
    ]
    t0 = time.time()
    ends = _run_all(jobs, out, parallel)
    total = time.time() - t0
    seeds_of = {name: [seed for n, _, seed in order if n == name] for _, name, _ in METHODS}
    print()
    print(
        f"CIFAR-10-LT (JPEG copy) IF 100, ResNet-32, {runs} runs, stage-1 epochs {e1} "
        f"(paper {PAPER_EPOCHS[0]}), stage-2 epochs {e2}; runtime.step {step_mode}; {parallel} runs at once on one "
        "device; test accuracy "
        "(%), mean ± std over seeds"
    )
    print(f"{'run':<26}{'checkpoint':<20}" + "".join(f"{g:>16}" for g, _ in GROUPS) + f"{'wall s/run':>16}")
    summary: dict = {
        "epochs": [e1, e2],
        "paper_epochs": list(PAPER_EPOCHS),
        "seeds": args.seeds,
        "runs": [f"{name}_seed{seed}" for name, _, seed in order],
        "parallel": parallel,
        "step": step_mode,
        "probes": probes,
        "total_wall_s": total,
        "runs_per_device_minute": runs / (total / 60),
        "paper": PAPER,
        "methods": {},
    }
    ok = True
    for label, name, _ in METHODS:
        finals, walls = [], []
        if not seeds_of[name]:
            continue
        for seed in seeds_of[name]:
            rc, wall = ends[f"{name}_seed{seed}"]
            path = out / f"{name}_seed{seed}" / "final.json"
            if rc != 0 or not path.is_file():
                ok = False
                print(f"{label:<26}seed {seed} failed (exit {rc}); see {out / f'{name}_seed{seed}.log'}")
                continue
            finals.append(json.loads(path.read_text())["test"])
            walls.append(wall)
        rows = {}
        for ck in ("last", "best_val", "last_tta_flip", "best_val_tta_flip"):
            vals = {g: [f[ck][key] for f in finals if f.get(ck) and f[ck].get(key) is not None] for g, key in GROUPS}
            if not any(vals.values()):
                continue
            rows[ck] = {g: v for g, v in vals.items()}
            if ck == "last_tta_flip":
                print(f"{'':<26}(TTA: flip, reported apart)")
            wall = _mean_std(walls) if ck == "last" else ""
            print(
                f"{label if ck == 'last' else '':<26}{ck:<20}"
                + "".join(f"{_mean_std(v):>16}" for v in vals.values())
                + f"{wall:>16}"
            )
        s1 = [
            h["time_s"]
            for seed in seeds_of[name]
            for h in _history(out / f"{name}_seed{seed}")
            if h["stage"] == "stage1"
        ]
        per_epoch = statistics.mean(s1) if s1 else None
        summary["methods"][name] = {
            "label": label,
            "seeds": seeds_of[name],
            "test": rows,
            "wall_s": walls,
            "stage1_epoch_s": per_epoch,
        }
        if per_epoch is not None and e1 < PAPER_EPOCHS[0] and walls:
            proj = statistics.mean(walls) + (PAPER_EPOCHS[0] - e1) * per_epoch
            summary["methods"][name]["projected_paper_wall_s"] = proj
            print(
                f"{'':<26}projected wall time of {PAPER_EPOCHS[0]} + {PAPER_EPOCHS[1]} epochs under this load: "
                f"{proj / 60:.1f} min per run"
            )
    print("reference (paper, All, last): " + ", ".join(f"{k} {v:.2f}" for k, v in PAPER.items()))
    print(f"{runs} runs in {total:.0f} s: {summary['runs_per_device_minute']:.2f} runs per device-minute")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
