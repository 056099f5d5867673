"""``model.pretrained`` (weights files, torchvision names through the hub cache), ``model.freeze_stages``,
``optim.backbone_lr_mult`` and timm backbones."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from bce3s.config import OptimConfig, load_config
from bce3s.engine.checkpoint import save_checkpoint
from bce3s.engine.optim import build_optimizer, build_scheduler
from bce3s.errors import CheckpointError, ConfigError
from bce3s.models import build_model
from bce3s.models.pretrained import freeze_stages, load_pretrained, read_state_dict, torchvision_weights_file
from bce3s.models.small_cnn import SmallCNN


def _donor(seed: int = 11, in_channels: int = 1) -> SmallCNN:
    torch.manual_seed(seed)
    net = SmallCNN(in_channels=in_channels)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so the test sees them loaded
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return net


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_state_dict_with_classifier_loads_strictly(tmp_path):
    donor = _donor()
    sd = {**donor.state_dict(), "fc.weight": torch.zeros(5, 128), "fc.bias": torch.zeros(5)}  # torchvision-style
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "w.pth")
    model = build_model("small_cnn", num_classes=10, in_channels=1)
    assert not _same(model.backbone.state_dict(), donor.state_dict())
    load_pretrained(model.backbone, str(tmp_path / "w.pth"), "small_cnn")
    assert _same(model.backbone.state_dict(), donor.state_dict())


def test_bce3s_checkpoint_gives_its_backbone(tmp_path):
    src = build_model("small_cnn", num_classes=7, in_channels=1)
    save_checkpoint(tmp_path / "best_val.pt", {"model": src.state_dict(), "num_classes": 7})
    model = build_model("small_cnn", num_classes=10, in_channels=1, projector_dim=8)
    load_pretrained(model.backbone, str(tmp_path / "best_val.pt"), "small_cnn")
    assert _same(model.backbone.state_dict(), src.backbone.state_dict())


@pytest.mark.parametrize("change", ["missing", "unexpected", "shape"])
def test_mismatched_keys_are_a_one_line_error(tmp_path, change):
    sd = _donor().state_dict()
    if change == "missing":
        sd.pop("features.2.0.weight")
    elif change == "unexpected":
        sd["extra.weight"] = torch.zeros(3)
    else:
        sd = _donor(in_channels=3).state_dict()
    torch.save(sd, tmp_path / "w.pt")
    backbone = build_model("small_cnn", num_classes=10, in_channels=1).backbone
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        load_pretrained(backbone, str(tmp_path / "w.pt"), "small_cnn")
    key = {"missing": "features.2.0.weight", "unexpected": "extra.weight", "shape": "features.0.0.weight"}[change]
    assert key in str(info.value) and "\n" not in str(info.value)
    assert _same(backbone.state_dict(), before)  # nothing half-loaded


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_file_that_needs_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"conv.weight": torch.zeros(1), "hook": _RunsCode(marker)}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="refused"):
        read_state_dict(tmp_path / "evil.pt")
    assert not marker.exists()


def test_safetensors_file(tmp_path):
    st = pytest.importorskip("safetensors.torch", reason="safetensors not installed (optional)")
    donor = _donor()
    st.save_file(donor.state_dict(), str(tmp_path / "w.safetensors"))
    model = build_model("small_cnn", num_classes=10, in_channels=1)
    load_pretrained(model.backbone, str(tmp_path / "w.safetensors"), "small_cnn")
    assert _same(model.backbone.state_dict(), donor.state_dict())


def test_torchvision_weights_name_uses_the_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    calls = []

    def offline(url, dst, progress=True):
        calls.append(url)
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    dst, url = torchvision_weights_file("resnet50", "IMAGENET1K_V2")
    assert dst.parent == tmp_path / "torch" / "hub" / "checkpoints" and dst.name == url.rsplit("/", 1)[1]
    backbone = nn.Module()
    with pytest.raises(CheckpointError) as info:  # offline: the error says which file to place where
        load_pretrained(backbone, "IMAGENET1K_V2", "resnet50")
    assert str(dst) in str(info.value) and url in str(info.value) and calls == [url]
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"conv1.weight": torch.zeros(1)}, dst)  # a placed file is read from the cache, not downloaded
    with pytest.raises(CheckpointError, match="does not fit"):
        load_pretrained(backbone, "IMAGENET1K_V2", "resnet50")
    assert calls == [url]
    with pytest.raises(ConfigError, match="IMAGENET1K_V1"):
        torchvision_weights_file("resnet50", "IMAGENET1K_V9")
    with pytest.raises(ConfigError):
        torchvision_weights_file("small_cnn", "IMAGENET1K_V1")


def test_backbone_lr_mult_makes_its_own_groups_scheduled_alike():
    model = build_model("small_cnn", num_classes=10, in_channels=1, projector_dim=8)
    cfg = OptimConfig(lr=0.1, backbone_lr_mult=0.25, warmup_epochs=0, scheduler="cosine", no_decay_norm_bias=True)
    opt = build_optimizer(model.named_parameters(), cfg)
    backbone_ids = {id(p) for p in model.backbone.parameters()}
    lrs = [(g["lr"], {id(p) in backbone_ids for p in g["params"]}) for g in opt.param_groups]
    assert lrs[0] == (0.1, {False})  # the head / projector first: the logged lr is the base lr
    assert {lr for lr, kind in lrs if kind == {True}} == {0.025}
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    sched = build_scheduler(opt, cfg, epochs=4)
    opt.step()  # no gradients: changes nothing
    sched.step()
    assert opt.param_groups[-1]["lr"] / opt.param_groups[0]["lr"] == pytest.approx(0.25)
    one = build_optimizer(model.named_parameters(), OptimConfig(lr=0.1))
    assert len(one.param_groups) == 1  # no multiplier: the groups are as before


def test_freeze_stages_sets_requires_grad():
    model = build_model("resnet32", num_classes=10, in_channels=3)
    frozen = freeze_stages(model.backbone, 2)  # the stem and layer1
    assert frozen[1] is model.backbone.layer1
    assert not any(p.requires_grad for p in [*model.backbone.conv1.parameters(), *model.backbone.layer1.parameters()])
    assert all(p.requires_grad for p in model.backbone.layer2.parameters())
    with pytest.raises(ConfigError):
        freeze_stages(model.backbone, 5)


def _tiny_cfg(tmp_path: Path, model: dict, optim: dict | None = None):
    data = {
        "data": {"dataset": "digits_lt", "imbalance_factor": 10},
        "model": {"name": "small_cnn", "projector_dim": 16, **model},
        "stages": [{"name": "stage1", "epochs": 1, "batch_size": 64, "loss": {"name": "ce"},
                    "optim": {"lr": 0.05, **(optim or {})}}],
        "eval": {"batch_size": 256, "tta_flip": False},
        "runtime": {"device": "cpu", "seed": 5},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    return load_config(tmp_path / "c.yaml")


def test_training_starts_from_the_file_and_frozen_stages_stay_put(tmp_path):
    """The first training forward of the backbone is the loaded network's; frozen stages (weights and BatchNorm
    statistics) end the epoch as the file gave them, the others train."""
    from bce3s.engine import train
    from bce3s.engine.checkpoint import load_checkpoint

    donor = _donor()
    torch.save(donor.state_dict(), tmp_path / "donor.pt")
    cfg = _tiny_cfg(tmp_path, {"pretrained": str(tmp_path / "donor.pt"), "freeze_stages": 2},
                    {"backbone_lr_mult": 0.5})
    seen = []

    def hook(module, args, output):
        if isinstance(module, SmallCNN) and not seen:
            seen.append((args[0].detach().clone(), output.detach().clone()))

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        train(cfg, tmp_path / "run", quiet=True)
    finally:
        handle.remove()
    x, features = seen[0]
    ref = _donor().train()
    for stage in ref.stages()[:2]:
        stage.eval()  # frozen stages run with their stored statistics
    with torch.no_grad():
        assert torch.allclose(ref(x), features, atol=1e-6)
        assert not torch.allclose(SmallCNN(1).train()(x), features, atol=1e-3)
    trained = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["model"]
    start = donor.state_dict()
    for key, value in start.items():
        after = trained[f"backbone.{key}"]
        if key.startswith(("features.0.", "features.1.")):
            assert torch.equal(after, value), key
        elif key.endswith("weight"):
            assert not torch.equal(after, value), key


def test_pretrained_file_missing_is_a_config_error(tmp_path):
    from bce3s.engine import train

    cfg = _tiny_cfg(tmp_path, {"pretrained": str(tmp_path / "nope.pt")})
    with pytest.raises(ConfigError, match="nope.pt"):
        train(cfg, tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()


def test_timm_backbone_trains_a_step_through_the_normalized_head(tmp_path):
    timm = pytest.importorskip("timm", reason="timm not installed (pip install timm; optional)")
    from bce3s.losses import build_loss
    from bce3s.models import NormalizedLinear

    model = build_model("timm/test_resnet", num_classes=10, in_channels=1, projector_dim=16)
    assert isinstance(model.head, NormalizedLinear) and model.feature_dim == model.backbone.net.num_features
    donor = timm.create_model("test_resnet", in_chans=1, num_classes=5)  # with its classifier
    torch.save(donor.state_dict(), tmp_path / "timm.pt")
    load_pretrained(model.backbone, str(tmp_path / "timm.pt"), "timm/test_resnet")
    expected = {k: v for k, v in donor.state_dict().items() if not k.startswith("fc.")}
    assert _same(model.backbone.net.state_dict(), expected)
    loss_fn = build_loss("bce3s", num_classes=10, embedding_dim=16, neg_class_ratio=1.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 1, 32, 32), torch.arange(8) % 10
    out = model(x)
    loss = loss_fn(out.logits, y, embeddings=out.embeddings, weight=model.head.weight).loss
    loss.backward()
    assert model.head.weight.grad is not None and next(model.backbone.parameters()).grad is not None
    before = model.head.weight.detach().clone()
    opt.step()
    assert torch.isfinite(loss) and not torch.equal(before, model.head.weight)


def test_timm_names_are_validated(tmp_path, monkeypatch):
    from bce3s.engine.validate import validate_config

    cfg = _tiny_cfg(tmp_path, {"name": "timm/test_resnet"})
    monkeypatch.setitem(sys.modules, "timm", None)  # not installed: a one-line hint at the extra
    with pytest.raises(ConfigError, match=r"bce3s\[timm\]"):
        validate_config(cfg)
    monkeypatch.undo()
    pytest.importorskip("timm", reason="timm not installed (optional)")
    validate_config(cfg)
    with pytest.raises(ConfigError, match="model.freeze_stages"):
        validate_config(_tiny_cfg(tmp_path, {"name": "timm/test_resnet", "freeze_stages": 1}))
    with pytest.raises(ConfigError, match="model.name"):
        validate_config(_tiny_cfg(tmp_path, {"name": "timm/no_such_net"}))


@pytest.mark.slow
def test_torchvision_resnet50_weights_by_name_load_into_the_backbone(tmp_path, monkeypatch):
    """A torchvision ResNet-50 state dict (with its fc) placed in the hub cache loads strictly by name."""
    from torchvision.models import resnet50

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    dst, _ = torchvision_weights_file("resnet50", "IMAGENET1K_V2")
    dst.parent.mkdir(parents=True)
    torch.manual_seed(3)
    donor = resnet50(weights=None)
    torch.save(donor.state_dict(), dst)
    model = build_model("resnet50", num_classes=10)
    load_pretrained(model.backbone, "IMAGENET1K_V2", "resnet50")
    expected = {k: v for k, v in donor.state_dict().items() if not k.startswith("fc.")}
    assert _same(model.backbone.state_dict(), expected)
