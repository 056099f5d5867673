"""Tests of the run report (bce3s.report.writer, .rundata, .plots): content, numbers, offline-ness, missing inputs."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pytest

from bce3s.errors import RunDirError
from bce3s.report import plots
from bce3s.report.rundata import load_run
from bce3s.report.writer import SECTIONS, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
IMG_TAG = '<img src="data:image/png;base64,'
KEYS = ("top1", "mean_per_class", "many", "medium", "few", "ece")


class _Tables(HTMLParser):
    """Collects every <table> as {"caption": str, "header": [str], "rows": [[str]]} (cell text only)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[dict[str, Any]] = []
        self._cell: list[str] | None = None
        self._row: list[str] | None = None
        self._in_caption = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self.tables.append({"caption": "", "header": [], "rows": []})
        elif tag == "caption":
            self._in_caption = True
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "caption":
            self._in_caption = False
        elif tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            table = self.tables[-1]
            if not table["header"]:
                table["header"] = self._row
            else:
                table["rows"].append(self._row)
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        elif self._in_caption:
            self.tables[-1]["caption"] += data


def _tables(html_text: str) -> list[dict[str, Any]]:
    parser = _Tables()
    parser.feed(html_text)
    return parser.tables


def _table(tables: list[dict[str, Any]], caption_start: str) -> dict[str, Any]:
    found = [t for t in tables if t["caption"].startswith(caption_start)]
    assert len(found) == 1, [t["caption"] for t in tables]
    return found[0]


@pytest.fixture(scope="module")
def two_run_report(tmp_path_factory: pytest.TempPathFactory, write_run: Callable[..., Path]) -> dict[str, Any]:
    """One report of two complete fake runs (CE and BCE3S, 10 classes), rendered once for the module."""
    root = tmp_path_factory.mktemp("report2")
    runs = [write_run(root / "runs" / "ce_seed0", loss="ce", skill=0.8),
            write_run(root / "runs" / "bce3s_seed0", loss="bce3s", skill=1.2)]
    html_path, md_path = write_report(runs, root / "out")
    return {"runs": runs, "html_path": html_path, "md_path": md_path, "html": html_path.read_text(),
            "md": md_path.read_text(), "out": root / "out"}


def test_every_section_and_figure_present(two_run_report: dict[str, Any]) -> None:
    html_text, md = two_run_report["html"], two_run_report["md"]
    for title in SECTIONS:
        assert re.search(rf'<h2 id="[a-z0-9-]+">{re.escape(title)}</h2>', html_text), title
        assert f"\n## {title}\n" in md, title
    # per-class accuracy, shot bars, training curves, reliability, weight norms, geometry, 2 confusion matrices
    assert html_text.count(IMG_TAG) == 8
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html_text)
    assert len(embedded) == 8
    pngs = {base64.b64decode(b) for b in embedded}
    assert all(p.startswith(PNG_MAGIC) for p in pngs)
    refs = re.findall(r"!\[[^\]]*\]\((figures/[^)]+\.png)\)", md)
    assert len(refs) == 8
    files = {(two_run_report["out"] / ref).read_bytes() for ref in refs}
    assert files == pngs  # the Markdown's PNG files are the figures embedded in the HTML


def test_result_numbers_equal_final_json(two_run_report: dict[str, Any]) -> None:
    tables = _tables(two_run_report["html"])
    main = _table(tables, "Test accuracy (%), no TTA")
    tta = _table(tables, "Flip-TTA rows")
    assert main["header"][:4] == ["Run", "Checkpoint", "Split", "TTA"]
    md = two_run_report["md"]
    for run in two_run_report["runs"]:
        final = json.loads((run / "final.json").read_text())
        for ckpt in ("last", "best_val"):
            for table, key, tta_name in ((main, ckpt, "none"), (tta, f"{ckpt}_tta_flip", "flip")):
                expected = [run.name, ckpt, "test", tta_name] + [f"{final['test'][key][k]:.2f}" for k in KEYS]
                assert expected in table["rows"]
                assert "| " + " | ".join(expected) + " |" in md
    # TTA rows never appear in the no-TTA table, and the other way round
    assert {r[3] for r in main["rows"]} == {"none"}
    assert {r[3] for r in tta["rows"]} == {"flip"}


