"""The paper-exact variants (``configs/*/*_official.yaml``) against a re-statement of the official formulas.

The official BCE3S code (github.com/WakingHours-GitHub/BCE3S @ 663f810) is restated here in a few lines of
plain tensor code, written from its formulas, independently of ``bce3s``: the stage-1 loss (``head.py``: BCE with
every logit clamped to [-64, 64], the clean view over the partial class set, both mixed views with the MixUp
target, the contrastive BCE against the class memory, the uniform BCE of the classifier vectors), the stage-2
class-balanced BCE (unclamped ``log(1 + exp(.))``), WB's MaxNorm (``utils/regularizers.py``) and the scheduler
stepped before each epoch (``utils/trainval.py``). The variants' settings must reproduce them: loss values and
gradients to float64 rounding, MaxNorm and the learning rates exactly.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import bce3s
from bce3s.config import config_to_dict, load_config
from bce3s.engine.optim import lr_factor
from bce3s.losses import build_loss
from bce3s.models import apply_max_norm, max_norm_threshold

CONFIGS = Path(bce3s.__file__).resolve().parent / "configs"
TWINS = [
    ("cifar100_lt/bce3s_r34.yaml", "cifar100_lt/bce3s_r34_official.yaml"),
    ("cifar100_lt/bce3s_r32.yaml", "cifar100_lt/bce3s_r32_official.yaml"),
    ("cifar10_lt/bce3s_r32.yaml", "cifar10_lt/bce3s_r32_official.yaml"),
    ("cifar10_lt/bce3s_r34.yaml", "cifar10_lt/bce3s_r34_official.yaml"),
]


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k != "params":
            out.update(_flat(v, key + "."))
        elif isinstance(v, list):
            for i, item in enumerate(v):
                out.update(_flat(item, f"{key}.{i}."))
        else:
            out[key] = v
    return out


@pytest.mark.parametrize(("recipe", "twin"), TWINS)
def test_twin_changes_exactly_the_official_settings(recipe: str, twin: str) -> None:
    a, b = (_flat(config_to_dict(load_config(CONFIGS / rel))) for rel in (recipe, twin))
    changed = {k for k in a if a[k] != b[k]}
    assert changed == {
        "data.val_per_class",
        "stages.0.loss.params",
        "stages.0.optim.schedule_step",
        "stages.1.optim.schedule_step",
        "stages.1.max_norm",
    }
    assert b["data.val_per_class"] == 0 and b["stages.1.max_norm"] == 0.1
    assert b["stages.0.optim.schedule_step"] == b["stages.1.optim.schedule_step"] == "before_epoch"
    assert {**a["stages.0.loss.params"], "logit_clip": 64} == b["stages.0.loss.params"]
    # the augmentation is the official one in both (grey fill, PIL geometry)
    assert a["data.autoaugment_fill"] == b["data.autoaugment_fill"] == 128
    assert a["data.autoaugment_geometry"] == b["data.autoaugment_geometry"] == "official"
    assert b["eval.tta_flip"] is True  # the official numbers are flip-TTA; we report both rows


# ------------------------------------------------------------------------------------------------------------
# the official formulas, restated


def official_bce(z: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, clip: float | None = 64.0) -> torch.Tensor:
    """sum over classes, mean over rows of pos * log(1 + e^-z) + neg * log(1 + e^z), z clamped to [-clip, clip]."""
    if clip is not None:
        z = z.clamp(-clip, clip)
    return (pos * torch.log(1 + torch.exp(-z)) + neg * torch.log(1 + torch.exp(z))).sum(1).mean()


def official_stage1(h, w, b, p, memory, y, q, tau=1.0, ss_weight=0.1, cc_weight=1.0, cc_s=1.0):
    """The released stage-1 loss with r = 1 (every class in the clean view's set), after epoch 0."""
    bs = y.shape[0]
    logits = h @ F.normalize(w, eps=1e-5).T + b
    clean, mix, cut = logits[:bs], logits[bs : 2 * bs], logits[2 * bs :]
    onehot = F.one_hot(y, w.shape[0]).to(h.dtype)
    neg = (q == 0).to(h.dtype)
    sc = (official_bce(clean, onehot, 1 - onehot) + official_bce(mix, q, neg) + official_bce(cut, q, neg)) / 3
    mem = F.normalize(memory, eps=1e-5)
    ss = sum(official_bce(F.normalize(pv, eps=1e-5) @ mem.T / tau, q, neg) for pv in (p[bs : 2 * bs], p[2 * bs :]))
    wn = F.normalize(w, eps=1e-5)
    sim = cc_s * wn @ wn.T
    eye = torch.eye(w.shape[0], dtype=h.dtype)
    cc = (eye * torch.log(1 + torch.exp(-sim)) + (1 - eye) * torch.log(1 + torch.exp(sim))).sum(1).mean()
    return sc + ss_weight * ss + cc_weight * cc


def test_stage1_loss_and_gradients_match_the_official_formulas_with_the_clamp() -> None:
    k, d, pdim, bs = 7, 6, 5, 8
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, k, (bs,), generator=g)
    y2 = torch.randint(0, k, (bs,), generator=g)
    lam = 0.35
    q = lam * F.one_hot(y, k).double() + (1 - lam) * F.one_hot(y2, k).double()
    h = (torch.randn(3 * bs, d, generator=g, dtype=torch.float64) * 45).requires_grad_()  # many |z| > 64
    w = torch.randn(k, d, generator=g, dtype=torch.float64).requires_grad_()
    b = (torch.randn(k, generator=g, dtype=torch.float64) * 0.1).requires_grad_()
    p = torch.randn(3 * bs, pdim, generator=g, dtype=torch.float64).requires_grad_()
    # float32 values: the official memory (and ours) is a float32 buffer
    memory = torch.randn(k, pdim, generator=g, dtype=torch.float64).float().double()

    ref = official_stage1(h, w, b, p, memory, y, q)
    ref_grads = torch.autograd.grad(ref, (h, w, b, p))

    twin = load_config(CONFIGS / "cifar100_lt/bce3s_r34_official.yaml")
    params = {**twin.stages[0].loss.params, "neg_class_ratio": 1.0}  # r = 1: the set is every class, as above
    loss = build_loss("bce3s", num_classes=k, class_counts=[1] * k, embedding_dim=pdim, seed=0, **params)
    loss = loss.double()
    loss.update(memory, torch.arange(k))
    loss.set_epoch(1)
    logits = h @ F.normalize(w, eps=1e-5).T + b
    target = torch.cat([F.one_hot(y, k).double(), q, q])
    view = torch.arange(3).repeat_interleave(bs)
    out = loss(logits, target, view=view, embeddings=p, weight=w).loss
    grads = torch.autograd.grad(out, (h, w, b, p))

    assert bool((logits.detach().abs() > 64).any())  # the clamp is exercised
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=0)
    for ours, theirs, name in zip(grads, ref_grads, "hwbp"):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12, msg=name)
    # the recipe without the clamp does not reproduce them
    plain = build_loss("bce3s", num_classes=k, class_counts=[1] * k, embedding_dim=pdim, seed=0,
                       **{**params, "logit_clip": None}).double()
    plain.update(memory, torch.arange(k))
    plain.set_epoch(1)
    unclamped = plain(logits, target, view=view, embeddings=p, weight=w).loss.detach()
    assert abs(float(unclamped) - float(ref.detach())) > 1e-3


