"""Config -> objects: the run's model, each stage's loss, the batch sources, the autocast dtype.

Every translation of a config value into a built object lives here, so the stage and run modules work with
objects and read as the order of work.
"""

from __future__ import annotations

import platform
from typing import Any

import torch
from torch import nn

from bce3s.config import Config, StageConfig
from bce3s.engine.distributed import DistInfo
from bce3s.errors import BCE3SError, ConfigError
from bce3s.seeding import derive_seed

__all__ = [
    "FP16_OFF_CUDA",
    "amp_dtype",
    "step_mode",
    "augment_spec",
    "build_run_model",
    "build_stage_loss",
    "default_preset",
    "eval_source",
    "loss_needs",
    "train_sources",
]


def default_preset(cfg: Config, data: Any) -> str:
    """The augmentation preset of a run: ``data.preset`` or the dataset's natural one."""
    if cfg.data.preset:
        return cfg.data.preset
    if data.in_channels == 1:
        return "gray"
    size = cfg.data.image_size or data.image_size
    return "cifar" if size <= 64 else "imagenet"


def augment_spec(cfg: Config, data: Any, *, train_transform: bool = True) -> Any:
    """The run's :class:`~bce3s.data.AugmentSpec`: preset, size, and horizontal flips following the dataset (never
    for digits); ``train_transform=False`` gives sampled training batches the eval transform (``augment: false``)."""
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
        train_transform=train_transform,
        autoaugment_fill=c.autoaugment_fill,
        autoaugment_geometry=c.autoaugment_geometry,
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


def _train_source(cfg: Config, data: Any, stage: StageConfig, stage_index: int, dist: DistInfo, mixing: bool) -> Any:
    from bce3s.data.sources import SamplingSpec, make_batch_source

    sampling = SamplingSpec(
        train=True,
        batch_size=stage.batch_size // dist.world_size,
        sampler=stage.mixing.sampler if mixing else stage.sampler,
        rho=stage.mixing.rho if mixing else stage.rho,
        seed=derive_seed(cfg.runtime.seed, "mix-data" if mixing else "data", stage_index) % (2**31),
        num_samples=len(data.train) if mixing else None,
    )
    return make_batch_source(
        data.train,
        augment_spec(cfg, data, train_transform=stage.augment),
        sampling,
        device=dist.device,
        rank=dist.rank,
        world_size=dist.world_size,
        pipeline=cfg.runtime.pipeline,
        num_workers=cfg.runtime.num_workers,
    )


def train_sources(cfg: Config, data: Any, stage_index: int, dist: DistInfo) -> tuple[Any, Any | None]:
    """The training source of a stage and, when the stage mixes (GLMC), the source of the second batch."""
    stage = cfg.stages[stage_index]
    main = _train_source(cfg, data, stage, stage_index, dist, mixing=False)
    mix = _train_source(cfg, data, stage, stage_index, dist, mixing=True) if stage.mixing.enabled else None
    return main, mix


#: The one-line error of ``runtime.amp: fp16`` on a device without fp16 autocast.
FP16_OFF_CUDA = "runtime.amp: fp16 needs CUDA but this run's device is {device}; use amp bf16 (or none) off CUDA"


def amp_dtype(cfg: Config, device: torch.device, *, train: bool = True) -> torch.dtype | None:
    """The autocast dtype of a run on ``device``, or None for fp32.

    ``runtime.amp: bf16`` autocasts on CUDA and on the CPU (``torch.autocast("cpu", dtype=torch.bfloat16)``, fast
    on CPUs with AMX or AVX512-BF16); ``fp16`` is CUDA only. Evaluation and prediction (``train=False``) use the
    same dtype as training, except that a run trained with fp16 and evaluated off CUDA is evaluated in fp32.

    Raises:
        ConfigError: ``fp16`` for training off CUDA.
    """
    if cfg.runtime.amp == "none":
        return None
    if cfg.runtime.amp == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.float16
    if not train:
        return None
    raise ConfigError(FP16_OFF_CUDA.format(device=device.type))


def cpu_bf16_native() -> bool | None:
    """Whether this CPU computes bfloat16 in hardware (x86: AVX512-BF16 or AMX), or None when torch cannot tell.

    Without it, CPU autocast to bf16 is emulated and can be slower than fp32. Only x86 CPUs are judged (torch
    reports these features there); for any other architecture the answer is None.
    """
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # a torch without these probes
        return None


def step_mode(cfg: Config, dist: DistInfo) -> str:
    """The step a run uses: ``runtime.step`` with ``auto`` resolved for this process.

    ``auto`` is ``graphed`` for one CUDA process (not fp16, whose loss scaler needs host decisions, and not with
    ``model.compile``), else ``eager``.

    What the config alone rules out (a static mode with fp16, ``graphed`` with ``model.compile``) is refused
    earlier, by :func:`~bce3s.engine.validate.validate_config`.

    Raises:
        ConfigError: ``graphed`` when this process is not the one CUDA process of the run.
    """
    mode = cfg.runtime.step
    one_cuda = dist.device.type == "cuda" and dist.world_size == 1
    if mode == "auto":
        return "graphed" if one_cuda and cfg.runtime.amp != "fp16" and not cfg.model.compile else "eager"
    if mode == "graphed" and not one_cuda:
        raise ConfigError(
            f"runtime.step: graphed needs one CUDA process (this run: {dist.device.type}, {dist.world_size} "
            "process(es)); use static or compiled, or auto"
        )
    return mode


def loss_needs(loss_name: str) -> frozenset[str]:
    """What the loss ``loss_name`` takes besides logits and targets (``embeddings``, ``weight``)."""
    from bce3s.losses import LOSSES

    return getattr(LOSSES[loss_name], "needs", frozenset())


def build_run_model(cfg: Config, data: Any) -> nn.Module:
    """The run's model (with a projector only when some stage's loss needs embeddings)."""
    from bce3s.models import build_model

    needs_emb = any("embeddings" in loss_needs(s.loss.name) for s in cfg.stages)
    return build_model(
        cfg.model.name,
        num_classes=data.num_classes,
        in_channels=data.in_channels,
        head=cfg.model.head,
        projector_dim=cfg.model.projector_dim if needs_emb else None,
    )


def build_stage_loss(cfg: Config, stage_index: int, num_classes: int, class_counts: list[int]) -> nn.Module:
    """The loss of stage ``stage_index``: its params plus a derived seed and the projector width where used."""
    from bce3s.losses import build_loss, loss_params

    stage = cfg.stages[stage_index]
    params = dict(stage.loss.params)
    try:
        accepted = loss_params(stage.loss.name)
    except ValueError as err:
        raise ConfigError(f"stages.{stage_index}.loss.name: {str(err).splitlines()[0]}") from None
    if "seed" in accepted and "seed" not in params:
        params["seed"] = derive_seed(cfg.runtime.seed, "loss", stage_index) % (2**31)
    if "embedding_dim" in accepted and "embedding_dim" not in params:
        params["embedding_dim"] = cfg.model.projector_dim
    try:
        return build_loss(stage.loss.name, num_classes=num_classes, class_counts=class_counts, **params)
    except (TypeError, ValueError) as err:
        if isinstance(err, BCE3SError):
            raise
        raise ConfigError(f"stages.{stage_index}.loss: {str(err).splitlines()[0]}") from None
