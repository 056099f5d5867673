"""One split of a dataset (:class:`ImageSet`) and image-file decoding.

An :class:`ImageSet` holds its images either in memory (``images``: uint8 (N, C, H, W), the form the
GPU-resident pipeline needs) or as file paths (``paths``), plus int64 labels. ``load_image(i)`` returns image
``i`` as uint8 (C, H, W) in both cases; files are decoded with PIL as RGB.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from bce3s.errors import DataError

__all__ = ["SCAN_BUDGET_S", "SHOWN_BAD_FILES", "ImageSet", "decode_files", "find_bad_files", "load_image_file"]

log = logging.getLogger(__name__)


def load_image_file(path: str | os.PathLike[str], mode: str = "RGB") -> Tensor:
    """Decode an image file.

    Args:
        path: the file.
        mode: PIL mode to convert to: ``RGB`` (3 channels) or ``L`` (1 channel).

    Returns:
        uint8 (C, H, W).

    Raises:
        DataError: the file is missing or cannot be decoded (the message names the path).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            arr = np.array(im.convert(mode), dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"image file not found: {path} (check data.root and the split files)") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise DataError(f"cannot decode image {path}: {err} (re-create or remove the file)") from None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


SHOWN_BAD_FILES = 5
"""How many undecodable files :func:`decode_files` names in its one error (it counts all of them)."""


SCAN_BUDGET_S = 60.0
"""How long :meth:`ImageSet.load_image` spends, once a file of a set fails to decode, decoding the set's other
files so that its one error names all the bad ones (it says how many were checked when time runs out)."""


def _bad_files_error(bad: Sequence[tuple[str, str]], n: int, checked: int | None = None) -> DataError:
    """One error naming the first :data:`SHOWN_BAD_FILES` undecodable files (path and reason) and the count.

    ``checked`` < ``n``: only that many of the ``n`` files were read (the others may be bad too).
    """
    shown = "; ".join(f"{path} ({reason})" for path, reason in bad[:SHOWN_BAD_FILES])
    more = f"; and {len(bad) - SHOWN_BAD_FILES} more" if len(bad) > SHOWN_BAD_FILES else ""
    what = "image cannot" if len(bad) == 1 else "images cannot"
    partial = ""
    if checked is not None and checked < n:
        partial = f" (stopped after reading {checked} of them; the others may be bad too)"
    return DataError(f"{len(bad)} of {n} {what} be decoded{partial} (re-create or remove them): {shown}{more}")


def _reason(err: DataError, path: str) -> str:
    """The reason part of a :func:`load_image_file` error, without the path it repeats."""
    text = str(err)
    for prefix in (f"cannot decode image {path}: ", "image file not found: "):
        if text.startswith(prefix):
            text = text[len(prefix):]
    text = text.replace(" (re-create or remove the file)", "").replace(f" '{path}'", "").replace(path, "").strip()
    return "not found" if text.startswith("(check data.root") else (text or "unreadable")


def decode_files(
    paths: Sequence[str],
    *,
    mode: str = "RGB",
    max_bytes: int = 2 << 30,
    workers: int | None = None,
) -> Tensor | None:
    """Decode files of one common size into a single uint8 tensor, with a thread pool.

    Every file is read even after a bad one, so that one error names all the files that cannot be decoded
    (the first :data:`SHOWN_BAD_FILES` with their reason, and the count) instead of one per run.

    Args:
        paths: image files.
        mode: PIL mode (``RGB`` or ``L``).
        max_bytes: give up (return ``None``) when the decoded tensor would exceed this many bytes.
        workers: decoding threads (default: ``min(8, os.cpu_count())``).

    Returns:
        uint8 (N, C, H, W), or ``None`` when the images differ in size or the tensor would be too large.

    Raises:
        DataError: files cannot be decoded (all of them counted, the first few named).
    """
    n = len(paths)
    channels = 3 if mode == "RGB" else 1
    if n == 0:
        return torch.empty(0, channels, 1, 1, dtype=torch.uint8)
    bad: list[tuple[int, str]] = []
    first, j = None, 0
    while first is None and j < n:  # the first decodable image gives the common shape
        try:
            first = load_image_file(paths[j], mode)
        except DataError as err:
            bad.append((j, _reason(err, str(paths[j]))))
        j += 1
    if first is None:
        raise _bad_files_error([(str(paths[i]), r) for i, r in bad], n)
    shape = tuple(first.shape)
    if n * first.numel() > max_bytes:
        if bad:
            raise _bad_files_error([(str(paths[i]), r) for i, r in bad], n)
        log.info("not decoding %d images of shape %s into memory: more than %d bytes", n, shape, max_bytes)
        return None
    out = torch.empty((n, *shape), dtype=torch.uint8)
    out[j - 1] = first
    mismatch: list[tuple[int, tuple[int, ...]]] = []

    def work(i: int) -> None:
        try:
            img = load_image_file(paths[i], mode)
        except DataError as err:
            bad.append((i, _reason(err, str(paths[i]))))
            return
        if tuple(img.shape) != shape:
            mismatch.append((i, tuple(img.shape)))  # kept as files; the others are still read, to find bad ones
        elif not mismatch:
            out[i] = img

    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(work, range(j, n), chunksize=64))
    if bad:
        raise _bad_files_error([(str(paths[i]), r) for i, r in sorted(bad)], n)
    if mismatch:
        i, other = min(mismatch)
        log.info("images differ in size (%s: %s, %s: %s): keeping them as files", paths[j - 1], shape, paths[i],
                 other)
        return None
    return out


