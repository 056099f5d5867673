"""Tests of bce3s.config, its generic machinery bce3s._config_parse, and bce3s.engine.validate.

Covers: round trips (dump ∘ load == id), frozen configs, YAML files with a stages list, unknown keys and wrong
types, ``--set`` overrides, the range checks of ``Config.check`` reached through ``load_config``, the registry
checks and loss dry builds of ``validate_config``, and hypothesis properties (any input raises nothing but
ConfigError; random valid configs round-trip). Errors are checked by behaviour, not wording: a one-line
ConfigError that starts with the key path, names the offending value, suggests the closest valid key or name, and
lists the valid ones as the schema or the registry has them.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import types
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bce3s._config_parse import config_from_dict, config_to_dict, parse_overrides
from bce3s.config import (
    Config,
    DataConfig,
    EvalConfig,
    LogConfig,
    LossConfig,
    MixingConfig,
    ModelConfig,
    OptimConfig,
    RuntimeConfig,
    StageConfig,
    dump_config,
    load_config,
)
from bce3s.engine.validate import validate_config
from bce3s.errors import ConfigError

HYPO = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def rich_config() -> Config:
    """A config that sets every kind of field away from its default (two stages, nested params)."""
    return Config(
        data=DataConfig(
            dataset="cifar100_lt",
            root="/data/cifar 100",
            download=True,
            imbalance_factor=50.0,
            order="random",
            subset_seed=3,
            val_per_class=20,
            train_list="lists/train.txt",
            preset="cifar",
            cutout=0,
            image_size=32,
        ),
        model=ModelConfig(name="resnet32", head="linear", projector_dim=64, compile=True),
        stages=[
            StageConfig(
                name="stage1",
                epochs=200,
                loss=LossConfig(
                    "bce3s",
                    {
                        "temperature": 0.5,
                        "neg_class_ratio": 0.4,
                        "schedule": [1, 2.5, "x", None],
                        "nested": {"a": None, "b": True, "c": {"d": [[]]}},
                        "yes": "yes",  # a string YAML 1.1 would read as a bool: must stay a string
                    },
                ),
                optim=OptimConfig(lr=0.1, grad_clip=5.0, warmup_epochs=5, min_lr=1e-20),
                mixing=MixingConfig(enabled=True, alpha=0.5, rho=0.5),
            ),
            StageConfig(
                name="stage2",
                epochs=10,
                sampler="class_balanced",
                loss=LossConfig("cb_bce", {"beta": 0.999}),
                optim=OptimConfig(name="adamw", lr=1e-4, weight_decay=0.0, scheduler="constant"),
                freeze_backbone=True,
                bn_mode="eval",
                reset_head=True,
                max_norm=0.1,
                logit_adjust_tau=1.0,
                augment=False,
                val_every=2,
                init_from="best_val",
            ),
        ],
        eval=EvalConfig(batch_size=512, tta_flip=False, select_metric="top1"),
        log=LogConfig(tensorboard=True),
        runtime=RuntimeConfig(device="cuda:1", seed=7, amp="bf16", pipeline="loader", nan_policy="skip", threads=4),
    )


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def message(fn: typing.Callable[[], Any]) -> str:
    """The message of the ConfigError that ``fn`` raises; it must be one line."""
    with pytest.raises(ConfigError) as info:
        fn()
    text = str(info.value)
    assert text and "\n" not in text
    return text


def error_at(fn: typing.Callable[[], Any], path: str, *mentions: str) -> str:
    """``fn`` raises a one-line ConfigError that starts with ``path:`` and contains every one of ``mentions``."""
    text = message(fn)
    assert text.startswith(f"{path}:"), (path, text)
    missing = [m for m in mentions if m not in text]
    assert not missing, f"{text!r} does not mention {missing}"
    return text


def keys_of(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def lists_all(text: str, names: typing.Iterable[str]) -> bool:
    """Whether every one of ``names`` appears in ``text`` (the valid keys or names of a message)."""
    return all(name in text for name in names)


# --------------------------------------------------------------------------------------------------------- #
# round trips


def test_round_trip_defaults(tmp_path: Path) -> None:
    cfg = Config()
    assert config_from_dict(Config, config_to_dict(cfg)) == cfg
    assert config_from_dict(Config, {}) == cfg
    assert load_config(write(tmp_path, dump_config(cfg))) == cfg
    assert load_config(None) == cfg


def test_round_trip_rich(tmp_path: Path) -> None:
    cfg = rich_config()
    cfg.check()
    plain = config_to_dict(cfg)
    assert isinstance(plain["stages"], list) and isinstance(plain["stages"][1], dict)
    assert plain["stages"][0]["loss"]["params"]["nested"] == {"a": None, "b": True, "c": {"d": [[]]}}
    assert config_from_dict(Config, plain) == cfg
    text = dump_config(cfg)
    assert yaml.safe_load(text) == plain
    assert load_config(write(tmp_path, text)) == cfg
    # the dump keeps the dataclass field order
    assert list(yaml.safe_load(text)) == ["data", "model", "stages", "eval", "log", "runtime"]


def test_from_dict_copies_input() -> None:
    params = {"schedule": [1, 2], "nested": {"a": 1}}
    data = {"stages": [{"loss": {"params": params}}]}
    before = copy.deepcopy(data)
    cfg = config_from_dict(Config, data)
    cfg.stages[0].loss.params["schedule"].append(3)
    cfg.stages[0].loss.params["nested"]["b"] = 2
    assert data == before


# --------------------------------------------------------------------------------------------------------- #
# frozen


@pytest.mark.parametrize(
    ("target", "name", "value"),
    [
        (lambda c: c, "stages", ()),
        (lambda c: c.runtime, "seed", 1),
        (lambda c: c.data, "dataset", "cifar10_lt"),
        (lambda c: c.stages[0], "epochs", 3),
        (lambda c: c.stages[0].loss, "name", "ce"),
        (lambda c: c.stages[1].optim, "lr", 1.0),
    ],
)
def test_configs_are_frozen(target: typing.Callable[[Config], Any], name: str, value: Any) -> None:
    cfg = rich_config()
    obj = target(cfg)
    before = dump_config(cfg)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(obj, name, value)
    assert dump_config(cfg) == before


def test_frozen_stages_are_a_tuple_and_replace_derives_copies() -> None:
    cfg = config_from_dict(Config, {"stages": [{"name": "a"}, {"name": "b"}]})
    assert isinstance(cfg.stages, tuple) and Config(stages=list(cfg.stages)) == cfg
    with pytest.raises(AttributeError):
        cfg.stages.append(StageConfig())  # type: ignore[attr-defined]
    changed = dataclasses.replace(cfg, runtime=dataclasses.replace(cfg.runtime, device="cpu"))
    assert changed.runtime.device == "cpu" and cfg.runtime.device == "auto"
    assert changed.stages == cfg.stages


# --------------------------------------------------------------------------------------------------------- #
# YAML files


def test_yaml_file_with_stages(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
data:
  dataset: cifar10_lt
  imbalance_factor: 10          # int for a float field
stages:
  - name: stage1
    epochs: 3
    optim: {lr: 1e-3}           # YAML 1.1 reads this as a string
    loss:
      name: bce3s
      params: {temperature: 0.5, neg_class_ratio: 4e-1, tag: abc, ks: [1, 2]}
  - name: stage2                # every other key from the StageConfig defaults
    freeze_backbone: true
    loss: {name: cb_bce}
runtime:
  seed: 5
""",
    )
    cfg = load_config(path)
    assert cfg.data == DataConfig(dataset="cifar10_lt", imbalance_factor=10.0)
    assert isinstance(cfg.data.imbalance_factor, float)
    s1, s2 = cfg.stages
    assert (s1.name, s1.epochs, s1.optim.lr) == ("stage1", 3, 0.001)
    assert s1.optim == OptimConfig(lr=0.001)
    assert s1.loss.params == {"temperature": 0.5, "neg_class_ratio": 0.4, "tag": "abc", "ks": [1, 2]}
    assert s2 == StageConfig(name="stage2", freeze_backbone=True, loss=LossConfig(name="cb_bce"))
    assert s2.epochs == 10 and s2.optim == OptimConfig() and s2.mixing == MixingConfig()
    assert cfg.model == ModelConfig() and cfg.runtime == RuntimeConfig(seed=5)


