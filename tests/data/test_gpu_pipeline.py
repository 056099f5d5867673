"""Batched augmentation: exact per-op equality with torchvision v2, parameter distributions, preset statistics."""

from __future__ import annotations

import math
import weakref

import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from bce3s.data.gpu import autoaugment as ga
from bce3s.data.gpu.augment import BatchAugment, slice_params
from bce3s.data.gpu.batched_ops import BatchedOps
from bce3s.data.gpu.pipeline import GpuBatchSource, block_images
from bce3s.data.samplers import SamplingSpec, eval_shard, num_batches
from bce3s.data.transforms import build_transform, cutout_box, preset_stats
from bce3s.seeding import make_generator

pytestmark = pytest.mark.usefixtures("one_thread")


def _images(n: int, c: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Noise, smooth gradients and constant images (edge cases of autocontrast / equalize)."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randint(0, 256, (n // 2, c, h, w), dtype=torch.uint8, generator=g)
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    base = torch.rand(n - n // 2 - 1, c, 1, 1, generator=g) * 120
    slope = torch.rand(n - n // 2 - 1, c, 1, 1, generator=g) * 6
    smooth = (base + slope * (yy + 0.5 * xx)).clamp(0, 255).to(torch.uint8)
    const = torch.full((1, c, h, w), 77, dtype=torch.uint8)
    return torch.cat([noise, smooth, const])


_NEAREST = F.InterpolationMode.NEAREST


def _torchvision_op(image: torch.Tensor, name: str, magnitude: float, fill: int | None = None) -> torch.Tensor:
    """Reference: one AutoAugment / RandAugment op on one uint8 (C, H, W) image with public v2 functional ops.

    The op semantics of ``v2.AutoAugment`` / ``v2.RandAugment`` (nearest interpolation, ``fill`` (None = 0) for
    the area geometric ops uncover, shears about the top-left corner, integer translations, factors
    ``1 + magnitude``, solarize threshold ``255 * magnitude``), written out here independently of ``bce3s``.
    """
    if name == "Identity":
        return image
    if name in ("ShearX", "ShearY"):
        angle = math.degrees(math.atan(magnitude))
        shear = [angle, 0.0] if name == "ShearX" else [0.0, angle]
        return F.affine(image, angle=0.0, translate=[0, 0], scale=1.0, shear=shear, interpolation=_NEAREST,
                        fill=fill, center=[0, 0])
    if name in ("TranslateX", "TranslateY"):
        shift = [int(magnitude), 0] if name == "TranslateX" else [0, int(magnitude)]
        return F.affine(image, angle=0.0, translate=shift, scale=1.0, shear=[0.0, 0.0], interpolation=_NEAREST,
                        fill=fill)
    factor_ops = {"Brightness": F.adjust_brightness, "Color": F.adjust_saturation, "Contrast": F.adjust_contrast,
                  "Sharpness": F.adjust_sharpness}
    if name in factor_ops:
        return factor_ops[name](image, 1.0 + magnitude)
    if name == "Rotate":
        return F.rotate(image, magnitude, interpolation=_NEAREST, fill=fill)
    if name == "Posterize":
        return F.posterize(image, int(magnitude))
    if name == "Solarize":
        return F.solarize(image, 255.0 * magnitude)
    return {"AutoContrast": F.autocontrast, "Equalize": F.equalize, "Invert": F.invert}[name](image)


def test_reference_ops_follow_their_definitions() -> None:
    """The reference itself, on hand-computable ops: pointwise formulas and translations with zero fill."""
    x = _images(4, 3, 9, 7, seed=11)[0]
    xi = x.long()
    assert torch.equal(_torchvision_op(x, "Invert", 0.0), (255 - xi).to(torch.uint8))
    assert torch.equal(_torchvision_op(x, "Posterize", 4.0), (xi & 0xF0).to(torch.uint8))
    assert torch.equal(_torchvision_op(x, "Solarize", 0.5), torch.where(xi >= 127.5, 255 - xi, xi).to(torch.uint8))
    assert torch.equal(_torchvision_op(x, "Brightness", 0.5), (xi * 1.5).clamp(max=255).to(torch.uint8))
    right = _torchvision_op(x, "TranslateX", 2.0)
    assert torch.equal(right[..., 2:], x[..., :-2]) and not right[..., :2].any()
    up = _torchvision_op(x, "TranslateY", -3.0)
    assert torch.equal(up[:, :-3], x[:, 3:]) and not up[:, -3:].any()


def test_policy_table_matches_torchvision() -> None:
    aa = v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)
    assert [tuple(map(tuple, p)) for p in aa._policies] == [tuple(map(tuple, p)) for p in ga.CIFAR10_POLICY]
    for name, (fn, _signed) in aa._AUGMENTATION_SPACE.items():
        mags = fn(10, 32, 24)
        for b in range(10):
            expected = 0.0 if mags is None else float(mags[b])
            assert ga.op_magnitude(name, b, 32, 24) == expected, name
    ra = v2.RandAugment()
    assert tuple(ra._AUGMENTATION_SPACE) == ga.RANDAUGMENT_OPS


@pytest.mark.parametrize("fill", [None, 128, 37])
@pytest.mark.parametrize(("c", "h", "w"), [(3, 32, 32), (1, 28, 28), (3, 9, 7)])
def test_every_op_variant_equals_torchvision_per_image(c: int, h: int, w: int, fill: int | None) -> None:
    """Every variant, bit for bit, with torchvision's fill (None = its default 0; 128 = the official grey)."""
    x = _images(12, c, h, w)
    opts = {} if fill is None else {"fill": fill}
    for table in (ga.autoaugment_table(h, w)[0], ga.randaugment_table(h, w)[0]):
        fast = BatchedOps(table, c, h, w, torch.device("cpu"), **opts)
        n = x.shape[0]
        for vid, (name, magnitude) in enumerate(table.variants):
            expected = torch.stack([_torchvision_op(x[i], name, magnitude, fill) for i in range(n)])
            variants = torch.full((n, 1), vid)
            assert torch.equal(fast.apply(x, variants), expected), (name, magnitude)
            assert torch.equal(ga.apply_op_slots(x, variants, table, **opts), expected), (name, magnitude)


def test_fill_is_what_the_uncovered_area_holds() -> None:
    """A 9-px translation of a constant image uncovers 9 columns: they hold the fill, the rest the image."""
    x = torch.full((2, 3, 32, 32), 200, dtype=torch.uint8)
    table = ga.OpTable((("TranslateX", 9.0),))
    for fill in (0, 128):
        out = BatchedOps(table, 3, 32, 32, torch.device("cpu"), fill=fill).apply(x, torch.zeros(2, 1, dtype=torch.long))
        assert bool((out[..., :9] == fill).all()) and bool((out[..., 9:] == 200).all())


def test_autoaugment_fill_128_equals_torchvision_autoaugment_transform() -> None:
    """The whole policy: ``v2.AutoAugment(CIFAR10, fill=128)`` per image under torch's global RNG equals the batched
    ops fed with the same draws (read back by re-running torchvision's draw sequence on the same seed)."""
    x = _images(40, 3, 32, 32, seed=5)
    table, ids, _probs = ga.autoaugment_table(32, 32)
    aa = v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10, fill=128)
    fast = BatchedOps(table, 3, 32, 32, torch.device("cpu"), fill=128)
    for i in range(x.shape[0]):
        torch.manual_seed(100 + i)
        expected = aa(x[i])
        torch.manual_seed(100 + i)
        variants = _torchvision_draws(ids)
        assert torch.equal(fast.apply(x[i : i + 1], variants)[0], expected), i


def _torchvision_draws(ids: torch.Tensor) -> torch.Tensor:
    """(1, 2) variant ids of one ``v2.AutoAugment(CIFAR10)`` forward under torch's global RNG (its draw order)."""
    policy = int(torch.randint(len(ga.CIFAR10_POLICY), ()))
    out = torch.full((1, 2), -1)
    for slot, (name, prob, _bin) in enumerate(ga.CIFAR10_POLICY[policy]):
        if not torch.rand(()) <= prob:
            continue
        signed = name in ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color",
                          "Contrast", "Sharpness")
        neg = 1 if (signed and torch.rand(()) <= 0.5) else 0
        out[0, slot] = ids[policy, slot, neg]
    return out


