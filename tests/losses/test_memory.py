"""Tests of ClassMemory against a per-sample loop (the official update, head.py:152-155)."""

from __future__ import annotations

import io

import pytest
import torch

from bce3s.losses import ClassMemory


def naive_update(memory, seen, embeddings, target):
    """The official loop: for every sample in batch order, M[y_i] <- u_i."""
    memory, seen = memory.clone(), seen.clone()
    for i in range(embeddings.shape[0]):
        memory[target[i]] = embeddings[i].float()
        seen[target[i]] = True
    return memory, seen


def test_update_matches_loop_last_sample_wins():
    g = torch.Generator().manual_seed(0)
    mem = ClassMemory(7, 3)
    ref_m, ref_s = mem.memory.clone(), mem.seen.clone()
    for _ in range(4):
        emb = torch.randn(12, 3, generator=g, dtype=torch.float64)
        y = torch.randint(0, 7, (12,), generator=g)  # many duplicates
        mem.update(emb, y)
        ref_m, ref_s = naive_update(ref_m, ref_s, emb, y)
        assert torch.equal(mem.memory, ref_m)
        assert torch.equal(mem.seen, ref_s)
    assert mem.memory.dtype == torch.float32


def test_update_hand_case():
    mem = ClassMemory(4, 2)
    emb = torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [4.0, 4.0]])
    mem.update(emb, torch.tensor([2, 0, 2, 0]))
    assert mem.memory.tolist() == [[4, 4], [0, 0], [3, 3], [0, 0]]
    assert mem.seen.tolist() == [True, False, True, False]
    mem.update(emb[:1], torch.tensor([1]))
    assert mem.memory.tolist() == [[4, 4], [1, 1], [3, 3], [0, 0]]
    assert mem.seen.tolist() == [True, True, True, False]


def test_update_detaches_and_empty_batch():
    mem = ClassMemory(3, 2)
    emb = torch.ones(2, 2, requires_grad=True)
    mem.update(emb, torch.tensor([0, 1]))
    assert not mem.memory.requires_grad
    before = mem.memory.clone()
    mem.update(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long))
    assert torch.equal(mem.memory, before)


def test_state_dict_round_trip():
    mem = ClassMemory(5, 3)
    mem.update(torch.randn(4, 3, generator=torch.Generator().manual_seed(1)), torch.tensor([4, 1, 1, 0]))
    buf = io.BytesIO()
    torch.save(mem.state_dict(), buf)
    buf.seek(0)
    other = ClassMemory(5, 3)
    other.load_state_dict(torch.load(buf, weights_only=True))
    assert torch.equal(other.memory, mem.memory) and torch.equal(other.seen, mem.seen)
    assert set(mem.state_dict()) == {"memory", "seen"}


def test_errors():
    mem = ClassMemory(3, 2)
    bad_updates = [
        (torch.zeros(2, 4), torch.tensor([0, 1])),  # wrong width
        (torch.zeros(2, 2), torch.tensor([0, 3])),  # class id out of range
        (torch.zeros(2, 2), torch.zeros(2, 3)),  # soft targets
    ]
    for emb, target in bad_updates:
        with pytest.raises(ValueError):
            mem.update(emb, target)
    with pytest.raises(ValueError, match="^embedding_dim: "):
        ClassMemory(3, 0)
    with pytest.raises(ValueError, match="^num_classes: "):
        ClassMemory(0, 2)