def test_geometry_table_matches_eval_json(two_run_report: dict[str, Any]) -> None:
    table = _table(_tables(two_run_report["html"]), "Geometry per shot group")
    for run in two_run_report["runs"]:
        ev = json.loads((run / "eval_test_last.json").read_text())
        counts = json.loads((run / "final.json").read_text())["train_counts"]
        comp = np.array(ev["geometry"]["per_class"]["compactness"], dtype=float)
        few = np.array(counts) < 20
        row = next(r for r in table["rows"] if r[:2] == ["Compactness", run.name])
        # independent reference: numpy over the per-class list (population std)
        assert row[2] == f"{comp.mean():.3f} ± {comp.std():.3f}"
        assert row[5] == f"{comp[few].mean():.3f} ± {comp[few].std():.3f}"


def test_report_is_offline(two_run_report: dict[str, Any]) -> None:
    html_text = two_run_report["html"]
    refs = re.findall(r"""(?:src|href)\s*=\s*["']?([^"'\s>]+)""", html_text, flags=re.I)
    assert refs  # the figures and the table of contents
    for ref in refs:
        assert ref.startswith(("data:image/png;base64,", "#")), ref[:80]
    assert "http://" not in html_text and "https://" not in html_text
    assert "<script" not in html_text.lower() and "<link" not in html_text.lower()
    assert "@import" not in html_text and "url(" not in html_text


def test_missing_inputs_reported_not_fatal(tmp_path: Path, write_run: Callable[..., Path]) -> None:
    # two runs with the same directory name, without eval files, history, TTA rows or run.json
    a = write_run(tmp_path / "a" / "seed0", loss="ce", with_eval=False, with_history=False, with_tta=False,
                  with_run_json=False)
    b = write_run(tmp_path / "b" / "seed0", loss="bce3s", with_eval=False, with_history=False, with_tta=False)
    html_path, md_path = write_report([a, b], tmp_path / "out")
    html_text, md = html_path.read_text(), md_path.read_text()
    for title in SECTIONS:
        assert f"## {title}\n" in md
    assert html_text.count(IMG_TAG) == 2  # per-class accuracy and shot bars need only final.json
    assert "a/seed0" in html_text and "b/seed0" in html_text  # clashing run names made unique
    assert "eval_test_last.json is missing" in md
    assert "No training history (metrics.jsonl) for: a/seed0, b/seed0." in md
    assert "No flip-TTA rows" in md
    assert "run.json is missing" in md


@pytest.mark.parametrize("argv0", ["/env/lib/python3/site-packages/bce3s/__main__.py", "venv/bin/bce3s"])
def test_eval_hints_name_the_command_as_run(tmp_path: Path, write_run: Callable[..., Path],
                                            monkeypatch: pytest.MonkeyPatch, argv0: str) -> None:
    # `python -m bce3s` users (and a console script not on PATH) must be told a command that works for them
    monkeypatch.setattr("sys.argv", [argv0, "report"])
    monkeypatch.setattr("shutil.which", lambda name: None)
    expected = "python -m bce3s" if argv0.endswith("__main__.py") else argv0
    run = write_run(tmp_path / "r", with_eval=False, with_history=False, with_tta=False)
    _, md_path = write_report([run], tmp_path / "out")
    md = md_path.read_text()
    hints = re.findall(r"run '([^']*) eval ", md)
    assert len(hints) >= 4  # load_run's note and the calibration, weight-norm, geometry and confusion notes
    assert set(hints) == {expected}


