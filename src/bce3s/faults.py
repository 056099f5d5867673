"""Fault injection for the reliability tests: off unless the environment variable ``BCE3S_FAULT_INJECT`` is set.

The tests of docs/reliability.md kill or signal a training process at exact points (a given step, or the middle of
a given file write) to check that checkpoints survive and that resuming gives the same result. Production runs
never set the variable; with it unset every hook below is a dictionary lookup that returns at once.

Format: ``ACTION@POINT`` rules separated by ``;``::

    ACTION = sigterm | sigint | sigkill | exit | pause
    POINT  = step:S.E.N[:rankR]        after N steps of epoch E (0-based) of stage index S are done
           | write:NAME[#K][:rankR]    during the K-th (default 1st) atomic write of a file named NAME in this
                                       process (e.g. last.pt, stage1_best_val.pt, metrics.jsonl), when half of
                                       the temporary file is written and the target file is still untouched

``sigterm``/``sigint``/``sigkill`` send that signal to the process itself, ``exit`` calls ``os._exit(1)`` (a
crashed rank), ``pause`` prints ``bce3s fault injection: paused at ...`` on stderr and waits (at most 120 s) until
a stop signal is seen, so that a test can send a real signal at a known point. ``:rankR`` limits a rule to
global rank R. Rules fire only on the first attempt of a torchrun job (``TORCHELASTIC_RESTART_COUNT`` unset or
0), so a restarted job runs clean. Example: ``BCE3S_FAULT_INJECT="exit@step:0.1.3:rank1"``.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ENV", "at_step", "during_write"]

ENV = "BCE3S_FAULT_INJECT"
_ACTIONS = ("sigterm", "sigint", "sigkill", "exit", "pause")
_PAUSE_LIMIT_S = 120.0


@dataclass(frozen=True)
class _Rule:
    action: str
    kind: str  # "step" or "write"
    target: str  # "S.E.N" or the file name
    count: int  # K of write rules
    rank: int | None


_parsed: tuple[str, list[_Rule]] | None = None
_write_counts: dict[str, int] = {}


def _rules() -> list[_Rule]:
    """The rules of the current environment (parsed once per value of the variable)."""
    global _parsed
    text = os.environ.get(ENV, "")
    if not text:
        return []
    if _parsed is not None and _parsed[0] == text:
        return _parsed[1]
    rules = []
    for item in filter(None, (x.strip() for x in text.split(";"))):
        try:
            action, point = item.split("@", 1)
            kind, rest = point.split(":", 1)
            rank = None
            if ":rank" in rest:
                rest, r = rest.rsplit(":rank", 1)
                rank = int(r)
            count = 1
            if kind == "write" and "#" in rest:
                rest, c = rest.rsplit("#", 1)
                count = int(c)
            if action not in _ACTIONS or kind not in ("step", "write") or not rest:
                raise ValueError
            if kind == "step":
                rest = ".".join(str(int(x)) for x in rest.split("."))
                if rest.count(".") != 2:
                    raise ValueError
        except ValueError:
            raise ValueError(f"{ENV}: cannot parse rule {item!r} (see bce3s/faults.py)") from None
        rules.append(_Rule(action, kind, rest, count, rank))
    _parsed = (text, rules)
    return rules


def _armed(rule: _Rule) -> bool:
    if os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") not in ("", "0"):
        return False
    return rule.rank is None or rule.rank == int(os.environ.get("RANK", "0"))


def _fire(rule: _Rule, where: str, should_stop: Callable[[], bool] | None) -> None:
    if rule.action == "pause":
        sys.stderr.write(f"bce3s fault injection: paused at {where} (pid {os.getpid()})\n")
        sys.stderr.flush()
        deadline = time.monotonic() + _PAUSE_LIMIT_S
        while time.monotonic() < deadline and not (should_stop is not None and should_stop()):
            time.sleep(0.02)
        return
    sys.stderr.write(f"bce3s fault injection: {rule.action} at {where}\n")
    sys.stderr.flush()
    if rule.action == "exit":
        os._exit(1)
    sig = {"sigterm": signal.SIGTERM, "sigint": signal.SIGINT, "sigkill": signal.SIGKILL}[rule.action]
    os.kill(os.getpid(), sig)
    time.sleep(0.05)  # let the handler of a catchable signal run here, at the injection point


def at_step(stage_index: int, epoch: int, steps_done: int, should_stop: Callable[[], bool] | None = None) -> None:
    """Hook called by the training loop after each step (``steps_done`` steps of the epoch are done)."""
    rules = _rules()
    if not rules:
        return
    key = f"{stage_index}.{epoch}.{steps_done}"
    for rule in rules:
        if rule.kind == "step" and rule.target == key and _armed(rule):
            _fire(rule, f"stage index {stage_index} epoch {epoch} step {steps_done}", should_stop)


def during_write(path: Path) -> None:
    """Hook called by :func:`~bce3s.engine.checkpoint.atomic_write_bytes` with the temporary file half written."""
    rules = _rules()
    if not rules:
        return
    name = Path(path).name
    _write_counts[name] = n = _write_counts.get(name, 0) + 1
    for rule in rules:
        if rule.kind == "write" and rule.target == name and rule.count == n and _armed(rule):
            _fire(rule, f"write #{n} of {path}", None)
