"""docs/config.md is generated from the config dataclasses and must be current and complete."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

from bce3s import config as config_module
from bce3s.config import Config
from bce3s.config_doc import attribute_help, render_config_reference

REPO = Path(__file__).resolve().parents[1]
REGENERATE = (
    "python -c \"from bce3s.config_doc import render_config_reference as r; open('docs/config.md', 'w').write(r())\""
)


def all_keys(cls: type, prefix: str = "") -> list[tuple[str, type, str]]:
    """``(dotted path, dataclass, field name)`` of every field, found from the type annotations alone."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path = f"{prefix}{f.name}"
        out.append((path, cls, f.name))
        tp = hints[f.name]
        args = typing.get_args(tp)
        if typing.get_origin(tp) is tuple and args and dataclasses.is_dataclass(args[0]):
            out += all_keys(args[0], f"{path}.N.")
        elif dataclasses.is_dataclass(tp):
            out += all_keys(tp, f"{path}.")
    return out


def test_docs_config_md_is_current() -> None:
    text = (REPO / "docs" / "config.md").read_text()
    assert text == render_config_reference(), f"docs/config.md is stale; regenerate it with {REGENERATE}"


def test_every_field_of_every_config_dataclass_is_documented() -> None:
    rendered = render_config_reference()
    keys = all_keys(Config)
    seen = {cls for _, cls, _ in keys}
    in_module = {
        obj
        for obj in vars(config_module).values()
        if dataclasses.is_dataclass(obj) and obj.__module__ == "bce3s.config"
    }
    assert seen == in_module  # every dataclass of bce3s.config is reachable from Config
    for path, cls, name in keys:
        help_text = attribute_help(cls).get(name, "")
        assert help_text, f"{cls.__name__}.{name} has no entry in the Attributes: section of its docstring"
        assert f"`{path}`" in rendered, path
        assert help_text.replace("``", "`").replace("|", "\\|") in rendered, path


def test_attribute_help_reads_shared_entries_and_continuation_lines() -> None:
    class Example:
        """Summary.

        Attributes:
            a, b: shared text
                that goes on.
            c: own text.

        Notes:
            d: not an attribute.
        """

    shared = "shared text that goes on."
    assert attribute_help(Example) == {"a": shared, "b": shared, "c": "own text."}
