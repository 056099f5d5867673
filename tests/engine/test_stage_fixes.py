"""Engine behaviour that used to contradict the documented config (found by the knob tests), now guarded.

Each test states the documented behaviour: stage ``augment: false`` gives un-augmented batches, post-hoc logit
adjustment reaches ``best_val`` too, and a stop request during an epoch's last step is honoured.
Same tiny setup as test_stage_knobs.py (digits_lt/ce.yaml, one optimizer step per epoch, public API only).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import bce3s
from bce3s import faults
from bce3s.config import load_config
from bce3s.data import AugmentSpec, SamplingSpec, build_data, make_batch_source
from bce3s.engine import train
from bce3s.errors import BCE3SError
from bce3s.models import Classifier

CONFIG = Path(bce3s.__file__).parent / "configs" / "digits_lt" / "ce.yaml"


def _overrides(n_train: int) -> list[str]:
    return [
        "runtime.device=cpu",
        "stages.0.epochs=2",
        f"stages.0.batch_size={n_train}",
        "stages.1.epochs=1",
        f"stages.1.batch_size={n_train}",
        "eval.batch_size=512",
    ]


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def setup(one_thread):
    cfg = load_config(CONFIG)
    data = build_data(cfg.data)
    return data, _overrides(len(data.train))


def test_augment_false_trains_on_unaugmented_images(setup, tmp_path):
    """``stages.N.augment: false`` = "use the eval transform": stage 2's batch is the training split exactly as
    evaluation sees it (in sampler order), while stage 1 (augment true) sees randomly cropped images."""
    data, overrides = setup
    batches: list[torch.Tensor] = []

    def record(module, args):
        if isinstance(module, Classifier) and module.training:
            batches.append(args[0].detach().cpu().clone())

    handle = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        cfg = load_config(CONFIG, overrides=[*overrides, "stages.1.augment=false"])
        train(cfg, tmp_path / "run", quiet=True)
    finally:
        handle.remove()
    assert len(batches) == 3  # stage 1: 2 steps, stage 2: 1 step
    src = make_batch_source(
        data.train, AugmentSpec(cfg.data.preset), SamplingSpec(train=False, batch_size=4096), device="cpu"
    )
    ((clean, _),) = list(src)
    probe = torch.randn(clean[0].numel(), dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def signature(x: torch.Tensor) -> torch.Tensor:  # the batch as a sorted multiset of image fingerprints
        return torch.sort(x.flatten(1).double() @ probe).values

    assert not torch.allclose(signature(batches[0]), signature(clean), atol=1e-4)  # control: stage 1 augments
    torch.testing.assert_close(signature(batches[2]), signature(clean), rtol=0, atol=1e-4)


def test_logit_adjustment_applies_to_best_val_too(setup, tmp_path):
    """``logit_adjust_tau`` adjusts "the model after the stage". With one epoch, best_val and last are the same
    epoch, so their test numbers must agree; today best_val.pt is saved before the adjustment."""
    _, overrides = setup
    cfg = load_config(CONFIG, overrides=[*overrides, "stages.1.logit_adjust_tau=1.0"])
    final = train(cfg, tmp_path / "run", quiet=True).final
    assert final["selection"]["best_val"]["epoch"] == 0  # the only epoch: best_val is the last epoch
    for key in ("top1", "mean_per_class", "nll"):
        assert final["test"]["best_val"][key] == final["test"]["last"][key], key


def test_sigterm_during_the_last_step_of_an_epoch_stops_the_run(setup, tmp_path, monkeypatch):
    """A SIGTERM must stop training after the current step and write last.pt. Today the loop honours it only when
    more steps of the same epoch remain (``step < total``): at the last step of an epoch the flag is ignored until
    a later mid-epoch step, and with one-step epochs never: the run trains to the end."""
    _, overrides = setup
    cfg = load_config(CONFIG, overrides=overrides)
    monkeypatch.setenv(faults.ENV, "sigterm@step:0.0.1")  # after the only step of stage 1's first epoch
    with pytest.raises(BCE3SError) as stopped:
        train(cfg, tmp_path / "run", quiet=True)
    assert stopped.value.exit_code == 130