def test_yaml_empty_file_is_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "# nothing\n")) == Config()


@pytest.mark.parametrize(("text", "mention"), [("- a\n- b\n", "mapping"), ("data: [1\n", "YAML")])
def test_yaml_file_errors(tmp_path: Path, text: str, mention: str) -> None:
    path = write(tmp_path, text)
    error_at(lambda: load_config(path), str(path), mention)


def test_missing_file(tmp_path: Path) -> None:
    text = message(lambda: load_config(tmp_path / "nope.yaml"))
    assert str(tmp_path / "nope.yaml") in text and "not found" in text


# --------------------------------------------------------------------------------------------------------- #
# unknown keys and wrong types


@pytest.mark.parametrize(
    ("data", "path", "suggestion", "schema"),
    [
        ({"dat": {}}, "dat", "data", Config),
        ({"zzz": 1}, "zzz", None, Config),
        ({"stages": [{}, {"optim": {"lrr": 0.1}}]}, "stages.1.optim.lrr", "lr", OptimConfig),
        ({"stages": [{"epoch": 3}]}, "stages.0.epoch", "epochs", StageConfig),
        ({"log": {1: True}}, "log.1", None, LogConfig),
        ({"log": {"tensorbord": True}}, "log.tensorbord", "tensorboard", LogConfig),
    ],
)
def test_unknown_key(data: dict[str, Any], path: str, suggestion: str | None, schema: type) -> None:
    text = error_at(lambda: config_from_dict(Config, data), path)
    assert lists_all(text, keys_of(schema))
    suggested = [k for k in keys_of(schema) if f"'{k}'" in text]
    assert suggested == ([suggestion] if suggestion else [])


