"""Every stage knob of the engine, observed through the public API only.

Each test trains tiny runs with ``bce3s.engine.train`` from ``digits_lt/ce.yaml`` (small CNN, linear head, CE then
class-balanced softmax CE on a frozen backbone; one optimizer step per epoch because the batch is the whole
training set), reads what the run left (``TrainResult``, the run directory's checkpoints through
``load_checkpoint``, ``final.json``, ``metrics.jsonl``) and compares it with a reference computed here. Each test
fails if its knob's code were removed from the engine (``/work/baseline/mutants.py`` checks that).

Observation points that do not rely on engine internals:

* weights: ``checkpoints/<stage>_last.pt`` / ``<stage>_best_val.pt`` (the ``"model"`` state dict);
* what a stage fed its loss: a global ``nn.Module`` forward hook sees the loss module's targets, and
  ``TrainResult.losses[stage]`` says which module was the stage's loss;
* the memory format inside the model: a global forward pre-hook on ``nn.Conv2d``.

Runs are module-scoped fixtures shared by the tests; the file trains 11 tiny runs (about 10 s of CPU time).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import bce3s
from bce3s import faults
from bce3s.config import Config, load_config
from bce3s.data import AugmentSpec, SamplingSpec, build_data, make_batch_source
from bce3s.engine import train
from bce3s.engine.checkpoint import load_checkpoint
from bce3s.errors import BCE3SError
from bce3s.eval.metrics import summarize
from bce3s.models import build_model

CONFIG = Path(bce3s.__file__).parent / "configs" / "digits_lt" / "ce.yaml"
METRIC_KEYS = ("top1", "mean_per_class", "many", "medium", "few", "nll", "ece", "brier")


def _n_train() -> int:
    return len(build_data(load_config(CONFIG).data).train)


N_TRAIN = _n_train()  # 544 images: a batch of N_TRAIN is one optimizer step per epoch

# Stage 1: 2 epochs of CE; stage 2: 1 epoch (= 1 step) of CB softmax CE on the frozen backbone, from stage1_last.
COMMON = [
    "runtime.device=cpu",
    "runtime.seed=0",
    "stages.0.epochs=2",
    f"stages.0.batch_size={N_TRAIN}",
    "stages.1.epochs=1",
    f"stages.1.batch_size={N_TRAIN}",
    "eval.batch_size=512",
    "eval.tta_flip=true",
]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class Run:
    """A finished run: its config, ``TrainResult`` and helpers to read its checkpoints."""

    def __init__(self, cfg: Config, res: Any) -> None:
        self.cfg, self.res = cfg, res
        self.dir: Path = Path(res.run_dir)
        self.final: dict[str, Any] = res.final

    def state(self, name: str) -> dict[str, torch.Tensor]:
        return load_checkpoint(self.dir / "checkpoints" / f"{name}.pt")["model"]

    def model(self, name: str) -> nn.Module:
        """A fresh model of the run's architecture holding checkpoint ``name``, in eval mode."""
        m = build_model(self.cfg.model.name, num_classes=10, in_channels=1, head=self.cfg.model.head)
        m.load_state_dict(self.state(name))
        return m.eval()

    def metrics(self) -> list[dict[str, Any]]:
        return [json.loads(x) for x in (self.dir / "metrics.jsonl").read_text().splitlines()]


def _train(tmp_path_factory, name: str, *overrides: str) -> Run:
    cfg = load_config(CONFIG, overrides=[*COMMON, *overrides])
    res = train(cfg, tmp_path_factory.mktemp(name) / "run", quiet=True)
    return Run(cfg, res)


@contextmanager
def global_forward_hook(hook: Callable[..., None], *, pre: bool = False) -> Iterator[None]:
    """Call ``hook`` on every ``nn.Module`` forward while the context is open (torch's global module hooks)."""
    if pre:
        handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    else:
        handle = torch.nn.modules.module.register_module_forward_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def _param_names(cfg: Config, prefix: str) -> list[str]:
    m = build_model(cfg.model.name, num_classes=10, in_channels=1, head=cfg.model.head)
    return [n for n, _ in m.named_parameters() if n.startswith(prefix)]


def _flat(state: dict[str, torch.Tensor], names: list[str]) -> torch.Tensor:
    return torch.cat([state[n].detach().double().flatten() for n in names])


