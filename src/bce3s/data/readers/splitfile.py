"""Datasets described by split files: ImageNet-LT, Places-LT and iNaturalist 2018.

Each split file has one ``relative/path label`` line per image (the classifier-balancing / OLTR format); paths
are relative to ``data.root``. The training list is already long-tailed, so no subset is taken. The number of
classes K is ``max(train label) + 1`` and every class must have a training image.

- ImageNet-LT: ``ImageNet_LT_{train,val,test}.txt``; validation = the shipped val list (20 per class).
- Places-LT: ``Places_LT_{train,val,test}.txt``; validation = the shipped val list.
- iNaturalist 2018: ``iNaturalist18_{train,val}.txt``. Following the literature, the official val list is the
  **test** set; the validation split is carved out of train (``val_per_class`` images per class, default 1,
  seeded with ``subset_seed``), and those images leave the training set. Setting ``data.val_list``
  uses that list as validation instead.

The list files are found at ``data.train_list`` / ``val_list`` / ``test_list`` (relative to ``data.root`` unless
absolute), defaulting to the names above inside ``data.root``. Known lists are checked against their published
sha256 (a mismatch is a warning). Every listed image must exist (checked by listing each folder once; one error
names the missing ones). Images are kept as paths; nothing is decoded here.
"""

from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from bce3s.config import DataConfig
from bce3s.data.imageset import SHOWN_BAD_FILES, ImageSet
from bce3s.data.readers.base import SourceData
from bce3s.errors import DataError

__all__ = ["KNOWN_SHA256", "read_imagenet_lt", "read_inat2018", "read_places_lt", "read_split_file"]

log = logging.getLogger(__name__)

# Published sha256 of the split files (the facebookresearch/classifier-balancing lists).
KNOWN_SHA256 = {
    "ImageNet_LT_train.txt": "efdbdad4f050237c310b2f354cf95a8b1d7c8d57a63c4ea4bb6bf2bcb012f37f",
    "ImageNet_LT_val.txt": "9af7ba688acf9532ff5845a8fb14a1e97fdc4c51ac48bc72c08ea9c3f7ff142e",
    "ImageNet_LT_test.txt": "d1590191cf8a71fada7b1aaedaa2d139a2aea93ff2f1b755319d0bd8dbaa55d5",
    "Places_LT_train.txt": "726c4871dcbf07ce2f857703bfe32e9a83ffbf52d704239f6d95c4f4f4c247f7",
    "Places_LT_val.txt": "719e3cf3766c09134ea28f56f1036c78def511ac1ed2c2532a6beef78f2439ba",
    "Places_LT_test.txt": "44eee8441c8098c59195465abede425721bc35525d75209f9433b161a6eb37bc",
    "iNaturalist18_train.txt": "158fa2dca040e6e95b06c68c7cdff40fe696f202793b2aa0e8b854321ffe1adf",
    "iNaturalist18_val.txt": "efaeff65f80641b60864470e6f255aa69453406ef5717eec8c6681748f3a61f3",
}


@dataclass(frozen=True)
class _Spec:
    title: str
    train: str
    val: str | None
    test: str
    num_classes: int
    example: str


IMAGENET_LT = _Spec(
    "ImageNet-LT", "ImageNet_LT_train.txt", "ImageNet_LT_val.txt", "ImageNet_LT_test.txt", 1000,
    "train/n01440764/n01440764_10026.JPEG 0",
)  # fmt: skip
PLACES_LT = _Spec(
    "Places-LT", "Places_LT_train.txt", "Places_LT_val.txt", "Places_LT_test.txt", 365,
    "train/airfield/00004851.jpg 0",
)  # fmt: skip
INAT2018 = _Spec(
    "iNaturalist 2018", "iNaturalist18_train.txt", None, "iNaturalist18_val.txt", 8142,
    "train_val2018/Plantae/7291/9f8ecb39e5f767e39e9b28e34488f179.jpg 7291",
)  # fmt: skip
INAT_VAL_PER_CLASS = 1


