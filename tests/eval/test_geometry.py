"""bce3s.eval.geometry on constructed geometries with known answers and against naive loops."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from bce3s.eval.geometry import (
    class_means,
    classifier_separability,
    compactness,
    feature_norms,
    feature_separability,
    geometry_summary,
    weight_norms,
)


def _simplex_etf(k: int, d: int | None = None, seed: int = 0) -> torch.Tensor:
    """K unit vectors with pairwise cosine -1/(K-1), rotated into R^d (d >= K)."""
    d = d or k
    m = torch.eye(k, dtype=torch.float64) - 1.0 / k
    m = m / m.norm(dim=1, keepdim=True)
    q, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)))
    return m @ q[:k]  # (K, d); rows of q[:k] are orthonormal


def _collapsed(directions: torch.Tensor, per_class: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples = class direction times a positive random scale (neural collapse up to scale)."""
    gen = torch.Generator().manual_seed(seed)
    k = directions.shape[0]
    labels = torch.arange(k).repeat_interleave(per_class)
    scales = torch.rand(k * per_class, 1, generator=gen, dtype=torch.float64) * 3 + 0.5
    return directions[labels] * scales, labels


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (max(np.linalg.norm(a), 1e-12) * max(np.linalg.norm(b), 1e-12)))


def test_etf_means_and_collapse() -> None:
    k = 7
    etf = _simplex_etf(k, d=16)
    pairwise = etf @ etf.T
    torch.testing.assert_close(
        pairwise[~torch.eye(k, dtype=torch.bool)], torch.full((k * (k - 1),), -1 / (k - 1), dtype=torch.float64)
    )
    feats, labels = _collapsed(etf, per_class=5)
    torch.testing.assert_close(compactness(feats, labels, k), torch.ones(k, dtype=torch.float64))
    sep = feature_separability(feats, labels, k)
    torch.testing.assert_close(sep, torch.full((k,), 1 + 1 / (k - 1), dtype=torch.float64))
    out = geometry_summary(feats.float(), labels, None, [200] * k)
    assert out["summary"]["feature_separability"]["all"]["mean"] == pytest.approx(1 + 1 / (k - 1), abs=1e-6)
    assert out["summary"]["feature_separability"]["all"]["std"] == pytest.approx(0.0, abs=1e-6)
    assert out["summary"]["compactness"]["all"] == {
        "mean": pytest.approx(1.0, abs=1e-6),
        "std": pytest.approx(0.0, abs=1e-6),
        "num_classes": k,
    }


def test_orthogonal_means_separability_one() -> None:
    k = 5
    feats, labels = _collapsed(torch.eye(k, 9, dtype=torch.float64) * 4, per_class=3)
    torch.testing.assert_close(feature_separability(feats, labels, k), torch.ones(k, dtype=torch.float64))


def test_classifier_etf_and_norms() -> None:
    k = 10
    norms = torch.linspace(0.5, 5.0, k, dtype=torch.float64)
    weight = _simplex_etf(k, d=32, seed=1) * norms.unsqueeze(1)
    sep = classifier_separability(weight)
    torch.testing.assert_close(sep, torch.full((k,), 1 + 1 / (k - 1), dtype=torch.float64))
    torch.testing.assert_close(weight_norms(weight), norms)
    assert math.isnan(classifier_separability(torch.randn(1, 4))[0])


def test_known_small_geometry() -> None:
    # class 0: (1,0), (1,1) -> mean (1, .5); class 1: (0,2) ; class 2 absent
    feats = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    labels = torch.tensor([0, 0, 1])
    means = class_means(feats, labels, 3)
    torch.testing.assert_close(means[:2], torch.tensor([[1.0, 0.5], [0.0, 2.0]], dtype=torch.float64))
    assert torch.isnan(means[2]).all()
    mu = np.array([1.0, 0.5])
    comp0 = (_cos(np.array([1.0, 0.0]), mu) + _cos(np.array([1.0, 1.0]), mu)) / 2
    comp = compactness(feats, labels, 3)
    assert comp[0].item() == pytest.approx(comp0) and comp[1].item() == pytest.approx(1.0) and math.isnan(comp[2])
    sep = feature_separability(feats, labels, 3)
    cos01 = _cos(mu, np.array([0.0, 2.0]))
    assert sep[:2].tolist() == [pytest.approx(1 - cos01)] * 2 and math.isnan(sep[2])
    fn = feature_norms(feats, labels, 3)
    assert fn[:2].tolist() == [pytest.approx((1 + math.sqrt(2)) / 2), pytest.approx(2.0)] and math.isnan(fn[2])


