"""Class splits: the seeded random rule, the two fixed CUB rules, and split-file validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from subspace_fsl.data.splits import SplitError, load_split, make_split, save_split, split_counts

CUB_NAMES = [f"{i:03d}.Species_{i}" for i in range(1, 201)]


def test_random_split_counts_seed_and_order() -> None:
    split = make_split(CUB_NAMES, "random", [100, 50, 50], seed=3)
    assert split["rule"] == "random" and split["seed"] == 3 and split["counts"] == [100, 50, 50]
    assert sorted(split["base"] + split["val"] + split["novel"]) == CUB_NAMES
    assert split["base"] == sorted(split["base"])  # data set order kept within a set
    assert make_split(CUB_NAMES, "random", [100, 50, 50], seed=3) == split
    assert make_split(CUB_NAMES, "random", [100, 50, 50], seed=4)["base"] != split["base"]
    names = [f"class_{i}" for i in range(10)]
    assert make_split(names, "random", [0.6, 0.2, 0.2], 0)["counts"] == [6, 2, 2]
    assert split_counts(10, [5, 3, 2]) == [5, 3, 2]
    with pytest.raises(SplitError, match="summing to the data set's 10 classes"):
        make_split(names, "random", [100, 50, 50], 0)
    with pytest.raises(SplitError, match="leaves a set empty"):
        make_split(names, "random", [0.9, 0.06, 0.04], 0)


def test_closer_look_split() -> None:
    shuffled = CUB_NAMES[::-1]  # the rule sorts the names itself
    split = make_split(shuffled, "closer-look")
    assert split["counts"] == [100, 50, 50] and split["seed"] is None
    # sorted index i = id - 1: base i % 2 == 0 -> ids 1, 3, 5 ...; val i % 4 == 1 -> ids 2, 6, ...
    assert set(split["base"]) == {CUB_NAMES[i] for i in range(0, 200, 2)}
    assert set(split["val"]) == {CUB_NAMES[i] for i in range(1, 200, 4)}
    assert set(split["novel"]) == {CUB_NAMES[i] for i in range(3, 200, 4)}
    assert "001.Species_1" in split["base"] and "002.Species_2" in split["val"]


def test_frn_split_uses_one_based_ids() -> None:
    split = make_split(CUB_NAMES, "frn")
    assert split["counts"] == [100, 50, 50]
    assert split["base"][:2] == ["002.Species_2", "004.Species_4"]  # id % 2 == 0
    assert split["val"][:2] == ["001.Species_1", "005.Species_5"]  # id % 4 == 1
    assert split["novel"][:2] == ["003.Species_3", "007.Species_7"]  # id % 4 == 3
    # the two fixed splits are not interchangeable: one's base classes are the other's val/novel
    closer = make_split(CUB_NAMES, "closer-look")
    assert not set(split["base"]) & set(closer["base"])


def test_fixed_rules_need_cub_classes() -> None:
    for rule in ("closer-look", "frn"):
        with pytest.raises(SplitError, match="200 classes, this data set has 12"):
            make_split([f"c{i}" for i in range(12)], rule)
    with pytest.raises(SplitError, match="CUB id order"):
        make_split(CUB_NAMES[::-1], "frn")
    with pytest.raises(SplitError, match="unknown split rule"):
        make_split(CUB_NAMES, "fixed")


def test_save_and_load(tmp_path: Path) -> None:
    split = make_split(CUB_NAMES, "random", [100, 50, 50], 1)
    path = save_split(split, tmp_path / "splits" / "cub.json")
    assert load_split(path, CUB_NAMES) == split
    assert json.loads(path.read_text())["rule"] == "random"


def test_load_rejects_overlap_missing_and_unknown(tmp_path: Path) -> None:
    split = make_split(CUB_NAMES, "frn")
    path = tmp_path / "s.json"
    overlapping = {**split, "val": [*split["val"][:-1], split["base"][0]]}
    path.write_text(json.dumps(overlapping))
    with pytest.raises(SplitError, match=r"both 'base' and 'val': \['002.Species_2'\]"):
        load_split(path)
    path.write_text(json.dumps({**split, "novel": split["novel"][:-1], "counts": [100, 50, 49]}))
    load_split(path)  # consistent on its own ...
    with pytest.raises(SplitError, match=r"in no set: \['199.Species_199'\]"):
        load_split(path, CUB_NAMES)  # ... but a class of the data set is missing
    path.write_text(json.dumps(split))
    with pytest.raises(SplitError, match="not in the data set"):
        load_split(path, CUB_NAMES[:100])
    path.write_text(json.dumps({**split, "counts": [1, 2, 3]}))
    with pytest.raises(SplitError, match="do not match"):
        load_split(path)
    path.write_text("{")
    with pytest.raises(SplitError, match="not valid JSON"):
        load_split(path)
    with pytest.raises(SplitError, match="does not exist"):
        load_split(tmp_path / "none.json")
    with pytest.raises(SplitError, match="missing keys"):
        save_split({"rule": "random"}, tmp_path / "bad.json")
    assert not (tmp_path / "bad.json").exists()


def test_split_lists_matter_only_to_the_lists_rule():
    """split.lists (filled in by the schema for every rule) is not part of what a fixed rule's
    split, its job params or the pre-training depend on: adding the key re-runs nothing."""
    from subspace_fsl import snakemake_job
    from subspace_fsl.config import load_config
    from subspace_fsl.data.splits import split_settings
    from subspace_fsl.engine.pretrain import pretrain_settings

    fixed = {"rule": "closer-look", "counts": [100, 50, 50], "seed": 0,
             "lists": {"base": None, "val": None, "novel": None}}
    assert split_settings(fixed) == {"rule": "closer-look", "counts": [100, 50, 50], "seed": 0}
    listed = {**fixed, "rule": "lists",
              "lists": {"base": "b.txt", "val": "v.txt", "novel": "n.txt"}}
    assert split_settings(listed) == listed
    cfg = load_config(None)
    assert "lists" in cfg["split"]
    assert "lists" not in snakemake_job.stage_settings(cfg, "split")["split"]
    assert "lists" not in pretrain_settings(cfg)["split"]
