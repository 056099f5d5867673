"""bce3s.eval.metrics against sklearn, hand computations and naive loops."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from bce3s.eval.metrics import (
    brier_score,
    calibration_stats,
    confusion_matrix,
    expected_calibration_error,
    mean_per_class_accuracy,
    nll,
    per_class_accuracy,
    reliability_bins,
    shot_accuracy,
    shot_groups,
    summarize,
    topk_accuracy,
)


def _random_case(n: int = 300, k: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, k, (n,), generator=gen)
    logits = torch.randn(n, k, generator=gen) * 2
    logits[torch.arange(n), labels] += 1.5  # better than chance, so accuracies are not trivial
    return logits, labels


def _ece_loop(conf: np.ndarray, correct: np.ndarray, n_bins: int) -> float:
    """Guo et al. reference: bins (lo, hi], weight |B|/N."""
    edges = np.linspace(0, 1, n_bins + 1)
    ece = 0.0
    for b in range(n_bins):
        lo, hi = edges[b], edges[b + 1]
        in_bin = (conf > lo) & (conf <= hi) if b else (conf <= hi)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - conf[in_bin].mean())
    return float(ece)


def test_topk_against_sklearn() -> None:
    logits, labels = _random_case()
    y, s = labels.numpy(), logits.numpy()
    assert topk_accuracy(logits, labels, 1) == pytest.approx(skm.accuracy_score(y, s.argmax(1)))
    for k in (1, 3, 5):
        ref = skm.top_k_accuracy_score(y, s, k=k, labels=np.arange(12))
        assert topk_accuracy(logits, labels, k) == pytest.approx(ref)
    assert topk_accuracy(logits, labels, 12) == 1.0
    with pytest.raises(ValueError):
        topk_accuracy(logits, labels, 13)


def test_per_class_and_balanced_accuracy_against_sklearn() -> None:
    logits, labels = _random_case()
    preds = logits.argmax(1)
    pca = per_class_accuracy(preds, labels, 12)
    cm = skm.confusion_matrix(labels.numpy(), preds.numpy(), labels=np.arange(12))
    np.testing.assert_allclose(pca.numpy(), cm.diagonal() / cm.sum(1))
    assert mean_per_class_accuracy(preds, labels, 12) == pytest.approx(
        skm.balanced_accuracy_score(labels.numpy(), preds.numpy())
    )


def test_absent_class_is_nan_and_skipped() -> None:
    labels = torch.tensor([0, 0, 1, 1, 1])  # class 2 absent from labels
    preds = torch.tensor([0, 2, 1, 1, 0])
    pca = per_class_accuracy(preds, labels, 3)
    assert pca[:2].tolist() == [0.5, pytest.approx(2 / 3)] and math.isnan(pca[2])
    assert mean_per_class_accuracy(preds, labels, 3) == pytest.approx((0.5 + 2 / 3) / 2)


def test_confusion_matrix_against_sklearn() -> None:
    logits, labels = _random_case()
    preds = logits.argmax(1)
    ours = confusion_matrix(preds, labels, 12)
    assert ours.dtype == torch.int64
    np.testing.assert_array_equal(ours.numpy(), skm.confusion_matrix(labels.numpy(), preds.numpy(), labels=range(12)))


@pytest.mark.parametrize(
    "call",
    [
        lambda: per_class_accuracy(torch.tensor([0, 1]), torch.tensor([0, 3]), 3),  # label out of range
        lambda: per_class_accuracy(torch.tensor([0, -1]), torch.tensor([0, 1]), 3),  # negative prediction
        lambda: per_class_accuracy(torch.tensor([0]), torch.tensor([0, 1]), 3),  # lengths differ
        lambda: nll(torch.zeros(2, 3), torch.tensor([0.0, 1.0])),  # float labels
        lambda: nll(torch.zeros(3), torch.tensor([0, 1, 2])),  # logits not (N, K)
        lambda: reliability_bins(torch.zeros(2, 3), torch.tensor([0, 1]), n_bins=0),
    ],
)
def test_bad_arguments_raise_value_error(call: Any) -> None:
    with pytest.raises(ValueError):
        call()


def test_shot_group_boundaries() -> None:
    groups = shot_groups([20, 100, 101, 19, 0, 500, 21, 99])
    assert groups["many"].tolist() == [2, 5]
    assert groups["medium"].tolist() == [0, 1, 6, 7]
    assert groups["few"].tolist() == [3, 4]
    assert all(g.dtype == torch.int64 for g in groups.values())


def test_shot_groups_cifar100_if100() -> None:
    counts = [int(500 * 0.01 ** (i / 99)) for i in range(100)]
    assert sum(counts) == 10_847 and counts[0] == 500 and counts[-1] == 5
    sizes = {name: len(idx) for name, idx in shot_groups(counts).items()}
    assert sizes == {"many": 35, "medium": 35, "few": 30}


def test_shot_accuracy_unweighted_mean_of_classes() -> None:
    acc = torch.tensor([1.0, 0.5, 0.2, 0.4, math.nan, 0.9])
    counts = [500, 200, 50, 10, 15, 20]  # many: 0,1  medium: 2,5  few: 3,4 (4 not evaluated)
    out = shot_accuracy(acc, counts)
    assert out == {"many": pytest.approx(0.75), "medium": pytest.approx(0.55), "few": pytest.approx(0.4)}
    assert math.isnan(shot_accuracy(acc, [500] * 6)["few"])


def test_ece_hand_example() -> None:
    # two classes, softmax = (p, 1 - p); 5 equal-width bins (lo, hi]
    p = torch.tensor([0.9, 0.95, 0.55, 0.58, 0.7], dtype=torch.float64)
    logits = torch.stack([p.log(), (1 - p).log()], dim=1)
    labels = torch.tensor([0, 1, 0, 1, 0])
    # (.8,1]: conf .9,.95 acc 1/2 -> 2/5*|.5-.925| = .17; (.4,.6]: .55,.58 acc 1/2 -> 2/5*.065 = .026;
    # (.6,.8]: .7 acc 1 -> 1/5*.3 = .06; total .256
    assert expected_calibration_error(logits, labels, n_bins=5) == pytest.approx(0.256)
    # all in one bin when n_bins = 1: |acc - mean conf| = |3/5 - 3.68/5|
    assert expected_calibration_error(logits, labels, n_bins=1) == pytest.approx(abs(0.6 - 0.736))


def test_ece_against_loop() -> None:
    logits, labels = _random_case(n=500, seed=3)
    probs = torch.softmax(logits.double(), 1).numpy()
    conf, correct = probs.max(1), probs.argmax(1) == labels.numpy()
    for n_bins in (1, 10, 15):
        ours = expected_calibration_error(logits, labels, n_bins)
        assert ours == pytest.approx(_ece_loop(conf, correct, n_bins), abs=1e-6)


def test_nll_and_brier_against_sklearn() -> None:
    logits, labels = _random_case()
    probs = torch.softmax(logits.double(), 1).numpy()
    y = labels.numpy()
    assert nll(logits, labels) == pytest.approx(skm.log_loss(y, probs, labels=range(12)), rel=1e-5)
    assert nll(logits, labels) == pytest.approx(float(torch.nn.functional.cross_entropy(logits, labels)), rel=1e-5)
    assert brier_score(logits, labels) == pytest.approx(skm.brier_score_loss(y, probs, labels=range(12)), rel=1e-5)


def test_calibration_stats_on_more_rows_than_fit_in_memory_at_once() -> None:
    # 20 000 rows: more than the row chunks the softmax is computed in; every row must match a direct computation
    logits, labels = _random_case(n=20_000, k=7, seed=4)
    stats = calibration_stats(logits.double(), labels)
    probs = torch.softmax(logits.double(), dim=1)
    onehot = torch.nn.functional.one_hot(labels, 7).double()
    torch.testing.assert_close(stats["confidence"], probs.max(1).values)
    assert torch.equal(stats["correct"], probs.argmax(1) == labels)
    torch.testing.assert_close(stats["nll"], -probs.gather(1, labels[:, None]).squeeze(1).log())
    torch.testing.assert_close(stats["brier"], ((probs - onehot) ** 2).sum(1))


def test_summarize_keys_values_and_json() -> None:
    k = 6
    counts = [500, 150, 100, 20, 19, 3]  # many 0,1  medium 2,3  few 4,5
    logits, labels = _random_case(n=240, k=k, seed=1)
    out = summarize(logits, labels, counts)
    json.dumps(out, allow_nan=False)
    preds = logits.argmax(1).numpy()
    y = labels.numpy()
    cm = skm.confusion_matrix(y, preds, labels=range(k))
    pca = 100 * cm.diagonal() / cm.sum(1)
    assert out["num_samples"] == 240
    assert out["top1"] == pytest.approx(100 * skm.accuracy_score(y, preds))
    assert out["top5"] == pytest.approx(100 * skm.top_k_accuracy_score(y, logits.numpy(), k=5, labels=range(k)))
    assert out["mean_per_class"] == pytest.approx(100 * skm.balanced_accuracy_score(y, preds))
    assert out["per_class"] == pytest.approx(list(pca))
    assert out["many"] == pytest.approx(pca[[0, 1]].mean())
    assert out["medium"] == pytest.approx(pca[[2, 3]].mean())
    assert out["few"] == pytest.approx(pca[[4, 5]].mean())
    assert out["ece"] == pytest.approx(100 * expected_calibration_error(logits, labels))
    assert out["nll"] == pytest.approx(nll(logits, labels))
    assert out["brier"] == pytest.approx(brier_score(logits, labels))
    for shot, classes in {"many": [0, 1], "medium": [2, 3], "few": [4, 5]}.items():
        rows = torch.isin(labels, torch.tensor(classes))
        cal = out["calibration_by_shot"][shot]
        assert cal["num_samples"] == int(rows.sum())
        assert cal["ece"] == pytest.approx(100 * expected_calibration_error(logits[rows], labels[rows]))
        assert cal["nll"] == pytest.approx(nll(logits[rows], labels[rows]))
        assert cal["brier"] == pytest.approx(brier_score(logits[rows], labels[rows]))


def test_summarize_empty_split_and_small_k() -> None:
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0]])
    labels = torch.tensor([0, 1, 0])
    out = summarize(logits, labels, [200, 150, 50])  # no Few class; class 2 absent from labels
    json.dumps(out, allow_nan=False)
    assert out["top5"] is None
    assert out["few"] is None and out["calibration_by_shot"]["few"] == {
        "num_samples": 0,
        "ece": None,
        "nll": None,
        "brier": None,
    }
    assert out["per_class"] == [50.0, 100.0, None]
    assert out["medium"] is None  # its only class has no test sample
    assert out["many"] == pytest.approx(75.0)
    assert out["top1"] == pytest.approx(200 / 3)
    with pytest.raises(ValueError):
        summarize(logits, labels, [1, 2])  # 2 training counts for 3 classes


@pytest.mark.gpu
def test_summarize_on_cuda_matches_cpu() -> None:
    logits, labels = _random_case(n=400, k=12, seed=5)
    counts = [300, 200, 150, 100, 80, 50, 20, 19, 10, 5, 3, 1]
    cpu = summarize(logits, labels, counts)
    gpu = summarize(logits.cuda().half(), labels.cuda(), torch.tensor(counts).cuda())
    assert gpu["top1"] == pytest.approx(cpu["top1"], abs=0.5)
    assert gpu["per_class"] == pytest.approx(cpu["per_class"], abs=5.0)  # fp16 logits may flip a near-tie
    assert gpu["nll"] == pytest.approx(cpu["nll"], rel=1e-2)
    assert gpu["ece"] == pytest.approx(cpu["ece"], abs=0.5)


def _bins_loop(conf: list[float], correct: list[bool], n_bins: int) -> tuple[list[int], list[float], list[float]]:
    """Naive reference, one sample at a time: bin b holds (b/n, (b+1)/n], bin 0 also holds 0."""
    count, hits, conf_sum = [0] * n_bins, [0.0] * n_bins, [0.0] * n_bins
    for c, ok in zip(conf, correct):
        b = next(i for i in range(n_bins) if c <= (i + 1) / n_bins)
        count[b] += 1
        hits[b] += float(ok)
        conf_sum[b] += c
    return count, hits, conf_sum


def test_reliability_bins_put_samples_on_an_edge_in_the_bin_below() -> None:
    # float64 logits whose softmax confidence is exactly 0.5, 0.75, 1.0 or 0.875 (all edges of 4 or 8 bins)
    neg = -1e4
    logits = torch.tensor(
        [
            [math.log(2), 0, 0, neg],  # conf 0.5, label 0: correct
            [math.log(3), 0, neg, neg],  # conf 0.75, label 1: wrong
            [1e4, 0, 0, 0],  # conf 1.0, correct
            [math.log(7), 0, neg, neg],  # conf 0.875, correct
            [math.log(2), 0, 0, neg],  # conf 0.5, label 2: wrong
        ],
        dtype=torch.float64,
    )
    labels = torch.tensor([0, 1, 0, 0, 2])
    assert calibration_stats(logits, labels)["confidence"].tolist() == [0.5, 0.75, 1.0, 0.875, 0.5]
    rel = reliability_bins(logits, labels, n_bins=4)
    assert rel["bin_edges"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert rel["bin_count"] == [0, 2, 1, 2]  # 0.5 in (0.25, 0.5], 0.75 in (0.5, 0.75]
    assert rel["bin_acc"] == [None, 0.5, 0.0, 1.0]
    assert rel["bin_conf"] == [None, 0.5, 0.75, 0.9375]
    # ECE by hand over the same bins: 2/5 * 0 + 1/5 * 0.75 + 2/5 * 0.0625
    assert expected_calibration_error(logits, labels, n_bins=4) == pytest.approx(0.175, abs=1e-15)
    assert reliability_bins(logits, labels, n_bins=8)["bin_count"] == [0, 0, 0, 2, 0, 1, 1, 1]


@pytest.mark.parametrize("n_bins", [1, 4, 10, 15])
def test_reliability_bins_against_loop(n_bins: int) -> None:
    logits, labels = _random_case(n=400, seed=7)
    logits = logits.double()
    probs = torch.softmax(logits, 1)
    conf, correct = probs.max(1).values.tolist(), (probs.argmax(1) == labels).tolist()
    count, hits, conf_sum = _bins_loop(conf, correct, n_bins)
    rel = reliability_bins(logits, labels, n_bins)
    assert rel["bin_count"] == count
    assert len(rel["bin_edges"]) == n_bins + 1
    for b in range(n_bins):
        if count[b] == 0:
            assert rel["bin_acc"][b] is None and rel["bin_conf"][b] is None
        else:
            assert rel["bin_acc"][b] == pytest.approx(hits[b] / count[b], abs=1e-12)
            assert rel["bin_conf"][b] == pytest.approx(conf_sum[b] / count[b], abs=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ece_is_the_weighted_gap_over_the_reliability_bins(dtype: torch.dtype) -> None:
    logits, labels = _random_case(n=600, k=10, seed=11)
    logits = logits.to(dtype)
    rel = reliability_bins(logits, labels)
    n = sum(rel["bin_count"])
    assert n == 600
    gap = sum(c / n * abs(a - m) for c, a, m in zip(rel["bin_count"], rel["bin_acc"], rel["bin_conf"]) if c)
    assert expected_calibration_error(logits, labels) == pytest.approx(gap, abs=1e-12)
    assert summarize(logits, labels, [50] * 10)["ece"] == pytest.approx(100 * gap, abs=1e-10)
