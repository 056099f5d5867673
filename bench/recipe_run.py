"""Train the CIFAR-10-LT (IF 100) BCE3S recipe and its CE baseline (each with its own stage 2) side by side.

Used by ``bench/device_check.sh``. Both runs use the CIFAR-10 JPEG copy (an ImageFolder tree) made long-tailed
at IF 100, ResNet-32, the GPU-resident pipeline, the same seed and the same epochs, and run as two concurrent
processes. With ``--budget-s`` a 2-epoch probe measures the time of a BCE3S epoch first, and stage 1 is
shortened (never lengthened) so that both runs fit the budget; the table then says so and gives the projected
wall time of the paper's 320 + 10 epochs. Usage::

    python bench/recipe_run.py --data-root /tmp/data/cifar10-jpeg --out runs/device            # paper epochs
    python bench/recipe_run.py --data-root ROOT --out OUT --budget-s 360                        # fit a budget
    python bench/recipe_run.py --data-root ROOT --out OUT --smoke                               # CPU smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

RUNS = (
    ("BCE3S + CB-BCE stage 2", "bce3s", "configs/cifar10_lt/bce3s_r32.yaml"),
    ("CE + CB-softmax stage 2", "ce", "configs/cifar10_lt/ce_r32.yaml"),
)


def _cmd(config: str, out: Path, sets: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "bce3s", "train", config, "--out", str(out), "--overwrite", "--quiet"]
    for s in sets:
        cmd += ["--set", s]
    return cmd


def _history(run: Path) -> list[dict]:
    p = run / "metrics.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines()] if p.is_file() else []


def _fmt(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", required=True, help="ImageFolder tree with train/ and test/ (the JPEG copy)")
    ap.add_argument("--out", required=True, help="parent directory of the runs")
    ap.add_argument("--budget-s", type=float, default=None, help="wall-time budget for both runs (probe first)")
    ap.add_argument("--epochs1", type=int, default=None, help="stage-1 epochs (default: the config's, 320)")
    ap.add_argument("--epochs2", type=int, default=None, help="stage-2 epochs (default: the config's, 10)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="extra overrides for both runs")
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
    paper1, paper2 = 320, 10
    e1 = args.epochs1 or paper1
    e2 = args.epochs2 or paper2
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    t_epoch = None
    if args.budget_s and not args.smoke:
        probe = out / "probe"
        t0 = time.time()
        subprocess.run(_cmd(RUNS[0][2], probe, [*base, "stages.0.epochs=2", "stages.1.epochs=1"]), env=env, check=True)
        probe_wall = time.time() - t0
        hist = _history(probe)
        t_epoch = hist[1]["time_s"] if len(hist) > 1 else probe_wall / 3
        t_epoch2 = hist[2]["time_s"] if len(hist) > 2 else t_epoch
        fixed = max(probe_wall - sum(h["time_s"] for h in hist), 0.0)  # start-up, data, evaluation
        remaining = args.budget_s - probe_wall
        slow = 1.35  # two concurrent processes on one GPU
        fit = int((remaining - 1.5 * fixed - e2 * t_epoch2 * slow) / (t_epoch * slow))
        e1 = max(1, min(e1, fit))
        print(
            f"probe: BCE3S stage-1 epoch {t_epoch:.2f} s, stage-2 epoch {t_epoch2:.2f} s, fixed {fixed:.0f} s; "
            f"budget {args.budget_s:.0f} s -> stage-1 epochs {e1} (paper {paper1})",
            flush=True,
        )
    sets = [*base, f"stages.0.epochs={e1}", f"stages.1.epochs={e2}"]
    procs = []
    t0 = time.time()
    for _, name, config in RUNS:
        log = open(out / f"{name}.log", "w")  # noqa: SIM115 - closed after the process ends
        procs.append((name, subprocess.Popen(_cmd(config, out / name, sets), env=env, stdout=log, stderr=log), log))
    ends = {}
    for name, proc, log in procs:
        rc = proc.wait()
        ends[name] = (rc, time.time() - t0)
        log.close()
    print()
    print(
        f"CIFAR-10-LT (JPEG copy) IF 100, ResNet-32, seed 0, stage-1 epochs {e1} (paper {paper1}), stage-2 "
        f"epochs {e2}; both runs concurrently on one device; test accuracy (%)"
    )
    hdr = f"{'run':<26}{'wall s':>8}{'img/s':>8}  {'checkpoint':<18}{'All':>7}{'Many':>7}{'Med':>7}{'Few':>7}"
    print(hdr)
    summary = {"epochs1": e1, "epochs2": e2, "paper_epochs": [paper1, paper2], "runs": {}}
    for label, name, _ in RUNS:
        rc, wall = ends[name]
        run = out / name
        hist = _history(run)
        s1 = [h for h in hist if h["stage"] == "stage1"]
        ips = sum(h["images_per_s"] or 0 for h in s1) / max(len(s1), 1)
        final = json.loads((run / "final.json").read_text()) if (run / "final.json").is_file() else None
        summary["runs"][name] = {
            "rc": rc,
            "wall_s": wall,
            "stage1_images_per_s": ips,
            "final_test": final and final["test"],
        }
        if final is None:
            print(f"{label:<26}{wall:>8.0f}{ips:>8.0f}  failed (exit {rc}); see {out / (name + '.log')}")
            continue
        for ck in ("last", "best_val", "last_tta_flip", "best_val_tta_flip"):
            m = final["test"].get(ck)
            if m is None:
                continue
            print(
                f"{label if ck == 'last' else '':<26}{(f'{wall:.0f}' if ck == 'last' else ''):>8}"
                f"{(f'{ips:.0f}' if ck == 'last' else ''):>8}  {ck:<18}{_fmt(m['top1']):>7}{_fmt(m['many']):>7}"
                f"{_fmt(m['medium']):>7}{_fmt(m['few']):>7}"
            )
        if s1 and e1 < paper1:
            per1 = sum(h["time_s"] for h in s1) / len(s1)
            s2 = [h for h in hist if h["stage"] == "stage2"]
            per2 = sum(h["time_s"] for h in s2) / max(len(s2), 1)
            proj = wall + (paper1 - e1) * per1 + (paper2 - e2) * per2
            summary["runs"][name]["projected_paper_wall_s"] = proj
            print(
                f"{'':<26}projected wall time of the paper's {paper1} + {paper2} epochs (concurrent): "
                f"{proj / 60:.1f} min"
            )
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return 0 if all(rc == 0 for rc, _ in ends.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
