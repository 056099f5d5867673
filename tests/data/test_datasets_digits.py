"""digits_lt: the embedded demo dataset."""

from __future__ import annotations

import time

import numpy as np
import torch

from bce3s.config import DataConfig
from bce3s.data.digits import load_digits_arrays
from bce3s.data.splits import build_data


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
