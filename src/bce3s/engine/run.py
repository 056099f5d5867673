"""``train(cfg, out)``: the order of work of a training run.

It follows torchvision's reference script: validate the config, set up devices, build the data, check the output
directory, build the model, run the stages in order (:mod:`bce3s.engine.stages`), then evaluate the test split
once per selected checkpoint and write ``final.json``. The test split is never used before that point. The global
torch settings a run changes (threads, cuDNN, deterministic algorithms) are restored when it ends. The process
(rank 0 under torchrun) holds the run directory's lock (:func:`bce3s.rundir.run_lock`) from the first look at the
run to the end, so two commands never write one run.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bce3s.config import Config, RuntimeConfig, config_from_dict, dump_config
from bce3s.engine import build, provenance
from bce3s.engine.checkpoint import load_checkpoint
from bce3s.engine.distributed import DistInfo, barrier, init_distributed
from bce3s.engine.evaluate import eval_result, eval_stem, evaluate_split, predict_split
from bce3s.engine.logger import EpochLogger
from bce3s.engine.signals import StopFlag
from bce3s.engine.stages import RunContext, run_stage
from bce3s.engine.state import RESUME_FREE, Checkpointer, config_diff, load_resume_state, model_state
from bce3s.engine.validate import validate_config
from bce3s.errors import (
    BCE3SError,
    CheckpointError,
    ConfigError,
    DiskFullError,
    Interrupted,
    RunDirError,
    program_name,
)
from bce3s.rundir import RunDir, atomic_write_bytes, check_writable, run_lock, write_json
from bce3s.seeding import seed_everything

log = logging.getLogger("bce3s.engine")

__all__ = ["TrainResult", "train"]


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        run_dir: the run directory.
        final: the content of ``final.json``.
        model: the trained model (final stage, ``last``), on its device, unwrapped from DDP.
        losses: each stage's loss module by stage name (its state, e.g. the class memory, as at the stage's end).
    """

    run_dir: Path
    final: dict[str, Any] = field(default_factory=dict)
    model: nn.Module | None = None
    losses: dict[str, nn.Module] = field(default_factory=dict)


@contextmanager
def torch_settings(runtime: RuntimeConfig):
    """Apply the run's thread count and determinism; restore every global torch setting on exit.

    cuDNN autotuning is switched on by :func:`_tune_backends` once the device is known; it is restored here too.
    """
    saved = (
        torch.get_num_threads(),
        torch.backends.cudnn.benchmark,
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    )
    try:
        if runtime.threads:
            torch.set_num_threads(runtime.threads)
        yield
    finally:
        threads, benchmark, det, warn_only, cublas = saved
        torch.set_num_threads(threads)
        torch.backends.cudnn.benchmark = benchmark
        torch.use_deterministic_algorithms(det, warn_only=warn_only)
        if cublas is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = cublas


def _tune_backends(runtime: RuntimeConfig, device: torch.device) -> None:
    if runtime.amp == "bf16" and device.type == "cpu" and build.cpu_bf16_native() is False:
        log.warning(
            "runtime.amp: bf16 on a CPU without native bf16 (no AVX512-BF16 or AMX): autocast is emulated and may "
            "be slower than fp32; set runtime.amp=none if it is"
        )
    if device.type == "cuda" and not runtime.deterministic:
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest kernels
    if runtime.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = False
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def _read_config(rd: RunDir) -> Config:
    import yaml

    try:
        return config_from_dict(Config, yaml.safe_load(rd.config.read_text()) or {})
    except Exception as err:  # noqa: BLE001 - any unreadable config means a damaged run directory
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise RunDirError(f"cannot read {rd.config} ({first}); the run directory is damaged") from None


