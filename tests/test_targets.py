"""Cross-domain targets (eval.targets): schema, what a target takes from the model, its
fixed episode plan, the way / shot refusals, and that the selection never reads a target."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from subspace_fsl import grid, targets
from subspace_fsl.cli import main
from subspace_fsl.config import ConfigError, save_config, validate
from subspace_fsl.data.splits import make_split

REPO = Path(__file__).resolve().parents[1]


def _cfg(**target_settings):
    target = {"dataset": {"source": "folder", "root": "/data/rs", "image_size": 200},
              **target_settings}
    return validate({"dataset": {"name": "birds", "image_size": 32, "resize": 40},
                     "train": {"way": 5, "shot": 1}, "eval": {"episodes": 20, "query": 3,
                                                             "seed": 11, "targets": {"rs": target}},
                     "results_dir": "res", "data_dir": "dat"})


def _labels(n_classes: int, per_class: int) -> np.ndarray:
    return np.repeat(np.arange(n_classes), per_class)


def test_a_target_reuses_the_dataset_and_split_schema_with_its_defaults():
    cfg = _cfg()
    target = cfg["eval"]["targets"]["rs"]
    assert target["classes"] == "all" and target["way"] is None and target["episodes"] is None
    # the top-level sections' own defaults, filled through the shared schema pieces
    assert target["dataset"]["crop_to_bbox"] is False and target["split"]["rule"] == "random"
    assert validate({})["eval"]["targets"] == {}
    with pytest.raises(ConfigError, match=r"eval\.targets\.rs\.dataset\.source"):
        validate({"eval": {"targets": {"rs": {"dataset": {"source": "pictures"}}}}})
    with pytest.raises(ConfigError, match=r"eval\.targets\.rs: 'dataset' is a required"):
        validate({"eval": {"targets": {"rs": {"classes": "all"}}}})
    with pytest.raises(ConfigError, match=r"eval\.targets\.rs: Additional properties.*'sed'"):
        validate({"eval": {"targets": {"rs": {"dataset": {}, "sed": 1}}}})
    with pytest.raises(ConfigError, match="does not match"):
        validate({"eval": {"targets": {"RS/1": {"dataset": {}}}}})


def test_a_target_has_the_models_preprocessing_its_own_name_folders_and_split():
    cfg = _cfg(classes="novel", split={"rule": "random", "counts": [3, 2, 2], "seed": 4})
    data = targets.data_config(cfg, "rs")
    assert data["dataset"]["name"] == "rs" and data["dataset"]["root"] == "/data/rs"
    # the target's own image_size (200) is not used: the model saw 32 px (resize 40)
    assert (data["dataset"]["image_size"], data["dataset"]["resize"]) == (32, 40)
    assert data["split"]["counts"] == [3, 2, 2] and cfg["split"]["counts"] == [100, 50, 50]
    assert targets.cache_dir(cfg, "rs") == Path("res/cache/targets/birds/rs")
    assert targets.raw_root(cfg, "rs") == Path("/data/rs")
    assert targets.eval_dir(cfg, "m", "r", "rs") == Path("res/runs/birds/m/r/eval/target-rs")
    names = [f"c{i}" for i in range(7)]
    assert targets.classes(cfg, "rs", names) == make_split(names, "random", [3, 2, 2], 4)["novel"]
    assert targets.classes(_cfg(), "rs", names) == names


def test_the_episodes_are_fixed_per_target_and_the_same_for_every_model():
    labels = _labels(7, 8)
    cfg = _cfg()
    shape, plan = targets.episode_plan(cfg, "rs", labels, list(range(7)))
    assert shape == targets.Shape(way=5, shot=1, query=3, episodes=20)
    # another model (other head settings, other training seed): the same episodes
    other = validate({**cfg, "model": {"n_subspaces": 1}, "train": {**cfg["train"], "seed": 3,
                                                                      "lambda1": 0.5}})
    _, again = targets.episode_plan(other, "rs", labels, list(range(7)))
    for a, b in zip(plan, again, strict=True):
        assert np.array_equal(a.support_idx, b.support_idx)
        assert np.array_equal(a.query_idx, b.query_idx)
    for episode in plan:
        assert len(np.unique(episode.classes)) == 5
        assert len(episode.support_idx) == 5 and len(episode.query_idx) == 15
        assert set(labels[episode.support_idx]) == set(episode.classes)
    # the target's own episodes / query override eval's
    shape, plan = targets.episode_plan(_cfg(episodes=4, query=2), "rs", labels, list(range(7)))
    assert shape.episodes == len(plan) == 4 and shape.query == 2


def test_a_target_with_fewer_classes_than_the_way_is_refused_unless_its_way_is_lower():
    labels = _labels(7, 8)
    ten_way = validate({**_cfg(), "train": {"way": 10, "shot": 1}})
    with pytest.raises(targets.TargetError) as refused:
        targets.episode_plan(ten_way, "rs", labels, list(range(7)))
    message = str(refused.value)
    assert "\n" not in message and "eval.targets.rs.way=null (the model's train.way=10)" in message
    assert "has 7 classes" in message and "at most 7" in message
    lower = validate({**ten_way, "eval": {**ten_way["eval"],
                                          "targets": {"rs": {**ten_way["eval"]["targets"]["rs"],
                                                             "way": 5}}}})
    shape, plan = targets.episode_plan(lower, "rs", labels, list(range(7)))
    assert shape.way == 5 and all(len(e.classes) == 5 for e in plan)
    assert targets.column_label(lower, "rs", 10, 1) == (
        "target-rs: 5-way 1-shot (trained 10-way 1-shot)")
    with pytest.raises(targets.TargetError, match=r"eval\.targets\.rs\.way=8 but"):
        targets.shape(_cfg(way=8), "rs", 7)
    with pytest.raises(targets.TargetError, match=r"shot 1 \+ query 3 = 4 but the smallest"):
        targets.episode_plan(_cfg(), "rs", _labels(7, 3), list(range(7)))


def test_a_target_evaluation_depends_on_its_own_settings_only():
    cfg = validate({"eval": {"targets": {"a": {"dataset": {}}, "b": {"dataset": {}}}}})
    run = grid.all_runs(cfg)[0]
    a = targets.evaluation_settings(cfg, run.method, run.name, "a")
    assert list(a["eval"]["targets"]) == ["a"] and a["eval"]["episodes"] == 600
    assert "grid" not in a
    assert list(targets.prepare_settings(cfg, "b")["eval"]["targets"]) == ["b"]


def test_the_cli_refuses_an_unknown_target_in_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    save_config(validate({"results_dir": str(tmp_path / "res"), "tracking": {"enabled": False},
                          "eval": {"targets": {"cars": {"dataset": {}}}}}), run / "config.yaml")
    assert main(["evaluate", "--run", str(run), "--target", "dogs"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("subspace-fsl evaluate: error: eval.targets has no target 'dogs' "
                   "(declared: cars)")


def _plan(tmp: Path, *args: str) -> str:
    from test_workflow import TINY, _write_config, snakemake

    config = _write_config(tmp, TINY)
    proc = snakemake(*args, "--configfile", str(config), cwd=tmp)
    return proc.stdout + proc.stderr


def test_the_workflow_plans_target_caches_and_evaluations_and_selects_without_them(tmp_path):
    out = _plan(tmp_path, "-n")
    assert re.search(r"^prepare_target\s+1$", out, flags=re.M)
    assert re.search(r"^evaluate_target\s+4$", out, flags=re.M)  # the tiny grid's 4 runs
    graph = _plan(tmp_path, "--rulegraph")
    rules = dict(re.findall(r"^\s*(\d+)\[label = \"(\w+)\"", graph, flags=re.M))
    edges = {(rules[a], rules[b]) for a, b in re.findall(r"^\s*(\d+) -> (\d+)$", graph,
                                                         flags=re.M)}
    assert {("prepare_target", "evaluate_target"), ("train", "evaluate_target"),
            ("evaluate_target", "tables"), ("evaluate_target", "all")} <= edges

    def upstream(rule: str) -> set[str]:
        found, todo = set(), [rule]
        while todo:
            here = todo.pop()
            for a, b in edges:
                if b == here and a not in found:
                    found.add(a)
                    todo.append(a)
        return found

    # the choice reads the source's validation classes only: no target upstream of it
    assert "evaluate" in upstream("select")
    assert not {"evaluate_target", "prepare_target"} & upstream("select")
