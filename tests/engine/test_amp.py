"""``runtime.amp`` off CUDA: bf16 autocasts on the CPU (step, static step, engine run); fp16 is refused for training.

CPU autocast runs convolutions and linear layers in bfloat16. The reference for every bf16 number here is the
same step or run in fp32: the losses must differ (the autocast happened) but stay within bf16's rounding of them.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
import yaml
from test_static_step import _batches, _run, _runtime
from test_trainer import TINY

from bce3s.cli import main
from bce3s.config import Config, RuntimeConfig, load_config
from bce3s.engine import train
from bce3s.engine.build import amp_dtype
from bce3s.engine.capture import StaticStep
from bce3s.engine.step import train_step
from bce3s.engine.validate import validate_config
from bce3s.errors import ConfigError

CPU = torch.device("cpu")


def _bf16(rt):
    rt.amp_dtype = torch.bfloat16
    return rt


def test_bf16_step_runs_the_model_in_bf16_and_the_loss_in_fp32():
    """The convolutions see bf16 under the step's autocast; the loss gets float32 logits; losses track fp32."""
    ref, ref_sched = _runtime(static=False)
    rt, sched = _runtime(static=False)
    _bf16(rt)
    seen: dict[str, torch.dtype] = {}
    conv = next(m for m in rt.raw_model.modules() if isinstance(m, torch.nn.Conv2d))

    def record(module, inputs, output):
        seen.setdefault("conv", output.dtype)

    conv.register_forward_hook(record)
    original = rt.loss_fn.forward

    def loss_forward(logits, *args, **kwargs):
        seen.setdefault("logits", logits.dtype)
        return original(logits, *args, **kwargs)

    rt.loss_fn.forward = loss_forward
    batches = _batches(4)
    ref_losses = torch.tensor(_run(ref, ref_sched, lambda b: train_step(ref, b), batches))
    losses = torch.tensor(_run(rt, sched, lambda b: train_step(rt, b), batches))
    assert seen == {"conv": torch.bfloat16, "logits": torch.float32}
    assert rt.loss_fn.class_memory.memory.dtype == torch.float32 and rt.loss_fn.class_memory.seen.any()
    assert torch.isfinite(losses).all()
    assert not torch.equal(losses, ref_losses)  # the autocast changed the numbers
    torch.testing.assert_close(losses, ref_losses, rtol=2e-2, atol=0.0)  # bf16: 8 mantissa bits, 4 steps


def test_bf16_static_step_trains_like_the_bf16_eager_step():
    """The sync-free step under CPU autocast: same losses and state as the eager step under the same autocast."""
    ref, ref_sched = _runtime(static=False)
    st, st_sched = _runtime(static=True)
    _bf16(ref), _bf16(st)
    batches = _batches(4)
    ref_losses = _run(ref, ref_sched, lambda b: train_step(ref, b), batches)
    st_losses = _run(st, st_sched, StaticStep(st, "static"), batches)
    torch.testing.assert_close(torch.tensor(st_losses), torch.tensor(ref_losses), rtol=1e-5, atol=1e-6)
    fp32, fp32_sched = _runtime(static=True)
    fp32_losses = _run(fp32, fp32_sched, StaticStep(fp32, "static"), batches)
    assert st_losses != fp32_losses  # the static step really ran under the autocast


def _engine_losses(tmp_path, amp: str, step: str) -> tuple[list[float], dict]:
    cfg = copy.deepcopy(TINY)
    cfg["runtime"] = {"device": "cpu", "seed": 3, "amp": amp, "step": step, "threads": 1, "max_steps": 4}
    path = tmp_path / f"{amp}_{step}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    out = tmp_path / f"{amp}_{step}"
    train(load_config(path), out, quiet=True)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows], json.loads((out / "final.json").read_text())


def test_bf16_engine_run_on_cpu(tmp_path):
    """``runtime.amp: bf16`` through the engine on the CPU (both stages, eager and static): finite, close to fp32."""
    fp32, _ = _engine_losses(tmp_path, "none", "eager")
    bf16, final = _engine_losses(tmp_path, "bf16", "eager")
    static, _ = _engine_losses(tmp_path, "bf16", "static")
    assert len(fp32) == len(bf16) == 3 and all(torch.isfinite(torch.tensor(bf16)))
    assert bf16 != fp32
    torch.testing.assert_close(torch.tensor(bf16), torch.tensor(fp32), rtol=2e-2, atol=0.0)
    torch.testing.assert_close(torch.tensor(static), torch.tensor(bf16), rtol=1e-5, atol=1e-6)
    assert 0.0 <= final["test"]["last"]["top1"] <= 100.0


def test_amp_dtype_per_device():
    cuda = torch.device("cuda", 0)

    def cfg(amp):
        return Config(runtime=RuntimeConfig(amp=amp))

    assert amp_dtype(cfg("none"), CPU) is None
    assert amp_dtype(cfg("bf16"), CPU) == amp_dtype(cfg("bf16"), cuda) == torch.bfloat16
    assert amp_dtype(cfg("fp16"), cuda) == torch.float16
    assert amp_dtype(cfg("fp16"), CPU, train=False) is None  # an fp16 run evaluated on the CPU: fp32
    with pytest.raises(ConfigError):
        amp_dtype(cfg("fp16"), CPU)


def test_fp16_on_cpu_is_refused_for_training_only(monkeypatch):
    validate_config(Config(runtime=RuntimeConfig(device="cpu", amp="bf16")))
    with pytest.raises(ConfigError):
        validate_config(Config(runtime=RuntimeConfig(device="cpu", amp="fp16")))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError):
        validate_config(Config(runtime=RuntimeConfig(device="auto", amp="fp16")))
    # eval / predict of a run trained on a GPU (fp16, graphed step), on the CPU
    validate_config(Config(runtime=RuntimeConfig(device="cpu", amp="fp16", step="eager")), training=False)
    validate_config(Config(runtime=RuntimeConfig(device="cpu", step="graphed")), training=False)


def test_cli_train_fp16_on_cpu_exits_2_before_writing(tmp_path, capsys):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY, sort_keys=False))
    out = tmp_path / "out"
    assert main(["train", str(path), "--set", "runtime.amp=fp16", "--device", "cpu", "--out", str(out)]) == 2
    assert not out.exists()
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("native", "amp", "warns"),
    [(False, "bf16", True), (True, "bf16", False), (None, "bf16", False), (False, "none", False)],
)
def test_bf16_on_a_cpu_without_native_bf16_warns_once_at_start(monkeypatch, caplog, native, amp, warns):
    """Emulated bf16 can be slower than fp32: a run says so when it starts, and only then."""
    from bce3s.engine import build, run

    monkeypatch.setattr(build, "cpu_bf16_native", lambda: native)
    with caplog.at_level("WARNING", logger="bce3s.engine"):
        run._tune_backends(RuntimeConfig(amp=amp), CPU)
    assert sum(r.levelname == "WARNING" and r.name == "bce3s.engine" for r in caplog.records) == int(warns)


@pytest.mark.parametrize(
    ("machine", "avx512_bf16", "amx", "expected"),
    [
        ("x86_64", False, False, False),
        ("x86_64", True, False, True),
        ("AMD64", False, True, True),
        ("aarch64", True, True, None),
    ],
)
def test_cpu_bf16_native_reads_the_x86_features(monkeypatch, machine, avx512_bf16, amx, expected):
    from bce3s.engine import build

    monkeypatch.setattr(build.platform, "machine", lambda: machine)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert build.cpu_bf16_native() is expected
