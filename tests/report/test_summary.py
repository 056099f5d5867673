"""Who won, by how much, how sure: the paired verdict over seeds, the summary table, the demo's printout and the
report's Summary section."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bce3s.report.document import Para, Table, render_md
from bce3s.report.rundata import load_run
from bce3s.report.summary import (
    group_definition,
    group_runs_by_config,
    paired_verdict,
    section_summary,
    summarize_methods,
    summary_table,
    t_975,
)

# --------------------------------------------------------------------------------------------------- the verdict


def _reference_interval(diffs: list[float]) -> tuple[float, float]:
    """95 % t-interval of the mean, written out independently (t quantiles from a printed table)."""
    t = {2: 12.7062, 3: 4.3027, 5: 2.7764}[len(diffs)]
    half = t * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return statistics.mean(diffs) - half, statistics.mean(diffs) + half


def test_t_quantiles_match_a_printed_table() -> None:
    for df, t in ((1, 12.7062), (2, 4.3027), (4, 2.7764), (10, 2.2281), (30, 2.0423)):
        assert t_975(df) == pytest.approx(t, abs=2e-3)
    assert t_975(1000) == pytest.approx(1.96)
    with pytest.raises(ValueError):
        t_975(0)


def test_a_consistent_lead_is_called_with_its_size_and_interval() -> None:
    ce = {0: 90.0, 1: 91.0, 2: 92.0}
    bce = {0: 93.0, 1: 93.5, 2: 95.5}  # differences 3.0, 2.5, 3.5
    v = paired_verdict(ce, bce, baseline_name="CE", other_name="BCE3S", metric="All (last)")
    diffs = [3.0, 2.5, 3.5]
    assert v.n == 3
    assert v.diff == pytest.approx(statistics.mean(diffs))
    assert v.std == pytest.approx(statistics.stdev(diffs))
    assert v.interval == pytest.approx(_reference_interval(diffs), abs=1e-3)
    assert v.winner == "BCE3S"
    # the other way round the same lead belongs to the same method
    w = paired_verdict(bce, ce, baseline_name="BCE3S", other_name="CE", metric="All (last)")
    assert w.winner == "BCE3S" and w.diff == pytest.approx(-3.0)


def test_a_noisy_difference_is_within_seed_noise() -> None:
    # the Few numbers: CE ahead on average, but the per-seed differences change sign
    ce = {0: 80.0, 1: 88.3, 2: 83.3}
    bce = {0: 75.0, 1: 85.0, 2: 75.0}
    v = paired_verdict(ce, bce, baseline_name="CE", other_name="BCE3S", metric="Few (last)")
    lo, hi = _reference_interval([-5.0, -3.3, -8.3])
    assert v.interval == pytest.approx((lo, hi), abs=1e-2)
    assert lo < 0 < hi
    assert v.winner is None
    assert v.diff_text().startswith("-5.53 ± ") and not v.diff_text().endswith("*")


def test_pairing_uses_only_common_seeds_and_one_seed_gives_no_verdict() -> None:
    v = paired_verdict({0: 90.0, 1: 91.0, 5: 50.0}, {0: 95.0, 1: 97.0, 7: 10.0}, baseline_name="A",
                       other_name="B", metric="All")
    assert v.n == 2 and v.diff == pytest.approx(5.5)
    assert v.interval == pytest.approx(_reference_interval([5.0, 6.0]), abs=1e-3)
    assert v.winner is None  # 12.7 * 0.707 / 1.414 = 6.35 > 5.5: two seeds are not enough here
    one = paired_verdict({0: 90.0}, {0: 99.0}, baseline_name="A", other_name="B", metric="All")
    assert (one.n, one.std, one.interval, one.winner) == (1, None, None, None)
    none = paired_verdict({0: 90.0}, {1: 99.0}, baseline_name="A", other_name="B", metric="All")
    assert (none.n, none.diff, none.winner) == (0, None, None)


def test_identical_results_are_no_difference_and_a_constant_gap_is_a_lead() -> None:
    same = paired_verdict({0: 100.0, 1: 100.0}, {0: 100.0, 1: 100.0}, baseline_name="A", other_name="B",
                          metric="Many")
    assert same.winner is None and same.interval == (0.0, 0.0)
    gap = paired_verdict({0: 90.0, 1: 80.0}, {0: 91.0, 1: 81.0}, baseline_name="A", other_name="B", metric="All")
    assert gap.winner == "B" and gap.std == 0.0


def test_group_definition_counts_the_classes_of_each_group() -> None:
    text = group_definition([134, 103, 80, 62, 48, 37, 28, 22, 17, 13], [30] * 10)
    assert "Many > 100 (2 classes)" in text and "Medium 20-100 (6 classes)" in text and "Few < 20 (2 classes)" in text
    assert "1.67 points" in text  # one of 2 x 30 Few test images: 100 / 60
    assert "(0 classes)" in group_definition([500, 300, 101], None)


# -------------------------------------------------------------------------------------------------- the summary


def _seed_runs(root: Path, write_run: Callable[..., Path], seeds: tuple[int, ...] = (0, 1, 2)) -> list[Path]:
    return [write_run(root / loss / f"seed{s}", loss=loss, seed=s, skill=skill)
            for loss, skill in (("ce", 0.8), ("bce3s", 1.2)) for s in seeds]


def _top1(run: Path, ckpt: str, key: str = "top1") -> float:
    return json.loads((run / "final.json").read_text())["test"][ckpt][key]


def test_summary_table_is_mean_std_over_seeds_and_the_paired_difference(tmp_path, write_run) -> None:
    paths = _seed_runs(tmp_path, write_run)
    groups = group_runs_by_config([load_run(p) for p in paths])
    assert [(label, len(g)) for label, g in groups] == [("ce", 3), ("bce3s", 3)]
    header, rows = summary_table(summarize_methods(groups))
    assert header[:4] == ["Method", "Checkpoint", "Seeds", "All"]
    ce, bce = paths[:3], paths[3:]
    for ckpt in ("last", "best_val"):
        for key, col in (("top1", 3), ("few", 6)):
            a = [_top1(p, ckpt, key) for p in ce]
            b = [_top1(p, ckpt, key) for p in bce]
            d = [y - x for x, y in zip(a, b)]
            row = {r[0]: r for r in rows if r[1] == ckpt}
            assert row["ce"][col] == f"{statistics.mean(a):.2f} ± {statistics.stdev(a):.2f}"
            assert row["bce3s"][col] == f"{statistics.mean(b):.2f} ± {statistics.stdev(b):.2f}"
            lo, hi = _reference_interval(d)
            star = " *" if not lo <= 0 <= hi else ""
            assert row["bce3s − ce"][col] == f"{statistics.mean(d):+.2f} ± {statistics.stdev(d):.2f}{star}"


def test_report_summary_section_leads_with_the_verdict(tmp_path, write_run) -> None:
    paths = _seed_runs(tmp_path, write_run)
    blocks: list[Any] = []
    section_summary([load_run(p) for p in paths], blocks)
    leads = [b.text for b in blocks if isinstance(b, Para) and b.lead]
    assert len(leads) == 2 and leads[0].startswith("All (last): ") and leads[1].startswith("All (best_val): ")
    d = [_top1(b, "last") - _top1(a, "last") for a, b in zip(paths[:3], paths[3:])]
    assert f"{abs(statistics.mean(d)):.2f} ± {statistics.stdev(d):.2f}" in leads[0]
    assert any(isinstance(b, Table) and b.header[3] == "All" for b in blocks)
    md = render_md("t", "s", blocks)
    assert md.index("## Summary") < md.index("All (last)") < md.index("| Method |")


def test_report_with_seed_runs_opens_with_the_summary_of_all_seeds(tmp_path, write_run, monkeypatch) -> None:
    import bce3s.report.writer as writer
    from bce3s.report.writer import write_report

    for name in dir(writer):  # the figure sections are tested elsewhere; skipping them keeps this test fast
        if name.startswith("section_") and name not in ("section_summary", "section_runs"):
            monkeypatch.setattr(writer, name, lambda *a, **k: None)
    paths = _seed_runs(tmp_path, write_run, seeds=(0, 1))
    _, md_path = write_report([paths[0], paths[2]], tmp_path / "out", seed_runs=[paths[1], paths[3]])
    md = md_path.read_text()
    assert md.index("## Summary") < md.index("## Runs")
    a = [_top1(p, "last") for p in paths[:2]]
    assert f"| ce | last | 2 | {statistics.mean(a):.2f} ± {statistics.stdev(a):.2f} |" in md
    single = write_report([paths[0]], tmp_path / "one")[1].read_text()
    assert "## Summary" not in single


# ------------------------------------------------------------------------------------------------------- the demo


def test_demo_prints_mean_std_over_seeds_and_a_verdict(tmp_path, write_run, monkeypatch, capsys) -> None:
    """``bce3s demo`` (training faked by fake run directories) prints the seeds' table, groups and verdict."""
    import bce3s.engine.run as run_module
    from bce3s.cli import main
    from bce3s.engine.run import TrainResult

    def fake_train(cfg: Any, out: Path, **_: Any) -> TrainResult:
        loss = cfg.stages[0].loss.name
        write_run(Path(out), loss=loss, seed=cfg.runtime.seed, skill=1.2 if loss == "bce3s" else 0.8,
                  config_name=f"configs/digits_lt/{loss}.yaml")
        return TrainResult(run_dir=Path(out), final={})

    monkeypatch.setattr(run_module, "train", fake_train)
    monkeypatch.setattr("bce3s.report.writer.write_report",
                        lambda dirs, out, **kw: (Path(out) / "report.html", Path(out) / "report.md"))
    parent = tmp_path / "demo"
    assert main(["demo", "--out", str(parent), "--quiet", "--seeds", "0", "1", "2"]) == 0
    out = capsys.readouterr().out
    ce = [_top1(parent / "ce" / f"seed{s}", "last") for s in range(3)]
    bce = [_top1(parent / "bce3s" / f"seed{s}", "last") for s in range(3)]
    line = next(x for x in out.splitlines() if x.startswith("CE ") and " last " in x)
    assert f"{statistics.mean(ce):.2f} ± {statistics.stdev(ce):.2f}" in line
    line = next(x for x in out.splitlines() if x.startswith("BCE3S ") and " last " in x)
    assert f"{statistics.mean(bce):.2f} ± {statistics.stdev(bce):.2f}" in line
    assert "Many > 100" in out and "Few < 20" in out
    verdict = next(x for x in out.splitlines() if x.startswith("Verdict, All (last)"))
    d = [b - a for a, b in zip(ce, bce)]
    lo, hi = _reference_interval(d)
    assert ("ahead" in verdict) == (not lo <= 0 <= hi)
    assert "docs/results.md" in out