def test_mixed_variants_and_two_slots_equal_sequential_reference() -> None:
    x = _images(40, 3, 32, 32, seed=1)
    table, ids, probs = ga.autoaugment_table(32, 32)
    variants = ga.sample_autoaugment(40, ids, probs, torch.Generator().manual_seed(3))
    expected = []
    for i in range(40):
        img = x[i]
        for vid in variants[i].tolist():
            if vid >= 0:
                img = _torchvision_op(img, *table.variants[vid])
        expected.append(img)
    out = BatchedOps(table, 3, 32, 32, torch.device("cpu")).apply(x, variants)
    assert torch.equal(out, torch.stack(expected))


def test_autoaugment_draw_frequencies() -> None:
    """Sub-policies uniform, each op applied with its probability, signs 50/50: marginal variant frequencies."""
    n = 40000
    table, ids, probs = ga.autoaugment_table(32, 32)
    draws = ga.sample_autoaugment(n, ids, probs, torch.Generator().manual_seed(0))
    for slot in range(2):
        expected = torch.zeros(len(table.variants) + 1, dtype=torch.float64)  # last = not applied
        for p in range(25):
            pr = probs[p, slot].item() / 25
            expected[ids[p, slot, 0]] += pr / 2
            expected[ids[p, slot, 1]] += pr / 2
            expected[-1] += (1 - probs[p, slot].item()) / 25
        col = draws[:, slot]
        observed = torch.bincount(torch.where(col < 0, len(table.variants), col), minlength=len(expected)) / n
        sigma = (expected * (1 - expected) / n).sqrt()
        assert ((observed - expected).abs() <= 4.5 * sigma + 1e-12).all()