def _bn_buffers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.startswith("backbone.") and ("running_" in k or "num_batches" in k)}


@pytest.fixture(scope="module")
def eval_images() -> tuple[torch.Tensor, torch.Tensor]:
    """The test split exactly as evaluation sees it (un-augmented, normalized with the config's ``gray`` preset)."""
    cfg = load_config(CONFIG)
    data = build_data(cfg.data)
    src = make_batch_source(
        data.test, AugmentSpec(cfg.data.preset), SamplingSpec(train=False, batch_size=4096), device="cpu"
    )
    xs, ys = zip(*src)
    return torch.cat(xs), torch.cat(ys)


@torch.no_grad()
def logits_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    return model(x).logits.float()


def assert_metrics_equal(got: dict[str, Any], want: dict[str, Any], what: str) -> None:
    for key in METRIC_KEYS:
        assert got[key] == pytest.approx(want[key], rel=1e-6, abs=1e-6), (what, key, got[key], want[key])
    assert got["per_class"] == pytest.approx(want["per_class"], abs=1e-6), what


# ---------------------------------------------------------------------------------------------------------------
# runs (module-scoped: each trained once)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Run:
    """Reference: stage 2 trains the head of the frozen backbone, BN in train mode, nothing else switched on."""
    return _train(tmp_path_factory, "base")


@pytest.fixture(scope="module")
def logit_adjusted(tmp_path_factory) -> Run:
    return _train(tmp_path_factory, "la", "stages.1.logit_adjust_tau=1.5")


@pytest.fixture(scope="module")
def reset(tmp_path_factory) -> Run:
    # a learning rate so small that the single step cannot move the head by more than ~1e-6
    return _train(tmp_path_factory, "reset", "stages.1.reset_head=true", "stages.1.optim.lr=1e-6")


@pytest.fixture(scope="module")
def max_norm(tmp_path_factory) -> Run:
    return _train(tmp_path_factory, "maxnorm", "stages.1.max_norm=0.1")


@pytest.fixture(scope="module")
def bn_eval(tmp_path_factory) -> Run:
    return _train(tmp_path_factory, "bneval", "stages.1.bn_mode=eval")


@pytest.fixture(scope="module")
def from_best_val(tmp_path_factory) -> Run:
    # 3 epochs of 4 steps: stage 1's best validation epoch (1) is not its last (2) with these settings
    return _train(
        tmp_path_factory,
        "bestval",
        "stages.0.epochs=3",
        f"stages.0.batch_size={N_TRAIN // 4}",
        "stages.1.init_from=best_val",
    )


GRAD_CLIP = 0.01  # the unclipped first-step head gradient has norm ~0.3


@pytest.fixture(scope="module")
def clipped(tmp_path_factory) -> Run:
    return _train(tmp_path_factory, "clip", f"stages.1.optim.grad_clip={GRAD_CLIP}")


@pytest.fixture(scope="module")
def class_balanced(tmp_path_factory) -> tuple[Run, list[tuple[nn.Module, torch.Tensor]]]:
    """Stage 2 draws with the class-balanced sampler, two epochs; records every (module, integer target) call."""
    calls: list[tuple[nn.Module, torch.Tensor]] = []

    def record(module, args, kwargs, output):
        target = args[1] if len(args) > 1 else kwargs.get("target")
        if torch.is_tensor(target) and target.dim() == 1 and not target.dtype.is_floating_point:
            calls.append((module, target.detach().cpu().clone()))

    with global_forward_hook(record):
        run = _train(tmp_path_factory, "cb", "stages.1.sampler=class_balanced", "stages.1.epochs=2")
    return run, calls


@pytest.fixture(scope="module")
def channels_last(tmp_path_factory) -> tuple[Run, list[tuple[bool, bool, bool]]]:
    """``model.channels_last``; records (training?, input channels_last?, weight channels_last?) of every conv call
    whose input has more than one channel (a 1-channel NCHW tensor is channels_last-contiguous anyway)."""
    seen: list[tuple[bool, bool, bool]] = []

    def record(module, args):
        if isinstance(module, nn.Conv2d) and module.in_channels > 1:
            x = args[0]
            cl = torch.channels_last
            seen.append(
                (module.training, x.is_contiguous(memory_format=cl), module.weight.is_contiguous(memory_format=cl))
            )

    with global_forward_hook(record, pre=True):
        run = _train(tmp_path_factory, "channels_last", "model.channels_last=true")
    return run, seen