def _resume_config(rd: RunDir, cfg: Config | None) -> tuple[Config, list[str], dict[str, Any]]:
    """The config to resume with (the run's own when ``cfg`` is None), what changed, and ``last.pt``."""
    rd.require_run()
    if rd.read_run_info().get("status") == "finished":  # resuming would only evaluate the test split again
        raise RunDirError(
            f"{rd.root} holds a finished run (see its final.json): there is nothing to resume; to train it again, "
            f"run: {program_name()} train {rd.config} --out {rd.root} --overwrite (or choose another --out)"
        )
    run_cfg = _read_config(rd)
    cfg = run_cfg if cfg is None else cfg
    diffs = config_diff(run_cfg, cfg, ignore=RESUME_FREE)
    if diffs:
        shown = "; ".join(diffs[:5]) + ("; ..." if len(diffs) > 5 else "")
        raise ConfigError(
            f"cannot resume {rd.root} with a different config ({shown}); drop the config/--set to resume as is"
        )
    return cfg, config_diff(run_cfg, cfg), load_resume_state(rd)


def _check_world_size(cfg: Config) -> None:
    # the world size comes from torchrun's environment: check it before joining the process group
    world_size = int(os.environ.get("WORLD_SIZE", "1") or "1")
    for i, stage in enumerate(cfg.stages):
        if stage.batch_size % world_size:
            raise ConfigError(
                f"stages.{i}.batch_size: {stage.batch_size} is not divisible by the world size {world_size}; "
                "use a multiple of the number of processes"
            )


def _prepare_out(rd: RunDir, cfg: Config, *, overwrite: bool) -> None:
    """Refuse to clobber another run (or a finished one) in ``rd`` unless ``overwrite``; check it is writable."""
    if rd.is_run() and not overwrite:
        try:
            old = _read_config(rd)
        except BCE3SError:
            old = None
        diffs = ["unreadable config.yaml"] if old is None else config_diff(old, cfg, ignore=RESUME_FREE)
        if not diffs and rd.read_run_info().get("status") == "finished":
            raise RunDirError(
                f"{rd.root} already holds a finished run of this config (see its final.json); pass --overwrite to "
                "train it again, or choose another --out"
            )
        if not diffs:
            raise RunDirError(
                f"{rd.root} already holds a run of this config; continue it with --resume (or --auto-resume), pass "
                "--overwrite to replace it, or choose another --out"
            )
        shown = "; ".join(diffs[:3]) + ("; ..." if len(diffs) > 3 else "")
        raise RunDirError(
            f"{rd.root} already holds a different run ({shown}); pass --overwrite to replace it or choose another --out"
        )
    check_writable(rd.root)


def _share(value: Any, dist: DistInfo) -> Any:
    """Rank 0's ``value`` on every rank."""
    if not dist.distributed:
        return value
    import torch.distributed as tdist

    box = [value]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def _check_out(rd: RunDir, cfg: Config, dist: DistInfo, overwrite: bool) -> None:
    """One process looks at the output directory; the others learn its verdict."""
    problem = None
    if dist.is_main:
        try:
            _prepare_out(rd, cfg, overwrite=overwrite)
        except BCE3SError as err:
            problem = str(err)
    problem = _share(problem, dist)
    if problem is not None:
        raise RunDirError(problem)


def _check_data(cfg: Config, data: Any, rd: RunDir, resume_state: dict[str, Any] | None) -> None:
    for i, stage in enumerate(cfg.stages):
        if stage.batch_size > len(data.train):
            raise ConfigError(
                f"stages.{i}.batch_size: {stage.batch_size} is larger than the training set "
                f"({len(data.train)} images); lower it"
            )
    if resume_state is not None and int(resume_state.get("num_classes", data.num_classes)) != data.num_classes:
        raise CheckpointError(  # checked before run.json records a resume
            f"{rd.checkpoint('last')} was trained with {resume_state['num_classes']} classes but the data has "
            f"{data.num_classes}; resume it with its own data"
        )


