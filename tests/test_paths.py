"""paths + grid: readable run names, one derivation of every path, the grid's runs."""

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from subspace_fsl import grid, paths
from subspace_fsl.config import load_config


def test_run_name_example_from_the_contract():
    assert paths.run_name(5, 1, 4, 0.1, 0.01, 0) == "w5_k1_S4_l1-0.1_l2-0.01_seed0"
    assert paths.run_name(5, 5, 1, 0, 0.0, 2) == "w5_k5_S1_l1-0_l2-0_seed2"
    assert paths.run_name(5, 1, 2, 1e-5, 1.0, 0) == "w5_k1_S2_l1-1e-05_l2-1_seed0"
    # temperature and distance: only when not the default (tau = 1 fixed, squared)
    assert paths.run_name(5, 5, 1, 0, 0, 0, 10, False, "euclidean") == (
        "w5_k5_S1_l1-0_l2-0_t10_deuc_seed0")
    assert paths.run_name(5, 1, 1, 0, 0.03, 0, 1, True) == "w5_k1_S1_l1-0_l2-0.03_tlearn_seed0"
    assert paths.run_name(5, 1, 1, 0, 0, 3, 10, True) == "w5_k1_S1_l1-0_l2-0_tlearn10_seed3"
    assert paths.run_name(5, 1, 4, 0, 0, 0, 0.25) == "w5_k1_S4_l1-0_l2-0_t0.25_seed0"
    assert paths.run_name(5, 5, 1, 0, 0, 0, 1, False, "euclidean", "separate") == (
        "w5_k5_S1_l1-0_l2-0_deuc_esep_seed0")


lambdas = st.one_of(st.sampled_from([0, 0.03, 0.1, 0.3, 1, 1e-5, 2.5]),
                    st.floats(0, 100, allow_nan=False, allow_infinity=False))


taus = st.one_of(st.sampled_from([1, 0.1, 10, 100, 1e-3, 2.5]),
                 st.floats(1e-6, 1e6, allow_nan=False, allow_infinity=False))


@given(st.integers(2, 50), st.integers(1, 50), st.integers(1, 64), lambdas, lambdas,
       st.integers(-5, 10_000), taus, st.booleans(), st.sampled_from(["squared", "euclidean"]),
       st.sampled_from(["joint", "separate"]), st.sampled_from(["standard", "flip", "none"]))
def test_run_name_round_trip(way, shot, s, l1, l2, seed, tau, learn, distance, embed, augment):
    name = paths.run_name(way, shot, s, l1, l2, seed, tau, learn, distance, embed, augment)
    key = paths.parse_run_name(name)
    assert key == (way, shot, s, float(l1), float(l2), seed, float(tau), learn, distance, embed,
                   augment)
    assert re.fullmatch(paths.RUN_WILDCARD, name)  # the workflow's wildcard accepts it


@pytest.mark.parametrize("bad", ["w5_k1_S4_seed0", "x5_k1_S4_l1-0_l2-0_seed0", "",
                                 "w5_k1_S4_l1-0_l2-0_seed0/..", "w5_k1_S4_l1-a_l2-0_seed0",
                                 # one spelling per setting: these name existing runs
                                 "w5_k1_S4_l1-0_l2-0_t1_seed0", "w5_k1_S4_l1-0.10_l2-0_seed0",
                                 "w5_k1_S4_l1-0_l2-0_t_seed0", "w5_k1_S4_l1-0_l2-0_tlearn1_seed0",
                                 # out of range / unknown codes
                                 "w5_k1_S4_l1-0_l2-0_t0_seed0", "w5_k1_S4_l1-0_l2-0_dsq_seed0",
                                 "w5_k1_S4_l1-0_l2-0_deuc_t10_seed0",
                                 "w5_k1_S4_l1-0_l2-0_ejoint_seed0",
                                 "w5_k1_S4_l1-0_l2-0_esep_deuc_seed0",
                                 # the default policy has no code; unknown / misplaced codes
                                 "w5_k1_S4_l1-0_l2-0_astandard_seed0",
                                 "w5_k1_S4_l1-0_l2-0_ajitter_seed0",
                                 "w5_k1_S4_l1-0_l2-0_aflip_esep_seed0"])
