"""digits_lt: the embedded demo dataset."""

from __future__ import annotations

import hashlib
import time

import numpy as np
import pytest
import torch

from bce3s.config import DataConfig
from bce3s.data.readers.digits import load_digits_arrays
from bce3s.data.splits import build_data

FIRST = [
    [0, 0, 5, 13, 9, 1, 0, 0],
    [0, 0, 13, 15, 10, 15, 5, 0],
    [0, 3, 15, 2, 0, 11, 8, 0],
    [0, 4, 12, 0, 0, 8, 8, 0],
    [0, 5, 8, 0, 0, 9, 8, 0],
    [0, 4, 11, 0, 1, 12, 7, 0],
    [0, 2, 14, 5, 10, 12, 0, 0],
    [0, 0, 6, 13, 10, 0, 0, 0],
]  # fmt: skip  (load_digits().images[0], a "0")


def test_arrays_pinned():
    images, labels = load_digits_arrays()
    assert images.dtype == np.uint8 and images.shape == (1797, 8, 8)
    assert np.bincount(labels).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    assert labels[0] == 0
    assert images[0].tolist() == [[round(v * 255 / 16) for v in row] for row in FIRST]
    # sha256 of the uint8 array as produced from sklearn.datasets.load_digits (see the slow test below)
    assert hashlib.sha256(images.tobytes()).hexdigest() == (
        "b41ca9fd335466eee997366c2e6f6bbe0a1b4582afe091fc4eba35f4a254182f"
    )


@pytest.mark.slow  # importing scikit-learn takes seconds
def test_arrays_match_sklearn():
    from sklearn.datasets import load_digits

    images, labels = load_digits_arrays()
    ref = load_digits()
    assert images.dtype == np.uint8 and images.shape == (1797, 8, 8)
    assert np.array_equal(labels, ref.target)
    assert np.array_equal(images, np.rint(ref.images * 255 / 16).astype(np.uint8))
    assert images.max() == 255 and images.min() == 0


def test_digits_splits():
    t0 = time.perf_counter()
    data = build_data(DataConfig(dataset="digits_lt", imbalance_factor=10))
    elapsed = time.perf_counter() - t0
    # test 30 / class first, val 10 / class, smallest remaining class (8: 174 - 40) sets n_max
    assert data.record["counts"]["test"] == [30] * 10
    assert data.record["counts"]["val"] == [10] * 10
    assert data.train_counts == [int(134 * 10 ** (-i / 9)) for i in range(10)]
    assert data.train_counts == [134, 103, 80, 62, 48, 37, 28, 22, 17, 13]
    assert data.num_classes == 10 and data.in_channels == 1 and data.image_size == 8
    assert data.train.images.shape == (544, 1, 8, 8)
    tr, va, te = (set(s.source_index.tolist()) for s in (data.train, data.val, data.test))
    assert not (tr & va or tr & te or va & te)
    # images and labels stay aligned with the source arrays
    images, labels = load_digits_arrays()
    assert torch.equal(data.test.images[:, 0], torch.from_numpy(images[data.test.source_index.numpy()]))
    assert torch.equal(data.train.labels, torch.from_numpy(labels[data.train.source_index.numpy()]))
    assert elapsed < 5  # ~0.05 s when the machine is idle; generous for loaded CI runners


def test_digits_eval_splits_fixed_and_train_seeded():
    a = build_data(DataConfig(dataset="digits_lt", imbalance_factor=10, order="random", subset_seed=1))
    b = build_data(DataConfig(dataset="digits_lt", imbalance_factor=10, order="random", subset_seed=2))
    c = build_data(DataConfig(dataset="digits_lt", imbalance_factor=10, order="random", subset_seed=1))
    assert a.record["sha256"]["test"] == b.record["sha256"]["test"]
    assert a.record["sha256"]["val"] == b.record["sha256"]["val"]
    assert a.record["sha256"]["train"] != b.record["sha256"]["train"]
    assert a.record == c.record
    assert a.train_counts == b.train_counts


def test_digits_without_val():
    data = build_data(DataConfig(dataset="digits_lt", imbalance_factor=100, val_per_class=0))
    assert data.val is None
    assert data.train_counts[0] == 144  # 174 - 30
    assert data.train_counts[-1] == 1
    assert data.record["sizes"]["val"] == 0
