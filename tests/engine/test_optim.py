import math

import pytest
import torch

from bce3s.config import OptimConfig
from bce3s.engine.optim import build_optimizer, build_scheduler, lr_factor, param_groups


def test_cosine_starts_at_base_lr_and_never_runs_an_epoch_at_zero():
    cfg = OptimConfig(lr=0.01, scheduler="cosine", min_lr=0.0)
    lrs = [0.01 * lr_factor(e, 320, cfg) for e in range(320)]
    assert lrs[0] == pytest.approx(0.01)  # epoch 0 at the base lr (official: 0.0099998)
    assert lrs[-1] > 0  # official code's last epoch runs at lr 0
    assert lrs[160] == pytest.approx(0.005)
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_warmup_is_linear_then_cosine():
    cfg = OptimConfig(lr=0.1, warmup_epochs=4)
    f = [lr_factor(e, 10, cfg) for e in range(10)]
    assert f[:4] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert f[4] == pytest.approx(1.0)
    assert f[7] == pytest.approx(0.5 * (1 + math.cos(math.pi * 3 / 6)))


def test_scheduler_steps_per_epoch():
    p = torch.nn.Parameter(torch.zeros(2))
    cfg = OptimConfig(lr=1.0, momentum=0.0, weight_decay=0.0)
    opt = build_optimizer([("w", p)], cfg)
    sched = build_scheduler(opt, cfg, 4)
    seen = []
    for _ in range(4):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([lr_factor(e, 4, cfg) for e in range(4)])


def test_no_decay_group_for_norms_and_biases():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    groups = param_groups(model.named_parameters(), OptimConfig(weight_decay=0.1, no_decay_norm_bias=True))
    decayed = {id(p) for p in groups[0]["params"]}
    assert decayed == {id(model[0].weight)}
    assert groups[1]["weight_decay"] == 0.0 and len(groups[1]["params"]) == 3
    all_decay = param_groups(model.named_parameters(), OptimConfig(weight_decay=0.1))
    assert len(all_decay) == 1 and len(all_decay[0]["params"]) == 4  # official: decay on everything


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")  # the official order
def test_before_epoch_stepping_is_the_official_schedule():
    """The official loop calls ``scheduler.step()`` before each epoch on CosineAnnealingLR(T_max = epochs)."""
    epochs, lr = 320, 0.01
    cfg = OptimConfig(lr=lr, scheduler="cosine", min_lr=0.0, schedule_step="before_epoch")
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    official = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    expected = []
    for _ in range(epochs):
        official.step()  # at the start of the epoch, as the official training loop does
        expected.append(opt.param_groups[0]["lr"])
    ours = [lr * lr_factor(e, epochs, cfg) for e in range(epochs)]
    assert ours == pytest.approx(expected, abs=1e-12)
    assert ours[0] == pytest.approx(0.01 * 0.5 * (1 + math.cos(math.pi / 320))) and ours[0] < lr
    assert ours[-1] == pytest.approx(0.0, abs=1e-15)
    after = OptimConfig(lr=lr, scheduler="cosine", min_lr=0.0)
    assert [lr_factor(e + 1, epochs, after) for e in range(epochs)] == pytest.approx([x / lr for x in ours])