@pytest.mark.parametrize(
    ("overrides", "path", "deeper"),
    [
        (["stages.0.lr=0.1"], "stages.0.lr", ["stages.0.optim.lr"]),
        (["stages.0.enabled=true"], "stages.0.enabled", ["stages.0.mixing.enabled"]),
        (["stages.0.epochs=3", "stages.0.weight_decay=0"], "stages.0.weight_decay", ["stages.0.optim.weight_decay"]),
        (["tensorboard=true"], "tensorboard", ["log.tensorboard"]),
        (["batch_size=8"], "batch_size", ["stages.0.batch_size", "eval.batch_size"]),
    ],
)
def test_unknown_key_suggests_the_field_one_level_deeper(overrides: list[str], path: str, deeper: list[str]) -> None:
    """A key that belongs to a nested section suggests its full path (``stages.0.lr`` -> ``stages.0.optim.lr``)."""
    text = error_at(lambda: load_config(None, overrides), path)
    for full in deeper:
        assert f"'{full}'" in text
        value = overrides[-1].split("=", 1)[1]
        load_config(None, [f"{full}={value}"])  # the suggestion is a valid key


def test_unknown_key_in_yaml_suggests_the_field_one_level_deeper() -> None:
    text = error_at(lambda: config_from_dict(Config, {"stages": [{}, {"lr": 0.1}]}), "stages.1.lr")
    assert "'stages.1.optim.lr'" in text


def test_unknown_key_through_load_config(tmp_path: Path) -> None:
    path = write(tmp_path, "model:\n  nmae: resnet32\n")
    text = error_at(lambda: load_config(path), "model.nmae", "'name'")
    assert lists_all(text, keys_of(ModelConfig))


@pytest.mark.parametrize(
    ("data", "path", "expected"),
    [
        # int
        ({"stages": [{"epochs": 2.5}]}, "stages.0.epochs", "int"),
        ({"stages": [{"epochs": "3"}]}, "stages.0.epochs", "int"),
        ({"stages": [{"epochs": True}]}, "stages.0.epochs", "int"),  # bool != int
        ({"runtime": {"seed": None}}, "runtime.seed", "int"),
        # float
        ({"stages": [{}, {"optim": {"lr": "fast"}}]}, "stages.1.optim.lr", "float"),
        ({"stages": [{"optim": {"lr": False}}]}, "stages.0.optim.lr", "float"),
        ({"stages": [{"optim": {"lr": [0.1]}}]}, "stages.0.optim.lr", "float"),
        # bool
        ({"data": {"download": 1}}, "data.download", "bool"),
        ({"data": {"download": "yes please"}}, "data.download", "bool"),
        # str
        ({"data": {"root": 3}}, "data.root", "str"),
        ({"model": {"name": ["resnet32"]}}, "model.name", "str"),
        # optional
        ({"data": {"image_size": "32"}}, "data.image_size", "null"),
        ({"stages": [{"optim": {"grad_clip": "x"}}]}, "stages.0.optim.grad_clip", "null"),
        # list (a tuple field: YAML gives lists)
        ({"stages": {"name": "s"}}, "stages", "list"),
        ({"stages": None}, "stages", "list"),
        ({"stages": ({"name": "s"},)}, "stages", "list"),
        ({"stages": [{}, 3]}, "stages.1", "mapping"),
        # nested dataclass
        ({"data": 3}, "data", "mapping"),
        ({"stages": [{"optim": "sgd"}]}, "stages.0.optim", "mapping"),
        # dict[str, Any]
        ({"stages": [{"loss": {"params": [1]}}]}, "stages.0.loss.params", "mapping"),
        ({"stages": [{"loss": {"params": {1: 2}}}]}, "stages.0.loss.params", "str keys"),
        (
            {"stages": [{"loss": {"params": {"when": [datetime.date(2024, 1, 2)]}}}]},
            "stages.0.loss.params.when.0",
            "YAML",
        ),
    ],
)
def test_wrong_type(data: dict[str, Any], path: str, expected: str) -> None:
    error_at(lambda: config_from_dict(Config, data), path, expected)


def test_long_values_are_shortened() -> None:
    text = error_at(lambda: config_from_dict(Config, {"data": {"root": list(range(100))}}), "data.root", "[0, 1, 2")
    assert len(text) < 150 and "99" not in text