def test_parse_rejects(bad):
    with pytest.raises(ValueError, match="run name"):
        paths.parse_run_name(bad)


def test_paths_from_settings(tmp_path):
    cfg = load_config(overrides=[f"results_dir={tmp_path}/r", f"data_dir={tmp_path}/d",
                                 "dataset.name=birds", "train.shot=1", "train.lambda1=0.1",
                                 "train.lambda2=0.01", "model.n_subspaces=4"])
    r = tmp_path / "r"
    assert paths.raw_root(cfg) == tmp_path / "d" / "birds"
    assert paths.cache_dir(cfg) == r / "cache" / "birds"
    assert paths.split_path(cfg) == r / "splits" / "birds.json"
    assert paths.tracking_marker(cfg) == r / "tracking" / "birds.json"
    name = "w5_k1_S4_l1-0.1_l2-0.01_seed0"
    assert paths.run_name_of(cfg) == name
    assert paths.run_dir(cfg, "multisubspace") == r / "runs" / "birds" / "multisubspace" / name
    assert paths.eval_dir(cfg, "dsn", "val", "RUN") == r / "runs/birds/dsn/RUN/eval/val"
    assert paths.selection_path(cfg) == r / "selection" / "birds.csv"
    assert paths.tables_dir(cfg) == r / "tables" / "birds"
    assert paths.plots_dir(cfg) == r / "plots" / "birds"
    # a workflow passes wildcards through unchanged
    assert str(paths.run_dir(cfg, "{method}", "{run}")).endswith("runs/birds/{method}/{run}")


def test_explicit_dataset_root(tmp_path):
    cfg = load_config(overrides=[f"dataset.root={tmp_path}/CUB_200_2011"])
    assert paths.raw_root(cfg) == Path(tmp_path / "CUB_200_2011")


def _grid_cfg(**extra):
    overrides = ["grid.way=[5]", "grid.shot=[1, 5]", "grid.n_subspaces=[1, 4]",
                 "grid.lambda1=[0, 0.3]", "grid.lambda2=[0.1]", "grid.seeds=[0, 1]",
                 "grid.tau=[1]"]
    return load_config(overrides=overrides + [f"{k}={v}" for k, v in extra.items()])


def test_grid_counts_and_names():
    cfg = _grid_cfg()
    method = grid.method_runs(cfg)
    assert len(method) == 2 * (1 + 2) * 1 * 2  # shots x (S=1: lambda1 once; S=4: two) x seeds
    assert {r.method for r in method} == {"multisubspace"}
    assert "w5_k5_S4_l1-0.3_l2-0.1_seed1" in {r.name for r in method}
    baselines = grid.baseline_runs(cfg)
    # the default baselines' own grids (tau x distance x embed: 4x2x2, 4x2x2, 2) x shots x seeds
    assert len(baselines) == (16 + 16 + 2) * 2 * 2
    names = {(r.method, r.name) for r in baselines}
    assert ("protonet", "w5_k1_S1_l1-0_l2-0_seed0") in names
    assert ("dsn", "w5_k5_S1_l1-0_l2-0.03_seed1") in names
    assert ("single-subspace", "w5_k1_S1_l1-0_l2-0_seed1") in names
    assert len(set(grid.all_runs(cfg))) == len(grid.all_runs(cfg))


def test_run_config_fills_the_cell():
    cfg = _grid_cfg()
    run = grid.run_config(cfg, "multisubspace", "w5_k5_S4_l1-0.3_l2-0.1_seed1")
    assert run["model"]["head"] == "multisubspace" and run["model"]["n_subspaces"] == 4
    assert (run["train"]["way"], run["train"]["shot"], run["train"]["seed"]) == (5, 5, 1)
    assert (run["train"]["lambda1"], run["train"]["lambda2"]) == (0.3, 0.1)
    assert run["eval"]["seed"] == cfg["eval"]["seed"]  # one evaluation seed for all
    dsn = grid.run_config(cfg, "dsn", "w5_k1_S1_l1-0_l2-0.03_seed0")
    assert dsn["model"]["head"] == "dsn" and dsn["train"]["lambda2"] == 0.03
    assert cfg["model"]["head"] == "multisubspace"  # the input is not modified
    with pytest.raises(ValueError, match="unknown method"):
        grid.run_config(cfg, "nope", "w5_k1_S1_l1-0_l2-0_seed0")


