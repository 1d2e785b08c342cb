"""The tiny in-process configuration the engine and command-line tests share: 8 synthetic
classes x 12 images at 32 px split 4 / 2 / 2, conv4 (D = 256) + 2 subspaces of dim 8,
2-way 2-shot 3-query episodes, one thread on the CPU. (The tiny *workflow* configuration is
.test/config.yaml, read by tests/test_workflow.py as ``TINY``.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# the validation and logging cadence of the tests that train tens of episodes
EVERY_10 = {"val_every": 10, "val_episodes": 4, "log_every": 5, "checkpoint_every": 5}
# ... and of those that train 4 (the command-line checks)
EVERY_2 = {"val_every": 2, "val_episodes": 2, "log_every": 2, "checkpoint_every": 2}


def tiny_settings(root: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    """The settings above, results and data under ``root``; each keyword names a section whose
    keys it sets (``train={"max_episodes": 40}``), a section not there is added."""
    settings: dict[str, Any] = {
        "results_dir": str(root / "results"),
        "data_dir": str(root / "data"),
        "dataset": {"name": "tiny", "image_size": 32,
                    "synthetic": {"classes": 8, "images_per_class": 12, "size": 32}},
        "split": {"counts": [4, 2, 2]},
        "model": {"backbone": "conv4", "head": "multisubspace", "n_subspaces": 2,
                  "subspace_dim": 8},
        "train": {"way": 2, "shot": 2, "query": 3, "patience": 100},
        "eval": {"query": 3, "batch_size": 32},
        "runtime": {"threads": 1, "progress": "log", "device": "cpu"},
    }
    for name, values in sections.items():
        settings[name] = {**settings.get(name, {}), **values}
    return settings


def cli_settings(root: Path) -> dict[str, Any]:
    """The command-line checks' run: 4 training episodes, 4 evaluation episodes, no tracking."""
    return tiny_settings(root, train={"max_episodes": 4, **EVERY_2}, eval={"episodes": 4},
                         tracking={"enabled": False})
