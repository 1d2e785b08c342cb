"""Checkpoints: atomic, plain data only, RNG states round-trip exactly."""

from __future__ import annotations

import os
import pickle
import random
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from subspace_fsl.engine.checkpoint import (
    CheckpointError,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)


def draw() -> tuple[list[float], list[float], list[float]]:
    legacy_numpy = np.random.rand(3).tolist()  # noqa: NPY002
    return torch.rand(3).tolist(), legacy_numpy, [random.random() for _ in range(3)]


def test_rng_state_round_trips_through_a_checkpoint(tmp_path: Path) -> None:
    seed_everything(7)
    draw()
    np.random.randn()  # noqa: NPY002 - leaves a cached gaussian in numpy's legacy state
    save_checkpoint({"rng": rng_state()}, tmp_path / "c.pt")
    expected = draw()
    seed_everything(99)
    set_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])
    assert draw() == expected


def test_state_with_model_optimizer_and_generator_state_loads_back(tmp_path: Path) -> None:
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 4)).sum().backward()
    optimizer.step()
    generator_state = np.random.default_rng(3).bit_generator.state  # 128-bit python ints
    save_checkpoint(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "sampler": generator_state,
            "history": [{"episode": 1, "loss": 0.5}],
        },
        tmp_path / "c.pt",
    )
    state = load_checkpoint(tmp_path / "c.pt")
    assert torch.equal(state["model"]["weight"], model.weight.detach())
    assert state["sampler"] == generator_state
    assert state["history"] == [{"episode": 1, "loss": 0.5}]
    restored = torch.optim.Adam(model.parameters())
    restored.load_state_dict(state["optimizer"])


class Payload:
    """Pickles to a call of os.system: what a hostile checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_carrying_code_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format": "subspace-fsl/1", "model": {}, "extra": Payload(marker)}, path)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path)
    assert not marker.exists()
    # the same payload as a bare pickle (not a torch zip) is refused too
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps(Payload(marker), protocol=2))
    with pytest.raises(CheckpointError):
        load_checkpoint(raw)
    assert not marker.exists()


def test_foreign_or_missing_files_are_named(tmp_path: Path) -> None:
    torch.save({"weights": torch.ones(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a subspace-fsl/1 checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError, match=r"nothing\.pt"):
        load_checkpoint(tmp_path / "nothing.pt")


def test_save_is_atomic_old_file_survives_a_failed_write(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint({"episode": 1}, path)

    class Unsaveable:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError):
        save_checkpoint({"episode": 2, "bad": Unsaveable()}, path)
    assert load_checkpoint(path)["episode"] == 1
    assert zipfile.is_zipfile(path)
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary left behind


def test_a_damaged_checkpoint_is_named_as_damaged(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    save_checkpoint({"model": {"w": torch.zeros(1000)}}, path)
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match=r"cannot be read \(damaged"):
        load_checkpoint(path)
