"""Train a config end to end: stages in order, validation-based selection, checkpoints, resume, final test.

The order of work follows torchvision's reference script: validate the config, set up devices, build the data,
check the output directory, build the model, then for each stage build its loss, optimizer, schedule and
sources and run the epoch loop; finally evaluate the test split once per selected checkpoint and write
``final.json``. The test split is never used before that point.
"""

from __future__ import annotations

import copy
import datetime as _dt
import logging
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bce3s.config import Config, StageConfig, config_from_dict, config_to_dict, dump_config
from bce3s.engine.checkpoint import load_checkpoint, save_checkpoint
from bce3s.engine.distributed import DistInfo, all_reduce_flag, barrier, init_distributed
from bce3s.engine.loop import EpochResult, NonFiniteError, StepRuntime, predict, train_one_epoch
from bce3s.engine.optim import build_optimizer, build_scheduler
from bce3s.errors import BCE3SError, CheckpointError, ConfigError, RunDirError
from bce3s.rundir import RunDir, atomic_write_bytes, check_writable, write_json
from bce3s.seeding import derive_seed, seed_everything

__all__ = ["Interrupted", "TrainResult", "build_run_model", "config_diff", "eval_source", "train"]

log = logging.getLogger(__name__)

# Keys that may differ between the config a run was started with and the one it is resumed with.
_RESUME_FREE = (
    "runtime.device",
    "runtime.num_workers",
    "runtime.threads",
    "log.tensorboard",
    "runtime.pipeline",
    "runtime.nan_policy",  # changes nothing for finite steps; lets a run that hit a NaN continue with "skip"
)


class Interrupted(BCE3SError):
    """Training stopped on SIGTERM/SIGINT after writing a consistent ``last.pt``."""

    exit_code = 130


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


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(d, list) and d and all(isinstance(x, dict) for x in d):
        out = {}
        for i, v in enumerate(d):
            out.update(_flatten(v, f"{prefix}.{i}"))
        return out
    return {prefix: d}


def config_diff(a: Config, b: Config, ignore: tuple[str, ...] = ()) -> list[str]:
    """Human-readable differences ``key: a != b`` between two configs (keys in ``ignore`` skipped)."""
    fa, fb = _flatten(config_to_dict(a)), _flatten(config_to_dict(b))
    diffs = []
    for key in sorted(set(fa) | set(fb)):
        if key in ignore:
            continue
        va, vb = fa.get(key, "<unset>"), fb.get(key, "<unset>")
        if va != vb:
            diffs.append(f"{key}: {va!r} != {vb!r}")
    return diffs


def _git_commit() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=False
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _versions() -> dict[str, str]:
    import numpy
    import torchvision

    import bce3s

    return {
        "bce3s": getattr(bce3s, "__version__", "unknown"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "cuda": str(torch.version.cuda),
    }


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} ({device})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def default_preset(cfg: Config, data: Any) -> str:
    """The augmentation preset of a run: ``data.preset`` or the dataset's natural one."""
    if cfg.data.preset:
        return cfg.data.preset
    if data.in_channels == 1:
        return "gray"
    size = cfg.data.image_size or data.image_size
    return "cifar" if size <= 64 else "imagenet"


def augment_spec(cfg: Config, data: Any) -> Any:
    """The run's ``AugmentSpec``: the preset, and horizontal flips following the dataset (never for digits)."""
    from bce3s.data.sources import AugmentSpec
    from bce3s.data.transforms import DATASET_PRESETS

    c = cfg.data
    return AugmentSpec(
        preset=default_preset(cfg, data),
        image_size=c.image_size or data.image_size,
        flip=DATASET_PRESETS.get(c.dataset, ("", True))[1],
        autoaugment=c.autoaugment,
        cutout=c.cutout,
        randaugment=c.randaugment,
    )