def test_top_level_not_a_mapping() -> None:
    error_at(lambda: config_from_dict(Config, [1]), "config", "mapping", "[1]")


def test_int_accepted_for_float_and_none_for_optional() -> None:
    cfg = config_from_dict(
        Config,
        {"data": {"imbalance_factor": 7, "image_size": None, "preset": None}, "stages": [{"optim": {"lr": 1}}]},
    )
    assert cfg.data.imbalance_factor == 7.0 and type(cfg.data.imbalance_factor) is float
    assert cfg.stages[0].optim.lr == 1.0 and type(cfg.stages[0].optim.lr) is float
    assert cfg.data.image_size is None and cfg.data.preset is None
    cfg = config_from_dict(Config, {"data": {"image_size": 224}, "stages": [{"max_norm": 0}]})
    assert cfg.data.image_size == 224
    assert cfg.stages[0].max_norm == 0.0 and type(cfg.stages[0].max_norm) is float


@pytest.mark.parametrize(("text", "value"), [("1e-3", 1e-3), ("-2E+5", -2e5), (".5e1", 5.0), ("3.e2", 300.0)])
def test_exponent_strings_are_floats(text: str, value: float) -> None:
    assert isinstance(yaml.safe_load(f"x: {text}")["x"], str)  # the YAML 1.1 quirk this works around
    cfg = config_from_dict(
        Config, yaml.safe_load(f"stages: [{{optim: {{lr: {text}}}, loss: {{params: {{t: {text}}}}}}}]")
    )
    assert cfg.stages[0].optim.lr == value
    assert cfg.stages[0].loss.params == {"t": value}


# --------------------------------------------------------------------------------------------------------- #
# overrides


def test_override_nested_and_list_index(tmp_path: Path) -> None:
    path = write(tmp_path, "stages:\n  - {name: s1, epochs: 5}\n  - {name: s2, epochs: 6}\nruntime: {seed: 1}\n")
    cfg = load_config(path, ["runtime.seed=9", "stages.1.epochs=2", "stages.1.optim.lr=1e-3", "data.download=true"])
    assert cfg.runtime.seed == 9
    assert [s.epochs for s in cfg.stages] == [5, 2]
    assert cfg.stages[1].optim.lr == 0.001 and cfg.stages[0].optim.lr == OptimConfig().lr
    assert cfg.data.download is True
    # later overrides win
    assert load_config(path, ["runtime.seed=2", "runtime.seed=3"]).runtime.seed == 3


def test_override_default_stage_list() -> None:
    # no file: the default list of one stage can be indexed
    cfg = load_config(None, ["stages.0.epochs=3", "stages.0.name=warmup"])
    assert cfg.stages == (StageConfig(name="warmup", epochs=3),)


def test_override_params_dict() -> None:
    data = parse_overrides(
        {},
        [
            "stages.0.loss.params.temperature=0.5",
            "stages.0.loss.params.sched.start=3",
            "stages.0.loss.params.ks=[1, 2]",
            "stages.0.loss.params.ks.1=5",
            "stages.0.loss.params.opts={a: 1, b: null}",
            "stages.0.loss.params.label=hello world",
            "stages.0.loss.params.when=2024-01-02",  # a YAML date is kept as text in a free-form value
        ],
        Config,
    )
    params = data["stages"][0]["loss"]["params"]
    assert params == {
        "temperature": 0.5,
        "sched": {"start": 3},
        "ks": [1, 5],
        "opts": {"a": 1, "b": None},
        "label": "hello world",
        "when": "2024-01-02",
    }
    assert config_from_dict(Config, data).stages[0].loss.params == params


@pytest.mark.parametrize(
    ("override", "path", "value"),
    [
        ("stages.0.optim.lr=1e-3", ("stages", 0, "optim", "lr"), 0.001),
        ("stages.0.optim.lr=inf", ("stages", 0, "optim", "lr"), float("inf")),
        ("stages.0.optim.grad_clip=null", ("stages", 0, "optim", "grad_clip"), None),
        ("stages.0.optim.grad_clip=None", ("stages", 0, "optim", "grad_clip"), None),
        ("stages.0.optim.nesterov=true", ("stages", 0, "optim", "nesterov"), True),
        ("stages.0.optim.nesterov=True", ("stages", 0, "optim", "nesterov"), True),
        ("stages.0.epochs = 7", ("stages", 0, "epochs"), 7),
        ("stages.0.name=2", ("stages", 0, "name"), "2"),  # str field: the text, not the int
        ("stages.0.name='quoted'", ("stages", 0, "name"), "quoted"),
        ("runtime.device=cuda:0", ("runtime", "device"), "cuda:0"),
        ("data.root=a=b", ("data", "root"), "a=b"),  # only the first '=' splits
        ("data.root=2024-01-02", ("data", "root"), "2024-01-02"),
        ("stages.0.loss.params.x=(1, 2)", ("stages", 0, "loss", "params", "x"), [1, 2]),
        ("stages.0.loss.params.x=1+2j", ("stages", 0, "loss", "params", "x"), "1+2j"),
        ("data={dataset: mnist_lt}", ("data",), {"dataset": "mnist_lt"}),
    ],
)
def test_override_values(override: str, path: tuple[Any, ...], value: Any) -> None:
    node: Any = parse_overrides({}, [override], Config)
    for key in path:
        node = node[key]
    assert node == value and type(node) is type(value)


