"""Experiment configuration: nested dataclasses, YAML files and ``--set a.b=c`` overrides.

One YAML file describes one experiment (data, model, and a list of training stages). Loading merges, in order,
the dataclass defaults, the YAML file and the ``--set`` overrides; unknown keys and wrong types are rejected
with the key path in the message, and every value's range is checked here, before any data is loaded or any file
is written. The config objects are frozen: derive a changed copy with :func:`dataclasses.replace`.

Names that a registry owns (dataset, model, head, loss and its parameters, sampler, preset, pipeline) are only
type-checked here; :func:`bce3s.engine.validate.validate_config` checks them against the registries.

Example::

    cfg = load_config("configs/digits_lt/bce3s.yaml", overrides=["stages.0.epochs=3", "runtime.seed=1"])
    dump_config(cfg)  # -> YAML text; load_config on it gives the same object back
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bce3s._config_parse import config_from_dict, config_to_dict, parse_overrides
from bce3s.errors import ConfigError

__all__ = [
    "Config",
    "DataConfig",
    "EvalConfig",
    "LogConfig",
    "LossConfig",
    "MixingConfig",
    "ModelConfig",
    "OptimConfig",
    "RuntimeConfig",
    "StageConfig",
    "dump_config",
    "load_config",
    "config_to_dict",
    "config_from_dict",
]


def _choice(path: str, value: Any, valid: tuple[str, ...], what: str) -> None:
    if value not in valid:
        raise ConfigError(f"{path}: unknown {what} {value!r}; valid: {', '.join(valid)}")


def _positive(path: str, value: float | int, strict: bool = True) -> None:
    if (strict and not value > 0) or (not strict and not value >= 0):
        sign = "> 0" if strict else ">= 0"
        raise ConfigError(f"{path}: must be {sign} (got {value})")


@dataclass(frozen=True)
class DataConfig:
    """Which dataset, how it is made long-tailed, and how it is augmented.

    Attributes:
        dataset: a name of the dataset registry ``bce3s.data.DATASETS``.
        root: dataset root (layout per dataset, see docs/datasets.md).
        download: let torchvision download CIFAR / (Fashion-)MNIST into ``root`` when missing.
        imbalance_factor: n_max / n_min of the training counts (1 = balanced).
        max_per_class: head-class count n_max of the long-tailed profile (class i keeps
            ``int(n_max * IF ** (-i / (K - 1)))``); ``None`` = the dataset's (CIFAR-10 5000, CIFAR-100 500,
            (Fashion-)MNIST 6000). A smaller value gives a smaller subset with the same imbalance factor (quick
            CPU runs); only for datasets that bce3s makes long-tailed, and at most the dataset's own n_max.
        profile: ``exp`` (LDAM/CIFAR-LT) or ``step``.
        order: which images a class keeps: ``file`` (first n_i in file order) or ``random`` (seeded).
        subset_seed: seed of ``order: random`` and of the val carve-out where it is random.
        val_per_class: size per class of the validation split carved from unused training images
            (CIFAR-style sets, iNat); ``None`` = the dataset's default; 0 = no validation split.
        train_list, val_list, test_list: split files (``path label`` per line) for split-file datasets.
        preset: augmentation preset (a name in ``bce3s.data.PRESETS``); ``None`` = the dataset's default.
        autoaugment: AutoAugment (CIFAR10 policy) in the ``cifar`` preset.
        autoaugment_fill: value (0..255, every channel) AutoAugment fills the area a rotate, shear or translate
            uncovers with: 0 = torchvision's default, 128 = the official code's grey.
        autoaugment_geometry: AutoAugment's geometric ops: ``torchvision`` (nearest interpolation, translations
            truncated to whole pixels, rotations both ways) or ``official`` (the official code's PIL policy:
            bicubic shear, translations rounded to the nearest pixel, counter-clockwise rotations only).
        cutout: Cutout side in pixels (0 = off).
        randaugment: RandAugment instead of colour jitter in the ``imagenet`` preset.
        image_size: training crop side; ``None`` = the dataset's default.
    """

    dataset: str = "digits_lt"
    root: str = "data"
    download: bool = False
    imbalance_factor: float = 100.0
    max_per_class: int | None = None
    profile: str = "exp"
    order: str = "file"
    subset_seed: int = 0
    val_per_class: int | None = None
    train_list: str | None = None
    val_list: str | None = None
    test_list: str | None = None
    preset: str | None = None
    autoaugment: bool = True
    autoaugment_fill: int = 0
    autoaugment_geometry: str = "torchvision"
    cutout: int = 16
    randaugment: bool = False
    image_size: int | None = None

    def check(self, path: str = "data") -> None:
        if not self.imbalance_factor >= 1:
            raise ConfigError(f"{path}.imbalance_factor: must be >= 1 (got {self.imbalance_factor})")
        if self.max_per_class is not None:
            _positive(f"{path}.max_per_class", self.max_per_class)
        _choice(f"{path}.profile", self.profile, ("exp", "step"), "profile")
        _choice(f"{path}.order", self.order, ("file", "random"), "order")
        if self.val_per_class is not None:
            _positive(f"{path}.val_per_class", self.val_per_class, strict=False)
        if not 0 <= self.autoaugment_fill <= 255:
            raise ConfigError(f"{path}.autoaugment_fill: must be in [0, 255] (got {self.autoaugment_fill})")
        _choice(f"{path}.autoaugment_geometry", self.autoaugment_geometry, ("torchvision", "official"), "geometry")
        _positive(f"{path}.cutout", self.cutout, strict=False)
        if self.image_size is not None:
            _positive(f"{path}.image_size", self.image_size)


@dataclass(frozen=True)
class ModelConfig:
    """Backbone and head.

    Attributes:
        name: a backbone of ``bce3s.models.MODELS``.
        head: a head of ``bce3s.models.HEADS``: ``normalized`` (unit-norm weight rows + bias, BCE3S) or ``linear``.
        projector_dim: output size of the projector (built only when the loss needs embeddings).
        sync_bn: convert BatchNorm to SyncBatchNorm under DDP.
        channels_last: channels_last memory format (CUDA).
        compile: wrap the model in ``torch.compile``.
        pretrained: backbone weights to start from: a file (torchvision/timm state dict, bce3s checkpoint, or
            ``.safetensors``) or a torchvision weights name of ``resnet50`` / ``resnext50_32x4d`` / ``resnet152``
            (``IMAGENET1K_V1``, ``IMAGENET1K_V2``, ``DEFAULT``) from torch's hub cache; ``None`` = random init.
            Loaded with ``weights_only=True``; keys must match the backbone (the classifier ``fc`` is dropped).
        freeze_stages: freeze the first N stages of the backbone (the stem counts as the first; frozen
            parameters keep ``requires_grad=False`` and their BatchNorm statistics in every stage); 0 = none.
    """

    name: str = "small_cnn"
    head: str = "normalized"
    projector_dim: int = 128
    sync_bn: bool = False
    channels_last: bool = False
    compile: bool = False
    pretrained: str | None = None
    freeze_stages: int = 0

    def check(self, path: str = "model") -> None:
        _positive(f"{path}.projector_dim", self.projector_dim)
        _positive(f"{path}.freeze_stages", self.freeze_stages, strict=False)
        if self.pretrained is not None and not self.pretrained.strip():
            raise ConfigError(f"{path}.pretrained: empty; give a weights file or a torchvision weights name")


@dataclass(frozen=True)
class LossConfig:
    """A loss by registry name plus its keyword parameters (see ``bce3s.losses.LOSSES``).

    Both are checked by the loss itself (a dry build in :func:`bce3s.engine.validate.validate_config`); treat
    ``params`` as read-only.

    Attributes:
        name: a loss of ``bce3s.losses.LOSSES`` (``bce3s``, ``ce``, ``cb_bce``, ...; see docs/losses.md).
        params: keyword parameters of that loss, e.g. ``{neg_class_ratio: 1.0}``; an unknown parameter is an
            error. Each loss's parameters and defaults are in docs/losses.md.
    """

    name: str = "bce3s"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer and learning-rate schedule of one stage.

    Attributes:
        name: ``sgd`` or ``adamw``.
        lr: base learning rate.
        momentum: SGD momentum.
        nesterov: SGD Nesterov momentum.
        weight_decay: L2 / decoupled weight decay.
        no_decay_norm_bias: exempt normalization parameters and biases from weight decay.
        scheduler: ``cosine`` (to ``min_lr`` over the stage) or ``constant``.
        warmup_epochs: linear warm-up epochs before the schedule.
        min_lr: final learning rate of the cosine schedule.
        schedule_step: when the per-epoch schedule advances: ``after_epoch`` (epoch 0 runs at the base lr, the
            last epoch above ``min_lr``) or ``before_epoch`` (the official code: the scheduler is stepped before
            each epoch, so every epoch runs at the next epoch's lr, epoch 0 already below the base lr and the
            last epoch at ``min_lr``).
        grad_clip: clip the global gradient norm to this value (``None`` = off); applied with and without AMP.
        backbone_lr_mult: the backbone's learning rate is ``lr * backbone_lr_mult`` (fine-tuning a pretrained
            backbone slower than the head and projector); 1 = one learning rate for all.
    """

    name: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-3
    no_decay_norm_bias: bool = False
    scheduler: str = "cosine"
    warmup_epochs: int = 0
    min_lr: float = 0.0
    schedule_step: str = "after_epoch"
    grad_clip: float | None = None
    backbone_lr_mult: float = 1.0

    def check(self, path: str = "optim") -> None:
        _choice(f"{path}.name", self.name, ("sgd", "adamw"), "optimizer")
        _positive(f"{path}.lr", self.lr)
        _positive(f"{path}.momentum", self.momentum, strict=False)
        _positive(f"{path}.weight_decay", self.weight_decay, strict=False)
        _choice(f"{path}.scheduler", self.scheduler, ("cosine", "constant"), "scheduler")
        _positive(f"{path}.warmup_epochs", self.warmup_epochs, strict=False)
        _positive(f"{path}.min_lr", self.min_lr, strict=False)
        _choice(f"{path}.schedule_step", self.schedule_step, ("after_epoch", "before_epoch"), "schedule_step")
        if self.grad_clip is not None:
            _positive(f"{path}.grad_clip", self.grad_clip)
        _positive(f"{path}.backbone_lr_mult", self.backbone_lr_mult, strict=False)


