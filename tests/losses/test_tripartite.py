"""Tests of Bce3sLoss: a naive loop reference of the three terms kept here, reductions, state, errors."""

from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F

from bce3s.losses import Bce3sLoss, BceLoss, bce_contrastive, bce_joint, bce_uniform, partial_class_set


def softplus(x: float) -> float:
    return math.log1p(math.exp(-abs(x))) + max(x, 0.0)


def cos(a, b) -> float:
    return float(a @ b) / (max(float(a.norm()), 1e-5) * max(float(b.norm()), 1e-5))


def naive_view_bce(z, q, rows, columns):
    """(1/|rows|) sum_{i in rows} sum_{k in columns} [q softplus(-z) + 1(q == 0) softplus(z)]."""
    total = 0.0
    for i in rows:
        for k in columns:
            w = float(q[i, k])
            total += w * softplus(-float(z[i, k])) + (softplus(float(z[i, k])) if w == 0 else 0.0)
    return total / len(rows)


def naive_bce3s(z, q, view, emb, memory, seen, weight, clean_columns, tau, cw, uw, scale, active):
    """Loop reference: L = mean_v L_sc^v + cw * sum_{mixed v} L_ss^v + uw * L_cc (unseen classes left out)."""
    k = z.shape[1]
    rows = {v: [i for i in range(z.shape[0]) if int(view[i]) == v] for v in range(3)}
    joint_views = [naive_view_bce(z, q, rows[v], clean_columns if v == 0 else range(k)) for v in range(3) if rows[v]]
    joint = sum(joint_views) / len(joint_views)
    contrastive = 0.0
    if active:
        g = torch.tensor(
            [[cos(emb[i], memory[c]) / tau for c in range(k)] for i in range(z.shape[0])], dtype=torch.float64
        )
        seen_cols = [c for c in range(k) if seen[c]]
        anchors = [v for v in (1, 2) if rows[v]] or [0]
        contrastive = sum(naive_view_bce(g, q, rows[v], seen_cols) for v in anchors)
    uniform = 0.0
    wn = [weight[i] / max(float(weight[i].norm()), 1e-5) for i in range(k)]
    for a in range(k):
        uniform += softplus(-scale) + sum(softplus(scale * float(wn[a] @ wn[b])) for b in range(k) if b != a)
    uniform /= k
    return joint + cw * contrastive + uw * uniform, joint, contrastive, uniform


