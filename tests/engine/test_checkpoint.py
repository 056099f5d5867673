import pytest
import torch

from bce3s.engine.checkpoint import load_checkpoint, save_checkpoint
from bce3s.errors import CheckpointError


def test_round_trip(tmp_path):
    state = {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "epoch": 3, "history": [{"loss": 1.5}]}
    save_checkpoint(tmp_path / "a.pt", state)
    back = load_checkpoint(tmp_path / "a.pt")
    assert back["epoch"] == 3 and back["history"] == [{"loss": 1.5}]
    torch.testing.assert_close(back["model"]["w"], state["model"]["w"])
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]  # no temp files left


def test_missing_and_truncated(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pt")
    save_checkpoint(tmp_path / "a.pt", {"x": torch.zeros(1000)})
    data = (tmp_path / "a.pt").read_bytes()
    (tmp_path / "a.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "a.pt")


def test_failed_write_keeps_previous(tmp_path, monkeypatch):
    save_checkpoint(tmp_path / "a.pt", {"v": 1})

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path / "a.pt", {"v": 2})
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "a.pt")["v"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt"]
