"""Generic machinery behind :mod:`bce3s.config`: dict -> dataclass, dataclass -> dict, ``--set`` overrides.

Nothing here knows the experiment schema; it walks the resolved type annotations of whatever dataclass it is
given. Supported annotations: ``int``, ``float``, ``bool``, ``str``, ``X | None``, nested dataclasses,
``list[X]``, ``tuple[X, ...]`` (a YAML list, stored as a tuple: the field of a frozen dataclass) and
``dict[str, X]`` (``X`` may be ``Any``: a free-form YAML value). Every problem with user input
raises :class:`~bce3s.errors.ConfigError` with a one-line message that starts with the dotted key path
(list indices included, e.g. ``stages.1.optim.lr``).

YAML 1.1 (PyYAML) reads ``1e-3`` as a *string*; a ``float`` field, and a scalar inside a free-form mapping,
accept such a string when it is a decimal number with an exponent (``1e-3``, ``-2E+5``) and convert it.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import datetime
import difflib
import functools
import re
import types
import typing
from collections.abc import Mapping
from typing import Any

import yaml

from bce3s.errors import ConfigError

__all__ = ["config_from_dict", "config_to_dict", "parse_overrides"]

# Decimal numbers with an exponent that YAML 1.1 leaves as strings (it wants a dot: ``1.0e-3``).
_EXP_FLOAT = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)[eE][-+]?\d+")
_MAX_DEPTH = 100  # nesting limit of free-form values (YAML anchors can build self-referencing lists)
_OVERRIDE_FORM = "expected the form --set section.key=value (e.g. --set stages.0.epochs=3)"


# ----------------------------------------------------------------------------------------------------------- #
# messages


def _show(value: Any) -> str:
    """A short one-line ``repr`` of a user value for error messages."""
    try:
        text = repr(value)
    except Exception:  # repr of odd values (huge ints, broken __repr__) must not mask the error
        text = f"<{type(value).__name__}>"
    text = text.replace("\n", "\\n").replace("\r", "\\r")
    return text if len(text) <= 60 else text[:57] + "..."


def _key_text(key: Any) -> str:
    """A mapping key as it appears in a dotted path."""
    text = key if isinstance(key, str) else repr(key)
    if not text.isprintable() or not text:
        text = repr(text)
    return text if len(text) <= 60 else text[:57] + "..."


def _join(path: str, key: Any) -> str:
    return f"{path}.{_key_text(key)}" if path else _key_text(key)


def _describe(tp: Any) -> str:
    """Human name of an annotation, as used in ``expected <type>``."""
    if tp is Any:
        return "YAML scalar, list or mapping"
    if tp is type(None):
        return "null"
    if tp in (int, float, bool, str):
        return tp.__name__
    if dataclasses.is_dataclass(tp):
        return "mapping"
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in typing.get_args(tp))
    is_seq, item = _sequence_item(tp)
    if is_seq:
        return f"list of {_describe(item)}s" if item is not Any else "list"
    if origin is dict:
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _type_error(path: str, expected: str, value: Any) -> ConfigError:
    return ConfigError(f"{path or 'config'}: expected {expected} (got {_show(value)} of type {type(value).__name__})")


def _unknown_key(path: str, key: Any, valid: list[str], cls: type | None = None) -> ConfigError:
    """The error of an unknown ``key`` of dataclass ``cls`` at ``path``, with a did-you-mean when there is one.

    A key that names a field one level deeper (``stages.0.lr`` for ``stages.0.optim.lr``) suggests that full
    path; otherwise the closest valid key of this level is suggested.
    """
    text = _key_text(key)
    deeper = _deeper_paths(path, text, cls) if cls is not None else []
    if deeper:
        hint = f" did you mean {' or '.join(repr(p) for p in deeper)}?"
    else:
        close = difflib.get_close_matches(text, valid, n=1)
        hint = f" did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"{_join(path, key)}: unknown key;{hint} valid keys: {', '.join(valid)}")


def _deeper_paths(path: str, name: str, cls: type) -> list[str]:
    """Full paths of the fields called ``name`` of the dataclasses nested one level below ``cls``.

    A list of dataclasses (``stages``) is entered at index 0.
    """
    found = []
    for field_name, tp in _hints(cls).items():
        inner, _ = _strip_optional(tp)
        prefix = _join(path, field_name)
        is_seq, item = _sequence_item(inner)
        if is_seq:
            inner, prefix = _strip_optional(item)[0], _join(prefix, 0)
        if dataclasses.is_dataclass(inner) and isinstance(inner, type) and name in _hints(inner):
            found.append(_join(prefix, name))
    return found


# ----------------------------------------------------------------------------------------------------------- #
# schema introspection


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """Resolved annotations of the init fields of dataclass ``cls`` (the module uses postponed annotations)."""
    resolved = typing.get_type_hints(cls)
    return {f.name: resolved[f.name] for f in dataclasses.fields(cls) if f.init}


def _sequence_item(tp: Any) -> tuple[bool, Any]:
    """``list[X]`` or ``tuple[X, ...]`` -> ``(True, X)``; anything else -> ``(False, None)``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is list:
        return True, (args[0] if args else Any)
    if origin is tuple and (not args or (len(args) == 2 and args[1] is Ellipsis)):
        return True, (args[0] if args else Any)
    return False, None


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    """``X | None`` -> ``(X, True)``; anything else -> ``(tp, False)``. Multi-type unions are returned as is."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        if len(args) == 1:
            return args[0], optional
    return tp, False


def _field_default(cls: type, name: str) -> Any:
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return copy.deepcopy(f.default)
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
    return dataclasses.MISSING


# ----------------------------------------------------------------------------------------------------------- #
# dict -> dataclass


def config_from_dict(cls: type, data: Any, path: str = "") -> Any:
    """Build dataclass ``cls`` from a plain (YAML-loaded) mapping, checking keys and types.

    Keys missing from ``data`` take the dataclass defaults (recursively: a nested mapping or a list item only
    has to give the keys it changes). ``int`` accepts int but not bool, ``float`` accepts int or float (stored
    as float), ``bool`` only bool, ``str`` only str, ``X | None`` also null; nested dataclasses and
    ``dict[str, ...]`` fields take mappings, ``list[...]`` and ``tuple[..., ...]`` fields take lists.

    Args:
        cls: the dataclass to build.
        data: the mapping; it is not modified and the result shares no mutable object with it.
        path: dotted key path of ``data`` for messages (``""`` at the top level).

    Returns:
        An instance of ``cls``.

    Raises:
        ConfigError: ``data`` is not a mapping, a key is unknown (the message suggests the closest valid key
            and lists all of them), or a value has the wrong type.
    """
    if not isinstance(data, Mapping):
        raise _type_error(path, "mapping", data)
    hints = _hints(cls)
    valid = list(hints)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if not isinstance(key, str) or key not in hints:
            raise _unknown_key(path, key, valid, cls)
        kwargs[key] = _convert(hints[key], value, _join(path, key))
    return cls(**kwargs)


def _convert(tp: Any, value: Any, path: str) -> Any:
    """Check ``value`` against annotation ``tp`` and return the typed (copied) value."""
    inner, optional = _strip_optional(tp)
    if value is None and optional:
        return None
    if inner is not tp and not optional:  # a union of several non-None types: not used by the schema
        raise TypeError(f"unsupported annotation {tp!r} at {path}")
    try:
        return _convert_plain(inner, value, path)
    except _Mismatch:
        raise _type_error(path, _describe(tp), value) from None


class _Mismatch(Exception):
    """Internal: ``value`` does not have the annotated type (turned into a ConfigError by the caller)."""


def _convert_plain(tp: Any, value: Any, path: str) -> Any:
    if tp is Any:
        return _plain(value, path, 0)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return int(value)
        raise _Mismatch
    if tp is float:
        if isinstance(value, str) and _EXP_FLOAT.fullmatch(value.strip()):
            value = float(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:
                raise _Mismatch from None
        raise _Mismatch
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    if dataclasses.is_dataclass(tp):
        if isinstance(value, Mapping):
            return config_from_dict(tp, value, path)
        raise _Mismatch
    origin = typing.get_origin(tp)
    is_seq, item = _sequence_item(tp)
    if is_seq:
        if not isinstance(value, list):
            raise _Mismatch
        items = [_convert(item, v, _join(path, i)) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise _Mismatch
        key_tp, item = typing.get_args(tp) or (str, Any)
        out = {}
        for k, v in value.items():
            if key_tp is str and not isinstance(k, str):
                raise ConfigError(
                    f"{path}: expected mapping with str keys (got key {_show(k)} of type {type(k).__name__})"
                )
            out[k] = _convert(item, v, _join(path, k))
        return out
    raise TypeError(f"unsupported annotation {tp!r} at {path}")


def _plain(value: Any, path: str, depth: int) -> Any:
    """A deep copy of a free-form YAML value (scalars, lists, str-keyed mappings); anything else is rejected."""
    if depth > _MAX_DEPTH:
        raise ConfigError(f"{path}: nested more than {_MAX_DEPTH} levels deep (a self-referencing YAML anchor?)")
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return float(value) if _EXP_FLOAT.fullmatch(value.strip()) else value
    if isinstance(value, list):
        return [_plain(v, _join(path, i), depth + 1) for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ConfigError(
                    f"{path}: expected mapping with str keys (got key {_show(k)} of type {type(k).__name__})"
                )
            out[k] = _plain(v, _join(path, k), depth + 1)
        return out
    raise _type_error(path, _describe(Any), value)


# ----------------------------------------------------------------------------------------------------------- #
# dataclass -> dict


def config_to_dict(obj: Any) -> Any:
    """Plain dicts, lists and scalars from a config dataclass (inverse of :func:`config_from_dict`).

    ``config_from_dict(type(c), config_to_dict(c)) == c`` for every valid ``c``, also after a
    ``yaml.safe_dump`` / ``yaml.safe_load`` round trip. Field order is kept (dump with ``sort_keys=False``).
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: config_to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [config_to_dict(v) for v in obj]
    if isinstance(obj, Mapping):
        return {k: config_to_dict(v) for k, v in obj.items()}
    return obj


