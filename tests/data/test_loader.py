"""Batch sources: shapes, epochs, exact mid-epoch resume, eval sharding, both pipelines, file-based splits."""

from __future__ import annotations

import pytest
import torch

from bce3s.data.gpu.pipeline import GpuBatchSource
from bce3s.data.imageset import ImageSet
from bce3s.data.loader import LoaderBatchSource
from bce3s.data.samplers import epoch_indices
from bce3s.data.sources import AugmentSpec, BatchSource, SamplingSpec, make_batch_source
from bce3s.errors import DataError

pytestmark = pytest.mark.usefixtures("one_thread")


def _split(n: int = 45, c: int = 3, size: int = 32, k: int = 5) -> ImageSet:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, c, size, size), dtype=torch.uint8, generator=g)
    labels = torch.arange(n) % k
    return ImageSet(images=images, paths=None, labels=labels)


def _source(split: ImageSet, *, preset: str = "cifar", image_size: int | None = None, rank: int = 0,
            world_size: int = 1, pipeline: str = "auto", num_workers: int = 0, chunk_images: int | None = None,
            device: str = "cpu", **sampling) -> BatchSource:
    """``make_batch_source`` with the default augmentation of ``preset``; ``sampling``: SamplingSpec fields."""
    return make_batch_source(split, AugmentSpec(preset, image_size=image_size), SamplingSpec(**sampling),
                             device=device, rank=rank, world_size=world_size, pipeline=pipeline,
                             num_workers=num_workers, chunk_images=chunk_images)


def _collect(source) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    xs, ys = [], []
    for x, y in source:
        xs.append(x)
        ys.append(y)
    return xs, ys


@pytest.mark.parametrize("pipeline", ["gpu", "loader"], ids=["resident", "dataloader"])
def test_train_source_shapes_order_and_last_batch(pipeline: str) -> None:
    split = _split()
    src = _source(split, train=True, preset="cifar", batch_size=16, pipeline=pipeline, seed=3)
    assert isinstance(src, BatchSource)
    assert isinstance(src, GpuBatchSource if pipeline == "gpu" else LoaderBatchSource)
    src.set_epoch(2)
    xs, ys = _collect(src)
    assert len(src) == len(xs) == 3
    assert [len(y) for y in ys] == [16, 16, 13]  # no drop_last: the last batch is smaller
    assert all(x.dtype == torch.float32 and x.shape[1:] == (3, 32, 32) for x in xs)
    idx = epoch_indices(split.labels, kind="instance", seed=3, epoch=2)
    assert torch.equal(src.indices(), idx)
    assert torch.equal(torch.cat(ys), split.labels[idx])
    dropped = _source(split, train=True, preset="cifar", batch_size=16, pipeline=pipeline, drop_last=True)
    assert len(dropped) == 2 and [len(y) for _x, y in dropped] == [16, 16]


@pytest.mark.parametrize("pipeline", ["gpu", "loader"], ids=["resident", "dataloader"])
def test_epochs_are_reproducible_and_resume_is_exact(pipeline: str) -> None:
    kwargs = {"train": True, "preset": "cifar", "batch_size": 8, "pipeline": pipeline}
    src = _source(_split(30), **kwargs)
    src.set_epoch(1)
    full_x, full_y = _collect(src)
    again = _source(_split(30), **kwargs)
    again.set_epoch(1)
    tail = list(again.iter_from(2))
    assert len(tail) == len(full_x) - 2
    for (x, y), fx, fy in zip(tail, full_x[2:], full_y[2:]):
        assert torch.equal(x, fx) and torch.equal(y, fy)
    again.set_epoch(2)
    other_x, _ = _collect(again)
    assert not torch.equal(other_x[0], full_x[0])


@pytest.mark.parametrize(("chunk_images", "block", "drop_last"), [(12, 2, False), (12, 3, True), (0, 1, False),
                                                                  (None, None, False)])
def test_chunked_resume_is_bit_identical_at_every_step(chunk_images: int | None, block: int | None,
                                                       drop_last: bool) -> None:
    """30 images, batch 4: 8 batches (7 with drop_last) in chunks of 3 batches, blocks of 2 or 3 batches."""
    kwargs = {"train": True, "preset": "cifar", "batch_size": 4, "pipeline": "gpu",
              "seed": 5, "chunk_images": chunk_images, "drop_last": drop_last}
    src = _source(_split(30), **kwargs)
    if block is not None:
        src.block_batches = block
    src.set_epoch(2)
    full = list(src)
    assert len(full) == len(src) == (7 if drop_last else 8)
    for step in range(len(full) + 1):
        resumed = _source(_split(30), **kwargs)  # a fresh process after preemption
        if block is not None:
            resumed.block_batches = block
        resumed.set_epoch(2)
        tail = list(resumed.iter_from(step))
        assert len(tail) == len(full) - step
        for (x, y), (fx, fy) in zip(tail, full[step:]):
            assert torch.equal(x, fx) and torch.equal(y, fy)


def test_loader_output_independent_of_workers_and_global_rng() -> None:
    kwargs = {"train": True, "preset": "cifar", "batch_size": 10, "pipeline": "loader"}
    state = torch.get_rng_state()
    a, _ = _collect(_source(_split(20), num_workers=0, **kwargs))
    assert torch.equal(torch.get_rng_state(), state)  # the per-sample seeding forks the global RNG
    b, _ = _collect(_source(_split(20), num_workers=1, **kwargs))
    assert all(torch.equal(u, v) for u, v in zip(a, b))


