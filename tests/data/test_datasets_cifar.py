"""CIFAR-10/100-LT from a generated torchvision-format pickle tree."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from bce3s.config import DataConfig
from bce3s.data.readers import base
from bce3s.data.splits import build_data
from bce3s.errors import DataError


def _encode(idx: np.ndarray) -> np.ndarray:
    """(N, 3072) images whose first two bytes spell the image's position in the training set."""
    data = np.zeros((idx.size, 3072), dtype=np.uint8)
    data[:, 0] = idx % 256
    data[:, 1] = idx // 256
    data[:, 2:] = 7
    return data


def _decode(images: torch.Tensor) -> list[int]:
    flat = images.reshape(images.shape[0], -1).long()
    return (flat[:, 0] + 256 * flat[:, 1]).tolist()


def make_cifar10(root: Path, per_class: int = 70, test_per_class: int = 4) -> np.ndarray:
    """Write cifar-10-batches-py with ``per_class`` images of each class spread over 5 batches; returns labels."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    labels = rng.permutation(np.repeat(np.arange(10), per_class))
    data = _encode(np.arange(labels.size))
    for b, chunk in enumerate(np.array_split(np.arange(labels.size), 5), start=1):
        with open(folder / f"data_batch_{b}", "wb") as f:
            pickle.dump({"batch_label": f"batch {b}", "data": data[chunk], "labels": labels[chunk].tolist()}, f)
    test_labels = np.repeat(np.arange(10), test_per_class)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": _encode(np.arange(test_labels.size)), "labels": test_labels.tolist()}, f)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names, "num_cases_per_batch": labels.size // 5}, f)
    return labels


def make_cifar100(root: Path, per_class: int = 30) -> np.ndarray:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    labels = np.random.default_rng(1).permutation(np.repeat(np.arange(100), per_class))
    with open(folder / "train", "wb") as f:
        pickle.dump({"data": _encode(np.arange(labels.size)), "fine_labels": labels.tolist(),
                     "coarse_labels": (labels // 5).tolist()}, f)  # fmt: skip
    test_labels = np.repeat(np.arange(100), 2)
    with open(folder / "test", "wb") as f:
        pickle.dump({"data": _encode(np.arange(200)), "fine_labels": test_labels.tolist()}, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"c{i:03d}" for i in range(100)], "coarse_label_names": []}, f)
    return labels


def first_positions(labels: np.ndarray, c: int, start: int, n: int) -> list[int]:
    return np.flatnonzero(labels == c)[start : start + n].tolist()


def test_cifar10_lt(tmp_path, caplog):
    labels = make_cifar10(tmp_path)
    cfg = DataConfig(dataset="cifar10_lt", root=str(tmp_path), imbalance_factor=100, val_per_class=5)
    with caplog.at_level(logging.WARNING):
        data = build_data(cfg)
    # profile 5000, 2997, ..., 50 clipped to the 70 - 5 images each fake class can give
    assert data.train_counts == [65] * 9 + [50]
    assert data.record["target_counts"] == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert data.record["reduced_classes"] == list(range(9))
    assert "class 0 keeps 65 of 5000" in caplog.text
    assert data.class_names[0] == "airplane" and data.num_classes == 10
    assert data.train.images.shape == (sum(data.train_counts), 3, 32, 32)
    assert data.train.images.dtype == torch.uint8
    # images travel with their labels and source positions; first n_i per class in file order
    assert _decode(data.train.images) == data.train.source_index.tolist()
    assert torch.equal(data.train.labels, torch.from_numpy(labels[data.train.source_index.numpy()]))
    expected = [i for c, n in enumerate(data.train_counts) for i in first_positions(labels, c, 0, n)]
    assert data.train.source_index.tolist() == expected
    # val: the next 5 unused images of each class in file order
    val_expected = [i for c, n in enumerate(data.train_counts) for i in first_positions(labels, c, n, 5)]
    assert data.val.source_index.tolist() == val_expected
    assert data.record["counts"]["val"] == [5] * 10
    assert len(data.test) == 40 and data.record["counts"]["test"] == [4] * 10
    assert data.image_size == 32 and data.in_channels == 3


def test_cifar10_default_val_and_root_variants(tmp_path):
    make_cifar10(tmp_path, per_class=60)
    a = build_data(DataConfig(dataset="cifar10_lt", root=str(tmp_path), imbalance_factor=1))
    assert a.record["val_per_class"] == 50 and a.train_counts == [10] * 10
    # data.root may also point at the cifar-10-batches-py folder itself
    b = build_data(DataConfig(dataset="cifar10_lt", root=str(tmp_path / "cifar-10-batches-py"), imbalance_factor=1))
    assert b.record["sha256"] == a.record["sha256"]
    c = build_data(DataConfig(dataset="cifar10_lt", root=str(tmp_path), imbalance_factor=1, order="random"))
    assert c.record["sha256"]["train"] != a.record["sha256"]["train"]
    assert c.train_counts == [10] * 10


def test_cifar100_lt(tmp_path):
    labels = make_cifar100(tmp_path)
    data = build_data(DataConfig(dataset="cifar100_lt", root=str(tmp_path), imbalance_factor=100, val_per_class=0))
    target = [int(500 * 100 ** (-i / 99)) for i in range(100)]
    assert data.train_counts == [min(30, t) for t in target]
    assert data.val is None and data.record["val_source"] is None
    assert data.class_names[:2] == ["c000", "c001"]
    assert torch.equal(data.train.labels, torch.from_numpy(labels[data.train.source_index.numpy()]))
    assert len(data.test) == 200
    d20 = build_data(DataConfig(dataset="cifar100_lt", root=str(tmp_path), imbalance_factor=100))
    assert d20.record["val_per_class"] == 20 and d20.train_counts[0] == 10


def test_missing_cifar_names_layout(tmp_path):
    with pytest.raises(DataError, match=r"CIFAR-10 not found: expected .*cifar-10-batches-py/\{data_batch_1,.*"
                                         r"data\.download=true"):  # fmt: skip
        build_data(DataConfig(dataset="cifar10_lt", root=str(tmp_path)))
    with pytest.raises(DataError, match=r"CIFAR-100 not found: expected .*cifar-100-python"):
        build_data(DataConfig(dataset="cifar100_lt", root=str(tmp_path / "nowhere")))


def test_corrupt_pickle_names_file(tmp_path):
    make_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"\x80\x04garbage")
    with pytest.raises(DataError, match=r"cannot read CIFAR pickle .*data_batch_3"):
        build_data(DataConfig(dataset="cifar10_lt", root=str(tmp_path)))


def test_wrong_shape_pickle(tmp_path):
    make_cifar10(tmp_path)
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({"data": np.zeros((4, 100), dtype=np.uint8), "labels": [0, 1, 2, 3]}, f)
    with pytest.raises(DataError, match=r"test_batch: expected data \(N, 3072\)"):
        build_data(DataConfig(dataset="cifar10_lt", root=str(tmp_path)))


def test_download_goes_through_torchvision(tmp_path, monkeypatch):
    calls = []

    class FakeCIFAR10:
        def __init__(self, root, train=True, download=False, **kw):
            calls.append((root, train, download))
            make_cifar10(Path(root), per_class=60)

    monkeypatch.setattr(base, "torchvision_dataset", {"CIFAR10": FakeCIFAR10}.__getitem__)
    data = build_data(DataConfig(dataset="cifar10_lt", root=str(tmp_path / "dl"), download=True, imbalance_factor=1))
    assert calls == [(str(tmp_path / "dl"), True, True)]
    assert data.train_counts == [10] * 10
    # present files are not downloaded again
    build_data(DataConfig(dataset="cifar10_lt", root=str(tmp_path / "dl"), download=True, imbalance_factor=1))
    assert len(calls) == 1


@pytest.mark.slow
def test_download_hook_is_torchvision():
    import torchvision.datasets as tvd

    assert base.torchvision_dataset("CIFAR10") is tvd.CIFAR10
    assert base.torchvision_dataset("CIFAR100") is tvd.CIFAR100
    assert base.torchvision_dataset("FashionMNIST") is tvd.FashionMNIST


def offline_download(*args, **kwargs):
    """What torchvision's download helper raises on a machine without network."""
    from urllib.error import URLError

    raise URLError(OSError(-3, "Temporary failure in name resolution"))


