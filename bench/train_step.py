"""Training-step benchmark: a CE step versus a full BCE3S step on the same backbone and the same images.

Both run the engine's own ``train_step`` (gradient-norm guard and all), so the benchmark measures the code that
trains:

(a) CE: 3B images through the backbone (linear head), cross-entropy, backward, SGD step.
(b) BCE3S: a clean batch of B plus a second batch of B mixed into [clean, mixup, cutmix] (3B images through the
    same backbone, normalized head + projector), the three BCE3S terms, backward, SGD step, memory update.

Both see 3B images per step, so the ratio (b)/(a) is the cost of the method's own work (mixing, projector,
losses, memory). Steps of (a) and (b) are interleaved so drift of a shared machine hits both alike; the table
gives medians, and for eager and static steps the kernels one step launches (aten operators, views excluded:
``bench/kernel_count.py``), a device-independent measure of what a launch-bound GPU pays for. Usage::

    python bench/train_step.py                       # resnet32 + resnet34_cifar at batch 64 on CPU
    python bench/train_step.py --models resnet32 --steps 20 --out bench/results/train_step.json
    python bench/train_step.py --device cuda --variants all   # every step mode, bf16 / channels_last, resnet50
    python bench/train_step.py --models resnet32 --variants all   # the same on the CPU (bf16: AMX CPUs)

Step modes (``runtime.step``): ``eager`` (the reference step, one host sync per step), ``static`` (the same step
with no host sync: device-side finiteness flag, fused optimizer, tensor lr), ``compiled`` (static, forward and
loss through torch.compile), ``graphed`` (static captured as one CUDA graph; CUDA only). ``--variants base`` runs
eager and static (and graphed on CUDA); ``all`` adds compiled and bf16 / channels_last forms (graphed ones on
CUDA, eager ones on the CPU).

Each (model, variant) runs on its own: one that fails is reported (``FAILED`` row, ``error`` in the JSON, exit
status 1) and the others still run. The order is eager / static forms first, then graphed, then compiled (the
slowest to start), so a failing capture or a compile cut short by a timeout costs only its own rows; every row is
printed and written as soon as it is measured. A graphed row whose capture failed (it then ran eagerly) is marked
``capture failed``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from bce3s.config import MixingConfig, OptimConfig
from bce3s.engine.capture import StaticStep
from bce3s.engine.distributed import DistInfo
from bce3s.engine.optim import build_optimizer
from bce3s.engine.step import StepRuntime, TrainBatch, train_step
from bce3s.losses import build_loss
from bce3s.models import build_model
from kernel_count import count_kernels  # bench/kernel_count.py (bench/ is on sys.path when run as a script)
from timing import sync  # bench/timing.py


def make_steps(
    model_name: str,
    *,
    batch: int,
    size: int,
    num_classes: int,
    device: torch.device,
    channels_last: bool,
    amp: str,
    step: str = "eager",
    runners: list | None = None,
):
    """Two closures (CE, BCE3S), each running one training step of mode ``step`` (the code that trains).

    ``runners``, when given, receives the two step objects (the :class:`StaticStep` objects of a static mode).
    """
    runners = [] if runners is None else runners
    counts = [max(int(500 * 0.01 ** (i / (num_classes - 1))), 1) for i in range(num_classes)]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=gen).to(device)
    x2 = torch.randn(batch, 3, size, size, generator=gen).to(device)
    y = torch.randint(0, num_classes, (batch,), generator=gen).to(device)
    y2 = torch.randint(0, num_classes, (batch,), generator=gen).to(device)
    x3 = torch.cat([x, x2, x]).contiguous()
    y3 = torch.cat([y, y2, y])
    dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    dist = DistInfo(rank=0, local_rank=0, world_size=1, device=device)
    optim = OptimConfig(name="sgd", lr=0.01, momentum=0.9, weight_decay=5e-3)

    def runtime(head: str, loss_name: str, mixing: bool, **loss_params) -> StepRuntime:
        torch.manual_seed(0)
        model = build_model(model_name, num_classes=num_classes, head=head, projector_dim=128 if mixing else None).to(
            device
        )
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        loss = build_loss(loss_name, num_classes=num_classes, class_counts=counts, **loss_params).to(device)
        loss.set_epoch(1)  # BCE3S: contrastive term on (epoch 0 only fills the memory)
        return StepRuntime(
            model=model,
            raw_model=model,
            loss_fn=loss,
            optimizer=build_optimizer(model.named_parameters(), optim, static=step != "eager"),
            scaler=torch.amp.GradScaler(device.type, enabled=dtype == torch.float16),
            dist=dist,
            num_classes=num_classes,
            mixing=MixingConfig(enabled=mixing),
            amp_dtype=dtype,
            channels_last=channels_last,
            grad_clip=None,
            nan_policy="stop",
            seed=0,
            stage_index=0,
        )

    ce_rt = runtime("linear", "ce", mixing=False)
    b_rt = runtime("normalized", "bce3s", mixing=True, neg_class_ratio=0.4)
    if step == "eager":
        ce_run, b_run = (lambda batch: train_step(ce_rt, batch)), (lambda batch: train_step(b_rt, batch))
    else:
        ce_run, b_run = StaticStep(ce_rt, step), StaticStep(b_rt, step)
    runners.extend([ce_run, b_run])
    step_i = [0]

    def ce_step() -> None:
        ce_run(TrainBatch(x3, y3))

    def bce3s_step() -> None:
        b_run(TrainBatch(x, y, x2, y2, step=step_i[0]))
        step_i[0] += 1

    # fill the memory once so the contrastive term has seen classes
    bce3s_step()
    return ce_step, bce3s_step


def time_pair(ce_step, b_step, device: torch.device, steps: int, warmup: int) -> tuple[list[float], list[float]]:
    for _ in range(warmup):
        ce_step()
        b_step()
    sync(device)
    ta, tb = [], []
    for i in range(steps):
        for fn, acc in ((ce_step, ta), (b_step, tb)) if i % 2 == 0 else ((b_step, tb), (ce_step, ta)):
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            acc.append(time.perf_counter() - t)
    return ta, tb


def _device_usable(device: torch.device) -> bool:
    """False when the device fails a trivial operation (a sticky CUDA error poisons the whole process)."""
    try:
        torch.ones(1, device=device).add_(1).sum().item()
        sync(device)
    except Exception:
        return False
    return True


def _write(path: str, rows: list[dict], meta: dict | None = None) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta or {}, "rows": rows}, indent=2))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=None, help="default: resnet32 resnet34_cifar (+ resnet50 on CUDA)")
    ap.add_argument("--batch", type=int, default=64, help="clean batch B (3B images go through the backbone)")
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--steps", type=int, default=10, help="timed steps of each kind")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument(
        "--variants",
        default="base",
        choices=["base", "all"],
        help="base: eager and static steps (+ graphed on CUDA); all: also compiled, and bf16 / channels_last (CUDA)",
    )
    ap.add_argument("--quick", action="store_true", help="resnet32 only, batch 16, 2 steps (smoke test)")
    ap.add_argument("--out", default="bench/results/train_step.json")
    args = ap.parse_args()
    device = torch.device(args.device)
    models = args.models or (["resnet32", "resnet34_cifar"] + (["resnet50"] if device.type == "cuda" else []))
    if args.quick:
        models, args.steps, args.warmup, args.batch = ["resnet32"], 2, 1, 16
    cuda = device.type == "cuda"
    variants = [("eager", False, "none", "eager"), ("static", False, "none", "static")]
    if cuda:
        variants.append(("graphed", False, "none", "graphed"))
    if args.variants == "all":
        variants.append(("compiled", False, "none", "compiled"))
        if cuda:
            variants += [
                ("graphed+bf16", False, "bf16", "graphed"),
                ("graphed+channels_last+bf16", True, "bf16", "graphed"),
                ("eager+channels_last+bf16", True, "bf16", "eager"),
            ]
        else:  # CPU autocast is bf16 only (fast with AMX); channels_last also pays on the CPU
            variants += [
                ("eager+bf16", False, "bf16", "eager"),
                ("eager+channels_last", True, "none", "eager"),
                ("eager+channels_last+bf16", True, "bf16", "eager"),
            ]
    jobs = [(name, v) for v in variants for name in models]
    jobs.sort(key=lambda job: {"graphed": 1, "compiled": 2}.get(job[1][3], 0))  # stable: risky / slow ones last
    hdr = (
        f"{'model':<16}{'variant':<28}{'imgs/step':>10}{'CE ms':>10}{'BCE3S ms':>10}{'ratio':>8}"
        f"{'CE img/s':>10}{'BCE3S img/s':>12}{'kernels CE/BCE3S':>18}"
    )
    print(hdr, flush=True)
    rows, failed = [], 0
    for name, (vname, cl, amp, mode) in jobs:
        if mode == "compiled" and name != models[0]:
            continue  # compile once (first model): compilation costs ~1 min per model
        size = 224 if name in ("resnet50", "resnext50_32x4d", "resnet152") else 32
        batch = min(args.batch, 64) if size == 224 else args.batch
        runners: list = []
        try:
            if mode == "compiled":
                torch._dynamo.reset()
            ce_step, b_step = make_steps(
                name,
                batch=batch,
                size=size,
                num_classes=args.classes,
                device=device,
                channels_last=cl,
                amp=amp,
                step=mode,
                runners=runners,
            )
            ta, tb = time_pair(ce_step, b_step, device, args.steps, args.warmup)
        except Exception as err:  # one failing variant must not cost the others their rows
            failed += 1
            msg = f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0]}"
            rows.append({"model": name, "variant": vname, "device": str(device), "error": msg})
            _write(args.out, rows)
            print(f"{name:<16}{vname:<28}FAILED ({msg})", flush=True)
            if not _device_usable(device):
                print("the device is unusable after this failure: the remaining variants are skipped", flush=True)
                break
            continue
        a, b = statistics.median(ta), statistics.median(tb)
        # kernels per step (aten operators, views excluded): eager and static run them one by one; a graphed or
        # compiled step runs the static step's kernels from a graph or fused, so it is not counted
        kernels = (count_kernels(ce_step), count_kernels(b_step)) if mode in ("eager", "static") else None
        row = {
            "model": name,
            "variant": vname,
            "device": str(device),
            "batch": batch,
            "image_size": size,
            "images_per_step": 3 * batch,
            "ce_ms": 1e3 * a,
            "bce3s_ms": 1e3 * b,
            "ratio": b / a,
            "ce_img_s": 3 * batch / a,
            "bce3s_img_s": 3 * batch / b,
            "ce_kernels": kernels[0] if kernels else None,
            "bce3s_kernels": kernels[1] if kernels else None,
        }
        errors = [e for e in (getattr(r, "capture_error", None) for r in runners) if e]
        if errors:
            row["capture_error"] = errors[0]
        rows.append(row)
        _write(args.out, rows)
        note = f"  capture failed, ran eagerly: {errors[0]}" if errors else ""
        counted = f"{kernels[0]} / {kernels[1]}" if kernels else "-"
        print(
            f"{row['model']:<16}{row['variant']:<28}{row['images_per_step']:>10}{row['ce_ms']:>10.1f}"
            f"{row['bce3s_ms']:>10.1f}{row['ratio']:>8.3f}{row['ce_img_s']:>10.0f}{row['bce3s_img_s']:>12.0f}"
            f"{counted:>18}{note}",
            flush=True,
        )
    meta = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "steps": args.steps,
        "warmup": args.warmup,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"written: {out}" + (f" ({failed} variant(s) FAILED)" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
