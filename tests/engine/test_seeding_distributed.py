import torch

from bce3s.engine.distributed import DistInfo, all_gather_cat, all_reduce_flag, resolve_device
from bce3s.seeding import derive_seed, make_generator


def test_derived_seeds_are_stable_and_distinct():
    assert derive_seed(0, "mix", 0, 1, 2) == derive_seed(0, "mix", 0, 1, 2)
    seeds = {derive_seed(0, "mix", 0, e, s) for e in range(10) for s in range(10)}
    assert len(seeds) == 100
    a = torch.rand(3, generator=make_generator(1, "x"))
    b = torch.rand(3, generator=make_generator(1, "x"))
    assert torch.equal(a, b)


def test_single_process_collectives_are_identity():
    info = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    t = torch.arange(5)
    assert all_gather_cat(t, info) is t
    assert all_reduce_flag(True, info) and not all_reduce_flag(False, info)
    assert info.is_main and not info.distributed


def test_cpu_device():
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