# ----------------------------------------------------------------------------------------------------------- #
# --set overrides


def parse_overrides(data: Any, overrides: list[str], cls: type) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides to a copy of the plain config mapping ``data``.

    Keys are dotted paths checked against the schema of ``cls`` while walking (``stages.1.optim.lr``; list
    items by index; keys below a ``dict[str, Any]`` field such as ``stages.0.loss.params.temperature`` are
    free-form). Missing intermediate mappings are created; a list index must already exist (a missing
    ``stages`` list counts as the default one). Values are Python literals (``ast.literal_eval``: ``1e-3``,
    ``True``, ``[1, 2]``), else YAML (``true``, ``null``, ``{a: 1}``), else the raw text. A ``str`` field keeps
    the raw text of a number or boolean (``stages.0.name=2`` gives ``"2"``); a ``float`` field accepts any
    text that ``float()`` reads (``inf``). Types are checked afterwards by :func:`config_from_dict`.

    Args:
        data: the mapping loaded from YAML; not modified.
        overrides: strings ``a.b.c=value``, applied in order.
        cls: the dataclass that ``data`` describes (e.g. ``Config``).

    Returns:
        A new mapping with the overrides applied.

    Raises:
        ConfigError: malformed override, unknown key (with suggestion), index out of range, or a key below a
            value that is not a mapping or list.
    """
    if not isinstance(data, Mapping):
        raise _type_error("", "mapping", data)
    out = _as_dict(copy.deepcopy(data))
    for item in overrides:
        if not isinstance(item, str) or "=" not in item:
            raise ConfigError(f"malformed override {_show(item)}: {_OVERRIDE_FORM}")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if any(not p.strip() for p in parts):
            raise ConfigError(f"malformed override {_show(item)}: {_OVERRIDE_FORM}")
        _apply(out, [p.strip() for p in parts], raw.strip(), cls)
    return out


def _as_dict(value: Mapping[Any, Any]) -> dict[Any, Any]:
    return value if isinstance(value, dict) else dict(value)


def _parse_value(text: str) -> Any:
    """Python literal, else YAML, else the raw text; tuples become lists."""
    try:
        return _untuple(ast.literal_eval(text))
    except (ValueError, SyntaxError, TypeError, OverflowError, MemoryError, RecursionError):
        pass
    try:
        return yaml.safe_load(text)
    except Exception:  # YAML errors, and whatever PyYAML's constructors raise (bad !!int, dates): keep the text
        return text


def _untuple(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_untuple(v) for v in value]
    if isinstance(value, dict):
        return {k: _untuple(v) for k, v in value.items()}
    return value


def _coerce(tp: Any, raw: str) -> Any:
    """The value of an override for a field annotated ``tp`` (final type checks happen in config_from_dict)."""
    value = _parse_value(raw)
    inner, _ = _strip_optional(tp)
    if value is None:
        return None
    if inner is str and not isinstance(value, (str, list, dict)):
        return raw  # stages.0.name=2, data.root=2024-01-01: the user meant the text
    if inner is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    if inner is Any and isinstance(value, (complex, bytes, set, frozenset, datetime.date)):
        return raw  # a free-form value that YAML/Python read as a non-YAML type: keep the text
    return value


def _is_container_type(tp: Any) -> bool:
    return tp is Any or dataclasses.is_dataclass(tp) or _sequence_item(tp)[0] or typing.get_origin(tp) is dict


def _apply(root: dict[str, Any], parts: list[str], raw: str, cls: type) -> None:
    """Set ``root[parts[0]][parts[1]]... = value``, validating each key against the schema."""
    node: Any = root
    tp: Any = cls
    path = ""
    for depth, part in enumerate(parts):
        tp, _ = _strip_optional(tp)
        # 1. which key / index of ``node`` and which annotation it has
        if dataclasses.is_dataclass(tp):
            hints = _hints(tp)
            if part not in hints:
                raise _unknown_key(path, part, list(hints), tp)
            key: Any = part
            child_tp = hints[part]
        elif isinstance(node, list):  # list[X] / tuple[X, ...], or a list inside a free-form value
            key = _index(path, part, node)
            is_seq, item = _sequence_item(tp)
            child_tp = item if is_seq else Any
        else:  # dict[str, X] or a mapping inside a free-form value
            key = part
            args = typing.get_args(tp) if typing.get_origin(tp) is dict else ()
            child_tp = args[1] if len(args) == 2 else Any
        child_path = _join(path, key)

        # 2. the last key gets the value
        if depth == len(parts) - 1:
            node[key] = _coerce(child_tp, raw)
            return

        # 3. otherwise descend, creating missing mappings
        inner, _ = _strip_optional(child_tp)
        if not _is_container_type(inner):
            raise ConfigError(
                f"{child_path}: is of type {_describe(child_tp)} and has no sub-keys (cannot set '{'.'.join(parts)}')"
            )
        if isinstance(node, dict) and key not in node:
            if _sequence_item(inner)[0] and dataclasses.is_dataclass(tp):
                default = _field_default(tp, key)
                node[key] = config_to_dict(default) if default is not dataclasses.MISSING else []
            else:
                node[key] = {}
        child = node[key]
        wants_list = _sequence_item(inner)[0]
        if wants_list and not isinstance(child, list):
            raise _type_error(child_path, _describe(inner), child)
        if not wants_list and not isinstance(child, (Mapping, list)):
            raise _type_error(child_path, "mapping", child)
        if isinstance(child, list) and inner is not Any and not wants_list:
            raise _type_error(child_path, "mapping", child)
        if isinstance(child, Mapping) and not isinstance(child, dict):
            child = node[key] = dict(child)
        node, tp, path = child, inner, child_path


def _index(path: str, part: str, items: list[Any]) -> int:
    if not part.isdigit() or not part.isascii():
        valid = f"0..{len(items) - 1}" if items else "none, the list is empty"
        raise ConfigError(f"{_join(path, part)}: expected a list index (valid: {valid})")
    idx = int(part)
    if idx >= len(items):
        valid = f"0..{len(items) - 1}" if items else "none, the list is empty"
        raise ConfigError(f"{_join(path, part)}: index {idx} out of range (valid: {valid})")
    return idx