def make_batch(b=4, k=6, d=5, p=3, seed=0, dtype=torch.float64):
    """Three views of b rows in shuffled order; soft targets (one-hot for clean rows), features, weights."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, k, (b,), generator=g)
    y2 = torch.randint(0, k, (b,), generator=g)
    lam = 0.3
    onehot = F.one_hot(y, k).to(dtype)
    mixed = lam * onehot + (1 - lam) * F.one_hot(y2, k).to(dtype)
    q = torch.cat([onehot, mixed, mixed])
    view = torch.arange(3).repeat_interleave(b)
    perm = torch.randperm(3 * b, generator=g)
    h = torch.randn(3 * b, d, generator=g, dtype=dtype) * 2
    w = torch.randn(k, d, generator=g, dtype=dtype)
    bias = torch.randn(k, generator=g, dtype=dtype) * 0.1
    emb = torch.randn(3 * b, p, generator=g, dtype=dtype)
    return {"q": q[perm], "view": view[perm], "h": h, "w": w, "bias": bias, "emb": emb, "y": y}


def logits_of(batch):
    return batch["h"] @ F.normalize(batch["w"], dim=1, eps=1e-5).T + batch["bias"]


def test_defaults_follow_the_released_run():
    loss = Bce3sLoss(100)
    assert loss.sampler.ratio == 0.4 and loss.sampler.seed == 0
    assert (loss.contrastive.temperature, loss.contrastive_weight, loss.uniform_weight) == (1.0, 0.1, 1.0)
    assert (loss.uniform.scale, loss.joint.neg_weight, loss.joint.logit_clip) == (1.0, 1.0, None)
    assert loss.contrastive_start_epoch == 1
    assert loss.class_memory.memory.shape == (100, 128)
    assert loss.needs == {"embeddings", "weight"}


@pytest.mark.parametrize("ratio", [1.0, 0.5])
def test_matches_naive_reference_three_views(ratio):
    batch = make_batch(seed=1)
    loss = Bce3sLoss(6, embedding_dim=3, neg_class_ratio=ratio, temperature=0.5, seed=11)
    clean = batch["view"] == 0
    clean_labels = batch["q"][clean].argmax(1)
    loss.update(batch["emb"][clean][:3], clean_labels[:3])  # memory sees only some classes
    loss.set_epoch(1)
    z = logits_of(batch)
    out = loss(z, batch["q"], view=batch["view"], embeddings=batch["emb"], weight=batch["w"])
    mask = partial_class_set(clean_labels, 6, ratio, generator=torch.Generator().manual_seed(11))
    columns = mask.nonzero().squeeze(1).tolist()
    total, joint, contrastive, uniform = naive_bce3s(
        z,
        batch["q"],
        batch["view"],
        batch["emb"],
        loss.class_memory.memory.double(),
        loss.class_memory.seen,
        batch["w"],
        columns,
        0.5,
        0.1,
        1.0,
        1.0,
        True,
    )
    assert out.loss.item() == pytest.approx(total, rel=1e-10)
    assert out.terms["joint"].item() == pytest.approx(joint, rel=1e-10)
    assert out.terms["contrastive"].item() == pytest.approx(contrastive, rel=1e-10)
    assert out.terms["uniform"].item() == pytest.approx(uniform, rel=1e-10)
    assert contrastive > 0 and not any(t.requires_grad for t in out.terms.values())


def test_reduces_to_bce_joint_when_other_terms_off():
    batch = make_batch(seed=2)
    full = Bce3sLoss(6, embedding_dim=3, neg_class_ratio=1.0, contrastive_weight=0.0, uniform_weight=0.0)
    full.update(batch["emb"][:4], torch.arange(4))
    full.set_epoch(5)
    z = logits_of(batch).requires_grad_()
    a = full(z, batch["q"], view=batch["view"], embeddings=batch["emb"], weight=batch["w"]).loss
    b = BceLoss(6)(z, batch["q"], view=batch["view"]).loss
    (ga,) = torch.autograd.grad(a, z)
    (gb,) = torch.autograd.grad(b, z)
    # == the mean over views of bce_joint on each view alone
    per_view = [bce_joint(z.detach()[batch["view"] == v], batch["q"][batch["view"] == v]) for v in range(3)]
    torch.testing.assert_close(a, sum(per_view) / 3)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(ga, gb)


def test_clean_joint_equals_bce_joint_with_same_generator():
    g = torch.Generator().manual_seed(3)
    h, w, bias = torch.randn(8, 4, generator=g), torch.randn(20, 4, generator=g), torch.randn(20, generator=g)
    y = torch.randint(0, 20, (8,), generator=g)
    loss = Bce3sLoss(20, embedding_dim=2, neg_class_ratio=0.4, seed=5)
    z = h @ F.normalize(w, dim=1, eps=1e-5).T + bias
    out = loss(z, y, embeddings=torch.randn(8, 2), weight=w)
    gen = torch.Generator().manual_seed(5)
    torch.testing.assert_close(
        out.terms["joint"], bce_joint(z, y, classes=partial_class_set(y, 20, 0.4, generator=gen))
    )
    # the next call draws the next set from the module's generator
    out2 = loss(z, y, embeddings=torch.randn(8, 2), weight=w)
    torch.testing.assert_close(
        out2.terms["joint"], bce_joint(z, y, classes=partial_class_set(y, 20, 0.4, generator=gen))
    )


def test_contrastive_schedule_and_anchors():
    batch = make_batch(seed=4)
    loss = Bce3sLoss(6, embedding_dim=3)
    args = {"embeddings": batch["emb"], "weight": batch["w"]}
    z = logits_of(batch)
    # epoch 0: only the memory is filled, the term is 0
    assert loss(z, batch["q"], view=batch["view"], **args).terms["contrastive"].item() == 0.0
    loss.set_epoch(1)
    # nothing seen yet: 0
    assert loss(z, batch["q"], view=batch["view"], **args).terms["contrastive"].item() == 0.0
    loss.update(batch["emb"][:6], torch.arange(6))
    mem, seen = loss.class_memory.memory.double(), loss.class_memory.seen
    out = loss(z, batch["q"], view=batch["view"], **args)
    mixed = [
        bce_contrastive(batch["emb"][batch["view"] == v], mem, batch["q"][batch["view"] == v], seen=seen)
        for v in (1, 2)
    ]
    torch.testing.assert_close(out.terms["contrastive"], mixed[0] + mixed[1])  # SUM over mixed views
    # no mixed rows: the clean rows are the anchors
    clean = batch["view"] == 0
    out_clean = loss(z[clean], batch["q"][clean], embeddings=batch["emb"][clean], weight=batch["w"])
    expected = bce_contrastive(batch["emb"][clean], mem, batch["q"][clean], seen=seen)
    torch.testing.assert_close(out_clean.terms["contrastive"], expected)
    # only mixup rows present: the sum has one view
    mu = batch["view"] == 1
    out_mu = loss(z[mu], batch["q"][mu], view=batch["view"][mu], embeddings=batch["emb"][mu], weight=batch["w"])
    torch.testing.assert_close(out_mu.terms["contrastive"], mixed[0])


def test_total_is_weighted_sum_of_terms():
    batch = make_batch(seed=5)
    loss = Bce3sLoss(6, embedding_dim=3, contrastive_weight=0.3, uniform_weight=0.7, uniform_scale=2.0)
    loss.update(batch["emb"][:6], torch.arange(6))
    loss.set_epoch(1)
    out = loss(logits_of(batch), batch["q"], view=batch["view"], embeddings=batch["emb"], weight=batch["w"])
    t = out.terms
    assert out.loss.item() == pytest.approx((t["joint"] + 0.3 * t["contrastive"] + 0.7 * t["uniform"]).item())
    assert t["uniform"].item() == pytest.approx(bce_uniform(batch["w"], scale=2.0).item())


def test_row_permutation_invariant():
    batch = make_batch(seed=6)
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(0))
    results = []
    for order in (torch.arange(12), perm):
        loss = Bce3sLoss(6, embedding_dim=3, neg_class_ratio=0.5, seed=2)
        loss.update(batch["emb"][:6], torch.arange(6))
        loss.set_epoch(1)
        out = loss(
            logits_of(batch)[order],
            batch["q"][order],
            view=batch["view"][order],
            embeddings=batch["emb"][order],
            weight=batch["w"],
        )
        results.append(out.loss)
    torch.testing.assert_close(results[0], results[1])


def test_finite_at_extreme_logits():
    batch = make_batch(seed=7, dtype=torch.float32)
    z = (torch.sign(torch.randn(12, 6, generator=torch.Generator().manual_seed(1))) * 1e4).requires_grad_()
    emb = (batch["emb"] * 1e4).requires_grad_()
    w = batch["w"].clone().requires_grad_()
    loss = Bce3sLoss(6, embedding_dim=3)
    loss.update(emb.detach()[:6], torch.arange(6))
    loss.set_epoch(1)
    out = loss(z, batch["q"], view=batch["view"], embeddings=emb, weight=w)
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.loss.item() > 0
    for t in (z.grad, emb.grad, w.grad):
        assert torch.isfinite(t).all()


def test_gradcheck_float64():
    batch = make_batch(b=2, k=4, d=3, p=2, seed=8)
    loss = Bce3sLoss(4, embedding_dim=2, neg_class_ratio=0.5, seed=1)
    loss.update(batch["emb"][:3].detach(), torch.tensor([0, 1, 3]))
    loss.set_epoch(1)

    def f(z, emb, w):
        loss.sampler.generator.manual_seed(1)  # the same partial class set at every evaluation
        return loss(z, batch["q"], view=batch["view"], embeddings=emb, weight=w).loss

    inputs = (logits_of(batch).requires_grad_(), batch["emb"].requires_grad_(), batch["w"].requires_grad_())
    assert torch.autograd.gradcheck(f, inputs)


def test_state_dict_round_trip_resumes_exactly():
    batch = make_batch(b=8, k=30, seed=9)
    z = logits_of(batch)
    args = {"view": batch["view"], "embeddings": batch["emb"], "weight": batch["w"]}
    a = Bce3sLoss(30, embedding_dim=3, neg_class_ratio=0.3, seed=4)
    for step in range(2):
        a(z, batch["q"], **args)
        a.update(batch["emb"][step * 8 : step * 8 + 8], batch["q"][:8].argmax(1))
    a.set_epoch(1)
    state = a.state_dict()
    assert {"class_memory.memory", "class_memory.seen", "sampler._extra_state"} <= set(state)
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    b = Bce3sLoss(30, embedding_dim=3, neg_class_ratio=0.3, seed=123)
    b.load_state_dict(torch.load(buf, weights_only=True))
    b.set_epoch(1)
    assert torch.equal(a.class_memory.memory, b.class_memory.memory)
    for _ in range(3):
        la, lb = a(z, batch["q"], **args).loss, b(z, batch["q"], **args).loss
        assert la.item() == lb.item()


def test_positives_never_dropped_k10():
    # K = 10, r = 0.4: the set must grow to all distinct labels (official topk would drop some)
    y = torch.tensor([0, 1, 2, 3, 4, 5, 6])
    z = torch.zeros(7, 10, dtype=torch.float64)
    loss = BceLoss(10, neg_class_ratio=0.4)
    # with zero logits every kept class costs log 2: 7 rows x 7 kept classes
    assert loss(z, y).loss.item() == pytest.approx(7 * math.log(2))


def test_terms_run_the_public_functions():
    batch = make_batch(seed=10)
    loss = Bce3sLoss(6, embedding_dim=3, neg_class_ratio=1.0, temperature=0.7, uniform_scale=1.5)
    loss.update(batch["emb"][:5], torch.arange(5))
    loss.set_epoch(1)
    z = logits_of(batch)
    out = loss(z, batch["q"], view=batch["view"], embeddings=batch["emb"], weight=batch["w"])
    mem, seen = loss.class_memory.memory.double(), loss.class_memory.seen
    expected = {
        "joint": bce_joint(z, batch["q"], view=batch["view"]),
        "contrastive": bce_contrastive(batch["emb"], mem, batch["q"], view=batch["view"], temperature=0.7, seen=seen),
        "uniform": bce_uniform(batch["w"], scale=1.5),
    }
    for name, value in expected.items():
        assert out.terms[name].item() == value.item(), name  # the very same computation


@pytest.mark.parametrize(
    "name, bad",
    [
        ("temperature", 0),
        ("neg_class_ratio", 1.2),
        ("contrastive_weight", -1),
        ("uniform_weight", float("nan")),
        ("uniform_scale", 0.0),
        ("neg_weight", -0.5),
        ("logit_clip", -1),
        ("contrastive_start_epoch", -1),
        ("embedding_dim", 0),
        ("seed", 1.5),
    ],
)
def test_bad_parameter_raises_value_error_named(name, bad):
    with pytest.raises(ValueError, match=f"^{name}: "):
        Bce3sLoss(5, **{name: bad})


def test_embedding_size_mismatch_raises():
    with pytest.raises(ValueError, match="embedding_dim"):
        Bce3sLoss(5, embedding_dim=3)(
            torch.zeros(2, 5), torch.tensor([0, 1]), embeddings=torch.zeros(2, 4), weight=torch.ones(5, 2)
        )


@pytest.mark.parametrize(("cw", "uw"), [(0.0, 1.0), (0.1, 0.0), (0.0, 0.0)])
def test_zero_weight_switches_a_term_off(cw, uw):
    """A weight of 0 leaves the term out: the loss is the loop reference without it, even where the term would be
    NaN (0 * NaN would poison it), and the switched-off input gets no gradient."""
    batch = make_batch(seed=3)
    k = batch["w"].shape[0]
    loss = Bce3sLoss(k, embedding_dim=3, neg_class_ratio=1.0, contrastive_weight=cw, uniform_weight=uw,
                     contrastive_start_epoch=0)
    loss.update(batch["emb"][batch["view"] == 0], batch["y"])
    emb = batch["emb"].clone()
    if cw == 0:
        emb[0] = float("nan")  # what the contrastive term would turn into a NaN loss
    emb.requires_grad_(True)
    w = batch["w"].clone().requires_grad_(True)
    z = batch["h"] @ F.normalize(w, dim=1, eps=1e-5).T + batch["bias"]
    out = loss(z, batch["q"], view=batch["view"], embeddings=emb, weight=w)
    memory, seen = loss.class_memory.memory.double(), loss.class_memory.seen  # the memory is stored in float32
    _, joint, contrastive, uniform = naive_bce3s(
        z.detach(), batch["q"], batch["view"], batch["emb"], memory, seen, batch["w"], range(k), 1.0, cw, uw, 1.0,
        cw != 0,
    )
    want = joint + cw * contrastive + uw * uniform
    assert out.loss.item() == pytest.approx(want, rel=1e-6)
    assert out.terms["contrastive"].item() == (0.0 if cw == 0 else pytest.approx(contrastive, rel=1e-6))
    assert out.terms["uniform"].item() == (0.0 if uw == 0 else pytest.approx(uniform, rel=1e-10))
    out.loss.backward()
    if cw == 0:
        assert emb.grad is None
