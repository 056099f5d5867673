"""The static (sync-free) training step against the reference ``train_step``.

The static step is what a CUDA graph captures and what ``torch.compile`` traces: mixing from draws held in
tensors, device-side finiteness flag, fused optimizer with a tensor learning rate, gated memory and BatchNorm
updates. Here it runs eagerly (and compiled: with the ``aot_eager`` backend, and in a slow test with inductor) on
the CPU and must train exactly like the reference: same parameters, losses, class memory and partial-class
generator state after steps spanning two epochs with a schedule step between them, and the same handling of a
non-finite step under both policies.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil

import pytest
import torch
import yaml
from test_trainer import TINY
from torch.utils._python_dispatch import TorchDispatchMode

from bce3s.config import Config, MixingConfig, ModelConfig, OptimConfig, RuntimeConfig, load_config
from bce3s.engine import train
from bce3s.engine.capture import StaticStep
from bce3s.engine.distributed import DistInfo
from bce3s.engine.optim import build_optimizer, build_scheduler, make_plain, make_static
from bce3s.engine.step import StepRuntime, TrainBatch, train_step
from bce3s.engine.validate import validate_config
from bce3s.errors import ConfigError, NonFiniteError
from bce3s.losses import _inputs, build_loss
from bce3s.losses import base as loss_base
from bce3s.models import build_model

K, B, SIZE = 10, 8, 16
DEVICE = torch.device(os.environ.get("BCE3S_TEST_DEVICE", "cpu"))


def _runtime(
    *,
    static: bool,
    nan_policy: str = "stop",
    grad_clip: float | None = None,
    loss: str = "bce3s",
    dtype: torch.dtype = torch.float32,
):
    torch.manual_seed(0)
    model = build_model("small_cnn", num_classes=K, head="normalized", projector_dim=16, in_channels=3)
    model = model.to(DEVICE, dtype)
    counts = [100, 60, 40, 30, 20, 12, 8, 5, 3, 2]
    params = {"neg_class_ratio": 0.4, "embedding_dim": 16, "seed": 3} if loss == "bce3s" else {}
    loss_fn = build_loss(loss, num_classes=K, class_counts=counts, **params).to(DEVICE, dtype)
    optim = OptimConfig(name="sgd", lr=0.1, momentum=0.9, weight_decay=5e-3, nesterov=True)
    optimizer = build_optimizer(model.named_parameters(), optim, static=static)
    rt = StepRuntime(
        model=model,
        raw_model=model,
        loss_fn=loss_fn,
        optimizer=optimizer,
        scaler=torch.amp.GradScaler(DEVICE.type, enabled=False),
        dist=DistInfo(rank=0, local_rank=0, world_size=1, device=DEVICE),
        num_classes=K,
        mixing=MixingConfig(enabled=True),
        amp_dtype=None,
        channels_last=False,
        grad_clip=grad_clip,
        nan_policy=nan_policy,
        seed=7,
        stage_index=0,
    )
    return rt, build_scheduler(optimizer, optim, 4)


def _batches(
    n: int, *, bad_step: int | None = None, dtype: torch.dtype = torch.float32
) -> list[tuple[torch.Tensor, ...]]:
    gen = torch.Generator().manual_seed(1)
    out = []
    for i in range(n):
        x = torch.randn(B, 3, SIZE, SIZE, generator=gen).to(dtype)
        x2 = torch.randn(B, 3, SIZE, SIZE, generator=gen).to(dtype)
        if i == bad_step:
            x[0, 0, 0, 0] = float("nan")
        y = torch.randint(0, K, (B,), generator=gen)
        y2 = torch.randint(0, K, (B,), generator=gen)
        out.append(tuple(t.to(DEVICE) for t in (x, y, x2, y2)))
    return out


def _run(rt, sched, step_fn, batches, epochs=(0, 1)) -> list[float]:
    """Steps over two epochs (loss.set_epoch and a schedule step between them); the losses as floats."""
    losses = []
    per = len(batches) // len(epochs)
    for e_i, epoch in enumerate(epochs):
        rt.loss_fn.set_epoch(epoch)
        for s in range(per):
            x, y, x2, y2 = batches[e_i * per + s]
            res = step_fn(TrainBatch(x, y, x2, y2, epoch=epoch, step=s))
            losses.append(float(res.loss))
        sched.step()
    return losses


def _assert_same_state(a: StepRuntime, b: StepRuntime, *, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    for (name, pa), pb in zip(a.raw_model.state_dict().items(), b.raw_model.state_dict().values()):
        torch.testing.assert_close(pa, pb, rtol=rtol, atol=atol, msg=name)
    mem_a, mem_b = a.loss_fn.class_memory, b.loss_fn.class_memory
    torch.testing.assert_close(mem_a.memory, mem_b.memory, rtol=rtol, atol=atol)
    assert torch.equal(mem_a.seen, mem_b.seen)
    assert torch.equal(a.loss_fn.sampler.generator.get_state(), b.loss_fn.sampler.generator.get_state())


@pytest.mark.parametrize("grad_clip", [None, 0.5])
def test_static_step_trains_like_the_reference(grad_clip):
    ref, ref_sched = _runtime(static=False, grad_clip=grad_clip)
    st, st_sched = _runtime(static=True, grad_clip=grad_clip)
    batches = _batches(6)
    ref_losses = _run(ref, ref_sched, lambda b: train_step(ref, b), batches)
    step = StaticStep(st, "static")
    st_losses = _run(st, st_sched, step, batches)
    torch.testing.assert_close(torch.tensor(st_losses), torch.tensor(ref_losses), rtol=1e-5, atol=1e-6)
    assert st_losses[3] != st_losses[0]  # training moved
    _assert_same_state(ref, st)
    # the schedule wrote into the tensor learning rate the fused optimizer reads
    assert float(st.optimizer.param_groups[0]["lr"]) == pytest.approx(ref.optimizer.param_groups[0]["lr"])
    assert st.loss_fn.class_memory.seen.any()


def test_compiled_step_equals_eager():
    """``compiled`` traces mixing, forward and loss (aot_eager: the graph without code generation)."""
    torch._dynamo.reset()
    ref, ref_sched = _runtime(static=True)
    comp, comp_sched = _runtime(static=True)
    batches = _batches(4)
    ref_losses = _run(ref, ref_sched, StaticStep(ref, "static"), batches)
    comp_losses = _run(comp, comp_sched, StaticStep(comp, "compiled", backend="aot_eager"), batches)
    torch.testing.assert_close(torch.tensor(comp_losses), torch.tensor(ref_losses), rtol=1e-5, atol=1e-6)
    _assert_same_state(ref, comp, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.skipif(
    DEVICE.type == "cpu" and not any(shutil.which(c) for c in ("g++", "c++", "clang++")),
    reason="inductor needs a C++ compiler on the CPU; none found",
)
def test_inductor_compiled_step_equals_static_without_recompiling():
    """``compiled`` with the default backend (inductor: generated, fused C++ on the CPU), as users run it.

    Steps over two epochs compile once: no recompilation when the epoch and the contrastive term's switch change
    (a recompiled step would cost a compilation per epoch). And they train like the static step. The model runs
    in float64 here: in float32 the two runs' different summation orders drift apart over a few steps (an input
    of a ReLU within rounding of 0 takes the other branch and changes that channel's gradient), which would hide a
    real difference behind that noise. The losses still compute in float32, so the tolerance is float32's.
    """
    torch._dynamo.reset()
    ref, ref_sched = _runtime(static=True, dtype=torch.float64)
    comp, comp_sched = _runtime(static=True, dtype=torch.float64)
    batches = _batches(8, dtype=torch.float64)
    ref_losses = _run(ref, ref_sched, StaticStep(ref, "static"), batches)
    with torch._dynamo.config.patch(error_on_recompile=True):
        comp_losses = _run(comp, comp_sched, StaticStep(comp, "compiled"), batches)
    # measured: differences at most 1/16 of these tolerances; a loss scaled by 1 + 1e-5 in the compiled step alone
    # exceeds them 38-fold
    torch.testing.assert_close(torch.tensor(comp_losses), torch.tensor(ref_losses), rtol=1e-5, atol=1e-5)
    _assert_same_state(ref, comp, rtol=1e-5, atol=1e-6)


def test_skip_policy_drops_the_bad_step_on_the_device():
    ref, ref_sched = _runtime(static=False, nan_policy="skip")
    st, st_sched = _runtime(static=True, nan_policy="skip")
    batches = _batches(4, bad_step=1)
    ref_losses = _run(ref, ref_sched, lambda b: train_step(ref, b), batches)
    step = StaticStep(st, "static")
    skipped = []

    def run_and_count(batch):
        res = step(batch)
        skipped.append(bool(res.skipped))
        return res

    st_losses = _run(st, st_sched, run_and_count, batches)
    assert skipped == [False, True, False, False]
    assert st_losses[1] == 0.0 and ref_losses[1] == 0.0
    torch.testing.assert_close(torch.tensor(st_losses), torch.tensor(ref_losses), rtol=1e-5, atol=1e-6)
    _assert_same_state(ref, st)  # parameters, BatchNorm statistics and memory all rolled back alike
    step.check(0)  # skip: nothing raised


def test_stop_policy_names_the_first_bad_step_and_applies_nothing_of_it():
    st, _ = _runtime(static=True, nan_policy="stop")
    step = StaticStep(st, "static")
    batches = _batches(3, bad_step=1)
    st.loss_fn.set_epoch(0)
    x, y, x2, y2 = batches[0]
    step(TrainBatch(x, y, x2, y2, epoch=0, step=0))
    before = copy.deepcopy(st.raw_model.state_dict())
    memory = st.loss_fn.class_memory.memory.clone()
    x, y, x2, y2 = batches[1]
    step(TrainBatch(x, y, x2, y2, epoch=0, step=1))
    for name, value in st.raw_model.state_dict().items():
        if not name.endswith(("running_mean", "running_var", "num_batches_tracked")):
            assert torch.equal(value, before[name]), name
    assert torch.equal(st.loss_fn.class_memory.memory, memory)
    with pytest.raises(NonFiniteError) as err:
        step.check(0)
    assert (err.value.epoch, err.value.step, err.value.term) == (0, 1, "joint")


def test_ce_without_mixing_matches_the_reference():
    ref, ref_sched = _runtime(static=False, loss="ce")
    st, st_sched = _runtime(static=True, loss="ce")
    for rt in (ref, st):
        rt.mixing = MixingConfig(enabled=False)
    batches = [(x, y, None, None) for x, y, _, _ in _batches(4)]
    ref_losses = _run(ref, ref_sched, lambda b: train_step(ref, b), batches)
    st_losses = _run(st, st_sched, StaticStep(st, "static"), batches)
    torch.testing.assert_close(torch.tensor(st_losses), torch.tensor(ref_losses), rtol=1e-5, atol=1e-6)
    for pa, pb in zip(ref.raw_model.parameters(), st.raw_model.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)


#: Ops that make the host wait for the device (or that a CUDA graph capture rejects): a value read back
#: (``.item()``, ``bool(t)``, ``int(t)``), data-dependent output shapes, a host-side range check.
_HOST_SYNC_OPS = {"_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique", "_unique2"}
_HOST_SYNC_OPS |= {"unique_consecutive", "unique_dim", "bincount", "repeat_interleave", "equal", "is_nonzero"}


class _SyncRecorder(TorchDispatchMode):
    """Records every dispatched op that would synchronise with the device inside a captured step."""

    def __init__(self) -> None:
        super().__init__()
        self.syncs: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        bool_index = name.startswith("index") and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool
            for a in args
            if isinstance(a, (list, tuple))
            for i in a
        )
        if name in _HOST_SYNC_OPS or bool_index:
            self.syncs.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("nan_policy", ["stop", "skip"])
def test_the_static_step_body_never_waits_for_the_device(monkeypatch, nan_policy):
    """What ``graphed`` captures (the step body) dispatches no op that reads a value back to the host.

    On an accelerator the losses skip their value checks (a sync); the CPU checks them, so the test runs the body
    with the accelerator's rule. A capture that meets a sync fails, and an eager step with one waits every step.
    """
    monkeypatch.setattr(_inputs, "values_checked", lambda t, force: force)
    monkeypatch.setattr(loss_base, "values_checked", lambda t, force: force)
    st, _ = _runtime(static=True, nan_policy=nan_policy, grad_clip=1.0)
    step = StaticStep(st, "static")
    batches = _batches(3)
    st.loss_fn.set_epoch(1)  # the contrastive term on, the memory written by the warm-up steps
    for i, (x, y, x2, y2) in enumerate(batches[:2]):
        step(TrainBatch(x, y, x2, y2, epoch=1, step=i))
    x, y, x2, y2 = batches[2]
    inputs = step._inputs(TrainBatch(x, y, x2, y2, epoch=1, step=2))  # host side, before a replay
    st.loss_fn.prepare_step()
    st.optimizer.zero_grad(set_to_none=True)
    with _SyncRecorder() as rec:
        out = step._body(inputs)
    assert rec.syncs == []
    assert float(out.loss) > 0  # the body ran the whole step


@pytest.mark.gpu
def test_graphed_step_equals_static_on_cuda():
    """The captured CUDA graph replays the static step (warm-up, capture, replays across an epoch switch).

    In float64 (the losses still compute in float32): the two runs use different streams, where cuBLAS and
    cuDNN may pick other kernels, and in float32 such rounding differences can grow over 16 steps into a
    mismatch (an input of a ReLU within rounding of 0 takes the other branch; seen on the CPU between inductor
    and eager code). A false failure here would send the device check's recipe to the slow eager step.
    """
    if DEVICE.type != "cuda":
        pytest.skip("set BCE3S_TEST_DEVICE=cuda")
    ref, ref_sched = _runtime(static=True, dtype=torch.float64)
    gr, gr_sched = _runtime(static=True, dtype=torch.float64)
    batches = _batches(16, dtype=torch.float64)
    ref_losses = _run(ref, ref_sched, StaticStep(ref, "static"), batches)
    graphed = StaticStep(gr, "graphed")
    gr_losses = _run(gr, gr_sched, graphed, batches)
    assert graphed.capture_error is None, graphed.capture_error
    assert graphed._graph is not None
    torch.testing.assert_close(torch.tensor(gr_losses), torch.tensor(ref_losses), rtol=1e-5, atol=1e-5)
    _assert_same_state(ref, gr, rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
def test_graphed_step_captures_a_loss_that_checks_its_inputs():
    """``check_inputs`` reads values on the host in an eager step; while a graph is captured it must not."""
    if DEVICE.type != "cuda":
        pytest.skip("set BCE3S_TEST_DEVICE=cuda")
    st, sched = _runtime(static=True)
    st.loss_fn.check_inputs = True
    step = StaticStep(st, "graphed")
    _run(st, sched, step, _batches(8))
    assert step.capture_error is None, step.capture_error
    assert step._graph is not None


def test_checkpoints_cross_between_static_and_eager_optimizers():
    """A static optimizer's state (tensor lr) resumes an eager one and the other way round, continuing alike."""

    cfg = OptimConfig(name="sgd", lr=0.1, momentum=0.9, weight_decay=5e-3)

    def model_and_grad(seed):
        torch.manual_seed(seed)
        m = torch.nn.Linear(4, 3)
        return m

    def step(m, opt):
        m.zero_grad()
        m(torch.ones(2, 4)).square().sum().backward()
        opt.step()

    a = model_and_grad(0)
    opt_a = build_optimizer(a.named_parameters(), cfg, static=True)
    sched_a = build_scheduler(opt_a, cfg, 4)
    step(a, opt_a)
    sched_a.step()
    b = model_and_grad(0)
    b.load_state_dict(a.state_dict())
    opt_b = build_optimizer(b.named_parameters(), cfg)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))  # as from a file: no shared tensors
    make_plain(opt_b)
    assert isinstance(opt_b.param_groups[0]["lr"], float)
    c = model_and_grad(0)
    c.load_state_dict(a.state_dict())
    opt_c = build_optimizer(c.named_parameters(), cfg, static=True)
    opt_c.load_state_dict(copy.deepcopy(opt_b.state_dict()))
    make_static(opt_c)
    assert isinstance(opt_c.param_groups[0]["lr"], torch.Tensor)
    for m, opt in ((a, opt_a), (b, opt_b), (c, opt_c)):
        step(m, opt)
    for pa, pb, pc in zip(a.parameters(), b.parameters(), c.parameters()):
        torch.testing.assert_close(pb, pa)
        torch.testing.assert_close(pc, pa)