def test_baseline_grids_expand_and_fill_the_run_settings():
    cfg = _grid_cfg(**{"grid.tau": "[1, learn]", "grid.baselines":
                       "{protonet: {head: protonet, n_subspaces: 1, lambda1: 0, lambda2: 0,"
                       " grid: {tau: [1, 10, 'learn:10'], distance: [squared, euclidean],"
                       " embed: [separate]}},"
                       " plain: {head: protonet, n_subspaces: 1, lambda1: 0, lambda2: 0}}"})
    assert len(grid.method_runs(cfg)) == 2 * (1 + 2) * 1 * 2 * 2  # ... x tau x seeds
    assert grid.budget(cfg, "multisubspace") == (1 + 2) * 1 * 2  # lambda1 once at S=1
    proto = {r.name for r in grid.baseline_runs(cfg) if r.method == "protonet"}
    assert len(proto) == 2 * 3 * 2 * 2 and grid.budget(cfg, "protonet") == 6
    assert "w5_k1_S1_l1-0_l2-0_tlearn10_deuc_esep_seed1" in proto
    plain = {r.name for r in grid.baseline_runs(cfg) if r.method == "plain"}
    assert plain == {f"w5_k{k}_S1_l1-0_l2-0_seed{s}" for k in (1, 5) for s in (0, 1)}
    assert grid.budget(cfg, "plain") == 1
    run = grid.run_config(cfg, "protonet", "w5_k1_S1_l1-0_l2-0_tlearn10_deuc_esep_seed1")
    assert (run["model"]["tau"], run["model"]["learn_tau"], run["model"]["distance"],
            run["model"]["embed"]) == (10.0, True, "euclidean", "separate")
    ours = grid.run_config(cfg, "multisubspace", "w5_k5_S4_l1-0.3_l2-0.1_tlearn_seed0")
    assert (ours["model"]["tau"], ours["model"]["learn_tau"]) == (1.0, True)
    assert ours["model"]["distance"] == "squared" and ours["model"]["embed"] == "joint"


def test_a_temperature_named_twice_is_refused():
    cfg = _grid_cfg(**{"grid.tau": "[learn, 'learn:1']"})
    with pytest.raises(ValueError, match=r"grid.tau=.*twice"):
        grid.all_runs(cfg)


def test_baseline_may_not_shadow_the_method():
    cfg = _grid_cfg(**{"grid.baselines": "{multisubspace: {head: protonet}}"})
    with pytest.raises(ValueError, match="reuse"):
        grid.all_runs(cfg)


def test_run_settings_ignore_the_rest_of_the_grid():
    small = _grid_cfg()
    larger = _grid_cfg(**{"grid.seeds": "[0, 1, 2]", "grid.lambda2": "[0.1, 1]"})
    name = "w5_k5_S4_l1-0.3_l2-0.1_seed1"
    assert grid.run_settings(small, "multisubspace", name) == grid.run_settings(
        larger, "multisubspace", name)
    assert "grid" not in grid.run_settings(small, "multisubspace", name)
    changed = _grid_cfg(**{"train.max_episodes": 7})
    assert grid.run_settings(changed, "multisubspace", name) != grid.run_settings(
        small, "multisubspace", name)


def test_evaluation_only_settings_are_no_training_setting():
    name = "w5_k5_S4_l1-0.3_l2-0.1_seed1"
    base = _grid_cfg()
    more = _grid_cfg(**{"eval.episodes": 1000, "eval.shots": "[1, 5]"})
    # more episodes or another evaluation shot: the same training, other evaluations
    assert grid.run_settings(more, "multisubspace", name) == grid.run_settings(
        base, "multisubspace", name)
    assert set(grid.run_settings(base, "multisubspace", name)["eval"]) == {
        "query", "seed", "batch_size"}
    assert grid.evaluation_settings(more, "multisubspace", name)["eval"]["episodes"] == 1000
    assert grid.evaluation_settings(more, "multisubspace", name) != grid.evaluation_settings(
        base, "multisubspace", name)
    assert "shots" not in grid.evaluation_settings(more, "multisubspace", name)["eval"]
    # what the validation inside training reads stays a training setting
    for key, value in (("eval.query", 5), ("eval.seed", 7)):
        assert grid.run_settings(_grid_cfg(**{key: value}), "multisubspace", name) != \
            grid.run_settings(base, "multisubspace", name), key