@pytest.mark.parametrize(
    ("dataset", "archive", "folder", "files"),
    [
        ("cifar100_lt", "cifar-100-python.tar.gz", "cifar-100-python", ["train", "test", "meta"]),
        ("cifar10_lt", "cifar-10-python.tar.gz", "cifar-10-batches-py", ["test_batch"]),
    ],
)
def test_missing_cifar_says_how_to_place_it_by_hand(tmp_path, monkeypatch, dataset, archive, folder, files):
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", offline_download)
    root = tmp_path / "data"
    for download in (False, True):
        with pytest.raises(DataError) as exc:
            build_data(DataConfig(dataset=dataset, root=str(root), download=download))
        text = str(exc.value)
        assert "\n" not in text
        assert archive in text and f"{root / folder}/" in text
        assert all(f in text for f in files)
        if download:
            assert "name resolution" in text  # the reason of the failure
        assert not root.exists()  # nothing left behind


class _RunsCode:
    """Unpickling this calls ``pathlib.Path.touch`` (a stand-in for any code a crafted pickle could run)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_reader_admits_arrays_and_builtins_only(tmp_path):
    """The CIFAR reader's unpickler refuses any global besides numpy arrays and builtins: nothing runs."""
    make_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    with open(folder / "data_batch_2", "rb") as f:
        batch = pickle.load(f)
    with open(folder / "data_batch_2", "wb") as f:  # protocol 2 (as the original files): bytes via _codecs
        pickle.dump({**batch, "blob": b"\x00\xff", "pair": (1, 2.5)}, f, protocol=2)
    cfg = DataConfig(dataset="cifar10_lt", root=str(tmp_path), imbalance_factor=1, val_per_class=0)
    assert len(build_data(cfg).train) == 700  # arrays, lists, tuples, bytes still read
    marker = tmp_path / "ran"
    with open(folder / "data_batch_2", "wb") as f:
        pickle.dump({**batch, "payload": _RunsCode(marker)}, f)
    with pytest.raises(DataError, match=r"data_batch_2"):
        build_data(cfg)
    assert not marker.exists()