# ---------------------------------------------------------------------------------------------------------------
# freeze_backbone and bn_mode


def test_freeze_backbone_keeps_every_backbone_weight_and_trains_the_head(base):
    s1, s2 = base.state("stage1_last"), base.state("stage2_last")
    names = _param_names(base.cfg, "backbone.")
    assert any(".weight" in n for n in names) and any(".bias" in n for n in names)
    for n in names:
        assert torch.equal(s1[n], s2[n]), n
    head = _param_names(base.cfg, "head.")
    change = (_flat(s2, head) - _flat(s1, head)).norm()
    assert change > 1e-4, f"stage 2 did not train the head (change {change:.2e})"
    # the final model is stage 2's: its backbone is stage 1's too
    final = base.res.model.state_dict()
    for n in names:
        assert torch.equal(final[n].cpu(), s1[n]), n


def test_bn_mode_train_reestimates_frozen_backbone_statistics(base):
    s1, s2 = _bn_buffers(base.state("stage1_last")), _bn_buffers(base.state("stage2_last"))
    steps = len([r for r in base.metrics() if r["stage"] == "stage2"])  # one step per epoch
    for k, v in s1.items():
        if k.endswith("num_batches_tracked"):
            assert int(s2[k]) == int(v) + steps, k
        else:
            assert not torch.allclose(s2[k], v, rtol=0, atol=1e-7), f"{k} was not updated in train mode"


def test_bn_mode_eval_keeps_frozen_backbone_statistics(bn_eval):
    s1, s2 = bn_eval.state("stage1_last"), bn_eval.state("stage2_last")
    backbone = [k for k in s1 if k.startswith("backbone.")]
    assert any("running_mean" in k for k in _bn_buffers(s1))  # the backbone has BatchNorm statistics
    for k in backbone:
        assert torch.equal(s1[k], s2[k]), f"{k} changed with bn_mode eval"
    head = _param_names(bn_eval.cfg, "head.")
    assert not torch.equal(_flat(s1, head), _flat(s2, head)), "stage 2 did not train"


# ---------------------------------------------------------------------------------------------------------------
# init_from, reset_head


def test_init_from_best_val_starts_stage2_from_stage1_best_checkpoint(from_best_val):
    run = from_best_val
    best_epoch = run.final["selection"]["per_stage"]["stage1"]["epoch"]
    vals = [r["val"]["mean_per_class"] for r in run.metrics() if r["stage"] == "stage1"]
    # preconditions: the best epoch is not the last, so the two stage-1 checkpoints differ
    assert best_epoch == vals.index(max(vals)) and best_epoch != run.cfg.stages[0].epochs - 1, vals
    best, last = run.state("stage1_best_val"), run.state("stage1_last")
    names = _param_names(run.cfg, "backbone.")
    assert not torch.equal(_flat(best, names), _flat(last, names))
    s2 = run.state("stage2_last")
    for n in names:  # frozen backbone: stage 2 ends where it started
        assert torch.equal(s2[n], best[n]), f"{n}: stage 2 did not start from stage1_best_val"


def test_reset_head_starts_stage2_from_a_fresh_head(reset, base):
    s1, s2 = reset.state("stage1_last"), reset.state("stage2_last")
    # same stage 1 as the reference run; the backbone is frozen and not reset
    for n in _param_names(reset.cfg, "backbone."):
        assert torch.equal(s1[n], s2[n]), n
    head = _param_names(reset.cfg, "head.")
    h1, h2 = _flat(s1, head), _flat(s2, head)
    assert torch.equal(h1, _flat(base.state("stage1_last"), head))
    # one step at lr 1e-6 moves the head by ~1e-6; a re-drawn head is as far away as the head is large
    assert (h2 - h1).norm() > 0.3 * h1.norm(), "stage 2's head is stage 1's head: it was not re-initialised"
    # a fresh head is a fresh draw of the head's own init: nn.Linear's U(-1/sqrt(d), 1/sqrt(d)) weight and bias
    bound = 1 / math.sqrt(s2["head.weight"].shape[1]) + 1e-4
    assert float(h2.abs().max()) <= bound


# ---------------------------------------------------------------------------------------------------------------
# max_norm


