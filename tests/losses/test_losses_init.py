"""Tests of the registry and build_loss in bce3s.losses, plus checks every registered loss must pass."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import bce3s.losses as losses
from bce3s.losses import LOSSES, Loss, LossOutput, build_loss, loss_params

NAMES = [
    "bce3s",
    "bce",
    "ce",
    "focal",
    "cb_softmax",
    "cb_sigmoid",
    "cb_focal",
    "balanced_softmax",
    "logit_adjusted",
    "ldam",
    "cb_bce",
]
K, P, D = 5, 3, 4
COUNTS = [40, 20, 8, 3, 1]


def test_registry_names_exact():
    assert list(LOSSES) == NAMES


def test_public_api_exported():
    for name in losses.__all__:
        assert hasattr(losses, name), name


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="unknown loss 'bce4s'; valid names: bce3s, bce, ce"):
        build_loss("bce4s", num_classes=K, class_counts=COUNTS)


def test_unknown_param_named_with_valid_params():
    with pytest.raises(ValueError, match=r"loss 'focal' has no parameter 'gama'; valid parameters: gamma"):
        build_loss("focal", num_classes=K, class_counts=COUNTS, gama=2.0)
    with pytest.raises(ValueError, match="valid parameters: .*neg_class_ratio.*temperature"):
        build_loss("bce3s", num_classes=K, class_counts=COUNTS, tau=1.0)


def test_class_counts_length_checked():
    with pytest.raises(ValueError, match="class_counts has 4 entries"):
        build_loss("ce", num_classes=K, class_counts=COUNTS[:4])


def test_params_reach_the_loss():
    loss = build_loss(
        "bce3s", num_classes=K, class_counts=COUNTS, neg_class_ratio=1.0, temperature=0.2, embedding_dim=P
    )
    assert loss.sampler.ratio == 1.0 and loss.temperature == 0.2
    assert build_loss("ldam", num_classes=K, class_counts=COUNTS, drw_epoch=3).drw_epoch == 3
    assert loss_params("bce")["neg_class_ratio"] == 1.0
    assert loss_params("cb_bce") == {"beta": 0.99999, "neg_class_ratio": 0.4, "seed": 0}


# ------------------------------------------------------------------------- checks common to every registered loss


def _build(name: str) -> Loss:
    params = {"embedding_dim": P} if name == "bce3s" else {}
    loss = build_loss(name, num_classes=K, class_counts=COUNTS, **params)
    if name == "bce3s":
        loss.update(torch.randn(K, P, generator=torch.Generator().manual_seed(0)), torch.arange(K))
        loss.set_epoch(1)
    return loss


def _call(loss: Loss, z, target, emb, w, view=None) -> LossOutput:
    if hasattr(loss, "sampler"):
        loss.sampler.generator.manual_seed(0)  # same partial class set for every call being compared
    return loss(z, target, view=view, embeddings=emb, weight=w)


def _batch(n=8, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, K, generator=g, dtype=dtype) * 2
    y = torch.randint(0, K, (n,), generator=g)
    emb = torch.randn(n, P, generator=g, dtype=dtype)
    w = torch.randn(K, D, generator=g, dtype=dtype)
    return z, y, emb, w


@pytest.mark.parametrize("name", NAMES)
def test_finite_at_extreme_logits(name):
    loss = _build(name)
    z, y, emb, w = _batch(dtype=torch.float32)
    z = (torch.sign(z) * 1e4).requires_grad_()
    w.requires_grad_()
    out = _call(loss, z, y, emb, w)
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(z.grad).all()
    assert w.grad is None or torch.isfinite(w.grad).all()


@pytest.mark.parametrize("name", NAMES)
def test_permutation_invariant_and_nonnegative(name):
    loss = _build(name)
    z, y, emb, w = _batch()
    view = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1])
    q = F.one_hot(y, K).double()
    q[view > 0] = 0.6 * q[view > 0] + 0.4 * F.one_hot((y[view > 0] + 2) % K, K).double()
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(3))
    a = _call(loss, z, q, emb, w, view).loss
    b = _call(loss, z[perm], q[perm], emb[perm], w, view[perm]).loss
    torch.testing.assert_close(a, b)
    assert a.item() >= 0


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck_float64(name):
    loss = _build(name)
    z, y, emb, w = _batch(n=4)
    inputs = (z.requires_grad_(), emb.requires_grad_(), w.requires_grad_())
    assert torch.autograd.gradcheck(lambda a, b, c: _call(loss, a, y, b, c).loss, inputs)


@pytest.mark.parametrize("name", NAMES)
def test_empty_batch_is_finite(name):
    loss = _build(name)
    z = torch.zeros(0, K, requires_grad=True)
    out = _call(loss, z, torch.zeros(0, dtype=torch.long), torch.zeros(0, P), torch.randn(K, D))
    out.loss.backward()
    assert torch.isfinite(out.loss) and z.grad.shape == (0, K)


@pytest.mark.parametrize("name", NAMES)
def test_float32_close_to_float64_and_terms_detached(name):
    loss = _build(name)
    z, y, emb, w = _batch()
    hi = _call(loss, z, y, emb, w)
    lo = _call(loss, z.float(), y, emb.float(), w.float())
    assert lo.loss.dtype == torch.float32
    assert lo.loss.item() == pytest.approx(hi.loss.item(), rel=1e-5)
    assert hi.terms and all(not t.requires_grad and t.dim() == 0 for t in hi.terms.values())