@dataclass(frozen=True)
class MixingConfig:
    """GLMC-style mixing: a second batch from a re-balanced sampler, one mixup and one cutmix view.

    Attributes:
        enabled: train on [clean, mixup, cutmix] (3B images per step) instead of the clean batch.
        alpha: lambda ~ Beta(alpha, alpha), drawn once per batch.
        sampler: sampler of the second batch (a kind of ``bce3s.data.SAMPLER_KINDS``; ``power`` with ``rho`` = 0 is
            uniform, the released run).
        rho: exponent of the ``power`` sampler, weight of a sample ∝ n_class ** -rho.
    """

    enabled: bool = False
    alpha: float = 1.0
    sampler: str = "power"
    rho: float = 0.0

    def check(self, path: str = "mixing") -> None:
        _positive(f"{path}.alpha", self.alpha)
        _positive(f"{path}.rho", self.rho, strict=False)


@dataclass(frozen=True)
class StageConfig:
    """One training stage. Stages run in order; each starts from the previous stage's ``init_from`` checkpoint.

    Attributes:
        name: stage name (used in checkpoint file names and logs).
        epochs: number of epochs (>= 1).
        batch_size: global batch size of clean images (split over DDP ranks).
        sampler: sampler of the main batch (a kind of ``bce3s.data.SAMPLER_KINDS``: ``instance``,
            ``class_balanced``, ``sqrt``, ``power``).
        rho: exponent of the ``power`` sampler.
        loss: the loss of this stage.
        optim: optimizer and schedule.
        mixing: GLMC mixing (stage 1 of BCE3S).
        freeze_backbone: train only the classifier head (stage 2).
        bn_mode: BatchNorm mode of a frozen backbone: ``train`` (official: statistics re-estimated) or ``eval``.
        reset_head: re-initialise the classifier before the stage (cRT).
        max_norm: MaxNorm threshold ratio theta (WB) applied after each epoch; ``None`` = off.
        logit_adjust_tau: post-hoc logit adjustment tau applied to the model after the stage (``None`` = off).
        augment: use the training augmentation preset (else the eval transform).
        val_every: validate every N epochs (and at the last epoch).
        init_from: which checkpoint of the previous stage this stage starts from: ``last`` or ``best_val``.
    """

    name: str = "stage1"
    epochs: int = 10
    batch_size: int = 64
    sampler: str = "instance"
    rho: float = 0.0
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    mixing: MixingConfig = field(default_factory=MixingConfig)
    freeze_backbone: bool = False
    bn_mode: str = "train"
    reset_head: bool = False
    max_norm: float | None = None
    logit_adjust_tau: float | None = None
    augment: bool = True
    val_every: int = 1
    init_from: str = "last"

    def check(self, path: str = "stage") -> None:
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"{path}.name: must be letters, digits, '-' or '_' (got {self.name!r})")
        if not self.epochs >= 1:
            raise ConfigError(f"{path}.epochs: must be >= 1 (got {self.epochs})")
        _positive(f"{path}.batch_size", self.batch_size)
        _positive(f"{path}.rho", self.rho, strict=False)
        self.optim.check(f"{path}.optim")
        self.mixing.check(f"{path}.mixing")
        _choice(f"{path}.bn_mode", self.bn_mode, ("train", "eval"), "bn_mode")
        if self.max_norm is not None and not 0 <= self.max_norm <= 1:
            raise ConfigError(f"{path}.max_norm: must be in [0, 1] (got {self.max_norm})")
        if self.logit_adjust_tau is not None:
            _positive(f"{path}.logit_adjust_tau", self.logit_adjust_tau, strict=False)
        _positive(f"{path}.val_every", self.val_every)
        _choice(f"{path}.init_from", self.init_from, ("last", "best_val"), "init_from")
        if self.optim.warmup_epochs >= self.epochs and self.optim.warmup_epochs > 0:
            raise ConfigError(
                f"{path}.optim.warmup_epochs: must be < epochs ({self.epochs}) (got {self.optim.warmup_epochs})"
            )


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation settings.

    Attributes:
        batch_size: evaluation batch size.
        tta_flip: also report flip-TTA test numbers, as separately labelled rows.
        select_metric: validation metric that chooses ``best_val`` (``mean_per_class`` or ``top1``).
    """

    batch_size: int = 256
    tta_flip: bool = True
    select_metric: str = "mean_per_class"

    def check(self, path: str = "eval") -> None:
        _positive(f"{path}.batch_size", self.batch_size)
        _choice(f"{path}.select_metric", self.select_metric, ("mean_per_class", "top1"), "select_metric")


@dataclass(frozen=True)
class LogConfig:
    """Logging besides ``metrics.jsonl`` (always written).

    Attributes:
        tensorboard: also write TensorBoard event files to ``RUN_DIR/tensorboard``.
    """

    tensorboard: bool = False

    def check(self, path: str = "log") -> None:
        return None


@dataclass(frozen=True)
class RuntimeConfig:
    """Where and how the run executes.

    Attributes:
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
        seed: the run's seed; data order, augmentation, mixing, partial class sets and memory all derive from it.
        amp: autocast of the model's forward in training and evaluation: ``none`` (fp32), ``bf16`` (on CUDA and on
            the CPU; on the CPU fast only with native bf16, e.g. AMX or AVX512-BF16, else maybe slower than fp32,
            and an x86 CPU without it gets a warning when training starts)
            or ``fp16`` (CUDA only, with a gradient scaler; refused for training off CUDA, and a run trained with
            fp16 is evaluated in fp32 there). The losses always take float32 logits and embeddings.
        deterministic: ask PyTorch for deterministic algorithms (slower on CUDA).
        pipeline: a name of ``bce3s.data.PIPELINES``: ``auto`` (GPU-resident for in-memory datasets), ``gpu`` or
            ``loader``.
        num_workers: DataLoader workers of the ``loader`` pipeline.
        nan_policy: what a non-finite loss or gradient does: ``stop`` the run or ``skip`` the step.
        threads: CPU threads for PyTorch (0 = PyTorch's default).
        step: how each training step runs: ``eager`` (the reference: a host-side finiteness check before every
            optimizer step), ``static`` (the same step with no host synchronisation: device-side checks, fused
            optimizer), ``graphed`` (``static`` captured once as a CUDA graph and replayed; one CUDA process,
            not with ``model.compile``), ``compiled`` (``static`` with the forward and loss through
            ``torch.compile``), or ``auto`` (``graphed`` for one CUDA process without fp16 or ``model.compile``,
            else ``eager``).
        max_steps: cap on the optimizer steps of every epoch (null = the whole epoch), for smoke runs: each epoch
            of each stage stops after this many steps (the first ``max_steps`` batches of its order), then
            validates and saves as usual; the learning-rate schedule and the epochs are unchanged. Part of the
            run's config (``config.yaml``), so ``--resume`` continues with the same cap.
    """

    device: str = "auto"
    seed: int = 0
    amp: str = "none"
    deterministic: bool = False
    pipeline: str = "auto"
    num_workers: int = 0
    nan_policy: str = "stop"
    threads: int = 0
    step: str = "auto"
    max_steps: int | None = None

    def check(self, path: str = "runtime") -> None:
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(f"{path}.device: must be auto, cpu, cuda or cuda:N (got {self.device!r})")
        _choice(f"{path}.amp", self.amp, ("none", "bf16", "fp16"), "amp mode")
        _positive(f"{path}.num_workers", self.num_workers, strict=False)
        _choice(f"{path}.nan_policy", self.nan_policy, ("stop", "skip"), "nan_policy")
        _positive(f"{path}.threads", self.threads, strict=False)
        _choice(f"{path}.step", self.step, ("auto", "eager", "static", "graphed", "compiled"), "step mode")
        if self.max_steps is not None:
            _positive(f"{path}.max_steps", self.max_steps)


def _default_stages() -> tuple[StageConfig, ...]:
    return (StageConfig(),)


@dataclass(frozen=True)
class Config:
    """A whole experiment. ``stages`` run in order (stage 1: representation; stage 2: classifier re-training).

    ``stages`` is a tuple (a list given to the constructor is stored as a tuple); YAML dumps it as a list.

    Attributes:
        data: the dataset, its long-tailed subset and augmentation.
        model: backbone and classifier head.
        stages: the training stages, in order (a YAML list; ``stages.0`` is the first). Keys a stage does not
            give take the defaults.
        eval: evaluation settings.
        log: logging.
        runtime: device, seed, precision and data pipeline.
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    stages: tuple[StageConfig, ...] = field(default_factory=_default_stages)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def __post_init__(self) -> None:
        if isinstance(self.stages, list):
            object.__setattr__(self, "stages", tuple(self.stages))

    def check(self) -> None:
        """Range-check every value; raises :class:`ConfigError` naming the key path.

        Registry names and loss parameters are checked by :func:`bce3s.engine.validate.validate_config`.
        """
        self.data.check("data")
        self.model.check("model")
        if not self.stages:
            raise ConfigError("stages: at least one stage is required")
        names = set()
        for i, stage in enumerate(self.stages):
            stage.check(f"stages.{i}")
            if stage.name in names:
                raise ConfigError(f"stages.{i}.name: duplicate stage name {stage.name!r}")
            names.add(stage.name)
        if self.stages[0].freeze_backbone:
            raise ConfigError("stages.0.freeze_backbone: the first stage must train the backbone")
        self.eval.check("eval")
        self.log.check("log")
        self.runtime.check("runtime")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a config: dataclass defaults < YAML file < ``--set key.path=value`` overrides; then range-check it.

    Names owned by registries are not looked up here: call :func:`bce3s.engine.validate.validate_config` on the
    result before using it (the CLI and ``train`` do).

    Raises:
        ConfigError: unreadable file, YAML syntax error, unknown key (with the closest valid key), wrong type,
            out-of-range value.
    """
    import yaml

    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(
                f"config file not found: {p} (give the path of a YAML file, e.g. configs/digits_lt/bce3s.yaml)"
            )
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{p}:{where} is not valid YAML ({getattr(err, 'problem', err)})") from None
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"cannot read config file {p}: {err}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of sections (data, model, stages, ...)")
        data = loaded
    data = parse_overrides(data, overrides or [], Config)
    cfg = config_from_dict(Config, data)
    cfg.check()
    return cfg


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML text (``load_config`` of it gives an equal ``Config``)."""
    import yaml

    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