def test_demo_jobs_runs_each_seed_once_as_a_one_thread_process(tmp_path, write_run, monkeypatch, capsys) -> None:
    """``--jobs 2``: one ``bce3s train`` process per (method, seed), with its seed and one thread; a failed run is
    one line naming it (the processes are faked: each writes a fake run directory)."""
    import bce3s.cli as cli

    launched: list[list[str]] = []

    class FakeProc:
        def __init__(self, cmd: list[str], **_: Any) -> None:
            launched.append(cmd)
            sets = dict(cmd[i + 1].split("=", 1) for i, a in enumerate(cmd) if a == "--set")
            out = Path(cmd[cmd.index("--out") + 1])
            self.returncode = 1 if fail and out.parent.name == "bce3s" and sets["runtime.seed"] == "1" else 0
            if not self.returncode:
                loss = out.parent.name
                write_run(out, loss=loss, seed=int(sets["runtime.seed"]), skill=1.2 if loss == "bce3s" else 0.8)

        def poll(self) -> int:
            return self.returncode

    monkeypatch.setattr(cli.subprocess, "Popen", FakeProc)
    monkeypatch.setattr("bce3s.report.writer.write_report",
                        lambda dirs, out, **kw: (Path(out) / "report.html", Path(out) / "report.md"))
    fail = False
    assert main_demo(tmp_path / "demo", "--jobs", "2") == 0
    assert len(launched) == 6
    runs = {(Path(c[c.index("--out") + 1]).parent.name, c[c.index("--set") + 3]) for c in launched}
    assert runs == {(m, f"runtime.seed={s}") for m in ("ce", "bce3s") for s in range(3)}
    assert all("runtime.threads=1" in c for c in launched)
    assert "Verdict, All (last)" in capsys.readouterr().out
    fail, launched[:] = True, []
    assert main_demo(tmp_path / "demo2", "--jobs", "2") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "BCE3S seed 1" in err


def main_demo(out: Path, *args: str) -> int:
    from bce3s.cli import main

    return main(["demo", "--out", str(out), "--quiet", *args])
