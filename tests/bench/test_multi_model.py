"""``bench/multi_model.py``: its grouped model is exactly N separate ResNet-32s (outputs, gradients, a step)."""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F
from torch import nn

import multi_model  # bench/ is on sys.path (tests/bench/conftest.py)
from bce3s.models.resnet_cifar import resnet32

N, B, K, SIZE = 3, 4, 5, 16


def test_grouped_model_is_n_separate_models():
    torch.manual_seed(0)
    backbones = [resnet32() for _ in range(N)]
    heads = [nn.Linear(64, K) for _ in range(N)]
    grouped = multi_model.GroupedResNet32(N, K)
    grouped.load_from(backbones, heads)
    gen = torch.Generator().manual_seed(1)
    xs = [torch.randn(B, 3, SIZE, SIZE, generator=gen) for _ in range(N)]
    ys = [torch.randint(0, K, (B,), generator=gen) for _ in range(N)]
    # forward (train mode: BatchNorm statistics of each model's own batch) and backward of the summed losses
    logits = grouped(torch.cat(xs, dim=1))
    (F.cross_entropy(logits.reshape(-1, K), torch.stack(ys, dim=1).reshape(-1)) * N).backward()
    for i in range(N):
        single = heads[i](backbones[i](xs[i]))
        torch.testing.assert_close(logits[:, i], single, rtol=1e-4, atol=1e-5)
        F.cross_entropy(single, ys[i]).backward()
        torch.testing.assert_close(grouped.head_weight.grad[i], heads[i].weight.grad, rtol=1e-4, atol=1e-6)
        first = backbones[i].conv1.weight.grad
        torch.testing.assert_close(grouped.conv1.weight.grad[i * 16 : (i + 1) * 16], first, rtol=1e-4, atol=1e-6)
    # BatchNorm running statistics moved per model too
    torch.testing.assert_close(grouped.bn1.running_mean[16:32], backbones[1].bn1.running_mean, rtol=1e-5, atol=1e-7)


def test_the_bench_runs_on_the_cpu(tmp_path):
    out = tmp_path / "mm.json"
    assert multi_model.main(["--quick", "--device", "cpu", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["n"] for r in rows] == [1, 2] and all(r["grouped_ms"] > 0 and r["separate_ms"] > 0 for r in rows)