def _clear_run_files(rd: RunDir) -> None:
    for p in (rd.metrics, rd.final, rd.run_json, rd.data_json):
        if p.exists():
            p.unlink()
    if rd.checkpoints.is_dir():
        shutil.rmtree(rd.checkpoints)
    for p in rd.root.glob("eval_*.json"):
        p.unlink()


def _record_resume(rd: RunDir, cfg: Config, resume_state: dict[str, Any], changed: list[str]) -> None:
    """Append where the run resumed (and which settings changed) to ``run.json``; drop half-written temp files."""
    info = rd.read_run_info()
    si = int(resume_state["stage_index"])  # a state saved between stages has no stage name
    where = resume_state.get("stage_name") or (cfg.stages[si].name if si < len(cfg.stages) else "end")
    info.setdefault("resumed_from", []).append(
        {
            "stage": where,
            "epoch": int(resume_state["epoch"]),
            "step": int(resume_state["step"]),
            "at": _dt.datetime.now().isoformat(timespec="seconds"),
            "changed": changed,
        }
    )
    for stale in [*rd.checkpoints.glob(".*.tmp"), *rd.root.glob(".*.tmp")]:
        stale.unlink(missing_ok=True)  # temporary files of writes that a crash cut short
    info["status"] = "running"
    rd.write_run_info(info)


def _record_start(rd: RunDir, cfg: Config, data: Any, *, overwrite: bool, info: dict[str, Any]) -> None:
    """A new run: clear a replaced run's files, write config.yaml, data.json and run.json."""
    if overwrite and rd.is_run():
        _clear_run_files(rd)
    rd.root.mkdir(parents=True, exist_ok=True)
    rd.write_text(rd.config, dump_config(cfg))
    write_json(rd.data_json, data.record)
    rd.write_run_info({"status": "running", **info, "resumed_from": []})


def _set_status(rd: RunDir, status: str) -> None:
    if rd.run_json.exists():
        info = rd.read_run_info()
        info["status"] = status
        info["ended"] = _dt.datetime.now().isoformat(timespec="seconds")
        try:
            rd.write_run_info(info)
        except DiskFullError:
            pass  # run.json keeps "running", which --resume and --auto-resume accept; the first error is reported


def _disk_full(rd: RunDir, err: DiskFullError) -> DiskFullError:
    """``err`` with how to go on once there is room again."""
    if rd.checkpoint("last").is_file():
        how = ("once there is room, continue the run from its last checkpoint: "
               f"{program_name()} train --resume --out {rd.root}")
    else:
        how = "the run had no checkpoint yet: once there is room, run the same command again with --overwrite"
    return DiskFullError(f"{err.what}; {how}", folder=err.folder, needed=err.needed, what=err.what)


def _launch_rank() -> int:
    """The global rank torchrun gave this process (0 without torchrun), known before the process group exists."""
    return int(os.environ.get("RANK", "0") or "0")


def _build_model(cfg: Config, data: Any, dist: DistInfo) -> nn.Module:
    seed_everything(cfg.runtime.seed)
    model = build.build_run_model(cfg, data)
    if cfg.model.sync_bn and dist.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(dist.device)
    if cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def train(
    cfg: Config | None,
    out: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    config_path: str | None = None,
    quiet: bool = False,
    command: list[str] | None = None,
) -> TrainResult:
    """Train every stage of ``cfg`` into the run directory ``out`` and evaluate the test split once at the end.

    Args:
        cfg: a validated config (None with ``resume``: the run's own).
        out: run directory.
        resume: continue the run in ``out`` from ``checkpoints/last.pt`` (the config must match the run's,
            except for device/worker settings).
        overwrite: replace a run already in ``out``.
        config_path: the YAML file ``cfg`` came from (recorded in ``final.json``).
        quiet: no progress bars.
        command: the command line (recorded in ``run.json``).

    Raises:
        BCE3SError: bad config, data, output directory or checkpoint (one-line message).
        RunDirError: ``out`` is locked by another process, or holds a finished run and ``resume`` is set.
        DiskFullError: a write failed for want of space; the checkpoints on disk are intact.
        Interrupted: a signal stopped training after ``last.pt`` was written.
    """
    rd = RunDir(Path(out))
    if not resume:
        if cfg is None:
            raise ConfigError("train needs a config (or resume=True with an existing run)")
        validate_config(cfg)  # before the lock creates the directory
        _check_world_size(cfg)
    with run_lock(rd.root, enabled=_launch_rank() == 0):
        resume_state, changed = None, []
        if resume:
            cfg, changed, resume_state = _resume_config(rd, cfg)
            validate_config(cfg)
            _check_world_size(cfg)
        try:
            with torch_settings(cfg.runtime):
                return _train(cfg, rd, resume_state, changed, overwrite, config_path, quiet, command)
        except DiskFullError as err:
            raise _disk_full(rd, err) from err


