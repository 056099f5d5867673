"""Benchmark of the BCE3S loss: forward+backward time by term, against plain CE, a ResNet-32 step and the
bare-matmul floor.

For each number of classes K and per-view batch B, the loss sees 3B rows (clean, mixup, cutmix views, as in
training). Timed (median of ``--repeats`` after warm-up, device synchronised around each call):

- ``bce3s``: the full :class:`~bce3s.losses.Bce3sLoss` (three terms, three views) forward + backward, plus the
  class-memory update with the B clean rows (what one training step costs in loss code);
- ``joint`` / ``contrastive`` / ``uniform``: each term alone, forward + backward; ``update``: the memory update;
- ``ce``: :class:`~bce3s.losses.CrossEntropyLoss` on the same 3B rows (class ids), forward + backward.

The kernels of ``bce3s`` and ``ce`` (aten operators launched, views excluded: ``bench/kernel_count.py``) are
counted once each; on the CPU, ``bce3s`` includes the class-id range check (4 operators) that accelerators skip.

The acceptance figure is the full BCE3S loss at K = 100, B = 64 as a fraction of a ResNet-32 forward + backward
on the same 3 x 64 images of 32 x 32 (CIFAR scale); the target is < 5 %.

**Floor** (``--floor``): the cost of the step's head against the bare matmuls it must do. ``step`` is classifier
(normalized head ``h @ normalize(W).T + b``) + projector (``h @ Wp.T``) + the full BCE3S loss, forward and
backward, on 3B rows of features h (3B, D); ``floor`` is the bare matmuls of that step, ``h @ W.T``, ``h @ Wp.T``
and the Gram ``W @ W.T``, forward and backward (autograd, nothing else). For the uniform term alone at large K,
``uniform`` (bce_uniform forward + backward) is compared with two plain K x D x K matmuls. With ``--compile``, each
step case also gets the compiled head and loss, and the floor's own matmuls compiled (nothing else): what
``torch.compile``'s per-call machinery costs before any loss work. With ``--plain``, each step case also gets the
textbook formulation: the same head and terms written plainly in autograd, with every weight-free quantity (row
weights, masks, the normalized memory) precomputed outside the step, checked to give the loss's value. The two
sides of each
ratio are timed alternately in one run; the ratio is the median of the per-repeat ratios.

Usage::

    python bench/losses.py [--quick] [--device cpu|cuda] [--repeats 5] [--threads N]
                           [--out bench/results/losses.json]
    python bench/losses.py --floor [--repeats 7] [--compile] [--plain] [--out bench/results/losses_floor.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from bce3s.losses import Bce3sLoss, CrossEntropyLoss, bce_contrastive, bce_joint, bce_uniform
from kernel_count import count_kernels  # bench/kernel_count.py (bench/ is on sys.path when run as a script)
from timing import sync, time_ms  # bench/timing.py

EMBEDDING_DIM = 128


def feature_dim_for(num_classes: int) -> int:
    """Feature size D of the classifier: 64 (ResNet-32) up to K = 100, 512 (ResNet-34 width) beyond."""
    return 64 if num_classes <= 100 else 512


# --------------------------------------------------------------------------------------------------- backbone


def resnet32_model(num_classes: int) -> nn.Module:
    """The library's ResNet-32 classifier with a projector, or a minimal local ResNet-32 if it is unavailable."""
    try:
        from bce3s.models import build_model
    except ImportError:
        return _LocalResNet32(num_classes)
    return build_model("resnet32", num_classes=num_classes, projector_dim=EMBEDDING_DIM)


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.pad = cout - cin
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        short = x[:, :, :: self.stride, :: self.stride] if self.stride > 1 else x
        if self.pad:  # option-A shortcut: zero-pad channels
            short = F.pad(short, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return F.relu(out + short)


class _LocalResNet32(nn.Module):
    """He et al. CIFAR ResNet-32 (3 stages x 5 blocks, 16/32/64 channels) + linear head + projector."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()]
        cin = 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(5):
                layers.append(_Block(cin, cout, stride if i == 0 else 1))
                cin = cout
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(64, num_classes)
        self.projector = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, EMBEDDING_DIM))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.body(x)
        return self.head(h), h, self.projector(h)


# ----------------------------------------------------------------------------------------------------- timing


def make_inputs(num_classes: int, batch: int, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    """A 3-view batch: logits (3B, K), soft targets, view ids, embeddings (3B, P), weight (K, D), labels (B,)."""
    g = torch.Generator().manual_seed(seed)
    d = feature_dim_for(num_classes)
    y = torch.randint(0, num_classes, (batch,), generator=g)
    y2 = torch.randint(0, num_classes, (batch,), generator=g)
    lam = 0.6
    onehot = F.one_hot(y, num_classes).float()
    mixed = lam * onehot + (1 - lam) * F.one_hot(y2, num_classes).float()
    return {
        "logits": torch.randn(3 * batch, num_classes, generator=g).to(device).requires_grad_(),
        "target": torch.cat([onehot, mixed, mixed]).to(device),
        "ids": torch.cat([y, y, y]).to(device),
        "view": torch.arange(3).repeat_interleave(batch).to(device),
        "embeddings": torch.randn(3 * batch, EMBEDDING_DIM, generator=g).to(device).requires_grad_(),
        "weight": torch.randn(num_classes, d, generator=g).to(device).requires_grad_(),
        "labels": y.to(device),
    }


def bench_losses(num_classes: int, batch: int, device: torch.device, repeats: int) -> dict[str, float]:
    x = make_inputs(num_classes, batch, device)
    loss = Bce3sLoss(num_classes, embedding_dim=EMBEDDING_DIM).to(device)
    loss.update(torch.randn(num_classes, EMBEDDING_DIM, device=device), torch.arange(num_classes, device=device))
    loss.set_epoch(1)  # contrastive term active, every class in the memory
    ce = CrossEntropyLoss(num_classes).to(device)
    clean_emb = x["embeddings"].detach()[:batch]
    memory = loss.class_memory

    def full() -> None:
        out = loss(x["logits"], x["target"], view=x["view"], embeddings=x["embeddings"], weight=x["weight"])
        out.loss.backward()
        loss.update(clean_emb, x["labels"])

    def joint() -> None:
        bce_joint(x["logits"], x["target"], view=x["view"], classes=loss.sampler).backward()

    def contrastive() -> None:
        bce_contrastive(x["embeddings"], memory.memory, x["target"], view=x["view"], seen=memory.seen).backward()

    def uniform() -> None:
        bce_uniform(x["weight"]).backward()

    def update() -> None:
        loss.update(clean_emb, x["labels"])

    def plain_ce() -> None:
        ce(x["logits"], x["ids"]).loss.backward()

    fns = {
        "bce3s": full,
        "joint": joint,
        "contrastive": contrastive,
        "uniform": uniform,
        "update": update,
        "ce": plain_ce,
    }
    out = {name: time_ms(fn, device, repeats) for name, fn in fns.items()}
    out |= {f"{name}_kernels": count_kernels(fns[name]) for name in ("bce3s", "ce")}
    for t in ("logits", "embeddings", "weight"):
        x[t].grad = None
    return out


def bench_backbone(device: torch.device, repeats: int, batch: int = 64, num_classes: int = 100) -> float:
    model = resnet32_model(num_classes).to(device).train()
    images = torch.randn(3 * batch, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(device)

    def step() -> None:
        out = model(images)
        (out[0].float().sum() + out[2].float().sum()).backward()

    return time_ms(step, device, repeats)


# ------------------------------------------------------------------------------------------------------ floor

#: (K, B, D) of the step-versus-floor comparison.
FLOOR_CASES = ((100, 64, 512), (1000, 128, 2048))
#: (K, D) of the uniform-term-versus-two-matmuls comparison.
UNIFORM_CASES = ((8142, 2048),)


#: Clock of the floor comparisons: wall time, or (``--cpu-time``, CPU with one thread) the thread's CPU time,
#: which a busy shared machine does not inflate.
CLOCK: dict[str, Callable[[], float]] = {"now": time.perf_counter}


def paired_ratio(
    fn: Callable[[], object], floor: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1
) -> dict[str, float]:
    """Time ``fn`` and ``floor`` alternately: medians of each (ms), the median of the per-repeat ratios and, as a
    check on a busy machine, the ratio of the minima."""
    for _ in range(warmup):
        fn()
        floor()
    times: dict[str, list[float]] = {"ms": [], "floor_ms": []}
    for _ in range(repeats):
        for key, f in (("ms", fn), ("floor_ms", floor)):
            sync(device)
            start = CLOCK["now"]()
            f()
            sync(device)
            times[key].append((CLOCK["now"]() - start) * 1e3)
    ratios = [a / b for a, b in zip(times["ms"], times["floor_ms"])]
    return {
        "ms": statistics.median(times["ms"]),
        "floor_ms": statistics.median(times["floor_ms"]),
        "ratio": statistics.median(ratios),
        "ratio_of_min": min(times["ms"]) / min(times["floor_ms"]),
    }


def _backward_against_floor(
    run: Callable[..., torch.Tensor],
    inputs: tuple[torch.Tensor, ...],
    floor: Callable[[], object],
    device: torch.device,
    repeats: int,
) -> dict[str, float]:
    """:func:`paired_ratio` of ``run(*inputs).backward()`` against ``floor``; the inputs' gradients dropped after."""

    def step() -> None:
        run(*inputs).backward()

    res = paired_ratio(step, floor, device, repeats)
    for t in inputs:
        t.grad = None
    return res


def _head_and_floor(
    num_classes: int, batch: int, dim: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Callable[[], None]]:
    """Features h (3B, D), classifier W (K, D) and projector Wp (P, D), all requiring grad, and the floor: their
    bare matmuls ``h @ W.T``, ``h @ Wp.T`` and the Gram ``W @ W.T``, forward and backward."""
    g = torch.Generator().manual_seed(0)
    h = torch.randn(3 * batch, dim, generator=g).to(device).requires_grad_()
    w = (0.05 * torch.randn(num_classes, dim, generator=g)).to(device).requires_grad_()
    wp = (0.05 * torch.randn(EMBEDDING_DIM, dim, generator=g)).to(device).requires_grad_()
    grads = [torch.ones(3 * batch, num_classes, device=device), torch.ones(3 * batch, EMBEDDING_DIM, device=device)]
    grads.append(torch.ones(num_classes, num_classes, device=device))

    def floor() -> None:
        torch.autograd.backward([h @ w.T, h @ wp.T, w @ w.T], grads)

    return h, w, wp, floor


def bench_floor(
    num_classes: int, batch: int, dim: int, device: torch.device, repeats: int, compiled: bool = False
) -> dict[str, float]:
    """Classifier + projector + BCE3S loss (forward + backward) against its bare matmuls (forward + backward).

    ``compiled``: the head and loss go through ``torch.compile`` (the loss made static, as the ``compiled`` and
    ``graphed`` training steps run it), so elementwise work fuses into a few kernels.
    """
    x = make_inputs(num_classes, batch, device)
    h, w, wp, floor = _head_and_floor(num_classes, batch, dim, device)
    b = torch.zeros(num_classes, device=device, requires_grad=True)
    loss = Bce3sLoss(num_classes, embedding_dim=EMBEDDING_DIM).to(device)
    loss.update(torch.randn(num_classes, EMBEDDING_DIM, device=device), torch.arange(num_classes, device=device))
    loss.set_epoch(1)

    def head(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor, wp: torch.Tensor) -> torch.Tensor:
        logits = torch.addmm(b, h, F.normalize(w, dim=1, eps=1e-5).T)
        return loss(logits, x["target"], view=x["view"], embeddings=h @ wp.T, weight=w).loss

    run = head
    if compiled:
        loss.make_static(device)
        loss.prepare_step()
        run = torch.compile(head, dynamic=False)

    return _backward_against_floor(run, (h, w, b, wp), floor, device, repeats)


def bench_compiled_floor(
    num_classes: int, batch: int, dim: int, device: torch.device, repeats: int
) -> dict[str, float]:
    """The floor's own matmuls through ``torch.compile`` against the same matmuls eager: what compiling costs
    before any loss work (guards, the compiled-autograd wrappers, the extra reductions a scalar output needs)."""
    h, w, wp, floor = _head_and_floor(num_classes, batch, dim, device)

    def matmuls(h: torch.Tensor, w: torch.Tensor, wp: torch.Tensor) -> torch.Tensor:
        return (h @ w.T).sum() + (h @ wp.T).sum() + (w @ w.T).sum()

    compiled = torch.compile(matmuls, dynamic=False)

    return _backward_against_floor(compiled, (h, w, wp), floor, device, repeats)


def bench_plain_floor(
    num_classes: int, batch: int, dim: int, device: torch.device, repeats: int, compiled: bool = False
) -> dict[str, float]:
    """The textbook formulation of the head and loss, against the same floor.

    The same normalized head, projector and three BCE3S terms written plainly in autograd (softplus, sums, the
    matmuls), and favoured: everything that does not depend on the weights is made once outside the timed step
    (the row weights of the views, the negative masks, the normalized class memory), with no class-set draw (all
    classes), no checks and no memory update. It tells whether the library's fused terms cost more than the
    obvious code would. Before timing, its value is checked against :class:`~bce3s.losses.Bce3sLoss` with
    ``neg_class_ratio=1`` on the same inputs, so both compute the same loss.
    """
    x = make_inputs(num_classes, batch, device)
    h, w, wp, floor = _head_and_floor(num_classes, batch, dim, device)
    b = torch.zeros(num_classes, device=device, requires_grad=True)
    memory = torch.randn(num_classes, EMBEDDING_DIM, generator=torch.Generator().manual_seed(1)).to(device)
    q, view = x["target"], x["view"]
    sizes = torch.bincount(view, minlength=3).to(q.dtype)[view]
    joint_row = (1.0 / (3 * sizes))[:, None]  # mean over the 3 views of each view's mean
    contrastive_row = ((view != 0) / sizes)[:, None]  # sum over the mixed views of each view's mean
    joint_pos, joint_neg = q * joint_row, (q <= 0) * joint_row
    con_pos, con_neg = q * contrastive_row, (q <= 0) * contrastive_row
    memory_hat = F.normalize(memory, dim=1, eps=1e-5)
    off_diagonal = 1.0 - torch.eye(num_classes, device=device)
    uniform_const = float(F.softplus(torch.tensor(-1.0)))

    def head(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor, wp: torch.Tensor) -> torch.Tensor:
        w_hat = F.normalize(w, dim=1, eps=1e-5)
        z = torch.addmm(b, h, w_hat.T)
        c = F.normalize(h @ wp.T, dim=1, eps=1e-5) @ memory_hat.T
        joint = (joint_pos * F.softplus(-z) + joint_neg * F.softplus(z)).sum()
        contrastive = (con_pos * F.softplus(-c) + con_neg * F.softplus(c)).sum()
        uniform = (F.softplus(w_hat @ w_hat.T) * off_diagonal).sum() / num_classes + uniform_const
        return joint + 0.1 * contrastive + uniform

    reference = Bce3sLoss(num_classes, embedding_dim=EMBEDDING_DIM, neg_class_ratio=1.0).to(device)
    reference.update(memory, torch.arange(num_classes, device=device))
    reference.set_epoch(1)
    with torch.no_grad():
        logits = torch.addmm(b, h, F.normalize(w, dim=1, eps=1e-5).T)
        expected = reference(logits, q, view=view, embeddings=h @ wp.T, weight=w).loss
        torch.testing.assert_close(head(h, w, b, wp), expected, rtol=1e-4, atol=1e-4)
    run = torch.compile(head, dynamic=False) if compiled else head

    return _backward_against_floor(run, (h, w, b, wp), floor, device, repeats)


def bench_uniform_floor(num_classes: int, dim: int, device: torch.device, repeats: int) -> dict[str, float]:
    """bce_uniform forward + backward against two plain K x D x K matmuls (a Gram and its backward)."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(num_classes, dim, generator=g).to(device).requires_grad_()
    plain = w.detach().clone()
    square = torch.randn(num_classes, num_classes, generator=g).to(device)

    def uniform() -> None:
        bce_uniform(w).backward()

    def floor() -> None:
        plain @ plain.T
        square @ plain

    res = paired_ratio(uniform, floor, device, repeats)
    w.grad = None
    return res


def run_floor(
    device: torch.device,
    repeats: int,
    classes: set[int] | None = None,
    uniform_cases: tuple[tuple[int, int], ...] = UNIFORM_CASES,
    compiled: bool = False,
    plain: bool = False,
) -> dict:
    """The floor comparisons (those with K in ``classes``, default all): ``{"step": [...], "uniform": [...]}``.

    ``compiled`` adds, for each step case, the same head and loss through ``torch.compile`` and the floor's own
    matmuls compiled; ``plain`` adds the textbook formulation of :func:`bench_plain_floor` (and its compiled
    form with ``compiled``).
    """
    out: dict[str, list[dict]] = {"step": [], "uniform": []}
    for k, b, d in FLOOR_CASES:
        if classes is None or k in classes:
            for comp in (False, True) if compiled else (False,):
                row = {"K": k, "B": b, "D": d, "compiled": comp, **bench_floor(k, b, d, device, repeats, comp)}
                out["step"].append(row)
                print(format_floor({"step": out["step"][-1:], "uniform": []}).splitlines()[-1], flush=True)
            extra: list[tuple[str, Callable[..., dict[str, float]], tuple]] = []
            if plain:
                extra.append(("plain", bench_plain_floor, ()))
                if compiled:
                    extra.append(("plain compiled", bench_plain_floor, (True,)))
            if compiled:
                extra.append(("matmuls", bench_compiled_floor, ()))
            for what, bench, more in extra:
                out["step"].append({"K": k, "B": b, "D": d, "compiled": what, **bench(k, b, d, device, repeats, *more)})
                print(format_floor({"step": out["step"][-1:], "uniform": []}).splitlines()[-1], flush=True)
    for k, d in uniform_cases:
        if classes is None or k in classes:
            out["uniform"].append({"K": k, "D": d, **bench_uniform_floor(k, d, device, max(3, repeats // 2))})
            print(format_floor({"step": [], "uniform": out["uniform"][-1:]}).splitlines()[-1], flush=True)
    return out


def format_floor(floor: dict) -> str:
    """Markdown table of the floor comparisons."""
    lines = ["| what | K | B | D | ms | floor ms | ratio | ratio of minima |", "|" + "---|" * 8]
    for r in floor["step"]:
        what = {
            False: "classifier + projector + BCE3S",
            True: "classifier + projector + BCE3S (compiled)",
            "matmuls": "the bare matmuls alone (compiled)",
            "plain": "textbook head + loss (plain autograd, weights precomputed)",
            "plain compiled": "textbook head + loss (plain autograd, weights precomputed, compiled)",
        }[r.get("compiled", False)]
        lines.append(
            f"| {what} vs bare matmuls | "
            f"{r['K']} | {r['B']} | {r['D']} | {r['ms']:.2f} | "
            f"{r['floor_ms']:.2f} | {r['ratio']:.2f}x | {r['ratio_of_min']:.2f}x |"
        )
    for r in floor["uniform"]:
        lines.append(
            f"| uniform term vs two K x D x K matmuls | {r['K']} | - | {r['D']} | {r['ms']:.1f} | "
            f"{r['floor_ms']:.1f} | {r['ratio']:.2f}x | {r['ratio_of_min']:.2f}x |"
        )
    return "\n".join(lines)


def cpu_name() -> str:
    """The CPU model (from /proc/cpuinfo on Linux), for the record."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def _provenance(argv: list[str] | None, device: torch.device, repeats: int) -> dict:
    """The command, device, torch version, threads and repeats of a result."""
    return {
        "command": " ".join(["python bench/losses.py", *(argv if argv is not None else sys.argv[1:])]),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "repeats": repeats,
    }


def _write(result: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="K in {10, 100}, B = 64 only, 3 repeats")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per entry (default 5, quick 3)")
    parser.add_argument("--out", default="bench/results/losses.json", help="JSON output path")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--floor", action="store_true", help="only the step-versus-bare-matmul floor comparison")
    parser.add_argument(
        "--compile", action="store_true", help="--floor: also the head and loss through torch.compile (~1 min each)"
    )
    parser.add_argument(
        "--plain",
        action="store_true",
        help="--floor: also the textbook head and loss (plain autograd, weights precomputed), for comparison",
    )
    parser.add_argument("--classes", default=None, help="--floor: only these K, comma-separated (100,1000,8142)")
    parser.add_argument("--uniform-case", default="8142,2048", help="--floor: K,D of the uniform-term comparison")
    parser.add_argument(
        "--cpu-time", action="store_true", help="--floor on the CPU: time with the thread's CPU time (sets 1 thread)"
    )
    args = parser.parse_args(argv)
    if args.cpu_time:
        args.threads = 1
        CLOCK["now"] = time.thread_time
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.floor:
        return main_floor(args, device, argv)
    repeats = args.repeats or (3 if args.quick else 5)
    classes = (10, 100) if args.quick else (10, 100, 1000, 8142)
    batches = (64,) if args.quick else (64, 512)

    rows = []
    for k in classes:
        for b in batches:
            t = bench_losses(k, b, device, repeats)
            row = {"K": k, "B": b, "rows": 3 * b, "D": feature_dim_for(k)}
            row |= {name if name.endswith("_kernels") else f"{name}_ms": v for name, v in t.items()}
            rows.append(row)
    backbone_ms = bench_backbone(device, repeats)
    ref = next(r for r in rows if r["K"] == 100 and r["B"] == 64)
    fraction = ref["bce3s_ms"] / backbone_ms
    result = {
        **_provenance(argv, device, repeats),
        "statistic": "median ms of forward+backward",
        "rows": rows,
        "backbone": {"model": "resnet32 (+projector)", "images": "3 x 64 x 3 x 32 x 32", "fwd_bwd_ms": backbone_ms},
        "acceptance": {
            "K": 100,
            "B": 64,
            "bce3s_ms": ref["bce3s_ms"],
            "backbone_ms": backbone_ms,
            "fraction": fraction,
            "target": 0.05,
            "pass": fraction < 0.05,
        },
    }
    print(format_table(result))
    _write(result, Path(args.out))
    return result


def main_floor(args: argparse.Namespace, device: torch.device, argv: list[str] | None) -> dict:
    """``--floor``: run the floor comparisons, print the table and write the JSON."""
    repeats = args.repeats or 7
    result = {
        **_provenance(argv, device, repeats),
        "statistic": "median ms; ratio = median of per-repeat ratios (the two sides timed alternately)",
        "clock": "thread CPU time" if args.cpu_time else "wall time",
        "floor": run_floor(
            device,
            repeats,
            {int(k) for k in args.classes.split(",")} if args.classes else None,
            (tuple(int(x) for x in args.uniform_case.split(",")),),  # type: ignore[arg-type]
            compiled=args.compile,
            plain=args.plain,
        ),
    }
    print(format_floor(result["floor"]))
    _write(result, Path(args.out))
    return result


def format_table(result: dict) -> str:
    """Markdown table of the results plus the acceptance line."""
    head = (
        "| K | B (rows) | D | CE | BCE3S total | joint | contrastive | uniform | memory update | BCE3S / CE "
        "| kernels CE / BCE3S |"
    )
    lines = [head, "|" + "---|" * 11]
    for r in result["rows"]:
        lines.append(
            f"| {r['K']} | {r['B']} ({r['rows']}) | {r['D']} | {r['ce_ms']:.3f} | {r['bce3s_ms']:.3f} | "
            f"{r['joint_ms']:.3f} | {r['contrastive_ms']:.3f} | {r['uniform_ms']:.3f} | {r['update_ms']:.3f} | "
            f"{r['bce3s_ms'] / r['ce_ms']:.1f}x | {r['ce_kernels']} / {r['bce3s_kernels']} |"
        )
    a = result["acceptance"]
    lines.append("")
    lines.append(
        f"ResNet-32 (+projector) fwd+bwd on 3 x 64 CIFAR images: {a['backbone_ms']:.2f} ms; BCE3S loss at K = 100, "
        f"B = 64: {a['bce3s_ms']:.3f} ms = {100 * a['fraction']:.2f} % of it (target < 5 %: "
        f"{'pass' if a['pass'] else 'FAIL'}). Device: {result['device']}, torch {result['torch']}, "
        f"{result['threads']} threads, median of {result['repeats']} (times in ms)."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
