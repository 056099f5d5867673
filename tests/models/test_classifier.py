"""Classifier contract: ModelOutput, reset_head, logit adjustment, parameter groups."""

from __future__ import annotations

import math

import pytest
import torch

from bce3s.models import Classifier, ModelOutput, NormalizedLinear, Projector, build_model
from bce3s.models.heads import Linear


def _tiny(projector_dim: int | None = 6, head: str = "normalized") -> Classifier:
    torch.manual_seed(0)
    return build_model("small_cnn", num_classes=5, in_channels=1, head=head, projector_dim=projector_dim)


def test_forward_returns_model_output() -> None:
    model = _tiny()
    out = model(torch.randn(3, 1, 8, 8))
    assert isinstance(out, ModelOutput)
    assert out.logits.shape == (3, 5) and out.features.shape == (3, 128) and out.embeddings.shape == (3, 6)
    torch.testing.assert_close(out.logits, model.head(out.features))
    torch.testing.assert_close(out.embeddings, model.projector(out.features))
    assert model.feature_dim == 128 and model.num_classes == 5
    assert isinstance(model.head, NormalizedLinear) and isinstance(model.projector, Projector)


def test_no_projector_gives_none_embeddings() -> None:
    model = _tiny(projector_dim=None)
    assert model(torch.randn(2, 1, 8, 8)).embeddings is None
    assert list(model.projector_parameters()) == []


@pytest.mark.parametrize(("name", "dim"), [("resnet32", 64), ("resnet34_cifar", 512)])
def test_build_model_cifar_shapes(name: str, dim: int) -> None:
    model = build_model(name, num_classes=100, projector_dim=128).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.logits.shape == (2, 100) and out.features.shape == (2, dim) and out.embeddings.shape == (2, 128)
    assert model.head.weight.shape == (100, dim)


def test_build_model_validation() -> None:
    with pytest.raises(ValueError, match="valid heads"):
        build_model("small_cnn", num_classes=3, head="cosine")
    with pytest.raises(ValueError, match="num_classes"):
        build_model("small_cnn", num_classes=0)
    with pytest.raises(ValueError, match="projector_dim"):
        build_model("small_cnn", num_classes=3, projector_dim=0)


@pytest.mark.parametrize("head", ["normalized", "linear"])
def test_reset_head_changes_weights_keeps_shapes(head: str) -> None:
    model = _tiny(head=head)
    w0, b0 = model.head.weight.detach().clone(), model.head.bias.detach().clone()
    backbone0 = [p.detach().clone() for p in model.backbone_parameters()]
    weight_param = model.head.weight
    model.reset_head()
    assert model.head.weight is weight_param  # same Parameter object: optimizers built before stay valid
    assert model.head.weight.shape == w0.shape and model.head.bias.shape == b0.shape
    assert not torch.equal(model.head.weight, w0) and not torch.equal(model.head.bias, b0)
    for before, after in zip(backbone0, model.backbone_parameters()):
        assert torch.equal(before, after)


def test_reset_head_with_generator_reproduces_init() -> None:
    model = _tiny()
    model.reset_head(torch.Generator().manual_seed(5))
    ref = NormalizedLinear(128, 5)
    ref.reset_parameters(torch.Generator().manual_seed(5))
    torch.testing.assert_close(model.head.weight, ref.weight)
    torch.testing.assert_close(model.head.bias, ref.bias)


def test_logit_adjustment() -> None:
    model = _tiny().eval()
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        base = model(x).logits
        counts = [500, 100, 50, 10, 5]
        model.set_logit_adjustment(counts, tau=1.5)
        adjusted = model(x).logits
    total = sum(counts)
    expected_bias = torch.tensor([-1.5 * math.log(n / total) for n in counts])
    torch.testing.assert_close(model.logit_bias, expected_bias)
    torch.testing.assert_close(adjusted, base + expected_bias)
    assert "logit_bias" in model.state_dict()
    model.set_logit_adjustment(counts, tau=0.0)
    assert bool((model.logit_bias == 0).all())
    model.set_logit_adjustment(counts)
    model.clear_logit_adjustment()
    assert bool((model.logit_bias == 0).all())


def test_logit_adjustment_validation() -> None:
    model = _tiny()
    with pytest.raises(ValueError, match="5 classes"):
        model.set_logit_adjustment([1, 2, 3])
    with pytest.raises(ValueError, match="positive"):
        model.set_logit_adjustment([1, 2, 0, 3, 4])


def test_parameter_groups_partition_all_parameters() -> None:
    model = _tiny()
    groups = [list(model.backbone_parameters()), list(model.head_parameters()), list(model.projector_parameters())]
    ids = [id(p) for g in groups for p in g]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters()}
    assert {id(p) for p in groups[1]} == {id(model.head.weight), id(model.head.bias)}


def test_classifier_checks_dimensions() -> None:
    backbone = build_model("small_cnn", num_classes=2, in_channels=1).backbone
    with pytest.raises(ValueError, match="head expects 64-d"):
        Classifier(backbone, NormalizedLinear(64, 3))
    with pytest.raises(ValueError, match="projector expects 32-d"):
        Classifier(backbone, Linear(128, 3), Projector(32, 8))


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["resnet32", "resnet34_cifar", "small_cnn"])
def test_forward_backward_on_cuda_with_amp(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, projector_dim=16).cuda()
    model.set_logit_adjustment(list(range(1, 11)), tau=1.0)
    x = torch.randn(8, 3, 32, 32, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(x)
    assert out.logits.shape == (8, 10) and out.logits.device.type == "cuda"
    (out.logits.float().sum() + out.embeddings.float().sum()).backward()
    assert all(p.grad is not None for p in model.parameters())
    model.reset_head(torch.Generator(device="cuda").manual_seed(0))
    assert model.head.weight.device.type == "cuda"