def test_override_does_not_modify_input() -> None:
    data = {"stages": [{"epochs": 5, "loss": {"params": {"a": 1}}}]}
    before = copy.deepcopy(data)
    out = parse_overrides(data, ["stages.0.epochs=1", "stages.0.loss.params.a=2", "runtime.seed=1"], Config)
    assert data == before
    assert out["stages"][0]["epochs"] == 1 and out["runtime"] == {"seed": 1}


@pytest.mark.parametrize(
    ("data", "override", "path", "valid"),
    [
        ({}, "stages.1.epochs=3", "stages.1", "0..0"),
        ({"stages": [{}, {}, {}]}, "stages.3.epochs=3", "stages.3", "0..2"),
        ({"stages": []}, "stages.0.epochs=3", "stages.0", "empty"),
        ({}, "stages.-1.epochs=3", "stages.-1", "0..0"),
        ({}, "stages.first.epochs=3", "stages.first", "0..0"),
        ({"stages": [{"loss": {"params": {"ks": 1}}}]}, "stages.0.loss.params.ks.2=1", "stages.0.loss.params.ks", ""),
        (
            {"stages": [{"loss": {"params": {"ks": [1]}}}]},
            "stages.0.loss.params.ks.2=1",
            "stages.0.loss.params.ks.2",
            "0..0",
        ),
    ],
)
def test_override_bad_index(data: dict[str, Any], override: str, path: str, valid: str) -> None:
    error_at(lambda: parse_overrides(data, [override], Config), path, valid)


@pytest.mark.parametrize(
    ("override", "path", "suggestion", "schema"),
    [
        ("runtime.sed=1", "runtime.sed", "seed", RuntimeConfig),
        ("stages.0.optim.lrr=1", "stages.0.optim.lrr", "lr", OptimConfig),
        ("trainer.epochs=1", "trainer", None, Config),
    ],
)
def test_override_unknown_key(override: str, path: str, suggestion: str | None, schema: type) -> None:
    text = error_at(lambda: parse_overrides({}, [override], Config), path)
    assert lists_all(text, keys_of(schema))
    assert [k for k in keys_of(schema) if f"'{k}'" in text] == ([suggestion] if suggestion else [])


@pytest.mark.parametrize(
    ("override", "path"), [("runtime.seed.x=1", "runtime.seed"), ("data.preset.x=1", "data.preset")]
)
def test_override_below_a_scalar(override: str, path: str) -> None:
    error_at(lambda: parse_overrides({}, [override], Config), path, override.split("=")[0])


@pytest.mark.parametrize("override", ["runtime.seed", "=3", "a..b=1", ".a=1", "a.=1", " =1", ""])
def test_override_malformed(override: str) -> None:
    text = message(lambda: parse_overrides({}, [override], Config))
    assert repr(override) in text and "--set" in text


@pytest.mark.parametrize(
    ("data", "override", "path"),
    [
        ({"data": 3}, "data.root=x", "data"),
        ({"stages": {"a": 1}}, "stages.0.epochs=1", "stages"),
        ({"stages": [5]}, "stages.0.epochs=1", "stages.0"),
    ],
)
def test_override_into_wrong_structure(data: dict[str, Any], override: str, path: str) -> None:
    error_at(lambda: parse_overrides(data, [override], Config), path)


def test_override_wrong_type_reported_by_load_config() -> None:
    error_at(lambda: load_config(None, ["stages.0.epochs=1.5"]), "stages.0.epochs", "1.5")
    error_at(lambda: load_config(None, ["data.download=maybe"]), "data.download", "'maybe'")


# --------------------------------------------------------------------------------------------------------- #
# range checks of Config.check, reached through load_config


@pytest.mark.parametrize(
    ("override", "path", "shown"),
    [
        ("stages.0.optim.lr=0", "stages.0.optim.lr", "0"),
        ("stages.0.optim.lr=-1e-3", "stages.0.optim.lr", "-0.001"),
        ("stages.0.optim.lr=nan", "stages.0.optim.lr", "nan"),
        ("data.imbalance_factor=0.5", "data.imbalance_factor", "0.5"),
        ("stages.0.epochs=0", "stages.0.epochs", "0"),
        ("stages.0.max_norm=1.5", "stages.0.max_norm", "1.5"),
        ("runtime.nan_policy=ignore", "runtime.nan_policy", "'ignore'"),
        ("runtime.device=tpu", "runtime.device", "'tpu'"),
    ],
)
def test_range_checks(override: str, path: str, shown: str) -> None:
    error_at(lambda: load_config(None, [override]), path, f"got {shown}" if shown[0] != "'" else shown)


