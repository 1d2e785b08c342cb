"""The explain step on data without part annotations: CUB's layout without ``parts/`` and a
folder of class folders. Maps are drawn; the part measures are left out and every output says
so; a stale cache of a data set that has parts still stops with one line."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from subspace_fsl import grid, paths
from subspace_fsl.config import load_config
from subspace_fsl.data.cache import PARTS_FILE, prepare
from subspace_fsl.engine.data import open_data
from subspace_fsl.engine.train import train
from subspace_fsl.explain.outputs import output_files
from subspace_fsl.explain.parts import load_part_locations
from subspace_fsl.explain.pipeline import run_explain
from subspace_fsl.selection import SELECTION_COLUMNS, write_selection


def settings(root: Path, name: str, source: str, data_root: Path | None) -> dict:
    """One 2-way 2-shot cell, conv4 + 2 subspaces of dim 8, 32 px, no baselines."""
    return {
        "results_dir": str(root / "results"),
        "data_dir": str(root / "data"),
        "dataset": {"name": name, "source": source, "image_size": 32,
                    "root": str(data_root) if data_root else None,
                    "synthetic": {"classes": 8, "images_per_class": 12, "size": 32}},
        "split": {"counts": [4, 2, 2]},
        "model": {"backbone": "conv4", "subspace_dim": 8},
        "train": {"query": 3, "max_episodes": 6, "val_every": 3, "val_episodes": 2,
                  "log_every": 3, "checkpoint_every": 3, "patience": 100},
        "eval": {"query": 3, "batch_size": 32},
        "explain": {"episodes": 3, "examples": 2},
        "grid": {"way": [2], "shot": [2], "n_subspaces": [2], "lambda1": [0.0],
                 "lambda2": [0.0], "seeds": [0], "tau": [1], "baselines": {}},
        "runtime": {"threads": 1, "progress": "log", "device": "cpu"},
    }


def trained_config(root: Path, name: str, source: str, data_root: Path | None) -> dict:
    """Write the settings, prepare the cache, train the grid's one run and write its
    selection row: what `explain` reads."""
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(settings(root, name, source, data_root)))
    cfg = load_config(path)
    prepare(cfg, progress=False)
    (run,) = grid.method_runs(cfg)
    train(grid.run_config(cfg, run.method, run.name), paths.run_dir(cfg, run.method, run.name))
    key = paths.parse_run_name(run.name)
    row = {"method": run.method, "way": 2, "shot": 2, "n_subspaces": 2, "lambda1": 0.0,
           "lambda2": 0.0, "tau": key.tau, "learn_tau": key.learn_tau,
           "distance": key.distance, "embed": key.embed, "augment": key.augment,
           "val_accuracy": 0.5, "n_seeds": 1, "budget": 1, "best_s": True}
    paths.selection_path(cfg).parent.mkdir(parents=True, exist_ok=True)
    write_selection(pd.DataFrame([row])[SELECTION_COLUMNS], paths.selection_path(cfg))
    return cfg


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated synthetic set (CUB's layout, with parts/)."""
    root = tmp_path_factory.mktemp("noparts-synth")
    path = root / "s.yaml"
    path.write_text(yaml.safe_dump(settings(root, "synth", "synthetic", None)))
    prepare(load_config(path), progress=False)
    return root / "data" / "synth"


def assert_explained_without_parts(cfg: dict, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="subspace_fsl.explain.pipeline"):
        out = run_explain(cfg)
    name = cfg["dataset"]["name"]
    assert [r for r in caplog.records if r.levelno == logging.INFO
            and r.getMessage().startswith(f"{name} has no part annotations")]
    for path in output_files(cfg):
        assert path.is_file(), path
    done = json.loads((out / "done.json").read_text())
    assert done["parts"] is False and done["models"] == 1
    episodes = pd.read_csv(out / "episodes.csv")
    assert len(episodes) == 3 and not episodes["parts_available"].any()
    assert episodes["specialization"].isna().all() and episodes["diversity"].isna().all()
    assert episodes["accuracy"].between(0, 1).all() and episodes["mean_rv"].notna().all()
    summary = pd.read_csv(out / "explain.csv")
    assert not summary["parts_available"].any() and summary["exact_maps"].all()
    profiles = pd.read_csv(out / "profiles.csv")
    assert list(profiles["subspace"]) == [1, 2] and not profiles["parts_available"].any()
    for table in ("explain.md", "paired.md"):
        text = (out / table).read_text()
        assert text.startswith(f"{name} has no part annotations: the part measures")
        assert "| – | – |" in text or table == "paired.md"
    # the maps are drawn: the examples figure is a real picture, larger than a placeholder
    assert (out / "examples_w2_k2.png").stat().st_size > 3 * (out / "profile_w2_k2.png").stat(
    ).st_size


def test_cub_layout_without_parts_writes_maps_and_says_parts_are_unavailable(
        synthetic_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture):
    cub = tmp_path / "cub_noparts"
    shutil.copytree(synthetic_root, cub, ignore=shutil.ignore_patterns("parts", "synth.json"))
    cfg = trained_config(tmp_path, "cubnoparts", "cub", cub)
    assert not (paths.cache_dir(cfg) / PARTS_FILE).exists()
    assert_explained_without_parts(cfg, caplog)


def test_a_folder_source_explains_without_parts(synthetic_root: Path, tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture):
    folder = tmp_path / "folder"
    for class_dir in sorted((synthetic_root / "images").iterdir()):
        shutil.copytree(class_dir, folder / class_dir.name.split(".", 1)[1])
    cfg = trained_config(tmp_path, "folderset", "folder", folder)
    assert_explained_without_parts(cfg, caplog)


def test_a_stale_cache_of_a_set_with_parts_still_stops_with_one_line(synthetic_root: Path):
    cfg = load_config(synthetic_root.parent.parent / "s.yaml")
    data = open_data(cfg)
    cache = data.cache.directory
    kept = load_part_locations(cache, len(data.labels), data.cache.meta["data_root"])
    assert kept is not None and kept.visible.any()
    moved = Path(cache) / "parts.kept"
    (Path(cache) / PARTS_FILE).rename(moved)
    try:
        with pytest.raises(ValueError, match=r"parts\.csv is missing.*subspace-fsl prepare"):
            load_part_locations(cache, len(data.labels), data.cache.meta["data_root"])
    finally:
        moved.rename(Path(cache) / PARTS_FILE)
    assert np.array_equal(load_part_locations(cache, len(data.labels)).xy, kept.xy)
