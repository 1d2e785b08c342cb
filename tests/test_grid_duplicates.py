"""The grid drops the cells that are duplicates by construction: lambda1 (the penalty between
subspaces) at S = 1, where there is no second subspace; the budget counts what is trained."""

from __future__ import annotations

from subspace_fsl import grid
from subspace_fsl.cli import main
from subspace_fsl.config import load_config

DEMO_LIKE = ["grid.n_subspaces=[1, 2, 4]", "grid.lambda1=[0.3, 0]", "grid.lambda2=[0, 0.1]",
             "grid.tau=[1]", "grid.seeds=[0]", "grid.way=[5]", "grid.shot=[5]"]


def test_lambda1_is_trained_once_at_one_subspace_and_counted_once():
    cfg = load_config(None, DEMO_LIKE)
    keys = [run.key for run in grid.method_runs(cfg)]
    at_one = {(k.lambda1, k.lambda2) for k in keys if k.n_subspaces == 1}
    assert at_one == {(0.0, 0.0), (0.0, 0.1)}  # lambda1 = 0 kept (the smallest)
    assert len(keys) == 2 + 2 * 2 * 2  # S=1: 2 lambda2; S=2, 4: 2 lambda1 x 2 lambda2
    assert grid.budget(cfg, grid.method_name(cfg)) == len(keys)  # one seed: one per config
    assert len(set(keys)) == len(keys)
    assert grid.dropped_duplicates(cfg) == (
        "grid: S=1 is trained at lambda1=0 only (lambda1 0.3 at S=1 would train the same "
        "model: lambda1 acts between subspaces)")
    assert grid.dropped_duplicates(load_config(None, [*DEMO_LIKE, "grid.n_subspaces=[2]"])) \
        is None


def test_show_config_says_which_cells_it_drops(capsys):
    assert main(["show-config", *(f"--set={s}" for s in DEMO_LIKE)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# grid: S=1 is trained at lambda1=0 only")
