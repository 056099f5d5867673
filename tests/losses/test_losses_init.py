"""Tests of the registry and build_loss in bce3s.losses, plus checks every registered loss must pass."""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F

import bce3s.losses as losses
from bce3s.losses import LOSSES, Loss, LossOutput, build_loss, loss_params

NAMES = list(LOSSES)
K, P, D = 5, 3, 4
COUNTS = [40, 20, 8, 3, 1]
# Candidate bad values: every parameter of every loss rejects at least one of them.
BAD_VALUES = (-1, "x", float("nan"), True)


def test_public_api_exported():
    for name in losses.__all__:
        assert hasattr(losses, name), name


def test_unknown_name_raises():
    with pytest.raises(ValueError, match="bce4s"):
        build_loss("bce4s", num_classes=K, class_counts=COUNTS)


@pytest.mark.parametrize("name", NAMES)
def test_unknown_param_raises_naming_it(name):
    with pytest.raises(ValueError, match="^not_a_param: "):
        build_loss(name, num_classes=K, class_counts=COUNTS, not_a_param=1.0)


@pytest.mark.parametrize("name", NAMES)
def test_loss_params_are_the_constructor_keywords(name):
    params = loss_params(name)
    signature = inspect.signature(LOSSES[name]).parameters
    assert set(params) == set(signature) - {"num_classes", "class_counts"}
    assert all(params[p] == signature[p].default for p in params)
    # every listed parameter is accepted, at its default
    assert isinstance(build_loss(name, num_classes=K, class_counts=COUNTS, **params), Loss)


@pytest.mark.parametrize("name", NAMES)
def test_bad_parameter_value_raises_value_error_named(name):
    for param in loss_params(name):
        rejected = 0
        for bad in BAD_VALUES:
            try:
                build_loss(name, num_classes=K, class_counts=COUNTS, **{param: bad})
            except ValueError as err:
                assert str(err).startswith(f"{param}: "), (param, bad, str(err))
                rejected += 1
        assert rejected, f"{name}.{param} accepted all of {BAD_VALUES}"


def test_class_counts_checked():
    for counts in (COUNTS[:4], [1, -1, 1, 1, 1]):
        with pytest.raises(ValueError, match="^class_counts: "):
            build_loss("cb_bce", num_classes=K, class_counts=counts)


def test_params_reach_the_loss():
    loss = build_loss(
        "bce3s", num_classes=K, class_counts=COUNTS, neg_class_ratio=1.0, temperature=0.2, embedding_dim=P
    )
    assert loss.sampler.ratio == 1.0 and loss.contrastive.temperature == 0.2
    assert build_loss("ldam", num_classes=K, class_counts=COUNTS, drw_epoch=3).drw_epoch == 3


@pytest.mark.parametrize("name", NAMES)
def test_builds_and_returns_finite_scalar_with_gradient(name):
    loss = _build(name)
    z, y, emb, w = _batch(dtype=torch.float32)
    z.requires_grad_()
    out = _call(loss, z, y, emb, w)
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


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


@pytest.mark.parametrize("name", [n for n in NAMES if "class_counts" not in inspect.signature(LOSSES[n]).parameters])
def test_build_without_class_counts_for_losses_that_do_not_use_them(name):
    assert isinstance(build_loss(name, num_classes=K), Loss)


def test_bce3s_builds_without_class_counts():
    assert isinstance(build_loss("bce3s", num_classes=K), losses.Bce3sLoss)


@pytest.mark.parametrize("name", [n for n in NAMES if "class_counts" in inspect.signature(LOSSES[n]).parameters])
def test_missing_class_counts_is_a_value_error_naming_the_loss(name):
    with pytest.raises(ValueError, match=f"^class_counts: .*{name!r}") as info:
        build_loss(name, num_classes=K)
    assert "\n" not in str(info.value)