def test_max_norm_projects_head_rows_onto_the_threshold_of_the_stage_start(max_norm):
    theta = max_norm.cfg.stages[1].max_norm
    start = max_norm.state("stage1_last")["head.weight"].double()  # stage 2 starts from stage1_last, linear head
    norms0 = start.norm(dim=1)
    threshold = float(norms0.min() + theta * (norms0.max() - norms0.min()))  # WB: min + theta * (max - min)
    assert int((norms0 > threshold * 1.01).sum()) >= 5  # precondition: most rows start above the threshold
    norms = max_norm.state("stage2_last")["head.weight"].double().norm(dim=1)
    assert float(norms.max()) <= threshold * (1 + 1e-6), (norms.tolist(), threshold)
    clipped = torch.isclose(norms, torch.full_like(norms, threshold), rtol=1e-6, atol=0)
    assert int(clipped.sum()) >= 5, (norms.tolist(), threshold)


# ---------------------------------------------------------------------------------------------------------------
# logit_adjust_tau


def test_logit_adjustment_subtracts_tau_log_prior_from_the_final_logits(logit_adjusted, base, eval_images):
    x, y = eval_images
    tau = logit_adjusted.cfg.stages[1].logit_adjust_tau
    counts = torch.tensor(logit_adjusted.final["train_counts"], dtype=torch.float64)
    assert counts.tolist() == base.final["train_counts"]
    prior = counts / counts.sum()
    # LA is post-hoc: training is the same as the reference run's, so its logits are the "raw" ones
    raw = logits_of(base.model("stage2_last"), x).double()
    expected = raw - tau * prior.log()
    for what, model in (
        ("TrainResult.model", logit_adjusted.res.model),
        ("stage2_last.pt", logit_adjusted.model("stage2_last")),
    ):
        got = logits_of(model, x).double()
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5, msg=what)
    # the reported test metrics are those of the adjusted logits, and they differ from the raw ones
    want = summarize(expected.float(), y, counts.long().tolist())
    assert_metrics_equal(logit_adjusted.final["test"]["last"], want, "last")
    assert logit_adjusted.final["test"]["last"]["nll"] != pytest.approx(base.final["test"]["last"]["nll"], rel=1e-3)


# ---------------------------------------------------------------------------------------------------------------
# eval.tta_flip


def test_tta_flip_rows_average_logits_with_the_horizontal_flip(base, eval_images):
    x, y = eval_images
    model = base.model("stage2_last")
    counts = base.final["train_counts"]
    plain = logits_of(model, x)
    flipped = logits_of(model, torch.flip(x, dims=[3]))
    assert_metrics_equal(base.final["test"]["last"], summarize(plain, y, counts), "last")
    assert_metrics_equal(base.final["test"]["last_tta_flip"], summarize((plain + flipped) / 2, y, counts), "tta")
    # precondition: the flip changes the logits (digits are not mirror-symmetric), hence the numbers
    assert float((flipped - plain).abs().max()) > 1e-2
    assert abs(base.final["test"]["last_tta_flip"]["nll"] - base.final["test"]["last"]["nll"]) > 1e-4


# ---------------------------------------------------------------------------------------------------------------
# optim.grad_clip


