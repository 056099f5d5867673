"""The static step under DDP: two gloo ranks skip a step together when only one rank's loss flags it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from bce3s.config import MixingConfig, OptimConfig
from bce3s.engine.capture import StaticStep
from bce3s.engine.distributed import DistInfo
from bce3s.engine.optim import build_optimizer
from bce3s.engine.step import StepRuntime, TrainBatch
from bce3s.losses import build_loss
from bce3s.models import build_model

K, B, SIZE, WORLD, STEPS, POISONED = 10, 8, 16, 2, 3, 1


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        torch.manual_seed(0)
        model = build_model("small_cnn", num_classes=K, head="normalized", projector_dim=16, in_channels=3)
        loss_fn = build_loss("bce3s", num_classes=K, class_counts=[1] * K, embedding_dim=16, neg_class_ratio=1.0)
        loss_fn.set_epoch(1)
        compute = loss_fn._compute
        calls = [0]

        def poisoned(*args, **kwargs):
            """Rank 1's joint term reads inf at one step; its loss and gradients stay finite (terms are detached)."""
            out = compute(*args, **kwargs)
            if rank == 1 and calls[0] == POISONED:
                out.terms["joint"] = out.terms["joint"] + float("inf")
            calls[0] += 1
            return out

        loss_fn._compute = poisoned
        optim = OptimConfig(name="sgd", lr=0.1, momentum=0.9, weight_decay=5e-3)
        rt = StepRuntime(
            model=DistributedDataParallel(model),
            raw_model=model,
            loss_fn=loss_fn,
            optimizer=build_optimizer(model.named_parameters(), optim, static=True),
            scaler=torch.amp.GradScaler("cpu", enabled=False),
            dist=DistInfo(rank=rank, local_rank=rank, world_size=WORLD, device=torch.device("cpu")),
            num_classes=K,
            mixing=MixingConfig(enabled=True),
            amp_dtype=None,
            channels_last=False,
            grad_clip=None,
            nan_policy="skip",
            seed=7,
            stage_index=0,
        )
        step = StaticStep(rt, "static")
        gen = torch.Generator().manual_seed(100 + rank)  # each rank its own rows of the global batch
        skipped = []
        for s in range(STEPS):
            x, x2 = (torch.randn(B, 3, SIZE, SIZE, generator=gen) for _ in range(2))
            y, y2 = (torch.randint(0, K, (B,), generator=gen) for _ in range(2))
            skipped.append(bool(step(TrainBatch(x, y, x2, y2, epoch=1, step=s)).skipped))
        params = {k: v for k, v in model.state_dict().items() if "running" not in k and "tracked" not in k}
        out = {"skipped": skipped, "params": params, "memory": loss_fn.class_memory.memory.clone()}
        torch.save(out, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes importing torch: several seconds on a loaded 2-core machine
def test_ranks_skip_a_step_together_when_one_rank_flags_it() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(os.path.join(tmp, "init"), tmp), nprocs=WORLD, join=True)
        ranks = [torch.load(Path(tmp) / f"rank{r}.pt") for r in range(WORLD)]
    expected = [s == POISONED for s in range(STEPS)]
    assert ranks[0]["skipped"] == expected and ranks[1]["skipped"] == expected
    for name, value in ranks[0]["params"].items():
        torch.testing.assert_close(ranks[1]["params"][name], value, rtol=0, atol=0, msg=name)
    torch.testing.assert_close(ranks[1]["memory"], ranks[0]["memory"], rtol=0, atol=0)