def _check_pretrained_file(spec: str) -> None:
    """``model.pretrained``: a weights name (checked by validate_config) or an existing file."""
    from bce3s.models.pretrained import is_weights_name

    if not is_weights_name(spec) and not Path(spec).expanduser().is_file():
        raise ConfigError(
            f"model.pretrained: file not found: {spec} (give a weights file, or a torchvision weights name such as "
            "IMAGENET1K_V2 for resnet50)"
        )


def _load_pretrained(cfg: Config, model: nn.Module, dist: DistInfo) -> None:
    """Load ``model.pretrained`` into the backbone of a new run (rank 0 downloads named weights first)."""
    from bce3s.models.pretrained import fetch_weights, is_weights_name, load_pretrained, torchvision_weights_file

    spec = cfg.model.pretrained
    assert spec is not None
    if is_weights_name(spec) and dist.distributed:
        if dist.is_main:
            fetch_weights(cfg.model.name, spec)
        barrier(dist)  # the file is in the hub cache now: every rank reads it
        spec = str(torchvision_weights_file(cfg.model.name, spec)[0])
    source = load_pretrained(model.backbone, spec, cfg.model.name)
    log.info("backbone weights loaded from %s", source)


def _train(
    cfg: Config,
    rd: RunDir,
    resume_state: dict[str, Any] | None,
    changed: list[str],
    overwrite: bool,
    config_path: str | None,
    quiet: bool,
    command: list[str] | None,
) -> TrainResult:
    dist = init_distributed(cfg.runtime.device)
    if resume_state is None:
        _check_out(rd, cfg, dist, overwrite)
    _tune_backends(cfg.runtime, dist.device)
    from bce3s.data.splits import build_data

    if resume_state is None and cfg.model.pretrained is not None:
        _check_pretrained_file(cfg.model.pretrained)
    data = build_data(cfg.data)
    _check_data(cfg, data, rd, resume_state)
    t0 = time.time()
    if dist.is_main and resume_state is not None:
        _record_resume(rd, cfg, resume_state, changed)
    elif dist.is_main:
        start = {
            "started": _dt.datetime.now().isoformat(timespec="seconds"),
            "command": command or sys.argv,
            "config_path": config_path,
            "world_size": dist.world_size,
        }
        _record_start(rd, cfg, data, overwrite=overwrite, info=start)
    barrier(dist)
    history = list(resume_state.get("history", [])) if resume_state is not None else []
    logger = EpochLogger(rd, is_main=dist.is_main, tensorboard=cfg.log.tensorboard, quiet=quiet, history=history)
    model = _build_model(cfg, data, dist)
    if resume_state is None and cfg.model.pretrained is not None:
        _load_pretrained(cfg, model, dist)
    status = "failed"
    try:
        with StopFlag() as stop:
            ctx = RunContext(cfg, data, dist, model, Checkpointer(rd, cfg, dist), logger, stop)
            _run_stages(ctx, resume_state)
        final = _finish(ctx, t0, config_path)
        status = "finished"
        return TrainResult(run_dir=rd.root, final=final, model=model, losses=ctx.losses)
    except (Interrupted, KeyboardInterrupt):
        status = "interrupted"
        raise
    finally:
        logger.close()
        if dist.is_main:
            _set_status(rd, status)


