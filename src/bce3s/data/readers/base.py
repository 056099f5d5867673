"""What a dataset reader returns (the dataset as found on disk, before the long-tailed subset is taken)."""

from __future__ import annotations

import http.client
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bce3s.data.imageset import ImageSet

__all__ = ["SourceData", "torchvision_dataset", "torchvision_download"]

# what a torchvision download raises on an offline machine, a bad mirror or a bad checksum (URLError is an OSError)
_DOWNLOAD_ERRORS = (OSError, RuntimeError, EOFError, http.client.HTTPException)


def torchvision_dataset(name: str) -> type:
    """The ``torchvision.datasets`` class ``name``, used only to download (imported lazily: it is slow to import)."""
    import torchvision.datasets

    return getattr(torchvision.datasets, name)


def torchvision_download(name: str, root: Path, folders: tuple[str, ...] = ()) -> str | None:
    """Download dataset ``name`` into ``root`` with ``torchvision.datasets.<name>(root, download=True)``.

    On failure, the directories this attempt created (``root``, its missing parents, and ``root/<folder>`` for
    each of ``folders``, deepest first) are removed when they are empty, so a failed attempt leaves no empty
    tree behind; files that did arrive are kept (torchvision checks and reuses them on the next try).

    Args:
        name: the ``torchvision.datasets`` class.
        root: torchvision's ``root``.
        folders: folders below ``root`` the download may create (e.g. ``FashionMNIST/raw``).

    Returns:
        ``None`` on success, else the reason of the failure as one line.
    """
    watch = [root / f for f in folders]
    for folder in folders:  # FashionMNIST/raw -> also FashionMNIST
        parent = (root / folder).parent
        while parent != root and parent not in watch:
            watch.append(parent)
            parent = parent.parent
    watch.sort(key=lambda p: len(p.parts), reverse=True)
    watch += [root, *root.parents]
    created = [p for p in watch if not p.exists()]
    try:
        root.mkdir(parents=True, exist_ok=True)
        torchvision_dataset(name)(root=str(root), train=True, download=True)
    except _DOWNLOAD_ERRORS as err:
        for path in created:
            try:
                path.rmdir()  # only succeeds on an empty directory
            except OSError:
                pass
        reason = " ".join(line.strip() for line in str(err).splitlines() if line.strip()) or type(err).__name__
        return reason if len(reason) <= 400 else reason[:397] + "..."
    return None


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
