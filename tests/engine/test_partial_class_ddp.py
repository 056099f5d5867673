"""Under DDP the partial class set comes from the global batch: two gloo processes on CPU draw exactly the sets one
process draws from the whole batch (and, through the loss, compute their joint term over that set)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bce3s.engine.distributed import DistInfo, share_class_sets, union_across_ranks
from bce3s.losses import bce_joint, build_loss

K, B, STEPS, WORLD, RATIO, SEED = 100, 64, 12, 2, 0.4, 7


def _batches() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Long-tailed labels (IF 100, as CIFAR-100-LT) and logits of STEPS global batches of B rows."""
    g = torch.Generator().manual_seed(3)
    counts = torch.tensor([500 * 0.01 ** (i / (K - 1)) for i in range(K)])
    labels = [torch.multinomial(counts, B, replacement=True, generator=g) for _ in range(STEPS)]
    logits = [torch.randn(B, K, generator=g, dtype=torch.float64) for _ in range(STEPS)]
    return labels, logits


def _present(labels: torch.Tensor) -> torch.Tensor:
    mask = torch.zeros(K, dtype=torch.bool)
    mask[labels] = True
    return mask


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        info = DistInfo(rank=rank, local_rank=rank, world_size=WORLD, device=torch.device("cpu"))
        shared, local = (
            build_loss("bce", num_classes=K, class_counts=[1] * K, neg_class_ratio=RATIO, seed=SEED) for _ in range(2)
        )
        share_class_sets(shared, info)  # what the engine does under DDP; `local` keeps per-rank sets
        labels, logits = _batches()
        out: dict[str, list[torch.Tensor]] = {"shared": [], "local": [], "joint": []}
        for y, z in zip(labels, logits):
            mine = slice(rank, None, WORLD)  # the engine's split of a global batch: rank r gets rows r, r + W, ...
            state = shared.sampler.generator.get_state()
            out["shared"].append(shared.sampler(_present(y[mine])))
            shared.sampler.generator.set_state(state)  # the loss below draws this step's set again
            out["joint"].append(shared(z[mine], y[mine]).loss.detach())
            out["local"].append(local.sampler(_present(y[mine])))
        torch.save({k: torch.stack(v) for k, v in out.items()}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes importing torch: ~7 s on a loaded 2-core machine
def test_two_gloo_ranks_draw_the_single_process_sets() -> None:
    labels, logits = _batches()
    single = build_loss("bce", num_classes=K, class_counts=[1] * K, neg_class_ratio=RATIO, seed=SEED)
    expected = torch.stack([single.sampler(_present(y)) for y in labels])
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(os.path.join(tmp, "init"), tmp), nprocs=WORLD, join=True)
        ranks = [torch.load(Path(tmp) / f"rank{r}.pt") for r in range(WORLD)]
    for r in range(WORLD):
        assert torch.equal(ranks[r]["shared"], expected), r
        # through the loss: the joint term of a rank's rows is computed over the global set
        for t, (y, z) in enumerate(zip(labels, logits)):
            mine = slice(r, None, WORLD)
            ref = bce_joint(z[mine], y[mine], classes=expected[t])
            torch.testing.assert_close(ranks[r]["joint"][t], ref, rtol=1e-12, atol=0)
    # every global set holds every class of the global batch, and at least int(r K) = 40 classes
    assert all(bool(s[y].all()) and int(s.sum()) >= 40 for s, y in zip(expected, labels))
    # without sharing, each rank draws around its own 32 rows: other sets, fewer of the batch's classes
    assert not torch.equal(ranks[0]["local"], expected)
    missing = sum(int((~ranks[0]["local"][t])[y].sum()) for t, y in enumerate(labels))
    assert missing > 0


def test_union_is_identity_in_one_process() -> None:
    info = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    mask = torch.tensor([True, False, True])
    assert union_across_ranks(mask, info) is mask
    loss = build_loss("bce", num_classes=K, class_counts=[1] * K, neg_class_ratio=RATIO, seed=SEED)
    share_class_sets(loss, info)
    assert loss.sampler.reduce_present is None
    two = DistInfo(rank=1, local_rank=1, world_size=2, device=torch.device("cpu"))
    share_class_sets(loss, two)
    assert loss.sampler.reduce_present.func is union_across_ranks and loss.sampler.reduce_present.keywords == {
        "info": two
    }
    share_class_sets(build_loss("ce", num_classes=K, class_counts=[1] * K), two)  # no sampler: left alone


@pytest.mark.slow  # a whole (tiny) two-stage run: ~6 s on a loaded 2-core machine
def test_engine_shares_class_sets_of_each_stage_loss(tmp_path, monkeypatch) -> None:
    """train() hands every stage's loss, with the run's DistInfo, to share_class_sets."""
    from bce3s.config import Config, config_from_dict
    from bce3s.engine import stages, train

    seen = []
    monkeypatch.setattr(stages, "share_class_sets", lambda loss, info: seen.append((loss, info.world_size)))
    stage = {"epochs": 1, "batch_size": 64, "optim": {"lr": 0.05}}
    cfg = config_from_dict(Config, {
        "data": {"dataset": "digits_lt", "imbalance_factor": 10},
        "model": {"name": "small_cnn", "projector_dim": 8},
        "stages": [
            {**stage, "name": "stage1", "loss": {"name": "bce", "params": {"neg_class_ratio": 0.5}}},
            {**stage, "name": "stage2", "freeze_backbone": True, "loss": {"name": "cb_bce"}},
        ],
        "eval": {"tta_flip": False},
        "runtime": {"device": "cpu", "threads": 1},
    })
    res = train(cfg, tmp_path / "run", quiet=True)
    assert [(id(loss), world) for loss, world in seen] == [(id(res.losses[n]), 1) for n in ("stage1", "stage2")]
