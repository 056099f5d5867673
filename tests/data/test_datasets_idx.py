"""MNIST / Fashion-MNIST: IDX parsing, layouts, errors, and the real Fashion-MNIST files."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from bce3s.config import DataConfig
from bce3s.data.readers import base
from bce3s.data.readers.idx import FILES, read_idx
from bce3s.data.splits import build_data
from bce3s.errors import DataError


def idx_bytes(arr: np.ndarray) -> bytes:
    return struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def make_idx_tree(folder: Path, per_class: int = 80, test_per_class: int = 3, gz: bool = True) -> np.ndarray:
    """Four IDX files with ``per_class`` 28x28 images per class; pixel [0, 0] = position % 256."""
    folder.mkdir(parents=True, exist_ok=True)
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(10, dtype=np.uint8), per_class))
    images = np.zeros((labels.size, 28, 28), dtype=np.uint8)
    images[:, 0, 0] = np.arange(labels.size) % 256
    test_labels = np.repeat(np.arange(10, dtype=np.uint8), test_per_class)
    files = {
        "train-images-idx3-ubyte": images,
        "train-labels-idx1-ubyte": labels,
        "t10k-images-idx3-ubyte": np.zeros((test_labels.size, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": test_labels,
    }
    for name, arr in files.items():
        raw = idx_bytes(arr)
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(raw, compresslevel=1))
        else:
            (folder / name).write_bytes(raw)
    return labels


def test_read_idx_by_hand(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    header = b"\x00\x00\x08\x03" + b"\x00\x00\x00\x02\x00\x00\x00\x03\x00\x00\x00\x04"
    (tmp_path / "a").write_bytes(header + bytes(range(24)))
    assert np.array_equal(read_idx(tmp_path / "a"), arr)
    (tmp_path / "b.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x03" + bytes([7, 8, 9])))
    assert read_idx(tmp_path / "b.gz").tolist() == [7, 8, 9]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"\x00\x00\x0d\x01\x00\x00\x00\x01\x00\x00\x00\x00", "not an unsigned-byte IDX file"),
        (b"\x00\x00\x08\x03\x00\x00", r"truncated \(header\)"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x05\x01\x02", r"header says shape \(5,\) \(5 bytes\), found 2 bytes"),
    ],
)
def test_bad_idx_files(tmp_path, content, match):
    (tmp_path / "x").write_bytes(content)
    with pytest.raises(DataError, match=match):
        read_idx(tmp_path / "x")


def test_truncated_gzip(tmp_path):
    data = gzip.compress(idx_bytes(np.zeros((50, 28, 28), dtype=np.uint8)))
    (tmp_path / "x.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cannot read IDX file .*x\.gz"):
        read_idx(tmp_path / "x.gz")


def test_fashion_mnist_torchvision_layout(tmp_path):
    labels = make_idx_tree(tmp_path / "FashionMNIST" / "raw")
    cfg = DataConfig(dataset="fashion_mnist_lt", root=str(tmp_path), imbalance_factor=100, val_per_class=10)
    data = build_data(cfg)
    # 6000, 3596, ... clipped to 80 - 10; the tail class asks for 60
    assert data.train_counts == [70] * 9 + [60]
    assert data.class_names[0] == "T-shirt/top" and data.class_names[9] == "Ankle boot"
    assert data.train.images.shape[1:] == (1, 28, 28) and data.in_channels == 1 and data.image_size == 28
    assert (data.train.images[:, 0, 0, 0].long() == data.train.source_index % 256).all()
    assert torch.equal(data.train.labels, torch.from_numpy(labels[data.train.source_index.numpy()].astype(np.int64)))
    assert data.record["counts"]["val"] == [10] * 10
    assert not set(data.val.source_index.tolist()) & set(data.train.source_index.tolist())
    assert len(data.test) == 30


def test_mnist_plain_files_in_root(tmp_path):
    make_idx_tree(tmp_path, gz=False, per_class=70)
    data = build_data(DataConfig(dataset="mnist_lt", root=str(tmp_path), imbalance_factor=100, val_per_class=0))
    assert data.train_counts == [70] * 9 + [60]
    assert data.class_names[3] == "3 - three"


def test_missing_and_mismatched(tmp_path):
    with pytest.raises(DataError, match=r"Fashion-MNIST not found: expected .*FashionMNIST/raw/\{train-images"):
        build_data(DataConfig(dataset="fashion_mnist_lt", root=str(tmp_path)))
    folder = tmp_path / "MNIST" / "raw"
    make_idx_tree(folder)
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(7, dtype=np.uint8))))
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.gz has shape \(30, 28, 28\) but .* \(7,\)"):
        build_data(DataConfig(dataset="mnist_lt", root=str(tmp_path)))


def test_download_goes_through_torchvision(tmp_path, monkeypatch):
    calls = []

    class FakeMNIST:
        def __init__(self, root, train=True, download=False):
            calls.append((root, train, download))
            make_idx_tree(Path(root) / "MNIST" / "raw")

    monkeypatch.setattr(base, "torchvision_dataset", {"MNIST": FakeMNIST}.__getitem__)
    data = build_data(DataConfig(dataset="mnist_lt", root=str(tmp_path), download=True, imbalance_factor=1))
    assert calls == [(str(tmp_path), True, True)]
    assert data.train_counts == [30] * 10


def test_real_fashion_mnist(shared_data):
    root = shared_data / "fashion-mnist"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    labels = read_idx(root / "train-labels-idx1-ubyte.gz")
    assert labels.shape == (60000,) and np.bincount(labels).tolist() == [6000] * 10
    data = build_data(DataConfig(dataset="fashion_mnist_lt", root=str(root), imbalance_factor=100))
    target = [int(6000 * 100 ** (-i / 9)) for i in range(10)]
    assert target == [6000, 3596, 2156, 1292, 774, 464, 278, 166, 100, 60]
    # the head class uses every image at n_max, so it gives 50 of them to validation
    assert data.train_counts == [5950] + target[1:]
    assert data.record["counts"]["val"] == [50] * 10 and data.record["counts"]["test"] == [1000] * 10
    assert data.train.images.shape == (sum(target) - 50, 1, 28, 28)
    # first n_i of each class in file order
    for c in (0, 5, 9):
        pos = np.flatnonzero(labels == c)
        got = data.train.source_index[data.train.labels == c].numpy()
        assert np.array_equal(got, pos[: data.train_counts[c]])
    standard = build_data(DataConfig(dataset="fashion_mnist_lt", root=str(root), imbalance_factor=100, val_per_class=0))
    assert standard.train_counts == target and sum(standard.train_counts) == 14886


def offline_download(*args, **kwargs):
    """What torchvision's download helper raises on a machine without network."""
    from urllib.error import URLError

    raise URLError(OSError(-3, "Temporary failure in name resolution"))


