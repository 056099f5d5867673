"""build_data: the DataSplits contract and its record."""

from __future__ import annotations

import json

import pytest
import torch

from bce3s.config import DataConfig
from bce3s.data.imbalance import index_hash
from bce3s.data.splits import DataSplits, ImageSet, build_data
from bce3s.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def digits() -> DataSplits:
    return build_data(DataConfig(dataset="digits_lt", imbalance_factor=10, profile="step"))


def test_contract(digits):
    assert isinstance(digits.train, ImageSet) and isinstance(digits.val, ImageSet)
    assert digits.name == "digits_lt" and len(digits.class_names) == digits.num_classes == 10
    # step profile IF 10 from n_max 134: five classes at 134, five at 13
    assert digits.train_counts == [134] * 5 + [13] * 5
    assert digits.train_counts == torch.bincount(digits.train.labels, minlength=10).tolist()
    for split in (digits.train, digits.val, digits.test):
        assert split.labels.dtype == torch.int64
        assert split.images.dtype == torch.uint8 and split.images.shape[1:] == (1, 8, 8)
        assert split.paths is None and len(split) == split.images.shape[0]


def test_record(digits):
    rec = digits.record
    json.dumps(rec)  # JSON-able
    assert rec["dataset"] == "digits_lt" and rec["imbalance_factor"] == 10 and rec["profile"] == "step"
    assert rec["order"] == "file" and rec["subset_seed"] == 0 and rec["num_classes"] == 10
    assert rec["counts"]["train"] == digits.train_counts
    assert rec["sizes"] == {"train": 735, "val": 100, "test": 300}
    assert rec["sha256"]["train"] == index_hash(digits.train.source_index)
    assert rec["sha256"]["val"] == index_hash(digits.val.source_index)
    assert rec["sha256"]["test"] == index_hash(digits.test.source_index)
    assert rec["target_counts"] == [134] * 5 + [13] * 5 and rec["reduced_classes"] == []
    assert rec["in_memory"] and rec["image_size"] == 8 and rec["in_channels"] == 1


def test_deterministic_and_image_size_override():
    a = build_data(DataConfig(dataset="digits_lt", imbalance_factor=10))
    b = build_data(DataConfig(dataset="digits_lt", imbalance_factor=10, image_size=16))
    assert a.record["sha256"] == b.record["sha256"]
    assert torch.equal(a.train.images, b.train.images)
    assert b.image_size == 16 and a.image_size == 8


def test_errors():
    with pytest.raises(ConfigError, match="unknown dataset 'svhn_lt'; valid: digits_lt, fashion_mnist_lt"):
        build_data(DataConfig(dataset="svhn_lt"))
    with pytest.raises(DataError, match=r"imbalance factor 500 empties class 8"):
        build_data(DataConfig(dataset="digits_lt", imbalance_factor=500))
    with pytest.raises(DataError, match=r"class 8 has 144 training images; carving 144 .*leave none"):
        build_data(DataConfig(dataset="digits_lt", val_per_class=144))


def test_max_per_class_scales_the_profile_down():
    """data.max_per_class = n_max: counts int(n_max * IF ** (-i / (K - 1))), first n_i per class in file order."""
    full = build_data(DataConfig(dataset="digits_lt", imbalance_factor=10, val_per_class=0))
    small = build_data(DataConfig(dataset="digits_lt", imbalance_factor=10, val_per_class=0, max_per_class=40))
    want = [int(40 * 10 ** (-i / 9)) for i in range(10)]  # 40, 31, 23, 18, 14, 10, 8, 6, 5, 4
    assert small.train_counts == want and small.record["n_max"] == 40
    assert full.record["n_max"] == 144 and sum(full.train_counts) > 3 * sum(want)  # digits: n_max 144 at val 0
    for c in range(10):  # the same images as the full subset's first n_i of each class
        a = full.train.source_index[full.train.labels == c][: want[c]]
        assert torch.equal(small.train.source_index[small.train.labels == c], a)
    with pytest.raises(DataError, match="max_per_class"):
        build_data(DataConfig(dataset="digits_lt", imbalance_factor=10, max_per_class=145))
    with pytest.raises(ConfigError, match="max_per_class"):
        DataConfig(max_per_class=0).check()