def test_range_checks_from_file(tmp_path: Path) -> None:
    path = write(tmp_path, "stages:\n  - name: s1\n  - name: s2\n    optim: {lr: 0}\n")
    error_at(lambda: load_config(path), "stages.1.optim.lr")
    path = write(tmp_path, "stages:\n  - name: s1\n  - name: s1\n")
    error_at(lambda: load_config(path), "stages.1.name", "'s1'")
    # valid boundary values pass
    cfg = load_config(None, ["stages.0.loss.params.neg_class_ratio=1", "data.imbalance_factor=1", "stages.0.epochs=1"])
    validate_config(cfg)
    assert cfg.stages[0].loss.params == {"neg_class_ratio": 1} and cfg.data.imbalance_factor == 1.0


# --------------------------------------------------------------------------------------------------------- #
# validate_config: names asked of the registries, losses dry-built


def _validate(*overrides: str) -> None:
    validate_config(load_config(None, list(overrides)))


def _registry(name: str) -> typing.Collection[str]:
    import bce3s.data
    import bce3s.losses
    import bce3s.models

    module, attr = name.rsplit(".", 1)
    return getattr({"data": bce3s.data, "losses": bce3s.losses, "models": bce3s.models}[module], attr)


@pytest.mark.parametrize(
    ("override", "path", "registry", "suggestion"),
    [
        ("stages.0.loss.name=bce4s", "stages.0.loss.name", "losses.LOSSES", "bce3s"),
        ("stages.0.loss.name=fancy", "stages.0.loss.name", "losses.LOSSES", None),
        ("model.name=resnet33", "model.name", "models.MODELS", "resnet32"),
        ("model.head=norm", "model.head", "models.HEADS", "normalized"),
        ("data.dataset=cifar100", "data.dataset", "data.DATASETS", "cifar100_lt"),
        ("data.preset=cifr", "data.preset", "data.PRESETS", "cifar"),
        ("stages.0.sampler=sqr", "stages.0.sampler", "data.SAMPLER_KINDS", "sqrt"),
        ("stages.0.mixing.sampler=balanced", "stages.0.mixing.sampler", "data.SAMPLER_KINDS", "class_balanced"),
        ("runtime.pipeline=gpus", "runtime.pipeline", "data.PIPELINES", "gpu"),
    ],
)
def test_unknown_names_list_the_registry(override: str, path: str, registry: str, suggestion: str | None) -> None:
    value = override.split("=")[1]
    text = error_at(lambda: _validate(override), path, repr(value))
    valid = _registry(registry)
    assert lists_all(text, valid)
    assert [n for n in valid if f"'{n}'" in text] == ([suggestion] if suggestion else [])


def test_a_name_added_to_a_registry_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    import bce3s.data
    import bce3s.losses

    with pytest.raises(ConfigError):
        _validate("data.dataset=my_lt")
    with pytest.raises(ConfigError):
        _validate("stages.0.loss.name=my_loss")
    monkeypatch.setitem(bce3s.data.DATASETS, "my_lt", bce3s.data.DATASETS["digits_lt"])
    monkeypatch.setitem(bce3s.losses.LOSSES, "my_loss", bce3s.losses.LOSSES["ce"])
    _validate("data.dataset=my_lt", "stages.0.loss.name=my_loss")
    monkeypatch.undo()
    with pytest.raises(ConfigError):
        _validate("data.dataset=my_lt")


@pytest.mark.parametrize(
    ("overrides", "param", "shown"),
    [
        (["stages.0.loss.params.neg_class_ratio=0"], "neg_class_ratio", "0"),
        (["stages.0.loss.params.neg_class_ratio=1.5"], "neg_class_ratio", "1.5"),
        (["stages.0.loss.params.neg_class_ratio=all"], "neg_class_ratio", "all"),
        (["stages.0.loss.params.temperature=0"], "temperature", "0"),
        (["stages.0.loss.params.temperature=-0.5"], "temperature", "-0.5"),
        (["stages.0.loss.params.temperature=true"], "temperature", "True"),
        (["stages.0.loss.params.contrastive_weight=-1"], "contrastive_weight", "-1"),
        (["stages.0.loss.params.logit_clip=-1"], "logit_clip", "-1"),
        (["stages.0.loss.name=cb_bce", "stages.0.loss.params.beta=1"], "beta", "1"),
        (["stages.0.loss.name=focal", "stages.0.loss.params.gamma=-1"], "gamma", "-1"),
        (["stages.0.loss.name=logit_adjusted", "stages.0.loss.params.tau=-1"], "tau", "-1"),
        (["stages.0.loss.name=ldam", "stages.0.loss.params.max_margin=-1"], "max_margin", "-1"),
    ],
)
def test_loss_rejects_a_bad_parameter_value(overrides: list[str], param: str, shown: str) -> None:
    text = error_at(lambda: _validate(*overrides), f"stages.0.loss.params.{param}", shown)
    assert "unknown parameter" not in text


