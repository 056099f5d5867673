"""Bce3sLoss warns once when ``update`` or ``set_epoch`` is never called (the contrastive term would stay 0)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import yaml

from bce3s.losses import Bce3sLoss, ContrastiveInactiveWarning, build_loss, tripartite

K, P, B = 6, 3, 4


def step_inputs(gen: torch.Generator, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits, labels and embeddings of one clean batch (no mixed views)."""
    y = torch.randint(0, K, (B,), generator=gen)
    emb = torch.randn(B, P, generator=gen)
    return torch.randn(B, K, generator=gen), y, emb


def train_loop(
    loss: Bce3sLoss, *, epochs: int = 3, steps: int = 3, update: bool = True, set_epoch: bool = True
) -> list[warnings.WarningMessage]:
    """A training loop of the loss alone; returns the ContrastiveInactiveWarnings raised."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(K, 5, generator=gen)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for epoch in range(epochs):
            if set_epoch:
                loss.set_epoch(epoch)
            for _ in range(steps):
                z, y, emb = step_inputs(gen, w)
                loss(z, y, embeddings=emb, weight=w)
                if update:
                    loss.update(emb, y)
    return [c for c in caught if issubclass(c.category, ContrastiveInactiveWarning)]


def test_warning_is_a_user_warning():
    assert issubclass(ContrastiveInactiveWarning, UserWarning)


@pytest.mark.parametrize("start", [0, 1, 2])
def test_no_warning_when_update_is_called_after_every_step(start):
    assert train_loop(Bce3sLoss(K, embedding_dim=P, contrastive_start_epoch=start)) == []


@pytest.mark.parametrize("start", [0, 1])
def test_never_calling_update_warns_exactly_once(start):
    caught = train_loop(Bce3sLoss(K, embedding_dim=P, contrastive_start_epoch=start), update=False)
    assert len(caught) == 1
    assert "update" in str(caught[0].message)
    assert caught[0].filename == __file__  # points at the caller's line


def test_no_warning_before_the_contrastive_term_starts():
    loss = Bce3sLoss(K, embedding_dim=P, contrastive_start_epoch=5)
    assert train_loop(loss, update=False) == []


def test_no_warning_when_the_contrastive_term_is_off():
    assert train_loop(Bce3sLoss(K, embedding_dim=P, contrastive_weight=0.0), update=False, set_epoch=False) == []


def test_each_loss_object_warns_once():
    assert len(train_loop(Bce3sLoss(K, embedding_dim=P, contrastive_start_epoch=0), update=False)) == 1
    assert len(train_loop(Bce3sLoss(K, embedding_dim=P, contrastive_start_epoch=0), update=False)) == 1


def test_never_calling_set_epoch_warns_exactly_once(monkeypatch):
    monkeypatch.setattr(tripartite, "NO_EPOCH_CALLS_BEFORE_WARNING", 4)
    caught = train_loop(Bce3sLoss(K, embedding_dim=P), set_epoch=False)
    assert len(caught) == 1
    assert "set_epoch" in str(caught[0].message)


def test_set_epoch_check_is_off_below_the_threshold():
    # the default threshold is far above a test's handful of calls without set_epoch
    assert train_loop(Bce3sLoss(K, embedding_dim=P), set_epoch=False) == []


@pytest.mark.slow  # about 10 s on a CPU
def test_short_engine_run_does_not_warn(tmp_path: Path):
    from bce3s.config import load_config
    from bce3s.engine import train

    cfg = {
        "data": {"dataset": "digits_lt", "imbalance_factor": 10},
        "model": {"name": "small_cnn", "projector_dim": 16},
        "stages": [
            {
                "name": "stage1",
                "epochs": 1,
                "batch_size": 128,
                "loss": {"name": "bce3s", "params": {"neg_class_ratio": 1.0, "contrastive_start_epoch": 0}},
                "optim": {"lr": 0.05},
                "mixing": {"enabled": True},
            }
        ],
        "eval": {"batch_size": 256},
        "runtime": {"device": "cpu", "seed": 0},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(load_config(path), tmp_path / "out", quiet=True, config_path="tiny.yaml")
    assert [c for c in caught if issubclass(c.category, ContrastiveInactiveWarning)] == []


def test_build_loss_object_warns_too():
    loss = build_loss("bce3s", num_classes=K, embedding_dim=P, contrastive_start_epoch=0)
    assert len(train_loop(loss, update=False)) == 1


def test_loss_restored_from_a_filled_state_does_not_warn():
    trained = Bce3sLoss(K, embedding_dim=P, contrastive_start_epoch=0)
    train_loop(trained, epochs=1)
    resumed = Bce3sLoss(K, embedding_dim=P, contrastive_start_epoch=0)
    resumed.load_state_dict(trained.state_dict())
    assert train_loop(resumed, update=False) == []


def test_loss_restored_from_an_empty_state_still_warns():
    resumed = Bce3sLoss(K, embedding_dim=P, contrastive_start_epoch=0)
    resumed.load_state_dict(Bce3sLoss(K, embedding_dim=P).state_dict())
    assert len(train_loop(resumed, update=False)) == 1
