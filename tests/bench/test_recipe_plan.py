"""How ``bench/recipe_run.py --budget-s`` fits the device run: full-schedule runs first, shortened epochs last."""

from __future__ import annotations

import pytest

import recipe_run  # bench/ is on sys.path (tests/bench/conftest.py)

Probe, plan = recipe_run.Probe, recipe_run.plan

# six runs at once: 30 s fixed + 320 x 3 s + 10 x 1 s = 1000 s; one run alone: 20 + 320 x 0.5 + 10 x 0.2 = 182 s
TOGETHER = Probe(epoch1=3.0, epoch2=1.0, fixed=30.0)
ALONE = Probe(epoch1=0.5, epoch2=0.2, fixed=20.0)


def test_everything_fits():
    assert plan(1200.0, 6, TOGETHER, None, 320, 10, "runs") == (6, 320, "")


def test_runs_give_way_before_epochs():
    # 4 at once (weight 3/5 of the way to 6): 26 + 320 x 2.0 + 10 x 0.68 = 672.8 s > 500;
    # 2 at once (weight 1/5): 22 + 320 x 1.0 + 10 x 0.36 = 345.6 s <= 500
    kept, e1, said = plan(500.0, 6, TOGETHER, ALONE, 320, 10, "runs")
    assert (kept, e1) == (2, 320) and said
    # one run alone (182 s) is the last resort before cutting epochs
    assert plan(200.0, 6, TOGETHER, ALONE, 320, 10, "runs")[:2] == (1, 320)


def test_epochs_give_way_when_no_run_fits_or_when_asked():
    # nothing fits the full schedule (one run alone needs 182 s): all six, stage 1 = (150 - 30 - 10) / 3 = 36
    assert plan(150.0, 6, TOGETHER, ALONE, 320, 10, "runs")[:2] == (6, 36)
    # --fit epochs keeps every run: (500 - 30 - 10) / 3 = 153 epochs
    assert plan(500.0, 6, TOGETHER, ALONE, 320, 10, "epochs")[:2] == (6, 153)


@pytest.mark.parametrize(("runs", "counts"), [(6, [6, 4, 2, 1]), (2, [2, 1]), (1, [1])])
def test_run_counts_keep_method_pairs(runs, counts):
    assert recipe_run.run_counts(runs) == counts


def test_interpolation_is_exact_at_its_ends():
    assert recipe_run.interpolate(ALONE, TOGETHER, 6, 1) == ALONE
    assert recipe_run.interpolate(ALONE, TOGETHER, 6, 6) == TOGETHER