def test_confusion_drawn_up_to_100_classes_and_skipped_above(tmp_path: Path, write_run: Callable[..., Path]) -> None:
    k100 = write_run(tmp_path / "k100", num_classes=100, per_class_test=2, with_history=False, with_tta=False)
    k120 = write_run(tmp_path / "k120", num_classes=120, per_class_test=2, with_history=False, with_tta=False)
    ev = json.loads((k120 / "eval_test_last.json").read_text())
    ev["confusion"] = np.eye(120, dtype=int).tolist()  # even if an eval file holds one, K > 100 is not drawn
    ev.pop("geometry")  # (keeps the test fast)
    (k120 / "eval_test_last.json").write_text(json.dumps(ev))
    html_path, md_path = write_report([k100, k120], tmp_path / "out")
    md = md_path.read_text()
    figs = sorted(p.name for p in (tmp_path / "out" / "figures").glob("*.png"))
    assert [f for f in figs if f.startswith("confusion")] == ["confusion_1_k100.png"]
    assert "k120: 120 classes; confusion matrices are drawn only up to 100 classes." in md
    # different class sets: one head-to-tail figure per class set
    assert len([f for f in figs if f.startswith("per_class_accuracy")]) == 2
    assert html_path.read_text().count(IMG_TAG) == len(figs)


def test_bare_minimum_run_renders(tmp_path: Path) -> None:
    run = tmp_path / "bare"
    run.mkdir()
    (run / "final.json").write_text("{}")
    (run / "config.yaml").write_text("")
    html_path, md_path = write_report([run], tmp_path / "out")
    md = md_path.read_text()
    assert IMG_TAG not in html_path.read_text()
    assert "final.json has no test results for the last checkpoint" in md
    assert "| bare | last | test | none | – | – | – | – | – | – |" in md


def test_inconsistent_inputs_become_notes(make_run: Callable[..., Path], tmp_path: Path) -> None:
    run = make_run("r", with_eval=False, with_history=False)
    final = json.loads((run / "final.json").read_text())
    final["test"]["last"]["per_class"] = [50.0, 60.0]  # 2 values for 10 classes
    (run / "final.json").write_text(json.dumps(final))
    html_path, md_path = write_report([run], tmp_path / "out")
    figs = sorted(p.name for p in (tmp_path / "out" / "figures").glob("*.png"))
    assert figs == ["shot_accuracy.png"]  # the per-class figure is skipped, the shot bars still come
    assert html_path.read_text().count(IMG_TAG) == 1
    per_class = md_path.read_text().split("## Per-class accuracy\n", 1)[1].split("\n## ", 1)[0]
    assert "> **Note:**" in per_class and "per_class_accuracy" in per_class  # the section says what was skipped


@pytest.mark.parametrize("case", ["missing", "file", "empty", "no_final", "bad_json", "bad_yaml"])
def test_bad_run_dir_raises_one_line(tmp_path: Path, write_run: Callable[..., Path], case: str) -> None:
    path = tmp_path / "x"
    if case == "file":
        path.write_text("not a dir")
    elif case == "empty":
        path.mkdir()
    elif case == "no_final":
        write_run(path)
        (path / "final.json").unlink()
    elif case == "bad_json":
        write_run(path)
        (path / "final.json").write_text('{"run": ')
    elif case == "bad_yaml":
        write_run(path)
        (path / "config.yaml").write_text("data: [unclosed\n")
    good = write_run(tmp_path / "good")
    with pytest.raises(RunDirError) as err:
        write_report([good, path], tmp_path / "out")
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg
    assert not (tmp_path / "out").exists()  # nothing written when one input is bad