@dataclass
class SplitList:
    """A parsed split file.

    Attributes:
        file: the list file.
        rel_paths: N image paths as written in the file.
        labels: int64 (N,) labels.
        line_numbers: int64 (N,) 1-based line numbers (blank lines are skipped).
        sha256: hex digest of the file's bytes.
    """

    file: Path
    rel_paths: list[str]
    labels: torch.Tensor
    line_numbers: torch.Tensor
    sha256: str


def read_split_file(file: str | Path) -> SplitList:
    """Parse a ``relative/path label`` list (a path may contain spaces; the label is the last field).

    Raises:
        DataError: the file is missing, or a line is malformed or has a negative label (names file:line).
    """
    file = Path(file)
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise DataError(f"split file not found: {file}") from None
    except OSError as err:
        raise DataError(f"cannot read split file {file}: {err}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"split file {file} is not UTF-8 text ({err})") from None
    rel_paths: list[str] = []
    labels: list[int] = []
    lines: list[int] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.rsplit(None, 1)
        try:
            if len(fields) != 2:
                raise ValueError
            label = int(fields[1])
        except ValueError:
            raise DataError(
                f"{file}:{lineno}: malformed line {line.strip()[:80]!r}; expected 'relative/path label' "
                f"with an integer label"
            ) from None
        if label < 0:
            raise DataError(f"{file}:{lineno}: label {label} is negative; labels are class ids 0..K-1")
        rel_paths.append(fields[0].strip())
        labels.append(label)
        lines.append(lineno)
    if not rel_paths:
        raise DataError(f"split file {file} holds no 'relative/path label' line")
    return SplitList(
        file,
        rel_paths,
        torch.tensor(labels, dtype=torch.int64),
        torch.tensor(lines, dtype=torch.int64),
        hashlib.sha256(data).hexdigest(),
    )


def _check_known(lst: SplitList) -> None:
    want = KNOWN_SHA256.get(lst.file.name)
    if want is not None and lst.sha256 != want:
        log.warning(
            "%s: sha256 %s differs from the published %s; results may not be comparable with the literature",
            lst.file,
            lst.sha256[:12],
            want[:12],
        )


def _class_name(rel: str) -> str:
    parts = Path(rel).parent.parts
    return "/".join(parts[1:]) if len(parts) > 1 else (parts[0] if parts else "")


def _to_imageset(root: Path, lst: SplitList, num_classes: int) -> ImageSet:
    bad = torch.nonzero(lst.labels >= num_classes).flatten()
    if bad.numel():
        i = int(bad[0])
        raise DataError(
            f"{lst.file}:{int(lst.line_numbers[i])}: label {int(lst.labels[i])} outside [0, {num_classes}) "
            f"(the train list defines {num_classes} classes)"
        )
    prefix = str(root) + os.sep  # plain concatenation: Path joins cost seconds on iNat's 437k lines
    return ImageSet(None, [prefix + p for p in lst.rel_paths], lst.labels, lst.line_numbers - 1)


def _listing(folder: str) -> frozenset[str] | bool:
    """The entry names of ``folder``; ``False`` when it does not exist, ``True`` when it cannot be listed."""
    try:
        return frozenset(e.name for e in os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True


def _check_images_exist(lists: dict[str, SplitList], sets: dict[str, ImageSet]) -> None:
    """Every listed image must exist: one error counting the missing ones and naming the first few (file:line).

    Each folder the lists name is listed once (what reading an ImageFolder tree costs), so no image is opened;
    a name missing from its folder's listing is looked up once more with ``os.path.exists`` (case-insensitive
    filesystems, unlistable folders). Images that exist but cannot be decoded are found when they are read
    (:meth:`bce3s.data.imageset.ImageSet.load_image`).
    """
    split_of, seen = [], set()
    for s in lists:  # a list used for two splits (e.g. val and test) is checked once
        if lists[s].file not in seen:
            seen.add(lists[s].file)
            split_of.append((lists[s], sets[s].paths or []))
    folders = sorted({os.path.dirname(p) for _, paths in split_of for p in paths})
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        listed = dict(zip(folders, pool.map(_listing, folders), strict=True))
    missing: list[str] = []
    n = 0
    for lst, paths in split_of:
        n += len(paths)
        for i, path in enumerate(paths):
            folder, name = os.path.split(path)
            names = listed[folder]  # False: no such folder; True: unlistable, look the file up
            found = names is not False and (
                (isinstance(names, frozenset) and name in names) or os.path.exists(path)
            )
            if not found:
                missing.append(f"{lst.file}:{int(lst.line_numbers[i])} {path}")
    if missing:
        shown = "; ".join(missing[:SHOWN_BAD_FILES])
        more = f"; and {len(missing) - SHOWN_BAD_FILES} more" if len(missing) > SHOWN_BAD_FILES else ""
        what = "image" if len(missing) == 1 else "images"
        raise DataError(
            f"{len(missing)} of {n} listed {what} not found (data.root must be the folder the lists' relative "
            f"paths start from): {shown}{more}"
        )


def _list_path(root: Path, given: str | None, default: str | None) -> Path | None:
    name = given if given is not None else default
    return None if name is None else root / Path(name).expanduser()


def _read(cfg: DataConfig, spec: _Spec) -> SourceData:
    root = Path(cfg.root).expanduser()
    layout = f"{root}/{spec.train} with lines like '{spec.example}' and the images under {root}"
    if not root.is_dir():
        raise DataError(f"{spec.title}: data root {root} not found; expected {layout}")
    is_inat = spec is INAT2018
    files = {
        "train": _list_path(root, cfg.train_list, spec.train),
        "val": _list_path(root, cfg.val_list, spec.val),
        "test": _list_path(root, cfg.test_list, spec.test),
    }
    for split, path in files.items():
        if path is not None and not path.is_file():
            raise DataError(
                f"{spec.title}: {split} list {path} not found; expected {layout} (or set data.{split}_list)"
            )
    lists = {split: read_split_file(path) for split, path in files.items() if path is not None}
    for lst in lists.values():
        _check_known(lst)
    train_list = lists["train"]
    k = int(train_list.labels.max()) + 1
    if k != spec.num_classes:
        log.warning("%s: the train list %s defines %d classes (the standard has %d)", spec.title, train_list.file,
                    k, spec.num_classes)  # fmt: skip
    counts = torch.bincount(train_list.labels, minlength=k)
    missing = torch.nonzero(counts == 0).flatten()
    if missing.numel():
        raise DataError(
            f"{train_list.file}: class {int(missing[0])} has no training image ({missing.numel()} of {k} classes "
            f"missing); every class id 0..K-1 must appear in the train list"
        )
    names = [""] * k
    first_of_class = torch.full((k,), len(train_list.rel_paths), dtype=torch.int64)
    first_of_class.scatter_reduce_(0, train_list.labels, torch.arange(len(train_list.rel_paths)), "amin")
    for c, i in enumerate(first_of_class.tolist()):
        names[c] = _class_name(train_list.rel_paths[i]) or str(c)
    sets = {split: _to_imageset(root, lst, k) for split, lst in lists.items()}
    _check_images_exist(lists, sets)
    return SourceData(
        name=cfg.dataset,
        class_names=names,
        train=sets["train"],
        test=sets["test"],
        val=sets.get("val"),
        in_channels=3,
        image_size=224,
        n_max=None,
        val_mode="carve" if is_inat and "val" not in sets else "given",
        default_val_per_class=INAT_VAL_PER_CLASS if is_inat else 0,
        info={"lists": {split: {"file": str(lst.file), "sha256": lst.sha256} for split, lst in lists.items()}},
    )


def read_imagenet_lt(cfg: DataConfig) -> SourceData:
    """ImageNet-LT (1000 classes, 115.8k train images, 1280 … 5 per class); shipped val and test lists."""
    return _read(cfg, IMAGENET_LT)


def read_places_lt(cfg: DataConfig) -> SourceData:
    """Places-LT (365 classes, 62.5k train images, 4980 … 5 per class); shipped val and test lists."""
    return _read(cfg, PLACES_LT)


def read_inat2018(cfg: DataConfig) -> SourceData:
    """iNaturalist 2018 (8142 classes, 437.5k train images); test = the official val list, val carved from train."""
    return _read(cfg, INAT2018)