def _crop_probe() -> torch.Tensor:
    """(1, 3, 32, 32): channel 0 = row + 1, channel 1 = col + 1, channel 2 = 255 (padding is 0 everywhere)."""
    rows, cols = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    return torch.stack([rows + 1, cols + 1, torch.full_like(rows, 255)]).to(torch.uint8)[None]


def _to_uint8(x: torch.Tensor, preset: str = "cifar") -> torch.Tensor:
    """Undo Normalize and ToDtype: the uint8 image behind a normalized float batch."""
    mean, std = preset_stats(preset, x.shape[1])
    m, sd = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    return (x * sd + m).mul(255).round().to(torch.uint8)


def test_crop_offsets_uniform_and_flip_rate_through_chunks() -> None:
    """Crop offsets and flips as a chunked source draws them: 6 chunks of 10 batches, 3 blocks per chunk."""
    aug = BatchAugment("cifar", train=True, image_size=32, autoaugment=False, cutout=0)
    n = 6000
    x = _crop_probe().expand(n, -1, -1, -1).contiguous()
    src = GpuBatchSource(x, torch.zeros(n, dtype=torch.int64), aug, SamplingSpec(train=True, batch_size=100),
                         device="cpu", chunk_images=1000)
    src.block_batches = 4  # blocks of 4, 4 and 2 batches inside each chunk
    assert src.chunk_batches == 10
    out = _to_uint8(torch.cat([b for b, _ in src]))
    # output pixel (16, 16) always comes from inside the image: row = oy + 12, col = ox + 12 (+ flip)
    oy = out[:, 0, 16, 16].long() - 1 - 12
    flipped = out[:, 1, 16, 17] < out[:, 1, 16, 16]
    col16 = out[:, 1, 16, 16].long() - 1
    ox = torch.where(flipped, col16 - 11, col16 - 12)  # flipped: output col 16 = crop col 15
    assert abs(flipped.float().mean().item() - 0.5) < 4 * math.sqrt(0.25 / n)
    for offs in (oy, ox):
        assert offs.min() == 0 and offs.max() == 8
        freq = torch.bincount(offs, minlength=9).double() / n
        assert (freq - 1 / 9).abs().max() < 4 * math.sqrt((1 / 9) * (8 / 9) / n)
        chunks = offs.view(6, 1000)
        assert all(not torch.equal(chunks[0], chunks[c]) for c in range(1, 6))  # one generator per chunk
    # every output equals the naive per-image crop of the zero-padded probe at its offsets
    padded = torch.nn.functional.pad(x[:1], (4, 4, 4, 4))[0]
    for i in list(range(30)) + list(range(990, 1010)):
        crop = padded[:, oy[i] : oy[i] + 32, ox[i] : ox[i] + 32]
        assert torch.equal(out[i], crop.flip(-1) if flipped[i] else crop)
    assert not BatchAugment("gray", train=True, image_size=8).flip


