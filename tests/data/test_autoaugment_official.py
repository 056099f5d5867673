"""The official AutoAugment geometry (``autoaugment_geometry: official``, ``autoaugment_fill: 128``) against Pillow.

The official BCE3S code augments PIL images with its CIFAR10Policy: shears by
``Image.transform(size, AFFINE, (1, m, 0, 0, 1, 0) or (1, 0, 0, m, 1, 0), BICUBIC, fillcolor=(128, 128, 128))``,
translations by ``Image.transform(size, AFFINE, (1, 0, t, 0, 1, 0) ...)`` with a fractional t = m * W (nearest),
rotations by ``img.convert("RGBA").rotate(m)`` composited over a grey image (counter-clockwise only), magnitudes
from ``numpy.linspace`` in float64. Those calls are written out here with Pillow itself as the reference, so the
tests compare our tensor ops with code that is not ours. Pillow's bicubic is re-stated exactly in
:mod:`bce3s.data.gpu.pil_geometry` (float64, truncation to uint8), so the comparison is bit for bit: tolerance 0.
"""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from bce3s.config import load_config
from bce3s.data.gpu import autoaugment as ga
from bce3s.data.gpu.augment import BatchAugment
from bce3s.data.gpu.batched_ops import BatchedOps
from bce3s.data.gpu.pil_geometry import affine_bicubic
from bce3s.data.transforms import OfficialAutoAugment, build_transform
from bce3s.errors import ConfigError

GREY = 128
# the official policy's magnitude ranges (float64), for the geometric ops
OFFICIAL_RANGE = {
    "ShearX": np.linspace(0, 0.3, 10),
    "ShearY": np.linspace(0, 0.3, 10),
    "TranslateX": np.linspace(0, 150 / 331, 10),
    "TranslateY": np.linspace(0, 150 / 331, 10),
    "Rotate": np.linspace(0, 30, 10),
}


pytestmark = pytest.mark.usefixtures("one_thread")


