"""Several small models on one device: N CIFAR ResNet-32s trained as one grouped model, against N separate ones.

A user runs 3 seeds x 2 methods. One ResNet-32 step on 3 x 64 CIFAR images is a few milliseconds of small kernels
and leaves a large GPU mostly idle, and processes sharing a GPU take turns (time slices) instead of running their
kernels side by side, so ``bce3s sweep --parallel`` may gain little once each step is a CUDA graph. The other way
to fill the device is to train N models as one: every convolution with ``groups=N`` (channels model-major),
BatchNorm over the N x C channels (its statistics stay per model), the N linear heads as one batched product. These
are exactly N independent models (``tests/bench/test_multi_model.py`` checks outputs and gradients against N
separate ResNet-32s), each with its own images, with the kernel launches of one.

This script measures whether that pays before a trainer is built on it. Timed, per N: one CE training step
(forward, backward, SGD with momentum and weight decay) of (a) the N separate models one after another and (b) the
grouped model, each eager and, on CUDA, captured as one CUDA graph. Printed: ms per step and model-steps per
second, and the grouped/separate speed-up. Usage::

    python bench/multi_model.py --device cuda --models-n 1 2 3 6 --out bench/results/multi_model.json
    python bench/multi_model.py --quick          # CPU smoke run (N = 1, 2; batch 8; 2 steps)
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bce3s.models.resnet_cifar import CifarResNet, resnet32
from timing import time_ms  # bench/timing.py (bench/ is on sys.path when run as a script)


class _GroupedBlock(nn.Module):
    """N basic blocks side by side: 3x3 convs with ``groups=N``, option-A shortcuts padded per model."""

    def __init__(self, n: int, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.n, self.stride, self.in_planes, self.planes = n, stride, in_planes, planes
        self.conv1 = nn.Conv2d(n * in_planes, n * planes, 3, stride=stride, padding=1, bias=False, groups=n)
        self.bn1 = nn.BatchNorm2d(n * planes)
        self.conv2 = nn.Conv2d(n * planes, n * planes, 3, stride=1, padding=1, bias=False, groups=n)
        self.bn2 = nn.BatchNorm2d(n * planes)

    def shortcut(self, x: Tensor) -> Tensor:
        if self.stride == 1 and self.in_planes == self.planes:
            return x
        x = x[:, :, :: self.stride, :: self.stride]
        b, _, h, w = x.shape
        extra = self.planes - self.in_planes
        x = F.pad(x.reshape(b, self.n, self.in_planes, h, w), (0, 0, 0, 0, extra // 2, extra - extra // 2))
        return x.reshape(b, self.n * self.planes, h, w)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class GroupedResNet32(nn.Module):
    """N CIFAR ResNet-32 classifiers (linear heads) as one module.

    Shapes:
        input ``(B, N * C, H, W)``, model m's images in channels ``[m C, (m + 1) C)`` -> logits ``(B, N, K)``.
    """

    def __init__(self, n: int, num_classes: int, in_channels: int = 3, widths: tuple[int, int, int] = (16, 32, 64)):
        super().__init__()
        self.n = n
        self.conv1 = nn.Conv2d(n * in_channels, n * widths[0], 3, padding=1, bias=False, groups=n)
        self.bn1 = nn.BatchNorm2d(n * widths[0])
        blocks, in_planes = [], widths[0]
        for i, planes in enumerate(widths):
            for b in range(5):
                blocks.append(_GroupedBlock(n, in_planes, planes, 2 if (i > 0 and b == 0) else 1))
                in_planes = planes
        self.blocks = nn.Sequential(*blocks)
        self.head_weight = nn.Parameter(torch.zeros(n, num_classes, widths[-1]))
        self.head_bias = nn.Parameter(torch.zeros(n, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        out = self.blocks(F.relu(self.bn1(self.conv1(x))))
        feats = F.adaptive_avg_pool2d(out, 1).flatten(1).reshape(x.shape[0], self.n, -1)  # (B, N, D)
        return torch.einsum("bnd,nkd->bnk", feats, self.head_weight) + self.head_bias

    @torch.no_grad()
    def load_from(self, backbones: list[CifarResNet], heads: list[nn.Linear]) -> None:
        """Copy N separate models' weights (and BatchNorm buffers) in, model m into group m."""
        grouped = [m for m in self.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]
        for i, backbone in enumerate(backbones):
            single = [m for m in backbone.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]
            for g, s in zip(grouped, single, strict=True):
                for name in ("weight", "bias", "running_mean", "running_var"):
                    src = getattr(s, name, None)
                    if src is not None:
                        rows = src.shape[0]
                        getattr(g, name)[i * rows : (i + 1) * rows].copy_(src)
            self.head_weight[i].copy_(heads[i].weight)
            self.head_bias[i].copy_(heads[i].bias)