def test_cutout_boxes_follow_official_rule() -> None:
    aug = BatchAugment("cifar", train=True, image_size=32, autoaugment=False, cutout=16)
    n = 3000
    x = torch.full((n, 3, 32, 32), 200, dtype=torch.uint8)
    params = aug.sample(n, torch.Generator().manual_seed(5), 32, 32)
    cy, cx = params["cy"], params["cx"]
    out = aug._cutout(x, cy, cx)
    for i in range(200):
        y1, y2, x1, x2 = cutout_box(int(cy[i]), int(cx[i]), 16, 32, 32)
        expected = torch.full((3, 32, 32), 200, dtype=torch.uint8)
        expected[:, y1:y2, x1:x2] = 0
        assert torch.equal(out[i], expected)
    for centre in (cy, cx):  # uniform over the 32 pixel positions
        freq = torch.bincount(centre, minlength=32).double() / n
        assert centre.max() == 31 and (freq - 1 / 32).abs().max() < 4.5 * math.sqrt((1 / 32) * (31 / 32) / n)
    # area distribution: E[side] = mean over centres of the clipped extent
    side = torch.tensor([min(c + 8, 32) - max(c - 8, 0) for c in range(32)], dtype=torch.float64).mean()
    area = (out[:, 0] == 0).sum(dim=(1, 2)).double()
    assert abs(area.mean().item() - side.item() ** 2) < 4 * area.std().item() / math.sqrt(n)
    assert area.max() == 256 and area.min() >= 64


def _stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3))


def test_cifar_pipeline_statistics_match_torchvision_preset() -> None:
    x = _images(64, 3, 32, 32, seed=2)[32:]  # smooth images: ops change their statistics visibly
    reps = 20  # 640 augmented images per pipeline
    batch = x.repeat(reps, 1, 1, 1)
    aug = BatchAugment("cifar", train=True, image_size=32)
    # through the chunked source: 2 chunks of 10 batches, each augmented in one call
    labels = torch.zeros(len(batch), dtype=torch.int64)
    src = GpuBatchSource(batch, labels, aug, SamplingSpec(train=True, batch_size=32), device="cpu", chunk_images=320)
    assert (src.chunk_batches, src.block_batches) == (10, 10)
    ours = torch.cat([b for b, _ in src])
    torch.manual_seed(0)
    t = build_transform("cifar", train=True, image_size=32)
    ref = torch.stack([t(img) for img in batch])
    (m1, s1), (m2, s2) = _stats(ours), _stats(ref)
    per_image = ref.mean(dim=(2, 3))
    tol = 5 * per_image.std(dim=0) * math.sqrt(2 / len(batch))
    assert ((m1 - m2).abs() < tol).all(), (m1, m2, tol)
    # the pixel spread is the sensitive statistic: without AutoAugment it is ~10 % lower
    assert ((s1 - s2).abs() < 0.03 * s2).all(), (s1, s2)
    assert ours.shape == ref.shape and ours.dtype == torch.float32


def test_gray_and_imagenet_presets_batched() -> None:
    x = _images(40, 1, 28, 28)
    aug = BatchAugment("gray", train=True, image_size=28)
    out = aug(x, make_generator(0, "augment", 0, 0))
    assert out.shape == (40, 1, 28, 28) and out.min() >= -1 and out.max() <= 1
    rgb = _images(16, 3, 40, 48)
    im = BatchAugment("imagenet", train=True, image_size=24)
    out = im(rgb, make_generator(0, "augment", 0, 0))
    assert out.shape == (16, 3, 24, 24) and torch.isfinite(out).all()
    ra = BatchAugment("imagenet", train=True, image_size=24, randaugment=True)
    assert ra(rgb, make_generator(0, "augment", 0, 1)).shape == (16, 3, 24, 24)
    with pytest.raises(ValueError, match="Generator"):
        im(rgb)