def eval_source(cfg: Config, data: Any, split: Any, dist: DistInfo) -> Any:
    """The deterministic, un-augmented source of an evaluation split (each rank a disjoint part, no padding)."""
    from bce3s.data.sources import SamplingSpec, make_batch_source

    return make_batch_source(
        split,
        augment_spec(cfg, data),
        SamplingSpec(train=False, batch_size=cfg.eval.batch_size),
        device=dist.device,
        rank=dist.rank,
        world_size=dist.world_size,
        pipeline=cfg.runtime.pipeline,
        num_workers=cfg.runtime.num_workers,
    )


class _StopFlag:
    """SIGTERM/SIGINT set a flag that the loop polls between steps (a second SIGINT aborts at once)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        log.warning("received %s: finishing the current step, then saving last.pt", signal.Signals(signum).name)

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def __call__(self) -> bool:
        return self.signum is not None


def _amp_dtype(cfg: Config, device: torch.device) -> torch.dtype | None:
    if cfg.runtime.amp == "none" or device.type != "cuda":
        return None
    return torch.bfloat16 if cfg.runtime.amp == "bf16" else torch.float16


def _needs(loss_name: str) -> frozenset[str]:
    from bce3s.losses import LOSSES

    return getattr(LOSSES[loss_name], "needs", frozenset())


def build_run_model(cfg: Config, data: Any) -> nn.Module:
    """The run's model (with a projector only when some stage's loss needs embeddings)."""
    from bce3s.models import build_model

    needs_emb = any("embeddings" in _needs(s.loss.name) for s in cfg.stages)
    return build_model(
        cfg.model.name,
        num_classes=data.num_classes,
        in_channels=data.in_channels,
        head=cfg.model.head,
        projector_dim=cfg.model.projector_dim if needs_emb else None,
    )


def _build_loss(stage: StageConfig, stage_index: int, cfg: Config, data: Any) -> nn.Module:
    from bce3s.losses import build_loss

    params = dict(stage.loss.params)
    if stage.loss.name in ("bce3s", "bce", "cb_bce") and "seed" not in params:
        params["seed"] = derive_seed(cfg.runtime.seed, "loss", stage_index) % (2**31)
    if stage.loss.name == "bce3s" and "embedding_dim" not in params:
        params["embedding_dim"] = cfg.model.projector_dim
    try:
        return build_loss(stage.loss.name, num_classes=data.num_classes, class_counts=data.train_counts, **params)
    except (TypeError, ValueError) as err:
        if isinstance(err, BCE3SError):
            raise
        raise ConfigError(f"stages.{stage_index}.loss: {str(err).splitlines()[0]}") from None


def _set_trainable(model: nn.Module, stage: StageConfig, needs_emb: bool) -> None:
    freeze = stage.freeze_backbone
    for p in model.backbone.parameters():
        p.requires_grad_(not freeze)
    if getattr(model, "projector", None) is not None:
        for p in model.projector.parameters():
            p.requires_grad_(needs_emb and not freeze)
    for p in model.head.parameters():
        p.requires_grad_(True)


def _set_mode(model: nn.Module, stage: StageConfig) -> None:
    model.train()
    if stage.freeze_backbone and stage.bn_mode == "eval":
        model.backbone.eval()


def _cpu(obj: Any) -> Any:
    """A CPU copy of a (nested) state: tensors detached and cloned, containers copied."""
    if torch.is_tensor(obj):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu(v) for v in obj)
    return obj


def _model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return _cpu(dict(model.state_dict()))


def _nonfinite_key(state: dict[str, Any] | None) -> str | None:
    """The first floating-point tensor of a model state that holds NaN/inf, or None."""
    for key, value in (state or {}).items():
        if torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return key
    return None


class _Run:
    """State shared by the stages of one training run (one per process)."""

    def __init__(self, cfg: Config, out: Path, dist: DistInfo, quiet: bool) -> None:
        self.cfg = cfg
        self.rd = RunDir(out)
        self.dist = dist
        self.quiet = quiet
        self.data: Any = None
        self.model: nn.Module | None = None
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, dict[str, Any]] = {}  # stage name -> {"epoch", "metric", "value"}
        self.tb: Any = None
        self.last_saved: str | None = None  # where checkpoints/last.pt was last written by this process
        self.losses: dict[str, nn.Module] = {}

    # -- sources -----------------------------------------------------------------------------------------
    def _source(self, split: Any, *, train: bool, stage: StageConfig | None, stage_index: int, mixing: bool = False):
        from bce3s.data.sources import SamplingSpec, make_batch_source

        cfg, d = self.cfg, self.dist
        if train:
            assert stage is not None
            purpose = "mix-data" if mixing else "data"
            sampling = SamplingSpec(
                train=True,
                batch_size=stage.batch_size // d.world_size,
                sampler=stage.mixing.sampler if mixing else stage.sampler,
                rho=stage.mixing.rho if mixing else stage.rho,
                seed=derive_seed(cfg.runtime.seed, purpose, stage_index) % (2**31),
                num_samples=len(split) if mixing else None,
            )
            return make_batch_source(
                split,
                augment_spec(cfg, self.data),
                sampling,
                device=d.device,
                rank=d.rank,
                world_size=d.world_size,
                pipeline=cfg.runtime.pipeline,
                num_workers=cfg.runtime.num_workers,
            )
        return eval_source(cfg, self.data, split, d)

    @property
    def preset(self) -> str:
        return default_preset(self.cfg, self.data)

    # -- evaluation --------------------------------------------------------------------------------------
    def evaluate_split(self, model: nn.Module, split: Any, *, tta: bool = False) -> dict[str, Any]:
        from bce3s.eval.metrics import summarize

        src = self._source(split, train=False, stage=None, stage_index=0)
        pred = predict(
            model,
            src,
            self.dist,
            amp_dtype=_amp_dtype(self.cfg, self.dist.device),
            channels_last=self.cfg.model.channels_last,
            tta_flip=tta,
        )
        return summarize(pred["logits"], pred["labels"], self.data.train_counts)

    # -- checkpoints -------------------------------------------------------------------------------------
    def save(self, name: str, state: dict[str, Any]) -> None:
        """Write ``checkpoints/<name>.pt`` (rank 0), refusing model weights that hold NaN/inf (every rank agrees)."""
        bad = _nonfinite_key(state.get("model"))
        if all_reduce_flag(bad is not None, self.dist):
            where = state.get("stage_name") or f"stage index {state.get('stage_index')}"
            raise NonFiniteError(
                f"the model holds NaN/inf values ({bad or 'on another rank'}) at {where} epoch {state.get('epoch')}; "
                f"{name}.pt was not written. {self.last_good()}",
                term="weights",
            )
        if self.dist.is_main:
            save_checkpoint(self.rd.checkpoint(name), {"config": config_to_dict(self.cfg), **state})
        barrier(self.dist)
        if name == "last":
            where = state.get("stage_name")
            self.last_saved = (
                f"{where} epoch {state.get('epoch')} step {state.get('step')}"
                if where
                else f"start of stage index {state.get('stage_index')}"
            )

    def last_good(self) -> str:
        """Where the last good checkpoint is, and how to go on from it (for error messages)."""
        path = self.rd.checkpoint("last")
        if self.last_saved is None:
            return f"No checkpoint was written by this process ({path} is as it was)."
        return (
            f"Last good checkpoint: {path} ({self.last_saved}), not overwritten; lower the learning rate and train "
            f"again, or resume skipping such steps: bce3s train --resume --out {self.rd.root} "
            "--set runtime.nan_policy=skip"
        )

    def model_ckpt(self, stage_index: int, stage: StageConfig, epoch: int, loss_fn: nn.Module) -> dict[str, Any]:
        assert self.model is not None
        return {
            "kind": "model",
            "stage_index": stage_index,
            "stage_name": stage.name,
            "epoch": epoch,
            "model": _model_state(self.model),
            "loss": _cpu(dict(loss_fn.state_dict())),
            "num_classes": self.data.num_classes,
        }

    def log_epoch(self, rec: dict[str, Any]) -> None:
        self.history.append(rec)
        if self.dist.is_main:
            self.rd.write_metrics(self.history)
            if self.tb is not None:
                g = rec["global_epoch"]
                self.tb.add_scalar("train/loss", rec["loss"], g)
                self.tb.add_scalar("train/lr", rec["lr"], g)
                for k, v in rec["terms"].items():
                    self.tb.add_scalar(f"train/{k}", v, g)
                if rec.get("val"):
                    for k in ("top1", "mean_per_class", "many", "medium", "few"):
                        if rec["val"].get(k) is not None:
                            self.tb.add_scalar(f"val/{k}", rec["val"][k], g)
                self.tb.flush()

    # -- one stage ---------------------------------------------------------------------------------------
    def run_stage(self, si: int, resume: dict[str, Any] | None, stop: _StopFlag) -> None:
        cfg, d = self.cfg, self.dist
        stage = cfg.stages[si]
        assert self.model is not None
        model = self.model
        if resume is None and si > 0:
            prev = cfg.stages[si - 1]
            src = f"{prev.name}_{stage.init_from}"
            state = load_checkpoint(self.rd.checkpoint(src))
            model.load_state_dict(state["model"])
            log.info("stage %s starts from %s.pt", stage.name, src)
        if resume is None and stage.reset_head:
            gen = torch.Generator(device=model.head.weight.device).manual_seed(
                derive_seed(cfg.runtime.seed, "reset-head", si) % (2**31)
            )
            model.reset_head(generator=gen)
        loss_fn = _build_loss(stage, si, cfg, self.data).to(d.device)
        self.losses[stage.name] = loss_fn
        needs = getattr(loss_fn, "needs", frozenset())
        _set_trainable(model, stage, "embeddings" in needs)
        if stage.freeze_backbone:
            named = [(f"head.{n}", p) for n, p in model.head.named_parameters()]
        else:
            named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        optimizer = build_optimizer(named, stage.optim)
        scheduler = build_scheduler(optimizer, stage.optim, stage.epochs)
        fp16 = _amp_dtype(cfg, d.device) == torch.float16
        scaler = torch.amp.GradScaler(d.device.type, enabled=fp16)
        maxnorm = None
        start_epoch, start_step, partial = 0, 0, None
        if resume is not None:
            model.load_state_dict(resume["model"])
            loss_fn.load_state_dict(resume["loss"])
            optimizer.load_state_dict(resume["optimizer"])
            scheduler.load_state_dict(resume["scheduler"])
            if resume.get("scaler"):
                scaler.load_state_dict(resume["scaler"])
            start_epoch, start_step = int(resume["epoch"]), int(resume["step"])
            partial = EpochResult.from_state(resume.get("partial"))
            if resume.get("maxnorm") is not None:
                maxnorm = resume["maxnorm"]
        if stage.max_norm is not None and maxnorm is None:
            from bce3s.models import max_norm_threshold

            maxnorm = max_norm_threshold(model.head.weight.detach(), stage.max_norm)

        run_model: nn.Module = model
        if d.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            # the projector is unused while a loss's embedding term is off (BCE3S before contrastive_start_epoch);
            # DDP must then be told, or it fails at the second step. Globally unused parameters keep grad None,
            # as in a single process, so nothing (not even weight decay) updates them.
            run_model = DDP(
                model,
                device_ids=[d.device.index] if d.device.type == "cuda" else None,
                find_unused_parameters="embeddings" in needs,
            )
        if cfg.model.compile:
            run_model = torch.compile(run_model)

        rt = StepRuntime(
            model=run_model,
            raw_model=model,
            loss_fn=loss_fn,
            optimizer=optimizer,
            scaler=scaler,
            dist=d,
            num_classes=self.data.num_classes,
            mixing=stage.mixing,
            amp_dtype=_amp_dtype(cfg, d.device),
            channels_last=cfg.model.channels_last,
            grad_clip=stage.optim.grad_clip,
            nan_policy=cfg.runtime.nan_policy,
            seed=cfg.runtime.seed,
            stage_index=si,
        )
        source = self._source(self.data.train, train=True, stage=stage, stage_index=si)
        mix_source = (
            self._source(self.data.train, train=True, stage=stage, stage_index=si, mixing=True)
            if stage.mixing.enabled
            else None
        )
        val_split = self.data.val
        offset = sum(s.epochs for s in cfg.stages[:si])

        def full_state(epoch: int, step: int, part: EpochResult | None) -> dict[str, Any]:
            return {
                "kind": "resume",
                "stage_index": si,
                "stage_name": stage.name,
                "epoch": epoch,
                "step": step,
                "partial": part.state_dict() if part is not None else None,
                "model": _model_state(model),
                "loss": _cpu(dict(loss_fn.state_dict())),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                "maxnorm": maxnorm,
                "best": copy.deepcopy(self.best),
                "history": copy.deepcopy(self.history),
                "num_classes": self.data.num_classes,
            }

        if resume is None:
            self.save("last", full_state(0, 0, None))

        for epoch in range(start_epoch, stage.epochs):
            loss_fn.set_epoch(epoch)
            source.set_epoch(epoch)
            if mix_source is not None:
                mix_source.set_epoch(epoch)
            _set_mode(model, stage)
            bar = None
            if d.is_main and not self.quiet and sys.stderr.isatty():
                from tqdm import tqdm

                bar = tqdm(
                    total=len(source),
                    initial=start_step,
                    desc=f"{stage.name} {epoch + 1}/{stage.epochs}",
                    leave=False,
                    dynamic_ncols=True,
                )
            lr = optimizer.param_groups[0]["lr"]
            try:
                res = train_one_epoch(
                    rt,
                    source,
                    mix_source,
                    epoch=epoch,
                    start_step=start_step,
                    partial=partial,
                    should_stop=stop,
                    progress=bar.update if bar is not None else None,
                )
            except NonFiniteError as err:
                what = "gradient" if err.term == "gradient" else "loss"
                raise NonFiniteError(
                    f"non-finite {what} (term: {err.term}) at stage {stage.name} epoch {err.epoch} step {err.step} "
                    f"(runtime.nan_policy: stop). {self.last_good()}",
                    stage_index=si,
                    epoch=err.epoch,
                    step=err.step,
                    term=err.term,
                ) from None
            finally:
                if bar is not None:
                    bar.close()
            if res.stopped_at is not None:
                self.save("last", full_state(epoch, res.stopped_at, res))
                raise Interrupted(
                    f"interrupted by {signal.Signals(stop.signum).name if stop.signum else 'signal'} at stage "
                    f"{stage.name} epoch {epoch} step {res.stopped_at}; last.pt saved. Resume with: "
                    f"bce3s train --resume --out {self.rd.root}"
                )
            start_step, partial = 0, None
            scheduler.step()
            if maxnorm is not None:
                from bce3s.models import apply_max_norm

                with torch.no_grad():
                    apply_max_norm(model.head.weight, maxnorm)
            val = None
            if val_split is not None and ((epoch + 1) % stage.val_every == 0 or epoch + 1 == stage.epochs):
                full = self.evaluate_split(model, val_split)
                val = {k: full.get(k) for k in ("top1", "mean_per_class", "many", "medium", "few")}
                metric = cfg.eval.select_metric
                value = full.get(metric)
                best = self.best.get(stage.name)
                if value is not None and (best is None or value > best["value"]):
                    self.best[stage.name] = {"stage": stage.name, "epoch": epoch, "metric": metric, "value": value}
                    self.save(f"{stage.name}_best_val", self.model_ckpt(si, stage, epoch, loss_fn))
            loss_mean, terms = res.means()
            rec = {
                "stage": stage.name,
                "epoch": epoch,
                "global_epoch": offset + epoch,
                "lr": lr,
                "loss": loss_mean,
                "terms": terms,
                "skipped_steps": res.skipped,
                "val": val,
                "time_s": res.time_s,
                "images_per_s": res.images / res.time_s if res.time_s > 0 else None,
            }
            self.log_epoch(rec)
            if d.is_main:
                vtxt = f" val {val['mean_per_class']:.2f}" if val and val.get("mean_per_class") is not None else ""
                log.info(
                    "%s epoch %d/%d loss %.4f lr %.3g%s (%.1fs)",
                    stage.name,
                    epoch + 1,
                    stage.epochs,
                    loss_mean,
                    lr,
                    vtxt,
                    res.time_s,
                )
            self.save("last", full_state(epoch + 1, 0, None))

        if stage.logit_adjust_tau is not None:
            model.set_logit_adjustment(self.data.train_counts, stage.logit_adjust_tau)
        self.save(f"{stage.name}_last", self.model_ckpt(si, stage, stage.epochs - 1, loss_fn))
        if stage.name not in self.best:  # no validation split: best_val falls back to last, and says so
            self.best[stage.name] = {"stage": stage.name, "epoch": stage.epochs - 1, "metric": None, "value": None}
            self.save(f"{stage.name}_best_val", self.model_ckpt(si, stage, stage.epochs - 1, loss_fn))
        # the next stage (or the end) resumes from here
        nxt = {
            "kind": "resume",
            "stage_index": si + 1,
            "stage_name": None,
            "epoch": 0,
            "step": 0,
            "model": _model_state(model),
            "best": copy.deepcopy(self.best),
            "history": copy.deepcopy(self.history),
            "num_classes": self.data.num_classes,
        }
        self.save("last", nxt)


def _load_resume_state(rd: RunDir) -> dict[str, Any]:
    """``checkpoints/last.pt`` of a run to resume, with messages that say what to do when it is unusable."""
    path = rd.checkpoint("last")
    if not path.is_file():
        raise CheckpointError(
            f"cannot resume {rd.root}: {path} not found (the run stopped before its first checkpoint); "
            "start it again with --overwrite"
        )
    try:
        return load_checkpoint(path)
    except CheckpointError as err:
        raise CheckpointError(f"cannot resume {rd.root}: {err}, or start the run again with --overwrite") from None


def _check_loss_configs(cfg: Config) -> None:
    """Build every stage's loss once on dummy class counts, so unknown or invalid loss parameters are reported
    (with the closest valid name) before any data is loaded or any file is written."""
    import difflib
    from types import SimpleNamespace

    from bce3s.losses import loss_params

    dummy = SimpleNamespace(num_classes=10, train_counts=list(range(100, 0, -10)))
    for i, stage in enumerate(cfg.stages):
        valid = sorted(loss_params(stage.loss.name))
        for key in stage.loss.params:
            if key not in valid:
                close = difflib.get_close_matches(key, valid, n=1)
                hint = f" did you mean '{close[0]}'?" if close else ""
                raise ConfigError(
                    f"stages.{i}.loss.params.{key}: unknown parameter of loss '{stage.loss.name}';{hint} "
                    f"valid: {', '.join(valid)}"
                )
        _build_loss(stage, i, cfg, dummy)


def _prepare_out(out: Path, cfg: Config, *, resume: bool, overwrite: bool) -> None:
    rd = RunDir(out)
    if resume:
        rd.require_run()
        return
    if rd.is_run() and not overwrite:
        old = None
        try:
            import yaml

            old = config_from_dict(Config, yaml.safe_load(rd.config.read_text()) or {})
        except (OSError, BCE3SError, Exception):  # noqa: BLE001 - any unreadable config counts as "different"
            old = None
        diffs = ["unreadable config.yaml"] if old is None else config_diff(old, cfg, ignore=_RESUME_FREE)
        if not diffs and rd.read_run_info().get("status") == "finished":
            raise RunDirError(
                f"{out} already holds a finished run of this config (see its final.json); pass --overwrite to "
                "train it again, or choose another --out"
            )
        if not diffs:
            raise RunDirError(
                f"{out} already holds a run of this config; continue it with --resume (or --auto-resume), pass "
                "--overwrite to replace it, or choose another --out"
            )
        shown = "; ".join(diffs[:3]) + ("; ..." if len(diffs) > 3 else "")
        raise RunDirError(
            f"{out} already holds a different run ({shown}); pass --overwrite to replace it or choose another --out"
        )
    check_writable(out)


def _share(value: Any, dist: DistInfo) -> Any:
    """Rank 0's ``value`` on every rank."""
    if not dist.distributed:
        return value
    import torch.distributed as tdist

    box = [value]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def _clear_run_files(rd: RunDir) -> None:
    for p in (rd.metrics, rd.final, rd.run_json, rd.data_json):
        if p.exists():
            p.unlink()
    if rd.checkpoints.is_dir():
        shutil.rmtree(rd.checkpoints)
    for p in rd.root.glob("eval_*.json"):
        p.unlink()