def find_bad_files(
    paths: Sequence[str],
    *,
    mode: str = "RGB",
    workers: int | None = None,
    budget_s: float | None = None,
    known: Sequence[tuple[int, str]] = (),
) -> tuple[list[tuple[int, str]], int]:
    """Decode every file (with a thread pool) and list the ones that cannot be decoded, or are missing.

    Args:
        paths: image files.
        mode: PIL mode (``RGB`` or ``L``).
        workers: decoding threads (default: ``min(8, os.cpu_count())``).
        budget_s: stop reading new files after this many seconds (``None``: read them all).
        known: ``(index, reason)`` of files already found bad; they are not read again.

    Returns:
        ``(bad, checked)``: the bad files as ``(index, reason)`` in index order (``known`` included), and how many
        files were read or known (``len(paths)`` unless the budget ran out).
    """
    done = {i for i, _ in known}
    bad = list(known)
    checked = [len(done)]
    deadline = None if budget_s is None else time.monotonic() + budget_s

    def work(i: int) -> None:
        if deadline is not None and time.monotonic() > deadline:
            return
        try:
            load_image_file(paths[i], mode)
        except DataError as err:
            bad.append((i, _reason(err, str(paths[i]))))
        checked.append(1)

    todo = [i for i in range(len(paths)) if i not in done]
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        list(pool.map(work, todo, chunksize=64))
    return sorted(bad), sum(checked)


@dataclass
class ImageSet:
    """One split: images in memory or as files, with labels.

    Attributes:
        images: uint8 (N, C, H, W) when held in memory, else ``None``.
        paths: N file paths when the images are files, else ``None``.
        labels: int64 (N,) class ids.
        source_index: int64 (N,) position of each image in the dataset's source enumeration (the file order of
            the original training set, or the line number in a split file); used for provenance hashes.
            ``None`` = ``arange(N)``.
        mode: PIL mode used to decode files (``RGB`` or ``L``).
    """

    images: Tensor | None
    paths: list[str] | None
    labels: Tensor
    source_index: Tensor | None = None
    mode: str = "RGB"

    def __post_init__(self) -> None:
        if (self.images is None) == (self.paths is None):
            raise ValueError("ImageSet needs exactly one of images and paths")
        if self.labels.dtype != torch.int64 or self.labels.dim() != 1:
            raise ValueError(f"labels must be int64 (N,), got {self.labels.dtype} {tuple(self.labels.shape)}")
        n = self.labels.numel()
        if self.images is not None:
            if self.images.dtype != torch.uint8 or self.images.dim() != 4 or self.images.shape[0] != n:
                raise ValueError(
                    f"images must be uint8 (N, C, H, W) with N = {n}, got {self.images.dtype} "
                    f"{tuple(self.images.shape)}"
                )
        elif len(self.paths) != n:  # type: ignore[arg-type]
            raise ValueError(f"{len(self.paths)} paths for {n} labels")  # type: ignore[arg-type]
        if self.source_index is not None and tuple(self.source_index.shape) != (n,):
            raise ValueError(f"source_index must have shape ({n},), got {tuple(self.source_index.shape)}")

    def __len__(self) -> int:
        return self.labels.numel()

    @property
    def in_memory(self) -> bool:
        """True when ``images`` holds the decoded images."""
        return self.images is not None

    @property
    def index(self) -> Tensor:
        """int64 (N,) positions in the source enumeration (``source_index`` or ``arange(N)``)."""
        return self.source_index if self.source_index is not None else torch.arange(len(self))

    def load_image(self, i: int) -> Tensor:
        """Image ``i`` as uint8 (C, H, W); decodes the file for file-based sets.

        Raises:
            DataError: the file cannot be decoded (or is missing). The set's other files are then decoded too
                (for at most :data:`SCAN_BUDGET_S` seconds, the run stopping anyway), so that the one error
                counts all the bad ones and names the first :data:`SHOWN_BAD_FILES`, as :func:`decode_files` does.
        """
        if self.images is not None:
            return self.images[i]
        paths: list[str] = self.paths  # type: ignore[assignment]
        try:
            return load_image_file(paths[i], self.mode)
        except DataError as err:
            first = (i, _reason(err, str(paths[i])))
        log.warning("%s cannot be decoded; reading the other %d files of the set to find all bad ones",
                    paths[i], len(paths) - 1)  # fmt: skip
        bad, checked = find_bad_files(paths, mode=self.mode, budget_s=SCAN_BUDGET_S, known=[first])
        raise _bad_files_error([(str(paths[j]), r) for j, r in bad], len(paths), checked)

    def counts(self, num_classes: int) -> list[int]:
        """Images per class, index = class id (length ``num_classes``)."""
        return torch.bincount(self.labels, minlength=num_classes).tolist()

    def subset(self, idx: Tensor) -> ImageSet:
        """The images at positions ``idx`` (int64 (M,)), in that order."""
        idx = torch.as_tensor(idx, dtype=torch.int64)
        images = self.images[idx] if self.images is not None else None
        paths = [self.paths[i] for i in idx.tolist()] if self.paths is not None else None
        return ImageSet(images, paths, self.labels[idx], self.index[idx], self.mode)

    def to_memory(self, *, max_bytes: int = 2 << 30, workers: int | None = None) -> ImageSet:
        """This set with its files decoded into ``images`` when they share one size and fit in ``max_bytes``.

        Returns ``self`` unchanged when it is already in memory or cannot be decoded into one tensor.
        """
        if self.images is not None:
            return self
        images = decode_files(self.paths or [], mode=self.mode, max_bytes=max_bytes, workers=workers)
        if images is None:
            return self
        return ImageSet(images, None, self.labels, self.source_index, self.mode)