def test_grad_clip_bounds_the_first_step_by_lr_times_clip(clipped, base):
    lr = clipped.cfg.stages[1].optim.lr
    assert [r["lr"] for r in clipped.metrics() if r["stage"] == "stage2"] == [lr]
    assert clipped.cfg.stages[1].optim.weight_decay == 0.0
    head = _param_names(clipped.cfg, "head.")
    start = _flat(clipped.state("stage1_last"), head)
    assert torch.equal(start, _flat(base.state("stage1_last"), head))  # same stage 1 as the unclipped run
    step_clip = _flat(clipped.state("stage2_last"), head) - start
    step_free = _flat(base.state("stage2_last"), head) - start
    # SGD's first step is lr * grad (the momentum buffer starts as the gradient); the unclipped gradient is large
    assert step_free.norm() > 10 * lr * GRAD_CLIP, float(step_free.norm())
    # clipped: the gradient is rescaled to norm GRAD_CLIP, its direction kept (tolerances: float32 weights)
    assert float(step_clip.norm()) <= lr * GRAD_CLIP * (1 + 1e-3)
    assert float(step_clip.norm()) == pytest.approx(lr * GRAD_CLIP, rel=1e-3)
    cosine = float(step_clip @ step_free / (step_clip.norm() * step_free.norm()))
    assert cosine == pytest.approx(1.0, abs=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# sampler: class_balanced


def test_class_balanced_sampler_feeds_stage2_about_uniform_classes(class_balanced):
    run, calls = class_balanced
    counts = run.final["train_counts"]
    k = len(counts)

    def consumed(stage: str) -> torch.Tensor:
        loss = run.res.losses[stage]
        labels = [t for m, t in calls if m is loss]
        assert labels, f"the loss of {stage} saw no integer targets"
        return torch.bincount(torch.cat(labels), minlength=k)

    # control: stage 1 (instance sampler) sees every training image once per epoch
    assert consumed("stage1").tolist() == [c * run.cfg.stages[0].epochs for c in counts]
    got = consumed("stage2").double()
    draws = N_TRAIN * run.cfg.stages[1].epochs
    assert int(got.sum()) == draws
    expected = draws / k
    chi2 = float(((got - expected) ** 2 / expected).sum())
    chi2_instance = sum((c * run.cfg.stages[1].epochs - expected) ** 2 / expected for c in counts)
    # 27.9 = chi-square 99.9 % quantile with 9 degrees of freedom; the long-tailed counts give about 270 per epoch
    assert chi2 < 27.9 < chi2_instance, (got.tolist(), chi2, chi2_instance)
    assert float(got.min()) > 0.5 * expected and float(got.max()) < 1.5 * expected, got.tolist()


# ---------------------------------------------------------------------------------------------------------------
# model.channels_last


def test_channels_last_converts_the_model_and_keeps_the_numbers(channels_last, base):
    run, seen = channels_last
    assert any(training for training, _, _ in seen), "no training forward pass was observed"
    assert any(not training for training, _, _ in seen), "no evaluation forward pass was observed"
    assert all(x_cl and w_cl for _, x_cl, w_cl in seen), "a conv ran outside channels_last"
    # the format changes kernels, not the maths: the same weights and test numbers as the reference run, up to
    # float32 summation order (measured: <= 4e-5 absolute on weights of size ~0.2 after 3 steps)
    a, b = run.state("stage2_last"), base.state("stage2_last")
    for key, v in b.items():
        if v.is_floating_point():
            torch.testing.assert_close(a[key], v, rtol=1e-4, atol=2e-4, msg=key)
    for row in ("last", "last_tta_flip"):
        got, want = run.final["test"][row], base.final["test"][row]
        assert got["top1"] == want["top1"] and got["nll"] == pytest.approx(want["nll"], rel=1e-4), row


# ---------------------------------------------------------------------------------------------------------------
# resume


def test_resume_after_sigterm_mid_epoch_is_bit_identical(from_best_val, tmp_path, monkeypatch):
    """SIGTERM after step 2 of stage 1's second epoch (the fault-injection hook signals this very process; SGD
    momentum and the best-val record are in flight), then ``train(resume=True)``: everything the run reports equals
    the uninterrupted run's. The BCE3S variant (class memory, GLMC mixing) is in test_trainer.py; subprocess
    SIGKILL/SIGINT scenarios are in tests/reliability/test_preemption.py (slow)."""
    out = tmp_path / "run"
    monkeypatch.setenv(faults.ENV, "sigterm@step:0.1.2")
    with pytest.raises(BCE3SError) as stopped:
        train(from_best_val.cfg, out, quiet=True)
    assert stopped.value.exit_code == 130  # "interrupted", what the CLI exits with
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"
    assert not (out / "final.json").exists()
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    assert (state["stage_index"], state["epoch"], state["step"]) == (0, 1, 2)
    monkeypatch.delenv(faults.ENV)
    res = train(None, out, resume=True, quiet=True)
    assert res.final["test"] == from_best_val.final["test"]
    assert res.final["selection"] == from_best_val.final["selection"]

    def strip(recs):
        return [{k: v for k, v in r.items() if k not in ("time_s", "images_per_s")} for r in recs]

    assert strip(Run(from_best_val.cfg, res).metrics()) == strip(from_best_val.metrics())
    for ck in ("stage1_best_val", "stage1_last", "stage2_last"):
        a, b = load_checkpoint(out / "checkpoints" / f"{ck}.pt")["model"], from_best_val.state(ck)
        assert all(torch.equal(a[k], b[k]) for k in b), ck