def test_stage2_loss_and_gradients_match_the_official_class_balanced_bce() -> None:
    k, d, bs, beta = 6, 5, 10, 0.99999
    counts = [500, 180, 60, 20, 8, 5]
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, k, (bs,), generator=g)
    h = (torch.randn(bs, d, generator=g, dtype=torch.float64) * 20).requires_grad_()
    w = torch.randn(k, d, generator=g, dtype=torch.float64).requires_grad_()
    b = torch.zeros(k, dtype=torch.float64, requires_grad=True)
    # official: per-sample weight = class weight of its label, effective number, normalized to sum K
    cls = torch.tensor([(1 - beta) / (1 - beta**n) for n in counts], dtype=torch.float64)
    cls = (cls / cls.sum() * k).float().double()  # the official code casts the weights to float32
    logits = h @ F.normalize(w, eps=1e-5).T + b
    onehot = F.one_hot(y, k).double()
    per_row = cls[y][:, None]
    ref = official_bce(logits, onehot * per_row, (1 - onehot) * per_row, clip=None)  # stage 2: no clamp
    ref_grads = torch.autograd.grad(ref, (h, w, b))
    twin = load_config(CONFIGS / "cifar100_lt/bce3s_r34_official.yaml")
    params = {**twin.stages[1].loss.params, "neg_class_ratio": 1.0}
    loss = build_loss("cb_bce", num_classes=k, class_counts=counts, seed=0, **params)
    out = loss(h @ F.normalize(w, eps=1e-5).T + b, y).loss
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=0)
    # log(1 + exp(z)) itself rounds 1 + e^-|z| (|z| up to ~40 here): a few 1e-12 absolute in its gradients
    for ours, theirs in zip(torch.autograd.grad(out, (h, w, b)), ref_grads):
        torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-10)