def _images(n: int, c: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Half smooth (natural-image-like, where bicubic matters), half noise (overshoots, clipping)."""
    g = torch.Generator().manual_seed(seed)
    smooth = torch.nn.functional.interpolate(torch.rand(n - n // 2, c, 6, 6, generator=g), size=size,
                                             mode="bilinear") * 255
    noise = torch.randint(0, 256, (n // 2, c, size, size), generator=g).float()
    return torch.cat([smooth, noise]).round().clamp(0, 255).to(torch.uint8)


def _pil(image: torch.Tensor) -> Image.Image:
    arr = image.permute(1, 2, 0).numpy()
    return Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)


def _tensor(img: Image.Image) -> torch.Tensor:
    arr = np.asarray(img)
    return torch.from_numpy(arr.copy()).view(*arr.shape[:2], -1).permute(2, 0, 1)


def _official_op(image: torch.Tensor, name: str, bin_index: int, sign: int) -> torch.Tensor:
    """The official policy's op on one uint8 (C, H, W) image, through Pillow (written from its documented calls)."""
    img = _pil(image)
    mag = OFFICIAL_RANGE[name][bin_index]
    fill = (GREY,) * len(img.getbands()) if len(img.getbands()) > 1 else GREY
    if name == "ShearX":
        return _tensor(img.transform(img.size, Image.AFFINE, (1, mag * sign, 0, 0, 1, 0), Image.BICUBIC,
                                     fillcolor=fill))
    if name == "ShearY":
        return _tensor(img.transform(img.size, Image.AFFINE, (1, 0, 0, mag * sign, 1, 0), Image.BICUBIC,
                                     fillcolor=fill))
    if name == "TranslateX":
        return _tensor(img.transform(img.size, Image.AFFINE, (1, 0, mag * img.size[0] * sign, 0, 1, 0),
                                     fillcolor=fill))
    if name == "TranslateY":
        return _tensor(img.transform(img.size, Image.AFFINE, (1, 0, 0, 0, 1, mag * img.size[1] * sign),
                                     fillcolor=fill))
    assert name == "Rotate"
    rot = img.convert("RGBA").rotate(mag)
    return _tensor(Image.composite(rot, Image.new("RGBA", rot.size, (GREY,) * 4), rot).convert(img.mode))


def _geometric_variants(size: int):
    """(variant id, name, bin, official sign) of every geometric op the CIFAR-10 policy can draw.

    Our variant with magnitude +m is Pillow's coefficient +m for shears and -m (a shift of the content by +m) for
    translations; the official rotate has no sign, so both of our signs are its one rotation.
    """
    _table, ids, _probs = ga.autoaugment_table(size, size, "official")
    seen = set()
    for p, sub in enumerate(ga.CIFAR10_POLICY):
        for s, (name, _prob, bin_index) in enumerate(sub):
            if name not in OFFICIAL_RANGE:
                continue
            for neg in (0, 1):
                sign = -1 if neg else 1
                if name.startswith("Translate"):
                    sign = -sign
                key = (int(ids[p, s, neg]), name, bin_index, sign)
                if key not in seen:
                    seen.add(key)
                    yield key


@pytest.mark.parametrize("channels", [3, 1])
def test_official_geometric_variants_equal_pillow_bit_for_bit(channels: int) -> None:
    x = _images(16, channels)
    table = ga.autoaugment_table(32, 32, "official")[0]
    fast = BatchedOps(table, channels, 32, 32, torch.device("cpu"), fill=GREY, geometry="official")
    names = set()
    for vid, name, bin_index, sign in _geometric_variants(32):
        expected = torch.stack([_official_op(x[i], name, bin_index, sign) for i in range(x.shape[0])])
        variants = torch.full((x.shape[0], 1), vid)
        assert torch.equal(fast.apply(x, variants), expected), (name, bin_index, sign)
        assert torch.equal(ga.apply_op_slots(x, variants, table, fill=GREY, geometry="official"), expected)
        names.add(name)
    assert names == {"ShearY", "TranslateX", "TranslateY", "Rotate"}  # all geometric ops of the CIFAR-10 policy


@pytest.mark.parametrize(
    "coefficients",
    [
        (1, 0.3, 0, 0, 1, 0),
        (1, -0.1, 0, 0, 1, 0),
        (1, 0, 0, 0.25, 1, 0),
        (math.cos(0.3), math.sin(0.3), -3.2, -math.sin(0.3), math.cos(0.3), 5.1),
        (1.1, 0.2, -1.5, 0.05, 0.9, 2.2),
    ],
)
def test_affine_bicubic_equals_pillow_for_any_affine_map(coefficients) -> None:
    """Pillow's bicubic (a = -1, edge clamp, fill outside, truncation), restated in float64: exact, fill 7."""
    x = _images(8, 3, size=13, seed=3)
    expected = torch.stack([
        _tensor(_pil(img).transform((13, 13), Image.AFFINE, coefficients, Image.BICUBIC, fillcolor=(7, 7, 7)))
        for img in x
    ])
    assert torch.equal(affine_bicubic(x, coefficients, 7), expected)


def test_bicubic_shear_is_not_nearest_and_fills_grey() -> None:
    """The official shear interpolates (values a nearest shear cannot produce) and fills the uncovered corner."""
    x = _images(4, seed=7)
    table = ga.OpTable((("ShearY", 0.3),))
    variants = torch.zeros(4, 1, dtype=torch.long)
    official = BatchedOps(table, 3, 32, 32, torch.device("cpu"), fill=GREY, geometry="official").apply(x, variants)
    nearest = BatchedOps(table, 3, 32, 32, torch.device("cpu"), fill=GREY).apply(x, variants)
    assert not torch.equal(official, nearest)
    assert bool((official[..., -3:, -1] == GREY).all())  # ShearY +0.3 samples below the image at the bottom right


def test_official_transform_on_cpu_follows_torchvision_draws_with_official_ops() -> None:
    """``OfficialAutoAugment``: torchvision's draws (re-run on the same seed), each op the official Pillow op."""
    x = _images(30, seed=11)
    aa = OfficialAutoAugment(GREY)
    _table, ids, _probs = ga.autoaugment_table(32, 32, "official")
    variants = {v[0]: v[1:] for v in _geometric_variants(32)}
    geometric = 0
    for i in range(x.shape[0]):
        torch.manual_seed(1000 + i)
        out = aa(x[i])
        torch.manual_seed(1000 + i)
        expected = x[i]
        policy = int(torch.randint(len(ga.CIFAR10_POLICY), ()))
        for s, (name, prob, bin_index) in enumerate(ga.CIFAR10_POLICY[policy]):
            if not torch.rand(()) <= prob:
                continue
            signed = name in ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color",
                              "Contrast", "Sharpness")  # torchvision draws a sign for these, even at magnitude 0
            neg = 1 if (signed and torch.rand(()) <= 0.5) else 0
            vid = int(ids[policy, s, neg])
            if vid in variants:
                expected = _official_op(expected, *variants[vid])
                geometric += 1
            else:
                expected = ga.apply_op(expected[None], name, -ga.op_magnitude(name, bin_index, 32, 32) if neg
                                       else ga.op_magnitude(name, bin_index, 32, 32))[0]
        assert torch.equal(out, expected), i
    assert geometric >= 5


def test_config_keys_reach_both_pipelines() -> None:
    cfg = load_config(None, ["data.autoaugment_fill=128", "data.autoaugment_geometry=official"])
    assert (cfg.data.autoaugment_fill, cfg.data.autoaugment_geometry) == (128, "official")
    from bce3s.engine.build import augment_spec

    class _Data:
        in_channels, image_size = 3, 32

    spec = augment_spec(cfg, _Data())
    assert (spec.autoaugment_fill, spec.autoaugment_geometry) == (128, "official")
    t = build_transform("cifar", train=True, image_size=32, **spec.options())
    assert any(isinstance(op, OfficialAutoAugment) and op.fill_value == 128 for op in t.transforms)
    copy = pickle.loads(pickle.dumps(t))  # DataLoader workers started with spawn get a pickled transform
    assert any(isinstance(op, OfficialAutoAugment) for op in copy.transforms)
    b = BatchAugment("cifar", train=True, image_size=32, **spec.options())
    assert (b.autoaugment_fill, b.autoaugment_geometry) == (128, "official")
    plain = build_transform("cifar", train=True, image_size=32, autoaugment_fill=128)
    assert [type(op).__name__ for op in plain.transforms][2] == "AutoAugment"
    for bad in (["data.autoaugment_fill=256"], ["data.autoaugment_geometry=pil"]):
        with pytest.raises(ConfigError):
            load_config(None, bad)
