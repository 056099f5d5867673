"""ImageSet / image decoding and imagefolder_lt on generated PNG / JPEG trees."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bce3s.config import DataConfig
from bce3s.data.imageset import ImageSet, decode_files, load_image_file
from bce3s.data.splits import build_data
from bce3s.errors import DataError

CLASSES = {"cat": 20, "ant": 12, "bee": 15}  # sorted: ant (0), bee (1), cat (2)


def pixel(cls: int, i: int) -> tuple[int, int, int]:
    return (cls * 40, i * 3, 200)


def make_tree(root: Path, sizes: dict[str, int] = CLASSES, test: int = 3, size=(8, 8), fmt: str = "png") -> None:
    """root/{train,test}/<class>/NNN.<fmt>: solid images whose colour encodes (class, index)."""
    for split, counts in (("train", sizes), ("test", dict.fromkeys(sizes, test))):
        for name, n in counts.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            c = sorted(sizes).index(name)
            for i in range(n):
                Image.new("RGB", size, pixel(c, i)).save(folder / f"{i:03d}.{fmt}")
    (root / "train" / "ant" / "notes.txt").write_text("not an image")


def test_imageset_validation():
    labels = torch.tensor([0, 1])
    with pytest.raises(ValueError, match="exactly one of images and paths"):
        ImageSet(None, None, labels)
    with pytest.raises(ValueError, match="uint8"):
        ImageSet(torch.zeros(2, 1, 4, 4), None, labels)
    with pytest.raises(ValueError, match="int64"):
        ImageSet(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), None, labels.int())
    with pytest.raises(ValueError, match="3 paths for 2 labels"):
        ImageSet(None, ["a", "b", "c"], labels)
    s = ImageSet(torch.arange(32, dtype=torch.uint8).view(2, 1, 4, 4), None, labels)
    assert len(s) == 2 and s.in_memory and s.load_image(1)[0, 0, 0] == 16
    sub = s.subset(torch.tensor([1]))
    assert sub.index.tolist() == [1] and sub.subset(torch.tensor([0])).index.tolist() == [1]
    assert s.counts(3) == [1, 1, 0]


def test_load_image_file_and_errors(tmp_path):
    Image.new("L", (5, 3), 77).save(tmp_path / "g.png")
    rgb = load_image_file(tmp_path / "g.png")
    assert rgb.shape == (3, 3, 5) and rgb.dtype == torch.uint8 and (rgb == 77).all()
    assert load_image_file(tmp_path / "g.png", mode="L").shape == (1, 3, 5)
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    with pytest.raises(DataError, match=r"cannot decode image .*bad\.jpg"):
        load_image_file(tmp_path / "bad.jpg")
    with pytest.raises(DataError, match=r"1 of 1 image cannot be decoded .*missing\.png \(not found\)"):
        ImageSet(None, [str(tmp_path / "missing.png")], torch.tensor([0])).load_image(0)


def test_decode_files(tmp_path):
    for i, size in enumerate([(4, 4), (4, 4), (6, 4)]):
        Image.new("RGB", size, (i, 0, 0)).save(tmp_path / f"{i}.png")
    paths = [str(tmp_path / f"{i}.png") for i in range(3)]
    out = decode_files(paths[:2], workers=2)
    assert out.shape == (2, 3, 4, 4) and out[1, 0, 0, 0] == 1
    assert decode_files(paths, workers=2) is None  # sizes differ
    assert decode_files(paths[:2], max_bytes=50) is None  # 2 * 48 bytes > 50


def test_imagefolder_lt(tmp_path):
    make_tree(tmp_path)
    data = build_data(DataConfig(dataset="imagefolder_lt", root=str(tmp_path), imbalance_factor=4))
    assert data.class_names == ["ant", "bee", "cat"]
    # n_min = 12, default val min(20, 12 // 5) = 2 per class, n_max = 12 - 2 = 10, exp profile IF 4: 10, 5, 2
    assert data.record["val_per_class"] == 2
    assert data.train_counts == [10, 5, 2]
    assert data.record["counts"]["val"] == [2, 2, 2] and data.record["counts"]["test"] == [3, 3, 3]
    assert data.train.in_memory and data.train.images.shape == (17, 3, 8, 8)
    assert data.image_size == 8 and data.in_channels == 3 and data.record["in_memory"]
    # decoded pixels match the file each image came from: first n_i files of each class, then val
    got = [tuple(x) for x in data.train.images[:, :, 0, 0].tolist()]
    want = [pixel(c, i) for c, n in enumerate([10, 5, 2]) for i in range(n)]
    assert got == want
    val = [tuple(x) for x in data.val.images[:, :, 0, 0].tolist()]
    assert val == [pixel(c, i) for c, n in enumerate([10, 5, 2]) for i in range(n, n + 2)]


def test_imagefolder_mixed_sizes_stay_files(tmp_path):
    make_tree(tmp_path)
    Image.new("RGB", (9, 8), (1, 2, 3)).save(tmp_path / "test" / "bee" / "999.png")
    data = build_data(DataConfig(dataset="imagefolder_lt", root=str(tmp_path), imbalance_factor=1, val_per_class=1))
    assert not data.train.in_memory and data.train.images is None
    assert data.train_counts == [11, 11, 11] and data.image_size == 224
    odd = [i for i, p in enumerate(data.test.paths) if p.endswith("999.png")]
    assert len(odd) == 1 and data.test.labels[odd[0]] == 1
    assert data.test.load_image(odd[0]).shape == (3, 8, 9)
    assert data.train.load_image(0)[:, 0, 0].tolist() == list(pixel(0, 0))


def test_imagefolder_val_dir_and_single_subfolder(tmp_path):
    make_tree(tmp_path / "tree", fmt="jpg")
    for name in ("ant", "bee", "cat"):
        (tmp_path / "tree" / "val" / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "tree" / "val" / name / "v.jpg")
    data = build_data(DataConfig(dataset="imagefolder_lt", root=str(tmp_path), imbalance_factor=1))
    assert data.record["val_source"] == "given" and data.record["counts"]["val"] == [1, 1, 1]
    assert data.train_counts == [12, 12, 12]
    assert data.train.in_memory  # JPEG of one size
    cfg = DataConfig(dataset="imagefolder_lt", root=str(tmp_path), imbalance_factor=1, val_per_class=0)
    assert build_data(cfg).val is None


def test_imagefolder_errors(tmp_path):
    with pytest.raises(DataError, match=r"image folder not found: expected .*/train/<class>/<image>"):
        build_data(DataConfig(dataset="imagefolder_lt", root=str(tmp_path / "none")))
    make_tree(tmp_path / "a")
    (tmp_path / "a" / "test" / "dog").mkdir()
    with pytest.raises(DataError, match=r"test/dog: class folder not in .*train"):
        build_data(DataConfig(dataset="imagefolder_lt", root=str(tmp_path / "a")))
    make_tree(tmp_path / "b")
    (tmp_path / "b" / "train" / "empty").mkdir()
    with pytest.raises(DataError, match=r"train/empty holds no image"):
        build_data(DataConfig(dataset="imagefolder_lt", root=str(tmp_path / "b")))
    make_tree(tmp_path / "c")
    with pytest.raises(DataError, match=r"smallest training class 'ant' has 12 images: too few to keep 12"):
        build_data(DataConfig(dataset="imagefolder_lt", root=str(tmp_path / "c"), val_per_class=12))
    make_tree(tmp_path / "d")
    (tmp_path / "d" / "train" / "ant" / "000.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(DataError, match=r"1 of \d+ image cannot be decoded .*train/ant/000\.png"):
        build_data(DataConfig(dataset="imagefolder_lt", root=str(tmp_path / "d"), imbalance_factor=1))
    make_tree(tmp_path / "e")
    for f in (tmp_path / "e" / "test").rglob("*.png"):
        f.unlink()
    with pytest.raises(DataError, match="no test image found"):
        build_data(DataConfig(dataset="imagefolder_lt", root=str(tmp_path / "e")))


@pytest.mark.slow
def test_real_cifar10_jpeg(shared_data, tmp_path):
    archive = shared_data / "cifar10-jpeg.tar.gz"
    if not archive.is_file():
        pytest.skip(f"{archive} not found")
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path, filter="data")
    data = build_data(DataConfig(dataset="imagefolder_lt", root=str(tmp_path), imbalance_factor=100))
    assert data.class_names[0] == "airplane" and data.class_names[-1] == "truck"
    # n_min = 5000, val 20 per class, n_max 4980
    assert data.train_counts == [int(4980 * 100 ** (-i / 9)) for i in range(10)]
    assert data.train.in_memory and data.train.images.shape[1:] == (3, 32, 32)
    assert data.record["counts"]["test"] == [1000] * 10
    first = sorted(os.listdir(tmp_path / "cifar10-jpeg" / "train" / "airplane"))[0]
    ref = np.asarray(Image.open(tmp_path / "cifar10-jpeg" / "train" / "airplane" / first).convert("RGB"))
    assert torch.equal(data.train.images[0], torch.from_numpy(ref.copy()).permute(2, 0, 1))


def test_every_undecodable_image_is_named_in_one_error(tmp_path):
    """Three corrupt files in train and test: one DataError names all three (not one per run)."""
    make_tree(tmp_path, fmt="jpg")
    bad = [tmp_path / "train" / "ant" / "003.jpg", tmp_path / "train" / "cat" / "011.jpg",
           tmp_path / "test" / "bee" / "001.jpg"]
    bad[0].write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    bad[1].write_bytes(b"")
    bad[2].write_bytes(b"GIF89a truncated")
    with pytest.raises(DataError) as info:
        build_data(DataConfig(dataset="imagefolder_lt", root=str(tmp_path), imbalance_factor=1, val_per_class=1))
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("3 of ")
    assert all(str(p) in msg for p in bad)
    assert "more" not in msg


def test_many_undecodable_images_name_the_first_few_and_count_the_rest(tmp_path):
    from bce3s.data.imageset import SHOWN_BAD_FILES

    paths = []
    for i in range(12):
        p = tmp_path / f"{i:02d}.png"
        if i % 3 == 0:
            Image.new("RGB", (4, 4)).save(p)
        else:
            p.write_bytes(b"broken")
        paths.append(str(p))
    with pytest.raises(DataError) as info:
        decode_files(paths, workers=3)
    msg = str(info.value)
    broken = [p for i, p in enumerate(paths) if i % 3]
    assert msg.startswith(f"{len(broken)} of 12 images")
    assert [p for p in broken if p in msg] == broken[:SHOWN_BAD_FILES]  # the first ones, in file order
    assert f"and {len(broken) - SHOWN_BAD_FILES} more" in msg