def _train_losses(tmp_path, step: str, device: str) -> list[float]:
    cfg = copy.deepcopy(TINY)
    cfg["stages"][0]["loss"]["params"]["neg_class_ratio"] = 0.5  # partial class sets: the static draw buffer
    cfg["runtime"] = {"device": device, "seed": 3, "step": step, "threads": 1}
    path = tmp_path / f"{step}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    out = tmp_path / step
    train(load_config(path), out, quiet=True)
    assert json.loads((out / "final.json").read_text())["step"] == step  # the run really used that step
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


@pytest.mark.slow
def test_a_static_run_trains_like_an_eager_run(tmp_path):
    """Through the engine (stages, schedule, stage 2 on a frozen backbone, the last smaller batch): same losses.

    The fused optimizer rounds the weight-decay update differently from the for-each one (last bits); over two
    epochs that grows to ~1e-4 relative in the stage-2 loss, hence the tolerance (the step-level tests above are
    exact to 1e-5).
    """
    eager = _train_losses(tmp_path, "eager", "cpu")
    calls = []
    original = StaticStep.__call__
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(StaticStep, "__call__", lambda self, batch: calls.append(1) or original(self, batch))
        static = _train_losses(tmp_path, "static", "cpu")
    assert len(calls) > 0  # the engine ran the static step
    assert len(eager) == len(static) == 3
    torch.testing.assert_close(torch.tensor(static), torch.tensor(eager), rtol=1e-3, atol=1e-4)


