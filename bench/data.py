"""Data-pipeline benchmark: torch DataLoader + per-image torchvision v2 transforms versus the GPU-resident path.

Both pipelines produce the same thing: normalized float batches of the ``cifar`` preset (RandomCrop 32 pad 4,
flip, AutoAugment CIFAR-10, Cutout 16, Normalize) from an in-memory uint8 (N, 3, 32, 32) split, on the chosen
device. "mix" adds the second (re-balanced) batch source and ``glmc_mix`` (clean + mixup + cutmix views), as a
BCE3S training step consumes it. Throughput is **clean images per second** (B per step; the mixed step also
delivers the 2B mixed views). The DataLoader path is tried with ``num_workers`` in {0, 1, 2} and the GPU-resident
path with 1 and the default number of torch threads, with its default chunks (the parameters of 8192 images drawn
at once, the images augmented in as few calls as the device allows) and with ``chunk_images=0`` (one call per
batch, the behaviour before chunking); the table shows each setting and the speed-up of the best GPU-resident
setting over the best DataLoader setting. Each measurement warms up on a few batches of epoch 0 and then times
one whole epoch of ``--steps`` batches, from creating its iterator (DataLoader worker start-up, the GPU-resident
path's first chunk) to its last batch. Rounds are interleaved and the best of the rounds is kept, so drift of a
shared machine hits both pipelines alike.

Usage::

    python bench/data.py                        # CPU (and CUDA when available), random CIFAR-size data
    python bench/data.py --quick                # fewer steps and rounds (smoke test)
    python bench/data.py --quick --batch 64     # the BCE3S recipe's batch
    python bench/data.py --data /path/to/cifar10-jpeg   # the extracted CIFAR-10 JPEG tree (train/)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from bce3s.data.gpu.pipeline import DEFAULT_CHUNK_IMAGES
from bce3s.data.imageset import ImageSet
from bce3s.data.mixing import glmc_mix
from bce3s.data.sources import AugmentSpec, SamplingSpec, make_batch_source
from bce3s.seeding import make_generator


def load_split(data: str | None, n: int) -> tuple[ImageSet, str]:
    """Random uint8 CIFAR-size images, or the first ``n`` training images of an extracted ImageFolder tree."""
    if data is None:
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
        labels = torch.randint(0, 10, (n,), generator=g)
        return ImageSet(images=images, paths=None, labels=labels), f"random uint8 (N={n}, 3x32x32)"
    root = Path(data) / "train" if (Path(data) / "train").is_dir() else Path(data)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    files = [(str(f), c) for c, name in enumerate(classes) for f in sorted((root / name).glob("*.jpg"))]
    step = max(1, len(files) // n)
    files = files[::step][:n]
    split = ImageSet(images=None, paths=[f for f, _ in files], labels=torch.tensor([c for _, c in files]))
    split = split.to_memory()
    if split.images is None:
        raise SystemExit(f"could not decode {root} into one uint8 tensor")
    return split, f"{root} (N={len(split)}, decoded JPEG)"


def measure(
    split: ImageSet,
    *,
    device: torch.device,
    pipeline: str,
    workers: int,
    threads: int,
    mix: bool,
    batch: int,
    steps: int,
    warmup: int,
    chunk_images: int | None = None,
) -> float:
    """Clean images per second over one epoch of ``steps`` batches, after ``warmup`` batches of another epoch."""
    torch.set_num_threads(threads)
    augment = AugmentSpec("cifar")
    options = {"device": device, "pipeline": pipeline, "num_workers": workers, "chunk_images": chunk_images}
    sampling = SamplingSpec(train=True, batch_size=batch, num_samples=steps * batch, seed=0)
    main = make_batch_source(split, augment, sampling, **options)
    mixing = replace(sampling, seed=1, sampler="power", rho=0.0)
    second = make_batch_source(split, augment, mixing, **options) if mix else None
    sync: Callable[[], None] = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)

    def epoch(index: int, limit: int) -> int:
        for source in (main, second):
            if source is not None:
                source.set_epoch(index)
        it = zip(main, second) if second is not None else ((b, None) for b in main)
        count = 0
        for step, ((x, y), other) in enumerate(it):
            if step == limit:
                break
            if other is not None:
                gen = make_generator(0, "mix", index, step)
                x = glmc_mix(x, y, other[0], other[1], num_classes=10, generator=gen).images
            count += len(y)
        return count

    epoch(0, warmup)  # builds the lookup tables and warms the allocator
    sync()
    start = time.perf_counter()
    count = epoch(1, steps)  # the whole epoch: worker start-up, every chunk of the GPU-resident path
    sync()
    return count / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None, help="extracted CIFAR-10 JPEG tree (default: random uint8 data)")
    ap.add_argument("--images", type=int, default=10000, help="images in the in-memory split")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=30, help="timed batches per measurement")
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds; the best is kept")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument(
        "--chunk-images",
        type=int,
        nargs="+",
        default=[DEFAULT_CHUNK_IMAGES, 0],
        help="GPU-resident chunk sizes to try (0 = one call per batch)",
    )
    ap.add_argument("--devices", nargs="+", default=None, help="default: cpu, plus cuda when available")
    ap.add_argument("--quick", action="store_true", help="few steps, one round (smoke test)")
    ap.add_argument("--out", default="bench/results/data.json")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.warmup, args.rounds, args.images = 6, 2, 1, 2000
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    split, data_desc = load_split(args.data, args.images)
    default_threads = torch.get_num_threads()
    threads_options = sorted({1, default_threads})

    configs = []
    for dev in devices:
        for mix in (False, True):
            # the DataLoader path runs its per-image transforms with one torch thread per process (more threads
            # only add contention on tiny tensors; DataLoader workers use one thread anyway)
            configs += [(dev, mix, "loader", w, 1, None) for w in args.workers]
            configs += [(dev, mix, "gpu", 0, t, c) for t in threads_options for c in args.chunk_images]
    best: dict[tuple, float] = {}
    for r in range(args.rounds):
        for cfg in configs:
            dev, mix, pipeline, workers, threads, chunk = cfg
            ips = measure(
                split,
                device=torch.device(dev),
                pipeline=pipeline,
                workers=workers,
                threads=threads,
                mix=mix,
                batch=args.batch,
                steps=args.steps,
                warmup=args.warmup,
                chunk_images=chunk,
            )
            best[cfg] = max(best.get(cfg, 0.0), ips)
            print(
                f"round {r}: {dev:4s} mix={mix!s:5s} {pipeline:6s} workers={workers} threads={threads} "
                f"chunk_images={chunk}: "
                f"{ips:9.0f} img/s",
                flush=True,
            )
    torch.set_num_threads(default_threads)

    rows = []
    lines = [
        "| device | mixing | pipeline | setting | clean images/s | speed-up vs best DataLoader |",
        "|---|---|---|---|---:|---:|",
    ]
    for dev in devices:
        for mix in (False, True):
            loader_best = max(v for (d, m, p, *_), v in best.items() if d == dev and m == mix and p == "loader")
            gpu_best = max(v for (d, m, p, *_), v in best.items() if d == dev and m == mix and p == "gpu")
            for (d, m, p, w, t, c), v in best.items():
                if d != dev or m != mix:
                    continue
                chunking = "per batch" if c == 0 else f"chunks of {c}"
                setting = f"num_workers={w}" if p == "loader" else f"torch threads={t}, {chunking}"
                name = "DataLoader + v2" if p == "loader" else "GPU-resident"
                rows.append(
                    {
                        "device": d,
                        "mixing": m,
                        "pipeline": p,
                        "num_workers": w,
                        "threads": t,
                        "chunk_images": c,
                        "images_per_s": round(v, 1),
                        "speedup_vs_best_loader": round(v / loader_best, 2),
                    }
                )
                mixing = "yes" if m else "no"
                lines.append(f"| {d} | {mixing} | {name} | {setting} | {v:,.0f} | {v / loader_best:.2f}x |")
            rows.append({"device": dev, "mixing": mix, "best_gpu_over_best_loader": round(gpu_best / loader_best, 2)})
    table = "\n".join(lines)
    print()
    print(table)
    meta = {
        "command": " ".join(["python bench/data.py", *sys.argv[1:]]),
        "data": data_desc,
        "preset": "cifar (RandomCrop 32 pad 4, flip, AutoAugment CIFAR10, Cutout 16, Normalize)",
        "batch": args.batch,
        "steps": args.steps,
        "rounds": args.rounds,
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "default_torch_threads": default_threads,
        "machine": platform.machine(),
        "device_names": {
            d: (torch.cuda.get_device_name() if d == "cuda" else platform.processor() or "cpu") for d in devices
        },
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows, "table": table}, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
