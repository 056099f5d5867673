"""The one validator of every loss parameter.

Each keyword parameter of a loss (and of the pure functions behind it) has exactly one rule here. Loss
constructors and the public functions call :func:`check_param`, so a bad value raises the same
``ValueError`` wherever it is passed, and the message starts with the parameter's name, e.g.
``temperature: must be > 0 (got 0)``. A configuration layer can therefore report
``stages.N.loss.params.<message>`` by prefixing the message.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

__all__ = ["PARAMETER_RULES", "check_param"]


def _is_number(value: object) -> bool:
    """A finite int or float, but not a bool (YAML ``true`` is not a number)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive(value: object) -> bool:
    return _is_number(value) and value > 0  # type: ignore[operator]


def _non_negative(value: object) -> bool:
    return _is_number(value) and value >= 0  # type: ignore[operator]


def _ratio(value: object) -> bool:
    return _is_number(value) and 0 < value <= 1  # type: ignore[operator]


def _beta(value: object) -> bool:
    return _is_number(value) and 0 <= value < 1  # type: ignore[operator]


def _optional_positive(value: object) -> bool:
    return value is None or _positive(value)


def _int_at_least(low: int) -> Callable[[object], bool]:
    return lambda value: _is_int(value) and value >= low  # type: ignore[operator]


def _optional_int_at_least(low: int) -> Callable[[object], bool]:
    return lambda value: value is None or (_is_int(value) and value >= low)  # type: ignore[operator]


_POSITIVE = (_positive, "> 0")
_NON_NEGATIVE = (_non_negative, "a number >= 0")

#: Parameter name -> (predicate, what a valid value is). One entry per parameter of any loss or loss function.
PARAMETER_RULES: dict[str, tuple[Callable[[object], bool], str]] = {
    "num_classes": (_int_at_least(1), "an int >= 1"),
    "embedding_dim": (_int_at_least(1), "an int >= 1"),
    "seed": (_is_int, "an int"),
    "neg_class_ratio": (_ratio, "in (0, 1]"),
    "temperature": _POSITIVE,
    "uniform_scale": _POSITIVE,
    "scale": _POSITIVE,
    "s": _POSITIVE,
    "neg_weight": _NON_NEGATIVE,
    "contrastive_weight": _NON_NEGATIVE,
    "uniform_weight": _NON_NEGATIVE,
    "gamma": _NON_NEGATIVE,
    "tau": _NON_NEGATIVE,
    "max_margin": _NON_NEGATIVE,
    "beta": (_beta, "in [0, 1)"),
    "logit_clip": (_optional_positive, "None or a number > 0"),
    "contrastive_start_epoch": (_int_at_least(0), "an int >= 0"),
    "drw_epoch": (_optional_int_at_least(0), "None or an int >= 0"),
}


def check_param(name: str, value: Any) -> Any:
    """Validate the loss parameter ``name`` and return it (numbers of float rules as ``float``).

    Args:
        name: a key of :data:`PARAMETER_RULES`.
        value: the value to check.

    Returns:
        ``value``, as a float when the rule is a real-valued range, else unchanged.

    Raises:
        ValueError: ``"<name>: must be <rule> (got <value>)"`` for a wrong type or range.
        KeyError: ``name`` has no rule (a programming error, not a user error).
    """
    predicate, rule = PARAMETER_RULES[name]
    if not predicate(value):
        raise ValueError(f"{name}: must be {rule} (got {value})")
    if value is None or (_is_int(value) and "int" in rule):
        return value
    return float(value)