def test_augmentation_names_runs_only_when_not_the_default_policy():
    from subspace_fsl.config import load_schema
    from subspace_fsl.data.augment import AUGMENT_POLICIES

    assert paths.run_name(5, 5, 4, 0.1, 0.1, 0) == "w5_k5_S4_l1-0.1_l2-0.1_seed0"
    assert paths.run_name(5, 5, 4, 0.1, 0.1, 0, augment="flip") == \
        "w5_k5_S4_l1-0.1_l2-0.1_aflip_seed0"
    assert paths.run_name(5, 1, 1, 0, 0, 0, 10, False, "euclidean", "separate", "none") == \
        "w5_k1_S1_l1-0_l2-0_t10_deuc_esep_anone_seed0"
    assert paths.parse_run_name("w5_k5_S4_l1-0.1_l2-0.1_seed0").augment == "standard"
    # one list of policies: the codes, the registry and the schema agree
    schema = load_schema()["properties"]["train"]["properties"]["augment"]
    assert set(paths.AUGMENT_CODES) == set(AUGMENT_POLICIES.names()) == set(schema["enum"])
    assert schema["default"] == paths.DEFAULT_AUGMENT
    cfg = load_config(overrides=["train.augment=none"])
    assert paths.run_name_of(cfg).endswith("_anone_seed0")


def test_augmentation_is_a_grid_dimension_of_the_method_and_of_each_baseline():
    cfg = _grid_cfg(**{"grid.augment": "[standard, flip, none]", "grid.baselines":
                       "{protonet: {head: protonet, n_subspaces: 1, lambda1: 0, lambda2: 0,"
                       " grid: {augment: [none, flip]}},"
                       " plain: {head: protonet, n_subspaces: 1, lambda1: 0, lambda2: 0}}",
                       "train.augment": "flip"})
    method = grid.method_runs(cfg)
    assert len(method) == 2 * (1 + 2) * 1 * 2 * 3  # ... x seeds x policies
    assert grid.budget(cfg, "multisubspace") == (1 + 2) * 3  # lambda1 once at S=1
    names = {r.name for r in method}
    assert {"w5_k5_S4_l1-0.3_l2-0.1_seed1", "w5_k5_S4_l1-0.3_l2-0.1_aflip_seed1",
            "w5_k5_S4_l1-0.3_l2-0.1_anone_seed1"} <= names
    for run in method:  # grid expansion fills train.augment into each run's settings
        assert grid.run_settings(cfg, run.method, run.name)["train"]["augment"] == \
            run.key.augment
    baselines = {(r.method, r.name) for r in grid.baseline_runs(cfg)}
    assert ("protonet", "w5_k1_S1_l1-0_l2-0_anone_seed0") in baselines
    assert ("protonet", "w5_k1_S1_l1-0_l2-0_aflip_seed0") in baselines
    assert ("protonet", "w5_k1_S1_l1-0_l2-0_seed0") not in baselines
    assert grid.budget(cfg, "protonet") == 2
    # a baseline without grid.augment trains with train.augment (flip), as before the grid
    assert grid.budget(cfg, "plain") == 1
    assert ("plain", "w5_k1_S1_l1-0_l2-0_aflip_seed0") in baselines
    assert grid.run_config(cfg, "protonet", "w5_k1_S1_l1-0_l2-0_anone_seed0")[
        "train"]["augment"] == "none"
    # without grid.augment the method trains with train.augment too
    plain_cfg = _grid_cfg(**{"train.augment": "none"})
    assert {r.key.augment for r in grid.method_runs(plain_cfg)} == {"none"}
    assert {r.key.augment for r in grid.method_runs(_grid_cfg())} == {"standard"}