def test_unknown_loss_parameter_lists_the_loss_parameters() -> None:
    from bce3s.losses import loss_params

    text = error_at(
        lambda: _validate("stages.0.loss.params.temprature=0.5"), "stages.0.loss.params.temprature", "'bce3s'"
    )
    assert lists_all(text, loss_params("bce3s"))
    assert [p for p in loss_params("bce3s") if f"'{p}'" in text] == ["temperature"]


def test_temperature_on_cb_bce_is_an_unknown_parameter_not_a_range_error() -> None:
    """cb_bce has no temperature: 0 is reported as an unknown parameter, whatever its value."""
    from bce3s.losses import loss_params

    two_stages = ["stages.0.name=a", "stages.1.name=b"]
    base = {"stages": [{"name": "a"}, {"name": "b", "loss": {"name": "cb_bce"}}]}
    for value in ("0", "0.5"):
        data = parse_overrides(base, [*two_stages, f"stages.1.loss.params.temperature={value}"], Config)
        cfg = config_from_dict(Config, data)
        cfg.check()  # the config layer knows no loss parameter
        text = error_at(lambda cfg=cfg: validate_config(cfg), "stages.1.loss.params.temperature", "'cb_bce'")
        assert "unknown parameter" in text and lists_all(text, loss_params("cb_bce"))


def test_shipped_losses_validate_with_their_defaults() -> None:
    from bce3s.losses import LOSSES

    for name in LOSSES:
        _validate(f"stages.0.loss.name={name}")


# --------------------------------------------------------------------------------------------------------- #
# properties

