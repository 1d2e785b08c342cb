"""The specialization measure on constructed cases with known answers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from subspace_fsl.explain import measure
from subspace_fsl.explain.pipeline import paired_lambda1
from subspace_fsl.heads.multisubspace import feature_subspace_diversity, subspace_correlations

SIZE = 40  # a 4 x 4 map over a 40 px image: cell centres at 5, 15, 25, 35


def _one_hot_map(cell: tuple[int, int]) -> torch.Tensor:
    m = torch.zeros(4, 4, dtype=torch.float64)
    m[cell] = 1.0
    return m


def test_cell_centres_are_in_image_pixels():
    centres = measure.cell_centres(2, 4, 40)
    assert centres.tolist() == [[5, 10], [15, 10], [25, 10], [35, 10],
                                [5, 30], [15, 30], [25, 30], [35, 30]]


def test_subspaces_on_different_parts_are_fully_specialised_and_diverse():
    # part "head" at the centre of cell (0, 0), "tail" at cell (3, 3); radius 6 px reaches
    # only its own cell. Subspace 1 puts all positive evidence on the head, subspace 2 on the
    # tail (with some negative evidence elsewhere, which must not count).
    s1 = _one_hot_map((0, 0)) - 0.5 * _one_hot_map((3, 3))
    s2 = 2.0 * _one_hot_map((3, 3)) - _one_hot_map((1, 1))
    evidence = torch.stack([s1, s2])[None].repeat(3, 1, 1, 1)  # 3 queries
    xy = torch.tensor([[[5.0, 5.0], [35.0, 35.0]]], dtype=torch.float64).repeat(3, 1, 1)
    visible = torch.ones(3, 2, dtype=torch.bool)
    shares = measure.part_shares(evidence, xy, visible, SIZE, radius=6.0)
    assert shares.shape == (3, 2, 2)
    torch.testing.assert_close(shares[0], torch.tensor([[1.0, 0.0], [0.0, 1.0]],
                                                       dtype=torch.float64))
    profile = measure.part_profile(shares)
    torch.testing.assert_close(measure.specialization(profile),
                               torch.ones(2, dtype=torch.float64))
    assert float(measure.profile_diversity(profile)) == pytest.approx(1.0)


def test_evidence_spread_evenly_is_unspecialised_and_identical_profiles_are_not_diverse():
    evidence = torch.ones(2, 3, 4, 4, dtype=torch.float64)
    # two parts, each reaching exactly 4 cells (radius 8 around a cell corner)
    xy = torch.tensor([[[10.0, 10.0], [30.0, 30.0]]], dtype=torch.float64).repeat(2, 1, 1)
    visible = torch.ones(2, 2, dtype=torch.bool)
    shares = measure.part_shares(evidence, xy, visible, SIZE, radius=8.0)
    torch.testing.assert_close(shares, torch.full((2, 3, 2), 0.25, dtype=torch.float64))
    profile = measure.part_profile(shares)
    torch.testing.assert_close(profile, torch.full((3, 2), 0.5, dtype=torch.float64))
    torch.testing.assert_close(measure.specialization(profile),
                               torch.zeros(3, dtype=torch.float64))
    assert float(measure.profile_diversity(profile)) == pytest.approx(0.0, abs=1e-12)


def test_invisible_parts_and_empty_maps_are_left_out():
    evidence = torch.stack([_one_hot_map((0, 0)), -_one_hot_map((0, 0))])[None]  # [1, 2, 4, 4]
    evidence = torch.cat([evidence, evidence])
    xy = torch.tensor([[[5.0, 5.0], [35.0, 35.0]]] * 2, dtype=torch.float64)
    visible = torch.tensor([[True, True], [False, True]])
    shares = measure.part_shares(evidence, xy, visible, SIZE, radius=6.0)
    assert shares[0, 0].tolist() == [1.0, 0.0]
    assert math.isnan(shares[1, 0, 0]) and shares[1, 0, 1] == 0.0  # the head was invisible
    assert torch.isnan(shares[:, 1]).all()  # subspace 2 has no positive evidence at all
    profile = measure.part_profile(shares)
    assert profile[0].tolist() == [1.0, 0.0] and torch.isnan(profile[1]).all()


def test_jensen_shannon_of_known_distributions():
    p = torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64)
    q = torch.tensor([0.0, 0.5, 0.5], dtype=torch.float64)
    # M = (0.25, 0.5, 0.25): H(M) = 1.5 bits, H(p) = H(q) = 1 bit -> JSD = 0.5 bit
    assert float(measure.js_divergence(p, q)) == pytest.approx(0.5)
    profile = torch.stack([p, q, p])
    # pairs (p,q), (q,p): 0.5 each; (p,p): 0 -> mean over the 6 ordered pairs = 4 * 0.5 / 6
    assert float(measure.profile_diversity(profile)) == pytest.approx(1 / 3)
    assert math.isnan(measure.profile_diversity(profile[:1]))


def test_principal_angles_of_constructed_class_subspaces():
    e = torch.eye(4, dtype=torch.float64)
    tilted = torch.tensor([[math.cos(0.3), math.sin(0.3), 0.0, 0.0]], dtype=torch.float64)
    bases = torch.stack([e[[0]], e[[2]], tilted])[None]  # S = 1, N = 3 lines, K = 1, d = 4
    angles = measure.principal_angles(bases)[0, :, :, 0]
    assert angles[0, 1] == pytest.approx(90.0)
    assert angles[0, 2] == pytest.approx(math.degrees(0.3))
    assert angles[1, 2] == pytest.approx(90.0)
    assert angles[0, 0] == pytest.approx(0.0, abs=1e-6)


def test_rv_matrix_is_the_heads_l1_per_pair():
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(3, 10, 5, dtype=torch.float64, generator=generator)
    z[0, :, 3:] = 0.0                    # subspace 1 uses coordinates 0-2 only
    z[1] = 3.0 * z[0]                    # the same data up to scale: RV = 1
    z[2, :, :3] = 0.0                    # coordinates 3-4 only: Z_1^T Z_3 = 0, RV = 0
    rv = subspace_correlations(z)
    assert rv[0, 1] == pytest.approx(1.0) and rv[0, 2] == pytest.approx(0.0, abs=1e-12)
    torch.testing.assert_close(rv.diagonal(), torch.ones(3, dtype=torch.float64))
    # the head's L1 is the mean off-diagonal RV
    assert float(measure.mean_off_diagonal(rv)) == pytest.approx(
        float(feature_subspace_diversity(z, "rv")))


def test_paired_lambda1_compares_the_same_episodes():
    rows = []
    for l1, shift in ((0.0, 0.0), (0.3, 0.1)):
        for e in range(8):
            rows.append({"method": "multisubspace", "way": 5, "shot": 1, "n_subspaces": 4,
                         "lambda1": l1, "lambda2": 0.1, "seed": 0, "episode": e,
                         "specialization": 0.2 + 0.01 * e + shift,
                         "diversity": 0.3 + 0.02 * (e % 3) - shift})
    rows.append({**rows[0], "method": "protonet", "n_subspaces": 1})  # not compared
    paired = paired_lambda1(pd.DataFrame(rows), "multisubspace")
    assert len(paired) == 1
    row = paired.iloc[0]
    assert row["lambda1"] == 0.3 and row["episodes"] == 8
    assert row["specialization_diff"] == pytest.approx(0.1)
    assert row["diversity_diff"] == pytest.approx(-0.1)
    assert row["specialization_p_ttest"] == 0.0  # a constant difference
    assert np.isfinite(row["specialization_p_wilcoxon"])


def test_explain_without_a_selection_file_is_one_clear_line(tmp_path, capsys):
    from subspace_fsl.cli import main

    code = main(["explain", "--set", f"results_dir={tmp_path}", "--set", "runtime.device=cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("subspace-fsl explain: error: selection file ")
    assert "synthetic.csv is missing" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "explain").exists()  # nothing that looks like an output


def test_explain_without_part_annotations_draws_the_maps_and_says_the_parts_are_missing(
        tmp_path, caplog):
    """A data set without parts (Cars, Aircraft, a CUB snapshot without parts/): the real
    step on a really trained model writes its maps and tables, part measures as missing."""
    import json
    import logging
    import shutil
    from pathlib import Path

    from subspace_fsl import grid, paths
    from subspace_fsl.config import load_config
    from subspace_fsl.data.cache import PARTS_FILE, prepare
    from subspace_fsl.engine.train import train
    from subspace_fsl.explain.pipeline import run_explain
    from subspace_fsl.selection import SELECTION_COLUMNS, write_selection

    cfg = load_config(overrides=[
        f"results_dir={tmp_path}", f"data_dir={tmp_path / 'data'}", "dataset.image_size=32",
        "dataset.synthetic={classes: 8, images_per_class: 10, size: 32}",
        "split.counts=[4, 2, 2]", "grid.way=[2]", "grid.shot=[1]", "grid.n_subspaces=[2]",
        "grid.lambda1=[0]", "grid.lambda2=[0]", "grid.seeds=[0]", "grid.tau=[1]",
        "grid.baselines={}", "model.subspace_dim=8", "train.query=2", "train.max_episodes=2",
        "train.val_every=2", "train.val_episodes=2", "train.checkpoint_every=2",
        "train.log_every=1", "eval.query=2", "explain.episodes=2", "explain.examples=2",
        "runtime.device=cpu", "runtime.progress=none", "tracking.enabled=false",
    ])
    cache = prepare(cfg, progress=False)
    (Path(cache) / PARTS_FILE).unlink()  # the data set has no part annotations
    shutil.rmtree(Path(cfg["data_dir"]) / "synthetic" / "parts")  # (else: a stale cache)
    name = paths.run_name(2, 1, 2, 0, 0, 0)
    train(grid.run_config(cfg, "multisubspace", name),
          paths.run_dir(cfg, "multisubspace", name))
    selection = pd.DataFrame([{
        "method": "multisubspace", "way": 2, "shot": 1, "n_subspaces": 2, "lambda1": 0.0,
        "lambda2": 0.0, "tau": 1.0, "learn_tau": False, "distance": "squared",
        "embed": "joint", "augment": "standard", "val_accuracy": 0.5, "n_seeds": 1,
        "budget": 1, "best_s": True}])[SELECTION_COLUMNS]
    write_selection(selection, paths.selection_path(cfg))
    with caplog.at_level(logging.INFO, logger="subspace_fsl.explain.pipeline"):
        out = run_explain(cfg)
    assert "has no part annotations" in caplog.text
    assert json.loads((out / "done.json").read_text())["parts"] is False
    summary = pd.read_csv(out / "explain.csv")
    assert len(summary) == 1 and 0 <= summary["accuracy"].iloc[0] <= 1
    assert summary["specialization"].isna().all() and summary["diversity"].isna().all()
    assert np.isfinite(summary["mean_rv"]).all()
    assert (out / "explain.md").read_text().startswith(
        "synthetic has no part annotations: the part measures")
    profiles = pd.read_csv(out / "profiles.csv")
    assert list(profiles.columns) == ["method", "run", "subspace", "parts_available"]
    assert list(profiles["subspace"]) == [1, 2] and not profiles["parts_available"].any()
    assert not summary["parts_available"].any()
    for kind in ("examples", "profile", "rv"):
        assert (out / f"{kind}_w2_k1.png").stat().st_size > 1000
