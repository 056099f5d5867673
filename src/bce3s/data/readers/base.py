"""What a dataset reader returns (the dataset as found on disk, before the long-tailed subset is taken)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bce3s.data.imageset import ImageSet

__all__ = ["SourceData", "torchvision_dataset"]


def torchvision_dataset(name: str) -> type:
    """The ``torchvision.datasets`` class ``name``, used only to download (imported lazily: it is slow to import)."""
    import torchvision.datasets

    return getattr(torchvision.datasets, name)


@dataclass
class SourceData:
    """A dataset as read from disk.

    Attributes:
        name: dataset name (``cfg.dataset``).
        class_names: K names, index = class id.
        train: the full training set (the pool the long-tailed subset is drawn from) or, when ``n_max`` is
            ``None``, the training split itself (already long-tailed: ImageNet-LT, Places-LT, iNat).
        test: the test split.
        val: a fixed validation split (a shipped list, or one the reader carved), else ``None``.
        in_channels: image channels (1 or 3).
        image_size: the dataset's default training crop side.
        n_max: head-class count of the long-tailed profile; ``None`` = ``train`` is used as is.
        val_mode: where validation comes from: ``unused`` (carved from the training images the long-tailed
            subset did not use), ``carve`` (carved out of ``train``, which loses those images), ``given``
            (``val`` as read).
        default_val_per_class: validation size per class when ``cfg.val_per_class`` is ``None``.
        decode: decode file-based splits into memory after subsetting when they share one size (< 2 GiB).
        info: extra JSON-able facts for the run record (root, file hashes, carve seeds, ...).
    """

    name: str
    class_names: list[str]
    train: ImageSet
    test: ImageSet
    in_channels: int
    image_size: int
    val: ImageSet | None = None
    n_max: int | None = None
    val_mode: str = "unused"
    default_val_per_class: int = 0
    decode: bool = False
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)
