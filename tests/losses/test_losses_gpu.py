"""GPU checks (run with CUDA only): same results as on the CPU, and a training step with no host sync."""

from __future__ import annotations

import pytest
import torch

from bce3s.losses import LOSSES, build_loss

pytestmark = pytest.mark.gpu
K, P, D, B = 20, 8, 6, 16
COUNTS = list(range(K, 0, -1))


def _batch(device):
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, K, (B,), generator=g)
    y2 = torch.randint(0, K, (B,), generator=g)
    onehot = torch.nn.functional.one_hot(y, K).float()
    mixed = 0.3 * onehot + 0.7 * torch.nn.functional.one_hot(y2, K).float()
    cpu = {
        "logits": torch.randn(3 * B, K, generator=g),
        "target": torch.cat([onehot, mixed, mixed]),
        "view": torch.arange(3).repeat_interleave(B),
        "embeddings": torch.randn(3 * B, P, generator=g),
        "weight": torch.randn(K, D, generator=g),
        "labels": y,
    }
    return {k: v.to(device) for k, v in cpu.items()}


def _build(name, device):
    params = {"embedding_dim": P, "neg_class_ratio": 0.3} if name == "bce3s" else {}
    loss = build_loss(name, num_classes=K, class_counts=COUNTS, **params).to(device)
    memory = torch.randn(K, P, generator=torch.Generator().manual_seed(1)).to(device)
    loss.update(memory, torch.arange(K, device=device))
    loss.set_epoch(1)
    return loss


@pytest.mark.parametrize("name", list(LOSSES))
def test_cuda_matches_cpu(name):
    results = []
    for device in ("cpu", "cuda"):
        x = _batch(device)
        loss = _build(name, device)
        out = loss(x["logits"], x["target"], view=x["view"], embeddings=x["embeddings"], weight=x["weight"])
        results.append(out.loss.item())
    assert results[1] == pytest.approx(results[0], rel=2e-3)  # TF32 may be on


@pytest.mark.parametrize("name", ["bce3s", "ce", "cb_bce", "ldam"])
def test_training_step_has_no_host_sync(name):
    x = _batch("cuda")
    loss = _build(name, "cuda")
    logits, emb, weight = (x[k].clone().requires_grad_() for k in ("logits", "embeddings", "weight"))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = loss(logits, x["target"], view=x["view"], embeddings=emb, weight=weight)
        out.loss.backward()
        loss.update(emb.detach()[:B], x["labels"])
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(out.loss).item()
