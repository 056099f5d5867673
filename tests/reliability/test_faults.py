"""The fault-injection hooks (bce3s/faults.py): inert unless BCE3S_FAULT_INJECT is set, and precise when it is.

Only the ``pause`` action is fired here (with a stop request already pending, so it returns at once); the
signalling actions are exercised by the subprocess tests in test_preemption.py and test_distributed_faults.py.
"""

from __future__ import annotations

import os

import pytest

from bce3s import faults


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for key in (faults.ENV, "RANK", "TORCHELASTIC_RESTART_COUNT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(faults, "_write_counts", {})


def _paused(capsys) -> list[str]:
    return [x for x in capsys.readouterr().err.splitlines() if "bce3s fault injection: paused" in x]


def test_unset_means_no_rules(capsys):
    faults.at_step(0, 0, 1, lambda: True)
    faults.during_write("x/last.pt")
    assert faults._rules() == []
    assert _paused(capsys) == []


def test_step_rule_fires_only_at_its_step(monkeypatch, capsys):
    monkeypatch.setenv(faults.ENV, "pause@step:1.2.3")
    for point in ((1, 2, 2), (1, 2, 4), (0, 2, 3), (1, 3, 3)):
        faults.at_step(*point, should_stop=lambda: True)
    assert _paused(capsys) == []
    faults.at_step(1, 2, 3, should_stop=lambda: True)
    assert _paused(capsys) == [f"bce3s fault injection: paused at stage index 1 epoch 2 step 3 (pid {os.getpid()})"]


def test_write_rule_counts_writes_of_that_file(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv(faults.ENV, "pause@write:last.pt#2")
    monkeypatch.setattr(faults, "_PAUSE_LIMIT_S", 0.0)
    faults.during_write(tmp_path / "last.pt")
    faults.during_write(tmp_path / "stage1_last.pt")
    assert _paused(capsys) == []
    faults.during_write(tmp_path / "last.pt")
    assert len(_paused(capsys)) == 1
    faults.during_write(tmp_path / "last.pt")
    assert _paused(capsys) == []


@pytest.mark.parametrize(("env", "fires"), [({"RANK": "1"}, True), ({"RANK": "0"}, False),
                                           ({"RANK": "1", "TORCHELASTIC_RESTART_COUNT": "1"}, False)])  # fmt: skip
def test_rank_and_attempt_filters(monkeypatch, capsys, env, fires):
    monkeypatch.setenv(faults.ENV, "pause@step:0.0.1:rank1")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    faults.at_step(0, 0, 1, should_stop=lambda: True)
    assert len(_paused(capsys)) == int(fires)


@pytest.mark.parametrize("rule", ["explode@step:0.0.1", "sigkill@step:0.1", "sigkill@somewhere:1", "sigkill"])
def test_malformed_rules_are_rejected(monkeypatch, rule):
    monkeypatch.setenv(faults.ENV, rule)
    with pytest.raises(ValueError, match="BCE3S_FAULT_INJECT: cannot parse rule"):
        faults.at_step(0, 0, 1)
