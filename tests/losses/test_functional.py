"""Tests of bce3s.losses.functional against torch built-ins, hand computations and naive loops."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bce3s.losses.functional import (
    bce_contrastive,
    bce_joint,
    bce_sum,
    bce_uniform,
    effective_number_weights,
    partial_class_set,
)

DTYPES = [torch.float64, torch.float32]


def softplus(x: float) -> float:
    return math.log1p(math.exp(-abs(x))) + max(x, 0.0)


def naive_contrastive(emb, memory, q, tau, seen, neg_weight=1.0):
    """Loop reference of the contrastive BCE for one view, unseen classes removed."""
    n, k = q.shape
    total = 0.0
    for i in range(n):
        u = emb[i]
        for c in range(k):
            if not seen[c]:
                continue
            m = memory[c]
            cos = float(u @ m) / (max(float(u.norm()), 1e-5) * max(float(m.norm()), 1e-5))
            g = cos / tau
            w = float(q[i, c])
            total += w * softplus(-g) + (neg_weight * softplus(g) if w == 0 else 0.0)
    return total / n


def naive_uniform(weight, scale):
    """Loop reference of the uniform term."""
    k = weight.shape[0]
    rows = [weight[i] / max(float(weight[i].norm()), 1e-5) for i in range(k)]
    total = 0.0
    for a in range(k):
        total += softplus(-scale)
        for b in range(k):
            if a != b:
                total += softplus(scale * float(rows[a] @ rows[b]))
    return total / k


# ---------------------------------------------------------------------------------------------------- bce_sum


@pytest.mark.parametrize("dtype", DTYPES)
def test_bce_sum_equals_bce_with_logits_hard(device, dtype):
    g = torch.Generator().manual_seed(0)
    x = (3 * torch.randn(7, 5, generator=g, dtype=dtype)).to(device).requires_grad_()
    y = F.one_hot(torch.randint(0, 5, (7,), generator=g), 5).to(device, dtype)
    ours = bce_sum(x, y)
    (g1,) = torch.autograd.grad(ours, x)
    ref = F.binary_cross_entropy_with_logits(x, y, reduction="none").sum(1).mean()
    (g2,) = torch.autograd.grad(ref, x)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(ours, ref, rtol=tol, atol=tol)
    torch.testing.assert_close(g1, g2, rtol=tol, atol=tol)


def test_bce_sum_hand_constants():
    t = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]], dtype=torch.float64)
    pos = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    expected = (softplus(-2) + softplus(-1) + softplus(0.5) + softplus(0) + softplus(-3) + softplus(-2)) / 2
    assert bce_sum(t, pos).item() == pytest.approx(expected, abs=1e-12)
    # neg_weight scales the negative terms only
    negatives = softplus(-1) + softplus(0.5) + softplus(0) + softplus(-2)
    expected_l = (softplus(-2) + softplus(-3) + 0.5 * negatives) / 2
    assert bce_sum(t, pos, neg_weight=0.5).item() == pytest.approx(expected_l, abs=1e-12)
    # bool positives work like 0/1 floats
    assert bce_sum(t, pos.bool()).item() == pytest.approx(expected, abs=1e-12)


def test_bce_sum_soft_positives_default_negatives():
    t = torch.tensor([[1.0, -0.5, 2.0]], dtype=torch.float64)
    q = torch.tensor([[0.3, 0.7, 0.0]], dtype=torch.float64)
    # the two mixed classes get no negative term; the zero-weight class is the only negative
    expected = 0.3 * softplus(-1.0) + 0.7 * softplus(0.5) + softplus(2.0)
    assert bce_sum(t, q).item() == pytest.approx(expected, abs=1e-12)
    explicit = bce_sum(t, q, torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64))
    assert explicit.item() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_bce_sum_stable_at_1e4_without_clamp(device, dtype):
    x = torch.tensor([[1e4, -1e4], [-1e4, 1e4]], dtype=dtype, device=device, requires_grad=True)
    pos = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=dtype, device=device)
    loss = bce_sum(x, pos)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    # row 0 is perfectly right (0), row 1 is wrong by 1e4 twice -> 2e4, mean 1e4
    assert loss.item() == pytest.approx(1e4, rel=1e-6)
    # the gradient is sigmoid-shaped: -1/N on the wrong positive, +1/N on the wrong negative
    torch.testing.assert_close(x.grad, torch.tensor([[0.0, 0.0], [-0.5, 0.5]], dtype=dtype, device=device))


def test_bce_sum_logit_clip_reproduces_official_clamp():
    x = torch.tensor([[100.0, -100.0, 10.0]], dtype=torch.float64, requires_grad=True)
    pos = torch.tensor([[0.0, 1.0, 1.0]], dtype=torch.float64)
    loss = bce_sum(x, pos, logit_clip=64.0)
    loss.backward()
    expected = softplus(64.0) + softplus(64.0) + softplus(-10.0)
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    # zero gradient beyond the clamp, ordinary gradient inside
    assert x.grad[0, 0].item() == 0.0 and x.grad[0, 1].item() == 0.0
    assert x.grad[0, 2].item() == pytest.approx(-torch.sigmoid(torch.tensor(-10.0, dtype=torch.float64)).item())


def test_bce_sum_empty_batch_is_zero_with_grad():
    x = torch.zeros(0, 4, requires_grad=True)
    loss = bce_sum(x, torch.zeros(0, 4))
    loss.backward()
    assert loss.item() == 0.0 and x.grad.shape == (0, 4)


def test_bce_sum_permutation_invariant():
    g = torch.Generator().manual_seed(1)
    x, q = torch.randn(9, 6, generator=g), torch.rand(9, 6, generator=g).round()
    perm = torch.randperm(9, generator=g)
    torch.testing.assert_close(bce_sum(x, q), bce_sum(x[perm], q[perm]))


def test_bce_sum_gradcheck():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    q = torch.tensor([[0.4, 0.6, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: bce_sum(t, q, neg_weight=0.7), (x,))


def test_bce_sum_low_precision_close_to_float32():
    g = torch.Generator().manual_seed(3)
    x, q = torch.randn(8, 10, generator=g), F.one_hot(torch.arange(8) % 10, 10).float()
    ref = bce_sum(x, q)
    low = bce_sum(x.bfloat16(), q.bfloat16())
    assert low.dtype == torch.bfloat16
    assert low.float().item() == pytest.approx(ref.item(), rel=2e-2)


def test_bce_sum_value_errors():
    x = torch.zeros(2, 3)
    bad_calls = [
        lambda: bce_sum(x, torch.zeros(2, 4)),  # pos of another shape
        lambda: bce_sum(x, torch.zeros(2, 3), torch.zeros(3, 3)),  # neg of another shape
        lambda: bce_sum(x, torch.zeros(2, 3), sample_weight=torch.ones(3)),
        lambda: bce_sum(torch.zeros(3), torch.zeros(3)),  # not 2-D
    ]
    for call in bad_calls:
        with pytest.raises(ValueError):
            call()
    for name, value in (("logit_clip", 0), ("neg_weight", -1)):
        with pytest.raises(ValueError, match=f"^{name}: "):
            bce_sum(x, torch.zeros(2, 3), **{name: value})
    bad = torch.tensor([[0.0, float("nan"), 0.0], [0.0, 0.0, 0.0]])
    assert torch.isnan(bce_sum(bad, torch.zeros(2, 3)))  # not checked by default (no sync)
    with pytest.raises(ValueError, match="logits"):
        bce_sum(bad, torch.zeros(2, 3), check_inputs=True)


def test_bce_sum_sample_weight_matches_loop():
    g = torch.Generator().manual_seed(4)
    x, a = torch.randn(3, 4, generator=g, dtype=torch.float64), torch.tensor([0.5, 2.0, 0.0], dtype=torch.float64)
    q = F.one_hot(torch.tensor([1, 3, 0]), 4).double()
    expected = sum(
        float(a[i]) * sum(softplus(-float(x[i, k])) if q[i, k] else softplus(float(x[i, k])) for k in range(4))
        for i in range(3)
    )
    assert bce_sum(x, q, sample_weight=a).item() == pytest.approx(expected / 3, rel=1e-12)


# ------------------------------------------------------------------------------------------ partial_class_set


def ids(mask):
    return mask.nonzero().squeeze(1).tolist()


def test_partial_class_set_keeps_positives_and_size():
    labels = torch.tensor([3, 3, 7, 11, 42])
    mask = partial_class_set(labels, 100, 0.4, generator=torch.Generator().manual_seed(0))
    assert mask.dtype == torch.bool and mask.shape == (100,)
    assert int(mask.sum()) == 40  # ceil(0.4 * 100) = 40 (not 41 from float error)
    assert {3, 7, 11, 42} <= set(ids(mask))


def test_partial_class_set_never_drops_positives_k10():
    # K = 10, r = 0.4 -> ceil = 4 < 7 distinct labels: all 7 positives are kept, no negatives added
    labels = torch.tensor([0, 1, 2, 3, 5, 8, 9, 9])
    for seed in range(20):
        assert ids(partial_class_set(labels, 10, 0.4, generator=torch.Generator().manual_seed(seed))) == [
            0, 1, 2, 3, 5, 8, 9
        ]  # fmt: skip
    # with 2 distinct labels, 2 random negatives are added
    s = ids(partial_class_set(torch.tensor([4, 6]), 10, 0.4, generator=torch.Generator().manual_seed(0)))
    assert len(s) == 4 and {4, 6} <= set(s)


def test_partial_class_set_seeded_reproducible_and_varies():
    labels = torch.tensor([1, 2])
    a = [ids(partial_class_set(labels, 50, 0.2, generator=g)) for g in [torch.Generator().manual_seed(5)] * 3]
    b = [ids(partial_class_set(labels, 50, 0.2, generator=g)) for g in [torch.Generator().manual_seed(5)] * 3]
    assert a == b
    assert len({tuple(x) for x in a}) > 1  # successive draws differ


def test_partial_class_set_negatives_uniform():
    g = torch.Generator().manual_seed(0)
    hits = torch.zeros(20)
    for _ in range(300):
        hits += partial_class_set(torch.tensor([0]), 20, 0.5, generator=g).float()
    assert hits[0] == 300
    # each of the 19 negatives is picked with probability 9/19 -> ~142 of 300
    assert hits[1:].min() > 100 and hits[1:].max() < 185


def test_partial_class_set_ratio_one_and_mask_input():
    assert ids(partial_class_set(torch.tensor([2]), 6, 1.0)) == list(range(6))
    mask = torch.zeros(6, dtype=torch.bool)
    mask[[1, 4]] = True
    s = ids(partial_class_set(mask, 6, 0.5, generator=torch.Generator().manual_seed(0)))
    assert len(s) == 3 and {1, 4} <= set(s)


def test_partial_class_set_errors():
    for r in (0.0, -0.1, 1.5, True):
        with pytest.raises(ValueError, match="^neg_class_ratio: "):
            partial_class_set(torch.tensor([0]), 10, r)
    for present in (torch.tensor([0, 10]), torch.zeros(5, dtype=torch.bool), torch.zeros(3)):
        with pytest.raises(ValueError):  # id out of range, mask of the wrong size, float ids
            partial_class_set(present, 10, 0.5)


# ----------------------------------------------------------------------------------------------------- bce_joint


def _joint_inputs(n=6, k=8, d=5, seed=0, dtype=torch.float64):
    """Logits of the normalized classifier z = h @ normalize(W).T + b and class ids."""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=g, dtype=dtype) * 3
    w = torch.randn(k, d, generator=g, dtype=dtype) * 2
    b = torch.randn(k, generator=g, dtype=dtype)
    y = torch.randint(0, k, (n,), generator=g)
    return h @ (w / w.norm(dim=1, keepdim=True)).T + b, y


def naive_joint(z, q, view, clean_columns):
    """Loop reference of L_sc: mean over views present of (1/n_v) sum_i sum_k [q sp(-z) + 1(q = 0) sp(z)]."""
    per_view = []
    for v in range(3):
        rows = [i for i in range(z.shape[0]) if int(view[i]) == v]
        if not rows:
            continue
        total = 0.0
        for i in rows:
            for k in range(z.shape[1]):
                w = float(q[i, k])
                if w > 0:
                    total += w * softplus(-float(z[i, k]))
                elif v != 0 or k in clean_columns:
                    total += softplus(float(z[i, k]))
        per_view.append(total / len(rows))
    return sum(per_view) / len(per_view)


def test_bce_joint_all_classes_matches_bce_sum():
    z, y = _joint_inputs()
    torch.testing.assert_close(bce_joint(z, y), bce_sum(z, F.one_hot(y, 8).double()))


def test_bce_joint_partial_set_matches_subset():
    z, y = _joint_inputs(k=12)
    mask = partial_class_set(y, 12, 0.4, generator=torch.Generator().manual_seed(3))
    expected = bce_sum(z[:, mask], F.one_hot(y, 12).double()[:, mask])
    torch.testing.assert_close(bce_joint(z, y, classes=mask), expected)
    # a function of the present classes (what the loss modules pass) draws the same set
    gen = torch.Generator().manual_seed(3)
    got = bce_joint(z, y, classes=lambda present: partial_class_set(present, 12, 0.4, generator=gen))
    torch.testing.assert_close(got, expected)


def test_bce_joint_soft_targets_mixed_view():
    z, y = _joint_inputs()
    y2 = (y + 3) % 8
    q = 0.3 * F.one_hot(y, 8).double() + 0.7 * F.one_hot(y2, 8).double()
    torch.testing.assert_close(bce_joint(z, q), bce_sum(z, q, (q == 0).double()))
    # one-hot soft rows equal hard ids
    torch.testing.assert_close(bce_joint(z, F.one_hot(y, 8).double()), bce_joint(z, y))


@pytest.mark.parametrize("ratio", [1.0, 0.3])
def test_bce_joint_views_match_naive_loop(ratio):
    z, y = _joint_inputs(n=9, k=10, seed=5)
    q = F.one_hot(y, 10).double()
    view = torch.tensor([0, 1, 2, 0, 1, 2, 0, 0, 2])
    q[view > 0] = 0.6 * q[view > 0] + 0.4 * F.one_hot((y[view > 0] + 1) % 10, 10).double()
    mask = partial_class_set(y[view == 0], 10, ratio, generator=torch.Generator().manual_seed(1))
    got = bce_joint(z, q, view=view, classes=mask)
    assert got.item() == pytest.approx(naive_joint(z, q, view, set(ids(mask))), rel=1e-12)


def test_bce_joint_gradcheck_through_normalized_head():
    g = torch.Generator().manual_seed(6)
    h, w, b = (torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True) for s in ((3, 3), (4, 3), (4,)))
    y = torch.tensor([0, 3, 1])
    view = torch.tensor([0, 1, 0])
    mask = torch.tensor([True, False, True, False])

    def f(h, w, b):
        return bce_joint(h @ F.normalize(w, dim=1, eps=1e-5).T + b, y, view=view, classes=mask)

    assert torch.autograd.gradcheck(f, (h, w, b))


def test_bce_joint_errors():
    z, y = _joint_inputs()
    bad_calls = [
        lambda: bce_joint(z, torch.full_like(y, 8)),  # class id out of range
        lambda: bce_joint(z, y[:2]),  # wrong number of rows
        lambda: bce_joint(z, torch.zeros(6, 3, dtype=torch.float64)),  # soft target of the wrong width
        lambda: bce_joint(z, y, view=torch.zeros(5, dtype=torch.long)),
        lambda: bce_joint(z, y, classes=torch.ones(3, dtype=torch.bool)),
        lambda: bce_joint(z * float("nan"), y, check_inputs=True),
    ]
    for call in bad_calls:
        with pytest.raises(ValueError):
            call()
    with pytest.raises(ValueError, match="^neg_weight: "):
        bce_joint(z, y, neg_weight=-1.0)


# ----------------------------------------------------------------------------------------------- bce_contrastive


def _contrastive_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(5, 4, generator=g, dtype=torch.float64)
    mem = torch.randn(6, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 6, (5,), generator=g)
    y2 = torch.randint(0, 6, (5,), generator=g)
    q = 0.25 * F.one_hot(y, 6).double() + 0.75 * F.one_hot(y2, 6).double()
    return emb, mem, y, q


@pytest.mark.parametrize("tau", [1.0, 0.1])
def test_bce_contrastive_matches_naive_loop(tau):
    emb, mem, y, q = _contrastive_inputs()
    seen = torch.tensor([True, True, False, True, False, True])
    got = bce_contrastive(emb, mem, q, temperature=tau, seen=seen)
    assert got.item() == pytest.approx(naive_contrastive(emb, mem, q, tau, seen.tolist()), rel=1e-10)
    got_hard = bce_contrastive(emb, mem, y, temperature=tau)
    assert got_hard.item() == pytest.approx(naive_contrastive(emb, mem, F.one_hot(y, 6), tau, [True] * 6), rel=1e-10)


def test_bce_contrastive_unseen_columns_removed():
    emb, mem, y, q = _contrastive_inputs(1)
    seen = torch.tensor([True, False, True, True, False, True])
    logits = F.normalize(emb, dim=1) @ F.normalize(mem, dim=1).T
    expected = bce_sum(logits[:, seen], q[:, seen], (q == 0).double()[:, seen])
    torch.testing.assert_close(bce_contrastive(emb, mem, q, seen=seen), expected)
    # nothing seen -> 0
    none = bce_contrastive(emb, mem, q, seen=torch.zeros(6, dtype=torch.bool))
    assert none.item() == 0.0


def test_bce_contrastive_zero_memory_rows_and_gradcheck():
    emb, mem, y, q = _contrastive_inputs(2)
    mem[3] = 0  # a zero slot gives cos = 0 (eps-normalized), never NaN
    emb.requires_grad_()
    loss = bce_contrastive(emb, mem, q)
    assert torch.isfinite(loss)
    assert torch.autograd.gradcheck(lambda e: bce_contrastive(e, mem, q, temperature=0.5), (emb,))


def test_bce_contrastive_permutation_invariant():
    emb, mem, y, q = _contrastive_inputs(3)
    perm = torch.tensor([4, 2, 0, 1, 3])
    torch.testing.assert_close(bce_contrastive(emb, mem, q), bce_contrastive(emb[perm], mem, q[perm]))


def test_bce_contrastive_views_sum_mixed_means():
    g = torch.Generator().manual_seed(4)
    emb, mem = torch.randn(7, 4, generator=g, dtype=torch.float64), torch.randn(6, 4, generator=g, dtype=torch.float64)
    y, y2 = torch.randint(0, 6, (7,), generator=g), torch.randint(0, 6, (7,), generator=g)
    view = torch.tensor([0, 1, 2, 1, 0, 2, 2])
    q = F.one_hot(y, 6).double()
    q[view > 0] = 0.3 * q[view > 0] + 0.7 * F.one_hot(y2[view > 0], 6).double()
    seen = torch.tensor([True, True, False, True, True, True])
    got = bce_contrastive(emb, mem, q, view=view, temperature=0.5, seen=seen)
    expected = sum(
        naive_contrastive(emb[view == v], mem, q[view == v], 0.5, seen.tolist()) for v in (1, 2)
    )  # the clean rows are not anchors when mixed rows exist
    assert got.item() == pytest.approx(expected, rel=1e-10)
    clean_only = bce_contrastive(emb, mem, q, view=torch.zeros(7, dtype=torch.long), temperature=0.5, seen=seen)
    assert clean_only.item() == pytest.approx(naive_contrastive(emb, mem, q, 0.5, seen.tolist()), rel=1e-10)


def test_bce_contrastive_errors():
    emb, mem, y, q = _contrastive_inputs()
    for tau in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="^temperature: "):
            bce_contrastive(emb, mem, y, temperature=tau)
    bad_calls = [
        lambda: bce_contrastive(emb[:, :2], mem, y),  # P disagrees
        lambda: bce_contrastive(emb, mem, y, seen=torch.ones(3, dtype=torch.bool)),
        lambda: bce_contrastive(emb, mem, torch.tensor([0, 1, 2, 3, -1])),  # class id out of range
        lambda: bce_contrastive(emb, mem, y, view=torch.zeros(5)),  # float view ids
    ]
    for call in bad_calls:
        with pytest.raises(ValueError):
            call()


# -------------------------------------------------------------------------------------------------- bce_uniform


def test_bce_uniform_constants_k100():
    k = 100
    orthogonal = torch.eye(k, dtype=torch.float64)
    assert bce_uniform(orthogonal).item() == pytest.approx(68.93, abs=5e-3)
    etf = torch.eye(k, dtype=torch.float64) - 1.0 / k  # simplex ETF: cos(w_k, w_j) = -1/(K-1)
    assert bce_uniform(etf).item() == pytest.approx(68.44, abs=5e-3)
    # exact closed forms
    assert bce_uniform(orthogonal).item() == pytest.approx(softplus(-1) + 99 * math.log(2), abs=1e-10)
    assert bce_uniform(etf).item() == pytest.approx(softplus(-1) + 99 * softplus(-1 / 99), abs=1e-10)


@pytest.mark.parametrize("scale", [1.0, 2.5])
def test_bce_uniform_matches_naive_loop(scale):
    w = torch.randn(7, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    assert bce_uniform(w, scale=scale).item() == pytest.approx(naive_uniform(w, scale), rel=1e-12)


def test_bce_uniform_gradcheck_and_scale_invariance_of_rows():
    w = torch.randn(5, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: bce_uniform(x, scale=1.5), (w,))
    row_scale = torch.tensor([[1.0], [2.0], [0.5], [10.0], [3.0]], dtype=torch.float64)
    torch.testing.assert_close(bce_uniform(w * row_scale), bce_uniform(w))


def test_bce_uniform_float32_large_k_close_to_float64():
    w = torch.randn(300, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert bce_uniform(w.float()).item() == pytest.approx(bce_uniform(w).item(), rel=1e-5)


def test_bce_uniform_errors():
    with pytest.raises(ValueError, match="^scale: "):
        bce_uniform(torch.eye(3), scale=0)
    with pytest.raises(ValueError):
        bce_uniform(torch.ones(3))
    with pytest.raises(ValueError):
        bce_uniform(torch.full((3, 2), float("nan")), check_inputs=True)


# ------------------------------------------------------------------------------------ effective_number_weights


def test_effective_number_weights_hand_values():
    counts = [100, 10]
    beta = 0.9
    raw = [(1 - beta) / (1 - beta**n) for n in counts]
    expected = [2 * r / sum(raw) for r in raw]
    w = effective_number_weights(counts, beta)
    assert w.dtype == torch.float32
    assert w.tolist() == pytest.approx(expected, rel=1e-6)
    assert w.sum().item() == pytest.approx(2.0)


def test_effective_number_weights_limits():
    counts = [500, 50, 5]
    assert effective_number_weights(counts, 0.0).tolist() == [1.0, 1.0, 1.0]
    w = effective_number_weights(torch.tensor(counts), 0.99999)
    # beta -> 1: inverse frequency (ratio ~ 100 between head and tail)
    assert (w[2] / w[0]).item() == pytest.approx(100.0, rel=1e-2)
    assert w.sum().item() == pytest.approx(3.0)
    zero = effective_number_weights([10, 0, 10], 0.9)
    assert zero[1].item() == 0.0 and zero.sum().item() == pytest.approx(3.0)


def test_effective_number_weights_errors():
    for beta in (1.0, -0.1):
        with pytest.raises(ValueError, match="^beta: "):
            effective_number_weights([1, 2], beta)
    with pytest.raises(ValueError, match="^class_counts: "):
        effective_number_weights([1, -2], 0.9)