def train(
    cfg: Config,
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
        cfg: a validated config.
        out: run directory.
        resume: continue the run in ``out`` from ``checkpoints/last.pt`` (the config must match the run's,
            except for device/worker settings).
        overwrite: replace a run already in ``out``.
        config_path: the YAML file ``cfg`` came from (recorded in ``final.json``).
        quiet: no progress bars.
        command: the command line (recorded in ``run.json``).

    Raises:
        BCE3SError: bad config, data, output directory or checkpoint (one-line message).
        Interrupted: a signal stopped training after ``last.pt`` was written.
    """
    out = Path(out)
    rd = RunDir(out)
    resume_state = None
    changed: list[str] = []
    if resume:
        rd.require_run()
        import yaml

        try:
            run_cfg = config_from_dict(Config, yaml.safe_load(rd.config.read_text()) or {})
        except Exception as err:  # noqa: BLE001 - any unreadable config means a damaged run directory
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise RunDirError(f"cannot read {rd.config} ({first}); the run directory is damaged") from None
        if cfg is None:
            cfg = run_cfg
        diffs = config_diff(run_cfg, cfg, ignore=_RESUME_FREE)
        if diffs:
            shown = "; ".join(diffs[:5]) + ("; ..." if len(diffs) > 5 else "")
            raise ConfigError(
                f"cannot resume {out} with a different config ({shown}); drop the config/--set to resume as is"
            )
        changed = config_diff(run_cfg, cfg)
        resume_state = _load_resume_state(rd)
    elif cfg is None:
        raise ConfigError("train needs a config (or resume=True with an existing run)")
    _check_loss_configs(cfg)
    # the world size comes from torchrun's environment: check it before joining the process group
    world_size = int(os.environ.get("WORLD_SIZE", "1") or "1")
    for i, stage in enumerate(cfg.stages):
        if stage.batch_size % world_size:
            raise ConfigError(
                f"stages.{i}.batch_size: {stage.batch_size} is not divisible by the world size {world_size}; "
                "use a multiple of the number of processes"
            )

    if cfg.runtime.threads:
        torch.set_num_threads(cfg.runtime.threads)
    dist = init_distributed(cfg.runtime.device)
    if not resume:
        problem = None
        if dist.is_main:  # one process looks at the output directory, the others learn its verdict
            try:
                _prepare_out(out, cfg, resume=False, overwrite=overwrite)
            except BCE3SError as err:
                problem = str(err)
        problem = _share(problem, dist)
        if problem is not None:
            raise RunDirError(problem)
    if dist.device.type == "cuda" and not cfg.runtime.deterministic:
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest kernels
    if cfg.runtime.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        if dist.device.type == "cuda":
            torch.backends.cudnn.benchmark = False
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

    from bce3s.data.splits import build_data

    data = build_data(cfg.data)
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

    run = _Run(cfg, out, dist, quiet)
    run.data = data
    t0 = time.time()
    if dist.is_main:
        if resume:
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
        else:
            if overwrite and rd.is_run():
                _clear_run_files(rd)
            out.mkdir(parents=True, exist_ok=True)
            rd.write_text(rd.config, dump_config(cfg))
            write_json(rd.data_json, data.record)
            rd.write_run_info(
                {
                    "status": "running",
                    "started": _dt.datetime.now().isoformat(timespec="seconds"),
                    "command": command or sys.argv,
                    "config_path": config_path,
                    "world_size": dist.world_size,
                    "resumed_from": [],
                }
            )
    barrier(dist)
    if dist.is_main and cfg.log.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        run.tb = SummaryWriter(log_dir=str(out / "tensorboard"))

    seed_everything(cfg.runtime.seed)
    model = build_run_model(cfg, data)
    if cfg.model.sync_bn and dist.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(dist.device)
    if cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    run.model = model

    start_stage = 0
    if resume_state is not None:
        start_stage = int(resume_state["stage_index"])
        run.history = list(resume_state.get("history", []))
        run.best = dict(resume_state.get("best", {}))
        if start_stage >= len(cfg.stages) or resume_state.get("optimizer") is None:
            model.load_state_dict(resume_state["model"])
            resume_state = None if start_stage < len(cfg.stages) else resume_state
        if dist.is_main:
            rd.write_metrics(run.history)

    status = "failed"
    try:
        with _StopFlag() as stop:
            for si in range(start_stage, len(cfg.stages)):
                rs = (
                    resume_state
                    if (resume_state is not None and si == start_stage and resume_state.get("optimizer") is not None)
                    else None
                )
                run.run_stage(si, rs, stop)
        final = _finish(run, t0, config_path)
        status = "finished"
        return TrainResult(run_dir=out, final=final, model=model, losses=run.losses)
    except (Interrupted, KeyboardInterrupt):
        status = "interrupted"
        raise
    finally:
        if run.tb is not None:
            run.tb.close()
        if dist.is_main and rd.run_json.exists():
            info = rd.read_run_info()
            info["status"] = status
            info["ended"] = _dt.datetime.now().isoformat(timespec="seconds")
            rd.write_run_info(info)


def _finish(run: _Run, t0: float, config_path: str | None) -> dict[str, Any]:
    """Copy the final stage's checkpoints to last/best_val, evaluate test once for each, write final.json."""
    cfg, rd, data, model = run.cfg, run.rd, run.data, run.model
    assert model is not None
    final_stage = cfg.stages[-1]
    if run.dist.is_main:
        # checkpoints/last.pt already holds the final model (the resume state past the last stage)
        atomic_write_bytes(rd.checkpoint("best_val"), rd.checkpoint(f"{final_stage.name}_best_val").read_bytes())
    barrier(run.dist)
    test: dict[str, Any] = {}
    last_state = _model_state(model)
    best_state = load_checkpoint(rd.checkpoint(f"{final_stage.name}_best_val"))["model"]
    for name, state in (("last", last_state), ("best_val", best_state)):
        model.load_state_dict(state)
        test[name] = run.evaluate_split(model, data.test)
        if cfg.eval.tta_flip:
            test[f"{name}_tta_flip"] = run.evaluate_split(model, data.test, tta=True)
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
            "best_val": run.best.get(final_stage.name),
            "per_stage": run.best,
        },
        "tta": "rows ending in _tta_flip average the logits of each image and its horizontal flip",
        "train_counts": list(data.train_counts),
        "class_names": list(data.class_names),
        "data": data.record,
        "versions": _versions(),
        "git_commit": _git_commit(),
        "device": _device_name(run.dist.device),
        "world_size": run.dist.world_size,
        "wall_time_s": time.time() - t0,
    }
    if run.dist.is_main:
        write_json(rd.final, final)
    return final