@pytest.mark.parametrize(("preset", "shape", "size"), [("cifar", (3, 32, 32), 32), ("gray", (1, 8, 8), 8),
                                                        ("imagenet", (3, 40, 52), 32)])
def test_eval_batch_equals_per_image_transform(preset: str, shape: tuple[int, int, int], size: int) -> None:
    x = _images(10, *shape)
    ours = BatchAugment(preset, train=False, image_size=size)(x)
    t = build_transform(preset, train=False, image_size=size, channels=shape[0])
    assert torch.equal(ours, torch.stack([t(img) for img in x]))


def test_determinism_and_seeding() -> None:
    x = _images(32, 3, 32, 32)
    aug = BatchAugment("cifar", train=True, image_size=32)
    a = aug(x, make_generator(1, "augment", 2, 3))
    assert torch.equal(a, aug(x, make_generator(1, "augment", 2, 3)))
    assert not torch.equal(a, aug(x, make_generator(1, "augment", 2, 4)))


def test_eval_shard_and_num_batches() -> None:
    shards = [eval_shard(10, r, 3) for r in range(3)]
    assert [list(s) for s in shards] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert list(eval_shard(2, 2, 3)) == []
    assert num_batches(10, 4, False) == 3 and num_batches(10, 4, True) == 2


def test_autocontrast_without_sync_equals_torchvision() -> None:
    for c in (1, 3):
        x = _images(12, c, 9, 7, seed=c)
        x[2, 0] = 5  # one constant channel inside a non-constant image
        assert torch.equal(ga.autocontrast(x), F.autocontrast(x))
        assert torch.equal(ga.autocontrast(x[3]), F.autocontrast(x[3]))  # (C, H, W)
    with pytest.raises(ValueError, match="uint8"):
        ga.autocontrast(torch.zeros(1, 3, 4, 4))


def _source(x: torch.Tensor, *, augment: BatchAugment | None = None, rank: int = 0, world_size: int = 1,
            chunk_images: int | None = None, train: bool = True, **sampling) -> GpuBatchSource:
    """A CPU GpuBatchSource over ``x`` with labels ``arange(N) % 3``; ``sampling``: SamplingSpec fields."""
    augment = augment or BatchAugment("cifar", train=True, image_size=32)
    return GpuBatchSource(x, torch.arange(len(x)) % 3, augment, SamplingSpec(train=train, **sampling), device="cpu",
                          rank=rank, world_size=world_size, chunk_images=chunk_images)


def test_source_chunks_equal_direct_augmentation_of_each_chunk() -> None:
    """Chunk c = one BatchAugment call seeded (seed, epoch, c); chunk_images < batch = per-batch seeding."""
    x = _images(50, 3, 32, 32, seed=4)
    src = _source(x, batch_size=8, seed=4, chunk_images=31)  # 3 whole batches
    src.set_epoch(3)
    idx = src.indices()
    assert len(idx) == 50 and len(src) == 7 and src.chunk_batches == 3
    got = list(src)
    assert [len(y) for _b, y in got] == [8] * 6 + [2]
    aug = src.augment
    ref = torch.cat([aug(x[idx[24 * c : 24 * c + 24]], make_generator(4, "augment", 3, c)) for c in range(3)])
    assert torch.equal(torch.cat([b for b, _ in got]), ref)
    assert torch.equal(torch.cat([y for _b, y in got]), (idx % 3))
    for chunk_images in (0, 7):  # one batch per chunk: batch k seeded with step k, as before chunking
        per_batch = _source(x, batch_size=8, seed=4, chunk_images=chunk_images)
        per_batch.set_epoch(3)
        assert per_batch.chunk_batches == 1
        for k, (b, _y) in enumerate(per_batch):
            assert torch.equal(b, aug(x[idx[8 * k : 8 * k + 8]], make_generator(4, "augment", 3, k)))
    with pytest.raises(ValueError, match="chunk_images"):
        _source(x, batch_size=8, chunk_images=-1)
    with pytest.raises(ValueError, match="step"):
        next(src.iter_from(-1))


