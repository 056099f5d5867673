"""Long-tailed train / val / test splits of a configured dataset: :func:`build_data`.

``build_data(cfg)`` reads the dataset (``bce3s.data.readers``), takes the long-tailed training subset
(``class_counts`` profile, first n_i per class in file order or a seeded choice), carves the validation split
(from training images the subset did not use; iNat: out of train; ImageNet-LT / Places-LT: the
shipped val list), decodes file-based image folders into memory when possible, and records what it did in
``DataSplits.record`` (per-class counts and sha256 of the chosen indices), which the engine writes to
``RUN_DIR/data.json``.

Class 0 is the head class. When a class of the pool cannot give both its target count and its validation
images (the head class of CIFAR-10/100 and Fashion-MNIST, which use every image of the class at n_max), it
keeps ``available - val_per_class`` training images; the reduction is logged and recorded
(``record["target_counts"]`` vs ``record["counts"]["train"]``); ``data.val_per_class=0`` keeps the standard
counts (e.g. 10,847 images for CIFAR-100-LT at IF 100).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bce3s.config import DataConfig
from bce3s.data.imageset import ImageSet, decode_files
from bce3s.data.imbalance import carve_val, class_counts, index_hash, lt_subset_indices, per_class_carve
from bce3s.data.readers import read_source
from bce3s.data.readers.base import SourceData
from bce3s.errors import DataError

__all__ = ["DataSplits", "ImageSet", "build_data"]

log = logging.getLogger(__name__)

MAX_IN_MEMORY_BYTES = 2 << 30
DEFAULT_FILE_IMAGE_SIZE = 224


@dataclass
class DataSplits:
    """The splits of one experiment.

    Attributes:
        name: dataset name.
        train: the (long-tailed) training split.
        val: the validation split used for checkpoint selection, or ``None``.
        test: the test split.
        num_classes: K.
        class_names: K names, index = class id.
        train_counts: training images per class, index = class id.
        image_size: training crop side.
        in_channels: image channels.
        record: JSON-able proof of the subset (counts, sha256 of the train/val/test indices, settings).
    """

    name: str
    train: ImageSet
    val: ImageSet | None
    test: ImageSet
    num_classes: int
    class_names: list[str]
    train_counts: list[int]
    image_size: int
    in_channels: int
    record: dict[str, Any] = field(default_factory=dict)


def _lt_train_val(
    src: SourceData, cfg: DataConfig, val_per_class: int
) -> tuple[ImageSet, ImageSet | None, dict[str, Any]]:
    """Long-tailed subset of the pool and, for ``val_mode == "unused"``, the validation split next to it."""
    pool = src.train
    k = src.num_classes
    assert src.n_max is not None
    n_max = src.n_max
    if cfg.max_per_class is not None:
        if cfg.max_per_class > src.n_max:
            raise DataError(
                f"data.max_per_class: {cfg.max_per_class} is more than {src.name}'s head class can give "
                f"({src.n_max}); use at most {src.n_max}, or null for the standard profile"
            )
        n_max = cfg.max_per_class
    target = class_counts(n_max, k, cfg.imbalance_factor, cfg.profile)
    have = pool.counts(k)
    reserve = val_per_class if src.val_mode == "unused" else 0
    counts = []
    for c, (want, n) in enumerate(zip(target, have)):
        if n - reserve < 1:
            raise DataError(
                f"class {c} ({src.class_names[c]}) has {n} training images: too few to keep {reserve} for "
                f"validation and at least one for training; lower data.val_per_class"
            )
        counts.append(min(want, n - reserve))
    reduced = [c for c in range(k) if counts[c] < target[c]]
    if reduced:
        c = reduced[0]
        log.warning(
            "%s: %d class(es) hold fewer images than the profile asks (class %d keeps %d of %d%s); "
            "train has %d images instead of %d (data.val_per_class=0 keeps the standard counts where possible)",
            src.name,
            len(reduced),
            c,
            counts[c],
            target[c],
            f", {reserve} go to validation" if reserve else "",
            sum(counts),
            sum(target),
        )
    train_pos = lt_subset_indices(pool.labels, counts, order=cfg.order, seed=cfg.subset_seed)
    val = None
    if src.val_mode == "unused" and val_per_class > 0:
        val_pos = carve_val(pool.labels, train_pos, val_per_class, order=cfg.order, seed=cfg.subset_seed)
        val = pool.subset(val_pos)
    info = {"n_max": n_max, "target_counts": target, "reduced_classes": reduced}
    return pool.subset(train_pos), val, info


def _to_memory(sets: dict[str, ImageSet]) -> dict[str, ImageSet]:
    """Decode all file-based splits into memory together when they share one image size and fit in 2 GiB."""
    names = [s for s, v in sets.items() if v.paths is not None]
    paths = [p for s in names for p in sets[s].paths]  # type: ignore[union-attr]
    images = decode_files(paths, max_bytes=MAX_IN_MEMORY_BYTES)
    if images is None:
        return sets
    out = dict(sets)
    start = 0
    for s in names:
        v = sets[s]
        out[s] = ImageSet(images[start : start + len(v)], None, v.labels, v.source_index, v.mode)
        start += len(v)
    return out


def _split_record(
    cfg: DataConfig,
    src: SourceData,
    train: ImageSet,
    val: ImageSet | None,
    test: ImageSet,
    val_per_class: int,
    subset_info: dict[str, Any],
    image_size: int,
) -> dict[str, Any]:
    """The JSON-able record of the splits: settings, per-class counts, sizes and sha256 of the chosen indices."""
    k = src.num_classes
    train_counts = train.counts(k)
    val_source = {"unused": "unused training images", "carve": "carved out of train", "given": "given"}
    return {
        "dataset": src.name,
        "root": str(Path(cfg.root).expanduser().resolve()),
        "num_classes": k,
        "long_tailed_source": src.n_max is None,
        "imbalance_factor": cfg.imbalance_factor if src.n_max is not None else None,
        "profile": cfg.profile if src.n_max is not None else None,
        "order": cfg.order,
        "subset_seed": cfg.subset_seed,
        **subset_info,
        "val_per_class": val_per_class if val is not None and src.val_mode != "given" else None,
        "val_source": val_source[src.val_mode] if val is not None else None,
        "counts": {
            "train": train_counts,
            "val": val.counts(k) if val is not None else None,
            "test": test.counts(k),
        },
        "sizes": {"train": len(train), "val": len(val) if val is not None else 0, "test": len(test)},
        "sha256": {
            "train": index_hash(train.index),
            "val": index_hash(val.index) if val is not None else None,
            "test": index_hash(test.index),
        },
        "in_memory": train.in_memory,
        "image_size": image_size,
        "in_channels": src.in_channels,
        "source": src.info,
    }


def build_data(cfg: DataConfig) -> DataSplits:
    """Read ``cfg.dataset`` and build its long-tailed train split and its val / test splits.

    Args:
        cfg: the data config (``dataset``, ``root``, ``imbalance_factor``, ``profile``, ``order``,
            ``subset_seed``, ``val_per_class``, split lists, ``image_size``).

    Returns:
        The splits, with ``record`` describing exactly which images were chosen.

    Raises:
        DataError: missing or malformed data, or a profile / validation size the data cannot satisfy.
    """
    t0 = time.perf_counter()
    src = read_source(cfg)
    k = src.num_classes
    if cfg.val_per_class is None:
        val_per_class = src.default_val_per_class
    else:
        val_per_class = cfg.val_per_class
    subset_info: dict[str, Any] = {}
    if src.n_max is not None:
        train, val, subset_info = _lt_train_val(src, cfg, val_per_class)
    else:
        if cfg.max_per_class is not None:
            raise DataError(
                f"data.max_per_class: {src.name} ships its own long-tailed split, which bce3s does not subsample; "
                "remove the key"
            )
        train = src.train
        val = None
    if src.val_mode == "given":
        val = None if cfg.val_per_class == 0 else src.val
        if cfg.val_per_class and src.n_max is None:
            log.info("%s: data.val_per_class=%d ignored: the validation split is the given list", src.name,
                     cfg.val_per_class)  # fmt: skip
    elif src.val_mode == "carve" and val_per_class > 0:
        train_pos, val_pos = per_class_carve(train.labels, val_per_class, seed=cfg.subset_seed)
        train, val = train.subset(train_pos), train.subset(val_pos)
    test = src.test
    if src.decode:
        sets = _to_memory({"train": train, "test": test, **({"val": val} if val is not None else {})})
        train, test, val = sets["train"], sets["test"], sets.get("val")
    image_size = cfg.image_size or src.image_size
    if not image_size:
        image_size = min(train.images.shape[-2:]) if train.images is not None else DEFAULT_FILE_IMAGE_SIZE
    train_counts = train.counts(k)
    empty = [c for c, n in enumerate(train_counts) if n == 0]
    if empty:
        raise DataError(f"{src.name}: class {empty[0]} ({src.class_names[empty[0]]}) has no training image")
    record = _split_record(cfg, src, train, val, test, val_per_class, subset_info, int(image_size))
    log.info(
        "%s: %d classes, train %d (%d … %d per class), val %d, test %d, in memory: %s (%.2f s)",
        src.name,
        k,
        len(train),
        max(train_counts),
        min(train_counts),
        record["sizes"]["val"],
        len(test),
        train.in_memory,
        time.perf_counter() - t0,
    )
    return DataSplits(
        name=src.name,
        train=train,
        val=val,
        test=test,
        num_classes=k,
        class_names=list(src.class_names),
        train_counts=train_counts,
        image_size=int(image_size),
        in_channels=src.in_channels,
        record=record,
    )