def test_maxnorm_after_each_stage2_epoch_matches_the_official_pgd() -> None:
    """WB's MaxNorm_via_PGD as the official stage 2 uses it: thresholds from the stage-2 start (weight: min + 0.1 *
    (max - min) of the row norms; bias: infinite), rows above the threshold scaled onto it after every epoch."""
    g = torch.Generator().manual_seed(2)
    spread = torch.linspace(0.5, 3, 10, dtype=torch.float64)[:, None]
    w0 = torch.randn(10, 16, generator=g, dtype=torch.float64) * spread
    twin = load_config(CONFIGS / "cifar100_lt/bce3s_r34_official.yaml")
    theta = twin.stages[1].max_norm
    norms0 = w0.norm(dim=1)
    official_t = norms0.min() + theta * (norms0.max() - norms0.min())
    ours_t = max_norm_threshold(w0, theta)
    assert ours_t == pytest.approx(float(official_t), rel=1e-12)
    w_official, w_ours = w0.clone(), w0.clone()
    for _epoch in range(3):
        step = torch.randn(10, 16, generator=g, dtype=torch.float64) * 0.5
        w_official += step
        w_ours += step
        n = w_official.norm(dim=1)
        over = n > official_t
        w_official[over] = w_official[over] * (official_t / n[over])[:, None]
        apply_max_norm(w_ours, ours_t)
        torch.testing.assert_close(w_ours, w_official, rtol=1e-12, atol=0)
    assert bool((w_official.norm(dim=1) <= official_t + 1e-12).all())


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")  # the official order
@pytest.mark.parametrize("stage", [0, 1])
def test_schedule_of_each_stage_matches_the_official_stepping(stage: int) -> None:
    twin = load_config(CONFIGS / "cifar100_lt/bce3s_r34_official.yaml")
    s = twin.stages[stage]
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=s.optim.lr)
    official = torch.optim.lr_scheduler.CosineAnnealingLR(opt, s.epochs, eta_min=0.0)
    expected = []
    for _ in range(s.epochs):
        official.step()  # the official loop steps before training the epoch
        expected.append(opt.param_groups[0]["lr"])
    ours = [s.optim.lr * lr_factor(e, s.epochs, s.optim) for e in range(s.epochs)]
    assert ours == pytest.approx(expected, rel=1e-9, abs=1e-15)
    recipe = load_config(CONFIGS / "cifar100_lt/bce3s_r34.yaml").stages[stage]
    assert dataclasses.replace(recipe.optim, schedule_step="before_epoch") == s.optim