def _run_stages(ctx: RunContext, resume_state: dict[str, Any] | None) -> None:
    """The stages from where the run is (a fresh run: the first; a resumed one: the stage of ``last.pt``)."""
    start, mid_stage = 0, None
    if resume_state is not None:
        start = int(resume_state["stage_index"])
        ctx.best = dict(resume_state.get("best", {}))
        if start >= len(ctx.cfg.stages) or resume_state.get("optimizer") is None:
            ctx.model.load_state_dict(resume_state["model"])  # saved between stages or at the end: weights only
        else:
            mid_stage = resume_state
        ctx.logger.rewrite()
    for si in range(start, len(ctx.cfg.stages)):
        run_stage(ctx, si, mid_stage if si == start else None)


def _finish(ctx: RunContext, t0: float, config_path: str | None) -> dict[str, Any]:
    """Copy the final stage's checkpoints to last/best_val, evaluate test once for each, write final.json.

    Each test pass also writes ``eval_test_<last|best_val>.json`` (metrics, reliability, confusion, geometry),
    the file ``bce3s eval`` would write, so ``bce3s report`` has every figure without a separate eval.
    """
    cfg, rd, data, model, dist = ctx.cfg, ctx.ckpt.rd, ctx.data, ctx.model, ctx.dist
    final_stage = cfg.stages[-1]
    if dist.is_main:
        # checkpoints/last.pt already holds the final model (the resume state past the last stage)
        atomic_write_bytes(rd.checkpoint("best_val"), rd.checkpoint(f"{final_stage.name}_best_val").read_bytes())
    barrier(dist)
    test: dict[str, Any] = {}
    last_state = model_state(model)
    best_state = load_checkpoint(rd.checkpoint(f"{final_stage.name}_best_val"))["model"]
    for name, state in (("last", last_state), ("best_val", best_state)):
        model.load_state_dict(state)
        # one pass with features: final.json's metrics and eval_test_<name>.json (as ``bce3s eval`` writes it)
        pred = predict_split(cfg, data, model, data.test, dist, with_features=True)
        result = eval_result(pred, data, model, split="test", checkpoint=name)
        test[name] = result["metrics"]
        if dist.is_main:
            write_json(rd.root / f"{eval_stem('test', name)}.json", result)
        if cfg.eval.tta_flip:
            test[f"{name}_tta_flip"] = evaluate_split(cfg, data, model, data.test, dist, tta=True)
    model.load_state_dict(last_state)
    final = {
        "run": {
            "name": rd.root.name,
            "config_name": config_path,
            "dataset": cfg.data.dataset,
            "model": cfg.model.name,
            "loss": cfg.stages[0].loss.name,
            "stages": [s.name for s in cfg.stages],
            "seed": cfg.runtime.seed,
        },
        "test": test,
        "selection": {
            "rule": f"best_val = epoch of the final stage ({final_stage.name}) with the highest validation "
            f"{cfg.eval.select_metric}; last = end of training; the test split was used only here",
            "best_val": ctx.best.get(final_stage.name),
            "per_stage": ctx.best,
        },
        "tta": "rows ending in _tta_flip average the logits of each image and its horizontal flip",
        "train_counts": list(data.train_counts),
        "class_names": list(data.class_names),
        "data": data.record,
        "versions": provenance.versions(),
        "git_commit": provenance.git_commit(),
        "device": provenance.device_name(dist.device),
        "world_size": dist.world_size,
        "step": build.step_mode(cfg, dist),  # runtime.step resolved: eager, static, graphed or compiled
        "wall_time_s": time.time() - t0,
    }
    if dist.is_main:
        write_json(rd.final, final)
    return final