SCHEMA_KEYS = sorted(
    {
        f.name
        for cls in (
            Config,
            DataConfig,
            ModelConfig,
            StageConfig,
            LossConfig,
            OptimConfig,
            MixingConfig,
            EvalConfig,
            LogConfig,
            RuntimeConfig,
        )
        for f in dataclasses.fields(cls)
    }
)
PLAIN_SCALARS = (
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=12)
)
PLAIN_VALUES = st.recursive(
    PLAIN_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
ANY_SCALARS = (
    PLAIN_SCALARS
    | st.floats()
    | st.sampled_from([1e-3, "1e-3", "-1E5", b"x", 1 + 2j, (1, 2), {1, 2}, datetime.date(2024, 1, 2), object()])
)
ANY_KEYS = st.sampled_from(SCHEMA_KEYS) | st.text(max_size=6) | st.integers(0, 3) | st.none()
ANY_VALUES = st.recursive(
    ANY_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(ANY_KEYS, inner, max_size=4),
    max_leaves=12,
)


def valid_value(tp: Any, *, garbage: bool = False) -> st.SearchStrategy[Any]:
    """Values of annotation ``tp`` as YAML would give them; with ``garbage``, sometimes anything at all."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        strat = st.one_of(*[valid_value(a, garbage=garbage) for a in typing.get_args(tp)])
    elif tp is type(None):
        strat = st.none()
    elif tp is bool:
        strat = st.booleans()
    elif tp is int:
        strat = st.integers(-(2**70), 2**70)
    elif tp is float:
        strat = st.floats(allow_nan=False) | st.integers(-1000, 1000)
    elif tp is str:
        strat = st.text(max_size=12)
    elif dataclasses.is_dataclass(tp):
        strat = valid_dict(tp, garbage=garbage)
    elif origin in (list, tuple):  # YAML gives lists, also for the tuple fields of the frozen configs
        strat = st.lists(valid_value(typing.get_args(tp)[0], garbage=garbage), max_size=3)
    elif origin is dict:
        strat = st.dictionaries(st.text(max_size=8), PLAIN_VALUES, max_size=3)
    else:
        raise AssertionError(f"no strategy for {tp!r}")
    # garbage in about one field of six, so that most examples get deep into the schema
    return st.one_of(strat, strat, strat, strat, strat, ANY_VALUES) if garbage else strat


def valid_dict(cls: type, *, garbage: bool = False) -> st.SearchStrategy[dict[Any, Any]]:
    hints = typing.get_type_hints(cls)
    fields = st.fixed_dictionaries({}, optional={n: valid_value(t, garbage=garbage) for n, t in hints.items()})
    if not garbage:
        return fields
    extra = st.one_of(st.just({}), st.just({}), st.just({}), st.dictionaries(ANY_KEYS, ANY_VALUES, max_size=1))
    return st.builds(lambda a, b: {**a, **b}, fields, extra)


def schema_paths(tp: Any, prefix: str = "") -> list[str]:
    """Every settable dotted path of ``tp`` (lists: indices 0..2; free-form mappings: a few sample keys)."""
    tp = next((a for a in typing.get_args(tp) if a is not type(None)), tp) if typing.get_origin(tp) else tp
    if dataclasses.is_dataclass(tp):
        out = []
        for name, sub in typing.get_type_hints(tp).items():
            out += [f"{prefix}{name}", *schema_paths(sub, f"{prefix}{name}.")]
        return out
    if typing.get_origin(tp) in (list, tuple):
        return [p for i in range(3) for p in [f"{prefix}{i}", *schema_paths(typing.get_args(tp)[0], f"{prefix}{i}.")]]
    if typing.get_origin(tp) is dict:
        return [f"{prefix}{k}" for k in ("temperature", "neg_class_ratio", "beta", "a.b", "ks.0")]
    return []


def _load_or_config_error(data: Any, overrides: list[str] | None = None) -> None:
    try:
        if overrides is not None:
            data = parse_overrides(data, overrides, Config)
        cfg = config_from_dict(Config, data)
        validate_config(cfg)
    except ConfigError as err:
        assert "\n" not in str(err)


@HYPO
@given(valid_dict(Config, garbage=True) | ANY_VALUES)
def test_property_from_dict_raises_only_config_error(data: Any) -> None:
    _load_or_config_error(data)


OVERRIDE_PARTS = st.sampled_from([*SCHEMA_KEYS, "0", "1", "2", "-1", "temperature", ""]) | st.text(max_size=5)
OVERRIDE_KEYS = st.one_of(
    st.sampled_from(schema_paths(Config)),  # valid paths
    st.builds(  # valid paths with a random part appended or swapped in
        lambda path, part, pos: ".".join(path.split(".")[:pos] + [part] + path.split(".")[pos + 1 :]),
        st.sampled_from(schema_paths(Config)),
        OVERRIDE_PARTS,
        st.integers(0, 6),
    ),
    st.lists(OVERRIDE_PARTS, min_size=1, max_size=6).map(".".join),  # random paths
)
OVERRIDE_VALUES = st.sampled_from(
    [
        "1",
        "0",
        "-1",
        "1e-3",
        "1.5",
        "true",
        "null",
        "None",
        "[1, 2]",
        "{a: 1}",
        "(1,)",
        "1+2j",
        "b'x'",
        "{1, 2}",
        "2024-01-02",
        "!!int x",
        "!!binary x",
        "&a [*a]",
        "&a {b: *a}",
        "'quoted'",
        "[",
        "nan",
        "inf",
        "x: y",
        "cuda:0",
        "resnet32",
        "",
        "1:2",
        "0x10",
        "{1: 2}",
    ]
) | st.text(max_size=10)
OVERRIDES = st.builds(
    lambda key, value, eq: key + ("=" if eq else "") + value,
    OVERRIDE_KEYS,
    OVERRIDE_VALUES,
    st.sampled_from([True, True, True, False]),
) | st.text(max_size=20)


@HYPO
@given(valid_dict(Config, garbage=True) | valid_dict(Config), st.lists(OVERRIDES, max_size=4))
def test_property_overrides_raise_only_config_error(data: Any, overrides: list[str]) -> None:
    _load_or_config_error(data, overrides)


@HYPO
@given(valid_dict(Config))
def test_property_valid_configs_round_trip(data: dict[str, Any]) -> None:
    cfg = config_from_dict(Config, data)
    assert config_from_dict(Config, config_to_dict(cfg)) == cfg
    assert config_from_dict(Config, yaml.safe_load(dump_config(cfg))) == cfg


def _loss_blocks() -> st.SearchStrategy[dict[str, Any]]:
    """A registered loss with some of its real parameters set to arbitrary YAML values (or numbers)."""
    from bce3s.losses import LOSSES, loss_params

    def block(name: str) -> st.SearchStrategy[dict[str, Any]]:
        values = PLAIN_VALUES | st.floats(-2, 2) | st.integers(-3, 3)
        params = st.dictionaries(st.sampled_from(sorted(loss_params(name)) or ["x"]), values, max_size=3)
        return st.fixed_dictionaries({"name": st.just(name), "params": params})

    return st.sampled_from(sorted(LOSSES)).flatmap(block)


@HYPO
@given(_loss_blocks())
def test_property_loss_dry_build_raises_only_config_error_at_the_loss(loss: dict[str, Any]) -> None:
    cfg = config_from_dict(Config, {"stages": [{"loss": loss}]})
    try:
        validate_config(cfg)
    except ConfigError as err:
        text = str(err)
        assert "\n" not in text and text.startswith("stages.0.loss"), text
