"""ImageNet-LT / Places-LT / iNaturalist 2018 from split files (real lists, tiny generated image trees)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from PIL import Image

from bce3s.config import DataConfig
from bce3s.data.readers.splitfile import KNOWN_SHA256, read_split_file
from bce3s.data.splits import build_data
from bce3s.errors import DataError


def sample_lines(file: Path, classes: int, per_class: int) -> list[str]:
    """The first ``per_class`` lines of each of the labels 0..classes-1, in file order."""
    taken: dict[int, int] = {}
    out = []
    for line in file.read_text().splitlines():
        label = int(line.rsplit(None, 1)[1])
        if label < classes and taken.get(label, 0) < per_class:
            taken[label] = taken.get(label, 0) + 1
            out.append(line)
    return out


def write_list(root: Path, name: str, lines: list[str], images: bool = True) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / name).write_text("\n".join(lines) + "\n")
    if images:
        for line in lines:
            if len(line.split()) < 2:
                continue
            path = root / line.rsplit(None, 1)[0]
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (4, 4)).save(path, format="JPEG")


@pytest.fixture
def splits_dir(shared_data) -> Path:
    folder = shared_data / "splits"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    return folder


def test_real_lists_parse_and_match_published_sha256(splits_dir):
    val = read_split_file(splits_dir / "ImageNet_LT_val.txt")
    assert val.sha256 == KNOWN_SHA256["ImageNet_LT_val.txt"]
    assert len(val.rel_paths) == 20000 and torch.bincount(val.labels).tolist() == [20] * 1000
    places = read_split_file(splits_dir / "Places_LT_train.txt")
    assert places.sha256 == KNOWN_SHA256["Places_LT_train.txt"]
    counts = torch.bincount(places.labels)
    assert len(places.rel_paths) == 62500 and counts.numel() == 365
    assert int(counts.max()) == 4980 and int(counts.min()) == 5
    assert places.line_numbers[:3].tolist() == [1, 2, 3]


def test_places_lt(splits_dir, tmp_path, caplog):
    root = tmp_path / "places"
    train = sample_lines(splits_dir / "Places_LT_train.txt", 4, 6)
    write_list(root, "train_sample.txt", train)
    write_list(root, "val_sample.txt", sample_lines(splits_dir / "Places_LT_val.txt", 4, 2))
    write_list(root, "Places_LT_test.txt", sample_lines(splits_dir / "Places_LT_test.txt", 4, 3))
    cfg = DataConfig(dataset="places_lt", root=str(root), train_list="train_sample.txt", val_list="val_sample.txt")
    with caplog.at_level(logging.WARNING):
        data = build_data(cfg)
    assert "defines 4 classes (the standard has 365)" in caplog.text
    assert "Places_LT_test.txt: sha256" in caplog.text  # default-named list with other content
    assert data.num_classes == 4 and data.train_counts == [6, 6, 6, 6]
    assert data.class_names[0] == "airfield"
    assert data.record["counts"]["val"] == [2] * 4 and data.record["counts"]["test"] == [3] * 4
    assert data.record["long_tailed_source"] and data.record["imbalance_factor"] is None
    assert data.record["val_source"] == "given"
    assert not data.train.in_memory and data.image_size == 224 and data.in_channels == 3
    assert data.train.paths[0] == str(root / train[0].rsplit(None, 1)[0])
    assert data.train.load_image(0).shape == (3, 4, 4)
    assert data.record["source"]["lists"]["train"]["file"].endswith("train_sample.txt")
    # the default train list is used when data.train_list is unset
    with pytest.raises(DataError, match=r"train list .*Places_LT_train\.txt not found"):
        build_data(DataConfig(dataset="places_lt", root=str(root)))


def test_imagenet_lt_default_names_and_sha_warning(splits_dir, tmp_path, caplog):
    root = tmp_path / "imagenet"
    # no train list is shipped here: use val lines (paths under train/) as a small train list
    write_list(root, "ImageNet_LT_train.txt", sample_lines(splits_dir / "ImageNet_LT_val.txt", 3, 5))
    write_list(root, "ImageNet_LT_val.txt", sample_lines(splits_dir / "ImageNet_LT_val.txt", 3, 5)[:6])
    write_list(root, "ImageNet_LT_test.txt", sample_lines(splits_dir / "ImageNet_LT_test.txt", 3, 2))
    with caplog.at_level(logging.WARNING):
        data = build_data(DataConfig(dataset="imagenet_lt", root=str(root)))
    assert "ImageNet_LT_train.txt: sha256" in caplog.text and "efdbdad4f050" in caplog.text
    assert data.class_names == ["n01440764", "n01443537", "n01484850"]
    assert data.train_counts == [5, 5, 5] and data.record["counts"]["val"] == [5, 1, 0]
    assert len(data.test) == 6
    assert build_data(DataConfig(dataset="imagenet_lt", root=str(root), val_per_class=0)).val is None


def test_inat2018_carves_val_from_train(splits_dir, tmp_path):
    root = tmp_path / "inat"
    lines = sample_lines(splits_dir / "iNaturalist18_val.txt", 5, 3)
    assert len(lines) == 15
    write_list(root, "iNaturalist18_train.txt", lines)
    write_list(root, "iNaturalist18_val.txt", lines, images=False)
    data = build_data(DataConfig(dataset="inat2018", root=str(root), subset_seed=3))
    assert data.train_counts == [2] * 5 and data.record["counts"]["val"] == [1] * 5
    assert data.record["counts"]["test"] == [3] * 5  # the official val list is the test set
    assert data.record["val_source"] == "carved out of train" and data.record["val_per_class"] == 1
    assert not set(data.train.source_index.tolist()) & set(data.val.source_index.tolist())
    assert data.class_names[0].count("/") == 1  # e.g. "Plantae/0"-style super-category/id
    again = build_data(DataConfig(dataset="inat2018", root=str(root), subset_seed=3))
    assert again.record["sha256"] == data.record["sha256"]
    with pytest.raises(DataError, match=r"class 0 has 3 training images; carving 3 .*leave none"):
        build_data(DataConfig(dataset="inat2018", root=str(root), val_per_class=3))


def make_tiny(root: Path, train: list[str], test: list[str] | None = None) -> DataConfig:
    write_list(root, "tr.txt", train)
    write_list(root, "te.txt", test if test is not None else train)
    return DataConfig(dataset="imagenet_lt", root=str(root), train_list="tr.txt", val_list="te.txt", test_list="te.txt")


@pytest.mark.parametrize(
    ("train", "test", "match"),
    [
        (["a/x.jpg 0", "a/y.jpg 1", "no_label_here"], None, r"tr\.txt:3: malformed line 'no_label_here'; expected "
                                                             r"'relative/path label'"),
        (["a/x.jpg 0", "a/y.jpg one"], None, r"tr\.txt:2: malformed line 'a/y\.jpg one'"),
        (["a/x.jpg 0", "", "a/y.jpg -1"], None, r"tr\.txt:3: label -1 is negative"),
        (["a/x.jpg 0", "a/y.jpg 1"], ["a/x.jpg 0", "a/y.jpg 2"], r"te\.txt:2: label 2 outside \[0, 2\) "
                                                                 r"\(the train list defines 2 classes\)"),
        (["a/x.jpg 0", "a/y.jpg 2"], None, r"tr\.txt: class 1 has no training image \(1 of 3 classes missing\)"),
        ([], None, r"tr\.txt holds no 'relative/path label' line"),
    ],
)  # fmt: skip
def test_split_file_errors(tmp_path, train, test, match):
    cfg = make_tiny(tmp_path, train, test)
    with pytest.raises(DataError, match=match):
        build_data(cfg)


def test_paths_with_spaces_and_missing_files(tmp_path):
    cfg = make_tiny(tmp_path / "ok", ["dir a/x 1.jpg 0", "dir a/y.jpg 1"])
    data = build_data(cfg)
    assert data.train.paths[0].endswith("dir a/x 1.jpg")
    with pytest.raises(DataError, match=r"ImageNet-LT: data root .*nowhere not found; expected .*ImageNet_LT_train"):
        build_data(DataConfig(dataset="imagenet_lt", root=str(tmp_path / "nowhere")))
    root = tmp_path / "noimg"
    write_list(root, "tr.txt", ["a/x.jpg 0"], images=False)
    cfg = DataConfig(dataset="imagenet_lt", root=str(root), train_list="tr.txt", val_list="tr.txt", test_list="tr.txt")
    with pytest.raises(DataError, match=r"1 of 1 listed image not found \(data\.root must be .*tr\.txt:1 .*a/x\.jpg$"):
        build_data(cfg)
    with pytest.raises(DataError, match=r"iNaturalist 2018: train list .*iNaturalist18_train\.txt not found"):
        build_data(DataConfig(dataset="inat2018", root=str(root)))


def test_every_missing_listed_image_is_named_in_one_error(tmp_path):
    """Missing images of all lists are found before training: one error counts them and names the first ones."""
    from bce3s.data.imageset import SHOWN_BAD_FILES

    train = [f"c{i % 2}/{i}.jpg {i % 2}" for i in range(12)]
    test = ["c0/t0.jpg 0", "c1/t1.jpg 1", "gone/t2.jpg 1"]  # a folder that does not exist
    cfg = make_tiny(tmp_path, train, test)
    gone = [1, 4, 5, 8, 9, 10]  # line numbers - 1 of the train list
    for i in gone:
        (tmp_path / f"c{i % 2}" / f"{i}.jpg").unlink()
    (tmp_path / "gone" / "t2.jpg").unlink()
    (tmp_path / "gone").rmdir()
    with pytest.raises(DataError) as info:
        build_data(cfg)
    msg = str(info.value)
    missing = [f"{tmp_path / 'tr.txt'}:{i + 1} {tmp_path / train[i].split()[0]}" for i in gone]
    missing.append(f"{tmp_path / 'te.txt'}:3 {tmp_path / 'gone' / 't2.jpg'}")  # te.txt is val and test: once
    assert "\n" not in msg and msg.startswith(f"{len(missing)} of 15 listed images not found")
    assert [m for m in missing if m in msg] == missing[:SHOWN_BAD_FILES]
    assert msg.endswith(f"; and {len(missing) - SHOWN_BAD_FILES} more")


@pytest.mark.parametrize("budget", [60.0, 0.0])
def test_undecodable_listed_images_are_all_named_when_the_first_is_read(tmp_path, monkeypatch, budget):
    """The first bad image read stops the run with one error that counts the set's bad images (when time allows)."""
    from bce3s.data import imageset

    monkeypatch.setattr(imageset, "SCAN_BUDGET_S", budget)
    train = [f"c{i % 2}/{i}.jpg {i % 2}" for i in range(8)]
    cfg = make_tiny(tmp_path, train)
    bad = {2: b"", 5: b"not a jpeg", 7: b"\xff\xd8\xff\xe0 truncated"}
    for i, data in bad.items():
        (tmp_path / train[i].split()[0]).write_bytes(data)
    data = build_data(cfg)  # the files exist: nothing is decoded before training
    assert data.train.load_image(0).shape == (3, 4, 4)
    with pytest.raises(DataError) as info:
        data.train.load_image(5)
    msg = str(info.value)
    paths = [str(tmp_path / train[i].split()[0]) for i in sorted(bad)]
    assert "\n" not in msg
    if budget:
        assert msg.startswith("3 of 8 images cannot be decoded (re-create")
        assert [p for p in paths if p in msg] == paths
    else:  # no time to read the others: the one found, and how many were read
        assert msg.startswith("1 of 8 image cannot be decoded (stopped after reading 1 of them")
        assert [p for p in paths if p in msg] == [paths[1]]