def test_eval_sources_are_sequential_sharded_and_pipeline_independent() -> None:
    split = _split(23)
    outs = {}
    for pipeline in ("gpu", "loader"):
        parts = []
        for rank in range(3):
            src = _source(split, train=False, preset="cifar", batch_size=4, pipeline=pipeline, rank=rank,
                          world_size=3, drop_last=True)
            xs, ys = _collect(src)
            idx = src.indices()
            assert torch.equal(torch.cat(ys), split.labels[idx])
            parts.append((idx, torch.cat(xs)))
        idx = torch.cat([p[0] for p in parts])
        assert idx.tolist() == list(range(23))  # disjoint, no padding, rank order = dataset order
        outs[pipeline] = torch.cat([p[1] for p in parts])
    assert torch.equal(outs["gpu"], outs["loader"])
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.2023, 0.1994, 0.2010]).view(1, 3, 1, 1)
    torch.testing.assert_close(outs["gpu"], (split.images.float() / 255 - mean) / std)


def test_mixing_source_matches_main_length() -> None:
    split = _split(45)
    main = _source(split, train=True, preset="cifar", batch_size=16)
    second = _source(split, train=True, preset="cifar", batch_size=16,
                     sampler="power", rho=0.5, seed=1, num_samples=len(main.indices()))
    assert len(second) == len(main) == 3
    sizes = [(len(y1), len(y2)) for (_a, y1), (_b, y2) in zip(main, second)]
    assert sizes == [(16, 16), (16, 16), (13, 13)]


def test_ddp_training_slices_are_disjoint() -> None:
    split = _split(40)
    idx = [_source(split, train=True, preset="cifar", batch_size=8, rank=r, world_size=2).indices() for r in range(2)]
    assert len(idx[0]) == len(idx[1]) == 20
    assert sorted(torch.cat(idx).tolist()) == list(range(40))


@pytest.mark.parametrize("pipeline", ["gpu", "loader"], ids=["resident", "dataloader"])
@pytest.mark.parametrize("n", [40, 44])
def test_ranks_get_rows_of_the_one_process_global_batch(pipeline: str, n: int) -> None:
    """Rank r of 2 (batch 4) yields rows r, r + 2, ... of the one-process batch of 8: images and augmentation.

    Several chunks (GPU-resident: 3 global batches per chunk), AutoAugment and Cutout on; with n = 44 the last
    global batch holds 4 images (2 per rank).
    """
    split = _split(n)
    kwargs = {"train": True, "sampler": "power", "rho": 0.5, "seed": 9, "pipeline": pipeline, "chunk_images": 24}
    one = _source(split, batch_size=8, **kwargs)
    one.set_epoch(4)
    global_batches = list(one)
    assert len(global_batches) == -(-n // 8)
    for rank in range(2):
        src = _source(split, batch_size=4, rank=rank, world_size=2, **kwargs)
        src.set_epoch(4)
        mine = list(src)
        assert len(mine) == len(global_batches)
        for (x, y), (gx, gy) in zip(mine, global_batches):
            assert torch.equal(y, gy[rank::2])
            assert torch.equal(x, gx[rank::2])
        resumed = list(src.iter_from(3))  # a mid-epoch resume under DDP (inside the second chunk)
        assert all(torch.equal(x, gx[rank::2]) for (x, _y), (gx, _gy) in zip(resumed, global_batches[3:]))


def test_file_based_split_uses_loader(tmp_path) -> None:
    from PIL import Image

    split = _split(6, size=20)
    paths = []
    for i, img in enumerate(split.images):
        p = tmp_path / f"{i}.png"
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(p)
        paths.append(str(p))
    files = ImageSet(images=None, paths=paths, labels=split.labels)
    src = _source(files, train=False, preset="imagenet", batch_size=4, image_size=16)
    assert isinstance(src, LoaderBatchSource)
    xs, _ = _collect(src)
    ref = _source(split, train=False, preset="imagenet", batch_size=4, pipeline="gpu", image_size=16)
    assert torch.equal(torch.cat(xs), torch.cat(_collect(ref)[0]))  # PNG is lossless
    train = _source(files, train=True, preset="imagenet", batch_size=4, image_size=16)
    assert [x.shape for x, _ in train] == [(4, 3, 16, 16), (2, 3, 16, 16)]
    with pytest.raises(DataError, match="in-memory"):
        _source(files, train=True, preset="imagenet", batch_size=4, pipeline="gpu")


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="pipeline"):
        _source(_split(4), train=True, preset="cifar", batch_size=2, pipeline="fast")
    with pytest.raises(ValueError, match="preset"):
        _source(_split(4), train=True, preset="svhn", batch_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        SamplingSpec(train=True, batch_size=0)
    with pytest.raises(ValueError, match="unknown sampler"):
        SamplingSpec(train=True, batch_size=2, sampler="balanced")
    with pytest.raises(ValueError, match="cutout"):
        AugmentSpec("cifar", cutout=-1)


@pytest.mark.gpu
def test_gpu_source_on_cuda_matches_cpu() -> None:
    split = _split(40)
    cpu = _source(split, train=True, preset="cifar", batch_size=16)
    cuda = _source(split, train=True, preset="cifar", batch_size=16, device="cuda")
    cpu.block_batches = 1  # one batch per call on the CPU, the whole chunk on the GPU: the same pixels
    for (xc, yc), (xg, yg) in zip(cpu, cuda):
        assert xg.is_cuda and yg.is_cuda
        torch.testing.assert_close(xg.cpu(), xc, rtol=0, atol=1e-6)
        assert torch.equal(yg.cpu(), yc)


def test_package_exports_resolve() -> None:
    import bce3s.data as data

    for name in data.__all__:
        assert getattr(data, name) is not None, name
    assert data.make_batch_source is make_batch_source