@pytest.mark.gpu
def test_a_graphed_run_trains_like_an_eager_run_on_cuda(tmp_path):
    """``runtime.step: graphed`` through the engine on CUDA (warm-up, capture, replays, stage 2's own graph).

    The epoch losses of two float32 runs: on the CPU, static against eager (the fused against the for-each
    optimizer) differ by 1e-8, 4e-6 and 2.4e-4 relative in the three epochs; on CUDA the graphed run's other
    stream may also get other cuBLAS kernels, so the tolerance leaves room (the step-level float64 test above is
    the exact one). A false failure would send the device check's recipe to the slow eager step.
    """
    eager = _train_losses(tmp_path, "eager", "cuda")
    graphed = _train_losses(tmp_path, "graphed", "cuda")
    assert len(eager) == len(graphed) == 3
    torch.testing.assert_close(torch.tensor(graphed), torch.tensor(eager), rtol=5e-3, atol=1e-4)


class _FakeGraphs:
    """``torch.cuda`` graph and stream calls replaced so that the ``graphed`` control flow runs on the CPU.

    Capturing runs the step's body but then restores every tensor it touched (a real capture only records work);
    a replay zeroes the gradients (a replayed backward writes them afresh), runs the body on the graph's static
    inputs and writes the results into the static outputs (a replay rewrites the captured output tensors).
    ``fail`` makes every capture raise as CUDA does for an operation it cannot capture.
    """

    def __init__(self, step: StaticStep, *, fail: bool = False) -> None:
        self.step, self.fail = step, fail
        self.captures = self.replays = 0
        fake = self

        class Graph:
            def replay(self) -> None:
                fake.replays += 1
                st = fake.step
                st.rt.optimizer.zero_grad(set_to_none=True)
                new = st._body(st._static_in)
                old = st._static_out
                for a, b in zip(
                    [old.loss, old.skipped, *old.terms.values()], [new.loss, new.skipped, *new.terms.values()]
                ):
                    a.copy_(b)

        class Capture:
            def __init__(self, graph, stream=None, capture_error_mode="global") -> None:
                pass

            def __enter__(self) -> None:
                fake.captures += 1
                fake.saved = [(t, t.clone()) for t in fake._state()]

            def __exit__(self, *exc) -> bool:
                with torch.no_grad():
                    for t, old in fake.saved:
                        t.copy_(old)
                if fake.fail and exc[0] is None:
                    raise RuntimeError("CUDA error: operation not permitted when stream is capturing")
                return False

        class Stream:
            def wait_stream(self, other) -> None:
                pass

        self.patches = {
            "CUDAGraph": Graph,
            "graph": Capture,
            "Stream": lambda *a, **k: Stream(),
            "current_stream": lambda *a, **k: Stream(),
            "stream": lambda s: contextlib.nullcontext(),
        }
        step.mode, step._stream = "graphed", Stream()

    def _state(self) -> list[torch.Tensor]:
        rt = self.step.rt
        tensors = [*rt.raw_model.state_dict().values(), self.step.bad_step, self.step.bad_term]
        tensors += [v for v in rt.loss_fn.state_dict().values() if isinstance(v, torch.Tensor)]
        tensors += [v for s in rt.optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
        return tensors


def _odd_batches(n_epochs: int, per_epoch: int) -> list[tuple[torch.Tensor, ...]]:
    """``per_epoch`` full batches then one smaller last batch, per epoch."""
    full = _batches(n_epochs * (per_epoch + 1))
    out = []
    for e in range(n_epochs):
        chunk = full[e * (per_epoch + 1) : (e + 1) * (per_epoch + 1)]
        out += chunk[:per_epoch] + [tuple(t[: B // 2] for t in chunk[per_epoch])]
    return out


@pytest.mark.parametrize("fail", [False, True])
def test_graphed_control_flow_trains_like_the_static_step(fail, monkeypatch):
    """The graphed mode's host logic (warm-up per shape, capture, copy into the static inputs, replay, eager odd
    batch, eager fallback after a failed capture) with a stand-in for the CUDA graph: same training as ``static``."""
    if DEVICE.type != "cpu":
        pytest.skip("the stand-in graph runs on the CPU")
    batches = _odd_batches(2, 5)  # per epoch: 5 full batches and a last one of B / 2
    ref, ref_sched = _runtime(static=True)
    ref_losses = _run(ref, ref_sched, StaticStep(ref, "static"), batches)
    gr, gr_sched = _runtime(static=True)
    step = StaticStep(gr, "static")
    fake = _FakeGraphs(step, fail=fail)
    for name, value in fake.patches.items():
        monkeypatch.setattr(torch.cuda, name, value)
    gr_losses = _run(gr, gr_sched, step, batches)
    torch.testing.assert_close(torch.tensor(gr_losses), torch.tensor(ref_losses), rtol=1e-5, atol=1e-6)
    _assert_same_state(ref, gr)
    if fail:  # never retried after a failure
        assert fake.captures == 1
        assert step._graph is None and "not permitted" in step.capture_error and fake.replays == 0
    else:
        # captured at the 4th full batch (3 warm-ups of that shape), replayed for it and every later full batch;
        # the two smaller batches ran eagerly. Epoch 0 (contrastive term off) gates the projector's update; when
        # the term starts the step is captured once more, without the gate, at the first full batch.
        assert fake.captures == 2 and not step._graph_gating
        assert step.capture_error is None and fake.replays == 10 - 3
        # the static inputs were copied into, not rebound: they hold the last full batch's images
        assert torch.equal(step._static_in.images, batches[-2][0])


def test_a_rebound_learning_rate_reaches_the_tensor_the_step_reads():
    """A schedule that rebinds ``group["lr"]`` (to a float or a new tensor) must still reach a captured graph."""
    st, _ = _runtime(static=True)
    step = StaticStep(st, "static")
    lr = st.optimizer.param_groups[0]["lr"]
    x, y, x2, y2 = _batches(1)[0]
    st.optimizer.param_groups[0]["lr"] = 0.025
    step(TrainBatch(x, y, x2, y2))
    assert st.optimizer.param_groups[0]["lr"] is lr and float(lr) == pytest.approx(0.025)
    st.optimizer.param_groups[0]["lr"] = torch.tensor(0.0125)
    step(TrainBatch(x, y, x2, y2, step=1))
    assert st.optimizer.param_groups[0]["lr"] is lr and float(lr) == pytest.approx(0.0125)


def test_graphed_refuses_a_compiled_model_before_training():
    validate_config(Config(model=ModelConfig(compile=True), runtime=RuntimeConfig(device="cuda", step="compiled")))
    validate_config(Config(model=ModelConfig(compile=False), runtime=RuntimeConfig(device="cuda", step="graphed")))
    with pytest.raises(ConfigError):
        validate_config(Config(model=ModelConfig(compile=True), runtime=RuntimeConfig(device="cuda", step="graphed")))