def test_no_run_dirs_raises(tmp_path: Path) -> None:
    with pytest.raises(RunDirError):
        write_report([], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unwritable_out_dir_raises_one_line(make_run: Callable[..., Path], tmp_path: Path) -> None:
    run = make_run("r", with_eval=False, with_history=False)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the report directory should go")
    with pytest.raises(RunDirError) as err:
        write_report([run], blocker / "out")
    assert "\n" not in str(err.value) and str(blocker) in str(err.value)


def test_report_files_replace_old_ones_whole(make_run: Callable[..., Path], tmp_path: Path) -> None:
    run = make_run("r", with_eval=False, with_history=False)
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.md").write_text("stale " * 10_000)
    _, md_path = write_report([run], out)
    md = md_path.read_text()
    assert md.startswith("# BCE3S report: r\n") and "stale" not in md
    assert sorted(p.name for p in out.iterdir()) == ["figures", "report.html", "report.md"]  # no temp files left


def test_load_run_notes_damaged_optional_files(make_run: Callable[..., Path]) -> None:
    run_dir = make_run("r")
    with (run_dir / "metrics.jsonl").open("a") as fh:
        fh.write('{"stage": "stage2", "epo')  # a line cut off mid-write
    (run_dir / "eval_test_last.json").write_text("{")
    run = load_run(run_dir)
    assert len(run.history) == 6  # every complete epoch is kept
    assert [r["global_epoch"] for r in run.history] == list(range(6))
    assert run.evals == {} and run.best_eval() is None
    assert any("metrics.jsonl" in n for n in run.notes)
    assert any("eval_test_last.json" in n for n in run.notes)


def test_load_run_reads_every_file(make_run: Callable[..., Path]) -> None:
    run_dir = make_run("r", seed=3)
    run = load_run(run_dir)
    final = json.loads((run_dir / "final.json").read_text())
    assert run.label == "r" and run.path == run_dir and run.notes == []
    assert run.final == final and run.train_counts == final["train_counts"]
    assert run.config["runtime"]["seed"] == 3
    assert run.info is not None and run.info["status"] == "finished"
    assert run.data_record is not None and run.data_record["num_classes"] == 10
    assert run.test_metrics("last") == final["test"]["last"]
    assert run.test_metrics("best_val", tta=True) == final["test"]["best_val_tta_flip"]
    name, ev = run.best_eval() or ("", {})
    assert name == "eval_test_last.json" and ev == json.loads((run_dir / name).read_text())


def test_plots_leave_matplotlib_state_alone() -> None:
    before = dict(matplotlib.rcParams)
    fig = plots.shot_accuracy_bars({"test": {"a": {"top1": 50.0, "many": 70.0, "medium": None, "few": 10.0}}})
    assert plots.fig_to_png_bytes(fig).startswith(PNG_MAGIC)
    assert dict(matplotlib.rcParams) == before


def test_confusion_matrix_figure_rejects_more_than_100_classes() -> None:
    with pytest.raises(ValueError):
        plots.confusion_matrix(np.eye(101, dtype=int))
    with pytest.raises(ValueError):
        plots.confusion_matrix(np.ones((3, 4), dtype=int))  # not square


def test_head_to_tail_order_is_stable() -> None:
    assert plots.head_to_tail_order([5, 500, 20, 500, 5]).tolist() == [1, 3, 2, 0, 4]


@pytest.mark.slow
def test_report_of_two_tiny_real_runs(tmp_path: Path) -> None:
    """End to end on the engine's own files: train CE and BCE3S on Digits-LT briefly, evaluate one, report both."""
    from bce3s.config import load_config
    from bce3s.engine.evaluate import evaluate_run
    from bce3s.engine.run import train

    repo = Path(__file__).resolve().parents[2]
    runs = []
    for loss in ("ce", "bce3s"):
        config = repo / "configs" / "digits_lt" / f"{loss}.yaml"
        cfg = load_config(config, overrides=["stages.0.epochs=2", "stages.1.epochs=1", "runtime.device=cpu"])
        train(cfg, tmp_path / loss, config_path=str(config), quiet=True)
        runs.append(tmp_path / loss)
    evaluate_run(runs[0], split="test", checkpoint="last")
    html_path, md_path = write_report(runs, tmp_path / "out")
    html_text, md = html_path.read_text(), md_path.read_text()
    # per-class, shot bars, curves, reliability, weight norms, geometry, and one confusion matrix per run: train
    # leaves eval_test_last.json for both runs, so neither needs `bce3s eval` first
    assert html_text.count(IMG_TAG) == 8
    main = _table(_tables(html_text), "Test accuracy (%), no TTA")
    for run in runs:
        final = json.loads((run / "final.json").read_text())
        for ckpt in ("last", "best_val"):
            expected = [run.name, ckpt, "test", "none"] + [f"{final['test'][ckpt][k]:.2f}" for k in KEYS]
            assert expected in main["rows"]
            assert "| " + " | ".join(expected) + " |" in md
    assert "eval_test_last.json is missing" not in md  # train wrote it for both runs


@pytest.mark.slow  # renders five whole reports (~30 s on 2 cores); CI runs it
def test_run_colours_do_not_depend_on_argument_order(
    make_run: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run's colour in the figures is fixed by its method, not by where it stands on the command line."""
    from bce3s.report.writer import build_blocks

    ce, bce3s = make_run("ce_seed0", loss="ce"), make_run("bce3s_seed0", loss="bce3s")
    ce1 = make_run("ce_seed1", loss="ce", seed=1)
    seen: list[dict[str, str]] = []
    real = plots.per_class_accuracy

    def spy(per_class: Any, train_counts: Any, **kw: Any) -> Any:
        seen.append(dict(kw["colors"]))
        return real(per_class, train_counts, **kw)

    monkeypatch.setattr(plots, "per_class_accuracy", spy)
    for order in ([ce, bce3s], [bce3s, ce], [ce1, bce3s, ce], [ce, ce1, bce3s], [bce3s]):
        build_blocks([load_run(p) for p in order])
    ce_alone = plots.run_colors(["x"], ["ce"])["x"]
    assert seen[0] == seen[1] and seen[0]["ce_seed0"] == ce_alone
    assert seen[2] == seen[3] and seen[2]["bce3s_seed0"] == seen[0]["bce3s_seed0"] == seen[4]["bce3s_seed0"]
    assert len(set(seen[2].values())) == 3  # two seeds of one method still get two colours
    assert seen[0]["ce_seed0"] != seen[0]["bce3s_seed0"]


@pytest.mark.parametrize(("num_classes", "named"), [(10, True), (30, False)])
def test_per_class_plot_names_classes_when_few(
    make_run: Callable[..., Path], monkeypatch: pytest.MonkeyPatch, num_classes: int, named: bool
) -> None:
    """Like the confusion matrix, the per-class axis shows final.json's class_names for K <= 20, ranks above."""
    from bce3s.report.writer import build_blocks

    run = load_run(make_run(f"k{num_classes}", num_classes=num_classes))
    figs: list[Any] = []
    real = plots.per_class_accuracy

    def spy(*args: Any, **kw: Any) -> Any:
        figs.append(real(*args, **kw))
        return figs[-1]

    monkeypatch.setattr(plots, "per_class_accuracy", spy)
    build_blocks([run])
    ax = figs[0].axes[0]
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    order = plots.head_to_tail_order(run.train_counts or [])
    if named:
        assert ticks == [run.final["class_names"][i] for i in order]
    else:
        assert not any(t.startswith("digit") for t in ticks)


def test_empty_shot_group_and_geometry_meanings_are_explained(make_run: Callable[..., Path], tmp_path: Path) -> None:
    """A run with no Few class (CIFAR-10-LT: 8/2/0 at 500..50 images) says why Few is a dash; geometry rows explain."""
    run = make_run("c10")
    final = json.loads((run / "final.json").read_text())
    final["train_counts"] = [500, 387, 300, 232, 180, 139, 108, 101, 65, 50]
    (run / "final.json").write_text(json.dumps(final))
    _, md_path = write_report([run], tmp_path / "out")
    md = md_path.read_text()
    assert "no class has < 20 training images" in md
    assert "8 / 2 / 0" in md
    assert "no class has > 100" not in md  # only the empty group is explained
    geo_lines = [ln for ln in md.splitlines() if ln.startswith("| Classifier separability")]
    assert geo_lines and "higher" in geo_lines[0]
    assert all("higher" in ln or "bias" in ln for ln in md.splitlines()
               if ln.startswith(("| Compactness", "| Feature separability", "| Feature norm", "| Weight norm")))