@pytest.mark.parametrize(("dataset", "folder"), [("fashion_mnist_lt", "FashionMNIST"), ("mnist_lt", "MNIST")])
def test_offline_download_gives_reason_and_manual_placement_and_leaves_no_folders(
    tmp_path, monkeypatch, dataset, folder
):
    import torchvision.datasets.mnist as tv_mnist

    monkeypatch.setattr(tv_mnist, "download_and_extract_archive", offline_download)
    root = tmp_path / "data"
    with pytest.raises(DataError) as exc:
        build_data(DataConfig(dataset=dataset, root=str(root), download=True))
    text = str(exc.value)
    assert "\n" not in text
    assert "name resolution" in text  # the reason, not just "failed:"
    assert str(root / folder / "raw") in text
    assert all(f"{name}.gz" in text for name in FILES)
    assert not root.exists()  # the empty root/<folder>/raw tree torchvision made is gone


def test_failed_download_keeps_existing_folders_and_files(tmp_path, monkeypatch):
    import torchvision.datasets.mnist as tv_mnist

    monkeypatch.setattr(tv_mnist, "download_and_extract_archive", offline_download)
    (tmp_path / "FashionMNIST").mkdir()
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DataError):
        build_data(DataConfig(dataset="fashion_mnist_lt", root=str(tmp_path), download=True))
    assert (tmp_path / "FashionMNIST").is_dir() and not (tmp_path / "FashionMNIST" / "raw").exists()
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_missing_without_download_says_where_to_put_the_files(tmp_path):
    with pytest.raises(DataError) as exc:
        build_data(DataConfig(dataset="fashion_mnist_lt", root=str(tmp_path), download=False))
    text = str(exc.value)
    assert "\n" not in text and str(tmp_path / "FashionMNIST" / "raw") in text
    assert all(f"{name}.gz" in text for name in FILES)
    assert list(tmp_path.iterdir()) == []
