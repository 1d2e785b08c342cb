"""The explain step's models: the method's own selection rows, then every baseline run."""

import pandas as pd

from subspace_fsl import grid, paths
from subspace_fsl.config import load_config
from subspace_fsl.explain.pipeline import targets
from subspace_fsl.selection import SELECTION_COLUMNS


def test_targets_take_the_method_rows_of_a_selection_holding_every_method(tmp_path):
    cfg = load_config(overrides=[
        f"results_dir={tmp_path}", "grid.way=[3]", "grid.shot=[1]", "grid.n_subspaces=[2]",
        "grid.lambda1=[0.1]", "grid.lambda2=[0]", "grid.seeds=[0]", "grid.tau=[1]",
        "grid.baselines={protonet: {head: protonet, n_subspaces: 1, lambda1: 0, lambda2: 0}}",
    ])
    row = {"way": 3, "shot": 1, "tau": 1.0, "learn_tau": False, "distance": "squared",
           "embed": "joint", "augment": "standard", "val_accuracy": 0.5, "n_seeds": 1,
           "budget": 1, "best_s": True}
    selection = pd.DataFrame([
        {**row, "method": "multisubspace", "n_subspaces": 2, "lambda1": 0.1, "lambda2": 0.0},
        {**row, "method": "protonet", "n_subspaces": 1, "lambda1": 0.0, "lambda2": 0.0},
    ])[SELECTION_COLUMNS]
    found = {(t.method, t.name) for t in targets(cfg, selection)}
    assert found == {("multisubspace", paths.run_name(3, 1, 2, 0.1, 0, 0)),
                     *((r.method, r.name) for r in grid.baseline_runs(cfg))}
    assert all(t.method == "protonet" for t in targets(cfg, selection) if "S1" in t.name)