def test_single_present_class_has_nan_separability() -> None:
    feats, labels = torch.randn(4, 3), torch.zeros(4, dtype=torch.long)
    assert torch.isnan(feature_separability(feats, labels, 3)).all()


def _naive(feats: np.ndarray, labels: np.ndarray, weight: np.ndarray, k: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"compactness": [], "feature_separability": [], "feature_norm": []}
    means = {c: feats[labels == c].mean(0) for c in range(k) if (labels == c).any()}
    for c in range(k):
        if c not in means:
            for key in out:
                out[key].append(math.nan)
            continue
        rows = feats[labels == c]
        out["compactness"].append(sum(_cos(h, means[c]) for h in rows) / len(rows))
        out["feature_separability"].append(1 - max(_cos(means[c], means[j]) for j in means if j != c))
        out["feature_norm"].append(sum(float(np.linalg.norm(h)) for h in rows) / len(rows))
    out["classifier_separability"] = [1 - max(_cos(weight[c], weight[j]) for j in range(k) if j != c) for c in range(k)]
    out["weight_norm"] = [float(np.linalg.norm(w)) for w in weight]
    return out


def test_random_against_naive_loops_and_summary() -> None:
    gen = torch.Generator().manual_seed(0)
    k, d, n = 9, 6, 120
    labels = torch.randint(0, k, (n,), generator=gen)
    labels[labels == 4] = 5  # class 4 has no samples
    feats = torch.relu(torch.randn(n, d, generator=gen) + torch.randn(k, d, generator=gen)[labels])
    weight = torch.randn(k, d, generator=gen)
    counts = [300, 150, 101, 100, 60, 20, 19, 5, 1]  # many 0-2, medium 3-5, few 6-8
    ref = _naive(feats.double().numpy(), labels.numpy(), weight.double().numpy(), k)
    out = geometry_summary(feats, labels, weight, counts)
    json.dumps(out, allow_nan=False)
    assert out["num_samples"] == n and out["num_classes"] == k
    for metric, values in ref.items():
        got = out["per_class"][metric]
        for c in range(k):
            if math.isnan(values[c]):
                assert got[c] is None, (metric, c)
            else:
                assert got[c] == pytest.approx(values[c], rel=1e-5, abs=1e-6), (metric, c)
        for shot, classes in {"all": range(k), "many": [0, 1, 2], "medium": [3, 4, 5], "few": [6, 7, 8]}.items():
            vals = np.array([values[c] for c in classes if not math.isnan(values[c])])
            summ = out["summary"][metric][shot]
            assert summ["num_classes"] == len(vals)
            assert summ["mean"] == pytest.approx(vals.mean(), rel=1e-5)
            assert summ["std"] == pytest.approx(vals.std(ddof=0), rel=1e-5, abs=1e-9)
    assert out["summary"]["compactness"]["medium"]["num_classes"] == 2  # class 4 excluded
    assert out["summary"]["weight_norm"]["medium"]["num_classes"] == 3  # weights exist for every class


def test_functions_agree_with_summary_and_validate() -> None:
    feats, labels = torch.randn(10, 4), torch.arange(10) % 3
    out = geometry_summary(feats, labels, None, [5, 50, 500])
    assert set(out["per_class"]) == {"compactness", "feature_separability", "feature_norm"}
    assert out["summary"]["compactness"]["few"]["num_classes"] == 1
    assert out["summary"]["feature_norm"]["many"]["num_classes"] == 1
    with pytest.raises(ValueError):
        compactness(feats, labels + 1, 3)  # label 3 with 3 classes
    with pytest.raises(ValueError):
        geometry_summary(feats, labels, torch.randn(4, 4), [5, 50, 500])  # 4 weight rows for 3 classes
    with pytest.raises(ValueError):
        class_means(torch.randn(10), labels, 3)  # features not (N, D)


@pytest.mark.gpu
def test_geometry_summary_on_cuda_matches_cpu() -> None:
    gen = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 6, (200,), generator=gen)
    feats = torch.randn(200, 8, generator=gen) + torch.randn(6, 8, generator=gen)[labels]
    weight = torch.randn(6, 8, generator=gen)
    counts = [300, 150, 100, 20, 19, 2]
    cpu = geometry_summary(feats, labels, weight, counts)
    gpu = geometry_summary(feats.cuda(), labels.cuda(), weight.cuda(), counts)
    for metric, values in cpu["per_class"].items():
        assert gpu["per_class"][metric] == pytest.approx(values, rel=1e-6)