def _sgd(params: list[Tensor]) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-3, nesterov=True)


def make_steps(n: int, batch: int, num_classes: int, device: torch.device) -> dict[str, Callable[[], None]]:
    """``{"separate": step, "grouped": step}``: one CE training step of N models, each on its own 3B images."""
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(3 * batch, 3, 32, 32, generator=gen).to(device) for _ in range(n)]
    ys = [torch.randint(0, num_classes, (3 * batch,), generator=gen).to(device) for _ in range(n)]
    torch.manual_seed(0)
    backbones = [resnet32().to(device) for _ in range(n)]
    heads = [nn.Linear(64, num_classes).to(device) for _ in range(n)]
    opts = [_sgd([*b.parameters(), *h.parameters()]) for b, h in zip(backbones, heads)]
    grouped = GroupedResNet32(n, num_classes).to(device)
    grouped.load_from(backbones, heads)
    g_opt = _sgd(list(grouped.parameters()))
    gx, gy = torch.cat(xs, dim=1), torch.stack(ys, dim=1)  # (3B, N*3, H, W), (3B, N)

    def separate() -> None:
        for x, y, b, h, opt in zip(xs, ys, backbones, heads, opts):
            opt.zero_grad(set_to_none=False)
            F.cross_entropy(h(b(x)), y).backward()
            opt.step()

    def together() -> None:
        g_opt.zero_grad(set_to_none=False)
        logits = grouped(gx)  # (3B, N, K): the sum of the N models' mean losses
        (F.cross_entropy(logits.reshape(-1, num_classes), gy.reshape(-1)) * n).backward()
        g_opt.step()

    return {"separate": separate, "grouped": together}


def graphed(step: Callable[[], None], device: torch.device, warmup: int = 3) -> Callable[[], None]:
    """``step`` captured as one CUDA graph after ``warmup`` eager calls on a side stream (grads kept, not None)."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(warmup):
            step()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models-n", type=int, nargs="+", default=[1, 2, 3, 6], help="numbers of models N")
    ap.add_argument("--batch", type=int, default=64, help="clean batch B per model (3B images per step)")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="CPU smoke run: N = 1, 2; batch 8; 2 steps")
    ap.add_argument("--out", default="bench/results/multi_model.json")
    args = ap.parse_args(argv)
    if args.quick:
        args.models_n, args.batch, args.steps, args.warmup = [1, 2], 8, 2, 1
    device = torch.device(args.device)
    modes = ["eager", "graphed"] if device.type == "cuda" else ["eager"]
    print(f"{'N':>3}{'mode':>9}{'separate ms':>13}{'grouped ms':>12}{'speed-up':>10}{'model-steps/s grouped':>23}")
    rows = []
    for n in args.models_n:
        for mode in modes:
            steps = make_steps(n, args.batch, args.classes, device)
            if mode == "graphed":
                steps = {k: graphed(v, device) for k, v in steps.items()}
            sep = time_ms(steps["separate"], device, args.steps, args.warmup)
            grp = time_ms(steps["grouped"], device, args.steps, args.warmup)
            row = {"n": n, "mode": mode, "separate_ms": sep, "grouped_ms": grp, "speedup": sep / grp}
            row["model_steps_per_s_grouped"] = 1e3 * n / grp
            rows.append(row)
            print(f"{n:>3}{mode:>9}{sep:>13.2f}{grp:>12.2f}{sep / grp:>9.2f}x{row['model_steps_per_s_grouped']:>23.0f}")
    meta = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "batch": args.batch,
        "images_per_model_step": 3 * args.batch,
        "steps": args.steps,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
