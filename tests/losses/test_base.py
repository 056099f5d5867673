"""Tests of the loss contract in bce3s.losses.base."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bce3s.losses import Bce3sLoss, CrossEntropyLoss, Loss, LossOutput, as_soft_targets


def test_as_soft_targets_ids_and_soft():
    like = torch.zeros(1, dtype=torch.float64)
    out = as_soft_targets(torch.tensor([2, 0]), 3, like)
    assert out.dtype == torch.float64
    assert out.tolist() == [[0, 0, 1], [1, 0, 0]]
    soft = torch.tensor([[0.25, 0.75, 0.0]])
    assert as_soft_targets(soft, 3, like).tolist() == [[0.25, 0.75, 0.0]]
    for bad in (torch.tensor([3]), torch.zeros(2, 4), torch.zeros(2, dtype=torch.bool)):
        with pytest.raises(ValueError):
            as_soft_targets(bad, 3, like)


def test_loss_output_is_named_tuple():
    out = CrossEntropyLoss(3)(torch.zeros(2, 3), torch.tensor([0, 1]))
    assert isinstance(out, LossOutput) and isinstance(out, tuple)
    loss, terms = out
    assert loss.item() == pytest.approx(torch.log(torch.tensor(3.0)).item())
    assert set(terms) == {"ce"} and not terms["ce"].requires_grad


def test_base_defaults_are_no_ops():
    class Zero(Loss):
        def _compute(self, logits, target, *, view, embeddings, weight):
            return LossOutput(logits.sum() * 0, {})

    loss = Zero(4)
    loss.set_epoch(3)
    loss.update(torch.zeros(2, 5), torch.tensor([0, 1]))
    assert loss.needs == frozenset()
    assert loss(torch.ones(2, 4), torch.tensor([0, 3])).loss.item() == 0.0
    with pytest.raises(NotImplementedError):
        Loss(4)(torch.ones(2, 4), torch.tensor([0, 3]))


def test_missing_needs_named():
    loss = Bce3sLoss(4, embedding_dim=3)
    z, y = torch.zeros(2, 4), torch.tensor([0, 1])
    with pytest.raises(ValueError, match="embeddings"):
        loss(z, y, weight=torch.ones(4, 2))
    with pytest.raises(ValueError, match="weight"):
        loss(z, y, embeddings=torch.ones(2, 3))


def test_input_validation():
    loss = CrossEntropyLoss(4)
    z = torch.zeros(3, 4)
    y = torch.tensor([0, 1, 2])
    bad_calls = [
        lambda: loss(torch.zeros(3, 5), y),  # K disagrees
        lambda: loss(z, torch.tensor([0, 4, 1])),  # class id out of range
        lambda: loss(z, torch.tensor([0, 1])),  # row count disagrees
        lambda: loss(z, y, view=torch.tensor([0, 1, 3])),  # view id out of range
        lambda: loss(z, y, view=torch.tensor([0.0, 1.0, 2.0])),  # float view ids
        lambda: loss(z.long(), y),  # integer logits
        lambda: Bce3sLoss(4, embedding_dim=2)(z, y, embeddings=torch.ones(3, 2), weight=torch.ones(3, 2)),
        lambda: Bce3sLoss(4, embedding_dim=2)(z, y, embeddings=torch.ones(2, 2), weight=torch.ones(4, 2)),
    ]
    for call in bad_calls:
        with pytest.raises(ValueError):
            call()
    with pytest.raises(ValueError, match="^num_classes: "):
        CrossEntropyLoss(0)


def test_check_inputs_flag_rejects_nan():
    loss = CrossEntropyLoss(3)
    z = torch.tensor([[0.0, float("nan"), 1.0]])
    assert torch.isnan(loss(z, torch.tensor([0])).loss)
    loss.check_inputs = True
    with pytest.raises(ValueError, match="logits"):
        loss(z, torch.tensor([0]))
    with pytest.raises(ValueError, match="target"):
        loss(torch.zeros(1, 3), torch.tensor([[float("nan"), 0.0, 1.0]]))


def test_soft_target_rows_equal_hard():
    z = torch.randn(4, 5, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 4, 2, 2])
    loss = CrossEntropyLoss(5)
    torch.testing.assert_close(loss(z, y).loss, loss(z, F.one_hot(y, 5).float()).loss)