@pytest.mark.parametrize(("preset", "shape", "kwargs"), [("cifar", (3, 32, 32), {}), ("gray", (1, 8, 8), {}),
                                                         ("imagenet", (3, 20, 26), {}),
                                                         ("imagenet", (3, 20, 26), {"randaugment": True})])
def test_pixels_do_not_depend_on_the_block_size(preset: str, shape: tuple[int, int, int], kwargs: dict) -> None:
    """Parameters are drawn per chunk; applying them in blocks of any size (or per image) gives the same pixels."""
    x = _images(21, *shape, seed=7)
    size = 16 if preset == "imagenet" else shape[-1]
    for train in (True, False):
        aug = BatchAugment(preset, train=train, image_size=size, **kwargs)
        outs = []
        for block in (1, 2, 5, 100):
            src = _source(x, augment=aug, batch_size=3, chunk_images=12, train=train)
            src.block_batches = min(block, src.chunk_batches)
            outs.append(torch.cat([b for b, _ in src]))
        assert all(torch.equal(outs[0], o) for o in outs[1:]), (preset, train)
    whole = BatchAugment(preset, train=True, image_size=size, **kwargs)
    params = whole.sample(21, torch.Generator().manual_seed(0), *shape[1:])
    per_image = torch.cat([whole.apply(x[i : i + 1], slice_params(params, i, i + 1)) for i in range(21)])
    assert torch.equal(whole.apply(x, params), per_image)
    assert torch.equal(whole(x, torch.Generator().manual_seed(0)), per_image)


def test_source_holds_one_block_and_default_sizes() -> None:
    src = _source(_images(16, 3, 32, 32), batch_size=4, chunk_images=8)
    assert (src.chunk_batches, src.block_batches) == (2, 2)
    it = iter(src)
    first, _ = next(it)
    block = weakref.ref(first._base)
    del first
    next(it)  # batch 1, same block
    assert block() is not None
    next(it)  # batch 2: a new block; the source no longer holds the old one
    assert block() is None
    # chunks of 8192 images; blocks of 2048 CIFAR-size images on the CPU, 8192 on a GPU, fewer for larger images
    default = _source(_images(4, 3, 32, 32), batch_size=64)
    assert (default.chunk_batches, default.block_batches) == (128, 32)
    assert block_images(32 * 32, "cpu") == 2048 and block_images(32 * 32, "cuda") == 8192
    assert block_images(224 * 224, "cuda") == 167 and block_images(8 * 8, "cpu") == 32768
    assert block_images(10**9, "cuda") == 1


@pytest.mark.gpu
def test_gpu_output_identical_to_cpu() -> None:
    x = _images(64, 3, 32, 32)
    official = {"autoaugment_fill": 128, "autoaugment_geometry": "official"}
    for preset, kwargs in (("cifar", {}), ("cifar", official), ("gray", {"flip": True})):
        xx = x if preset == "cifar" else x[:, :1]
        aug = BatchAugment(preset, train=True, image_size=32, **kwargs)
        cpu = aug(xx, make_generator(0, "augment", 0, 0))
        gpu = aug(xx.cuda(), make_generator(0, "augment", 0, 0))
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=1e-6)
    table, _ids, _probs = ga.autoaugment_table(32, 32)
    for opts in ({}, {"fill": 128, "geometry": "official"}):
        fast = BatchedOps(table, 3, 32, 32, torch.device("cuda"), **opts)
        slow = BatchedOps(table, 3, 32, 32, torch.device("cpu"), **opts)
        for vid in range(len(table.variants)):
            variants = torch.full((64, 1), vid)
            ref = slow.apply(x, variants)
            assert torch.equal(fast.apply(x.cuda(), variants).cpu(), ref), (opts, table.variants[vid])
    assert F.to_dtype(x.cuda(), torch.float32, scale=True).is_cuda
