"""report + selection on per-episode CSVs fabricated in tmp_path (the engine's file formats)."""

import json
import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from subspace_fsl import grid, paths, report, selection
from subspace_fsl.config import load_config

EPISODES = 40


def _cfg(tmp_path, seeds=(0,)):
    return load_config(overrides=_cfg_overrides(tmp_path, seeds))


def _cfg_overrides(tmp_path, seeds=(0, 1)):
    return [
        f"results_dir={tmp_path / 'results'}",
        "dataset.name=fab",
        "grid.way=[5]", "grid.shot=[1, 5]", "grid.n_subspaces=[1, 4]",
        "grid.lambda1=[0, 0.3]", "grid.lambda2=[0, 0.1]", f"grid.seeds={list(seeds)}",
        "grid.tau=[1, 4]",
        "grid.baselines={protonet: {head: protonet, n_subspaces: 1, lambda1: 0, lambda2: 0,"
        " grid: {tau: [1, 10], distance: [squared, euclidean]}},"
        " dsn: {head: dsn, n_subspaces: 1, lambda1: 0, lambda2: 0.03,"
        " grid: {tau: [1, 'learn:10']}}}",
        f"eval.episodes={EPISODES}",
    ]


def _true_accuracy(run: grid.Run, split: str) -> float:
    """Designed so that validation prefers lambda1=0.3, lambda2=0 at S=4 while the novel
    split would prefer lambda2=0.1: selection must follow validation only. Likewise the
    method's validation prefers tau = 1, ProtoNet's tau = 10 with the plain Euclidean
    distance (novel: tau = 1, squared) and DSN's the learned tau (novel: the fixed one)."""
    k = run.key
    if run.method == "protonet":
        if split == "val":
            return 0.50 + 0.06 * (k.tau == 10 and k.distance == "euclidean")
        return 0.50 + 0.06 * (k.tau == 1 and k.distance == "squared")
    if run.method == "dsn":
        return 0.55 + (0.05 if split == "val" else -0.05) * k.learn_tau
    acc = 0.52 + 0.02 * (k.n_subspaces == 4) + 0.01 * (k.shot == 5)
    acc -= (0.03 if split == "val" else -0.03) * (k.tau == 4)
    if split == "val":
        acc += 0.05 * (k.lambda1 == 0.3) + 0.01 * (k.lambda2 == 0.1) * (k.n_subspaces == 1)
        acc -= 0.04 * (k.lambda2 == 0.1) * (k.n_subspaces == 4)
    else:
        acc += 0.03 * (k.lambda1 == 0.3) + 0.06 * (k.lambda2 == 0.1)
    return acc


def _write_evaluation(cfg, run: grid.Run, split: str, accuracy, shot: int | None = None) -> None:
    """One evaluation as the engine leaves it: episodes.csv, then summary.json with the
    provenance of the run's best.pt (fabricated bytes), the split file and the settings."""
    from subspace_fsl.evaluation_record import evaluation_record

    out = paths.eval_dir(cfg, run.method, split, run.name, shot)
    out.mkdir(parents=True)
    pd.DataFrame({"episode": np.arange(len(accuracy)), "seed": 2024, "accuracy": accuracy}
                 ).to_csv(out / "episodes.csv", index=False)
    best = paths.run_dir(cfg, run.method, run.name) / "best.pt"
    if not best.is_file():
        best.write_bytes(f"fabricated {run.method}/{run.name}".encode())
    record = evaluation_record(grid.run_config(cfg, run.method, run.name), best, split,
                               paths.split_path(cfg), shot)
    (out / "summary.json").write_text(json.dumps({"provenance": record,
                                                  "episodes": len(accuracy)}))


def _fabricate(cfg, true_accuracy=_true_accuracy) -> None:
    split = {"rule": "random", "seed": 0, "counts": [10, 5, 5],
             "base": [f"b{i}" for i in range(10)], "val": [f"v{i}" for i in range(5)],
             "novel": [f"n{i}" for i in range(5)]}
    paths.split_path(cfg).parent.mkdir(parents=True)
    paths.split_path(cfg).write_text(json.dumps(split))
    rng = np.random.default_rng(0)
    episode_noise = {s: rng.normal(0, 0.05, EPISODES) for s in paths.SPLITS}  # shared episodes
    for run in grid.all_runs(cfg):
        for split in paths.SPLITS:
            acc = np.clip(true_accuracy(run, split) + episode_noise[split]
                          + rng.normal(0, 0.01, EPISODES), 0, 1)
            _write_evaluation(cfg, run, split, acc)
        history = pd.DataFrame({"episode": [10, 20, 30, 40], "train_loss": 1.0,
                                "val_acc": [0.3, np.nan, 0.4, 0.45], "val_ci95": 0.01})
        history.to_csv(paths.run_dir(cfg, run.method, run.name) / "history.csv", index=False)


@pytest.fixture
def fabricated(tmp_path):
    cfg = _cfg(tmp_path, seeds=(0, 1))
    _fabricate(cfg)
    return cfg


def test_selection_uses_validation_only(fabricated):
    path = selection.run_selection(fabricated)
    table = selection.read_selection(path)
    assert list(table["method"].unique()) == ["multisubspace", "protonet", "dsn"]
    chosen = table[table["method"] == "multisubspace"]
    assert len(chosen) == 4  # 2 shots x 2 S
    assert (chosen["tau"] == 1).all() and not chosen["learn_tau"].any()  # novel prefers 4
    s4 = chosen[chosen["n_subspaces"] == 4]
    assert (s4["lambda1"] == 0.3).all() and (s4["lambda2"] == 0).all()  # novel prefers 0.1
    s1 = chosen[chosen["n_subspaces"] == 1]
    # lambda1 is trained once at S=1 (it acts between subspaces): 0, whatever validation says
    assert (s1["lambda1"] == 0).all() and (s1["lambda2"] == 0.1).all()
    # per (way, shot) exactly one S is marked best, and it is the larger validation score
    for _, group in chosen.groupby(["way", "shot"]):
        assert group["best_s"].sum() == 1
        assert group.loc[group["best_s"], "val_accuracy"].item() == group["val_accuracy"].max()
    assert set(chosen["n_seeds"]) == {2}
    assert set(chosen["budget"]) == {(1 + 2) * 2 * 2}  # (S=1 + S=4 x lambda1) x lambda2 x tau
    # each baseline: one chosen row per shot, on validation only, with its own budget
    proto = table[table["method"] == "protonet"]
    assert len(proto) == 2 and proto["best_s"].all() and set(proto["budget"]) == {4}
    assert (proto["tau"] == 10).all() and (proto["distance"] == "euclidean").all()
    dsn = table[table["method"] == "dsn"]
    assert dsn["learn_tau"].all() and (dsn["tau"] == 10).all() and set(dsn["budget"]) == {2}


def _tied(**settings) -> list[dict]:
    base = {"method": "m", "split": "val", "way": 5, "shot": 1, "n_subspaces": 1,
            "lambda1": 0.0, "lambda2": 0.0, "tau": 1.0, "learn_tau": False,
            "distance": "squared", "embed": "joint", "augment": "standard", "seed": 0,
            "accuracy": 0.5}
    keys = list(settings)
    import itertools
    return [{**base, **dict(zip(keys, values, strict=True)), "episode": e}
            for values in itertools.product(*settings.values()) for e in range(3)]


@pytest.mark.parametrize(("settings", "simplest"), [
    ({"tau": [10.0, 0.1, 1.0]}, {"tau": 1.0}),
    ({"tau": [10.0, 0.2]}, {"tau": 0.2}),          # closer to 1 in log scale
    ({"tau": [1.0, 10.0], "learn_tau": [True, False]}, {"tau": 1.0, "learn_tau": False}),
    ({"distance": ["euclidean", "squared"]}, {"distance": "squared"}),
    ({"embed": ["separate", "joint"]}, {"embed": "joint"}),
    # augmentation: the default policy first, then flip (its subset), then none
    ({"augment": ["none", "flip", "standard"]}, {"augment": "standard"}),
    ({"augment": ["none", "flip"]}, {"augment": "flip"}),
    ({"n_subspaces": [4, 2]}, {"n_subspaces": 2}),
])
def test_selection_ties_go_to_the_simpler_setting(settings, simplest):
    chosen = selection.select(pd.DataFrame(_tied(**settings)), "m")
    best = chosen[chosen["best_s"]].iloc[0]
    for key, value in simplest.items():
        assert best[key] == value, (key, best.to_dict())


def test_selection_ties_go_to_smaller_lambdas():
    rows = [{"method": "m", "split": "val", "way": 5, "shot": 1, "n_subspaces": 2,
             "lambda1": l1, "lambda2": l2, "tau": 1.0, "learn_tau": False,
             "distance": "squared", "embed": "joint", "augment": "standard", "seed": 0,
             "episode": e, "accuracy": 0.5}
            for l1 in (0.3, 0.0) for l2 in (0.1, 0.0) for e in range(3)]
    chosen = selection.select(pd.DataFrame(rows), "m")
    assert chosen[["lambda1", "lambda2"]].iloc[0].tolist() == [0.0, 0.0]


def test_every_table_in_every_format(fabricated):
    selection.run_selection(fabricated)
    written = report.write_tables(fabricated)
    out = paths.tables_dir(fabricated)
    assert sorted(written) == sorted(out / f"{n}.{e}" for n in report.TABLE_NAMES
                                     for e in report.TABLE_FORMATS)
    for name in report.TABLE_NAMES:
        data = pd.read_csv(out / f"{name}.csv")
        assert (data["split_rule"] == "class split random (seed 0): 10 base / 5 validation / "
                                      "5 novel classes").all()
        md = (out / f"{name}.md").read_text()
        tex = (out / f"{name}.tex").read_text()
        assert "class split random (seed 0)" in md and "class split random" in tex
        assert "validation" in md
        assert tex.count(r"\begin{tabular}") == 1 and tex.rstrip().endswith(r"\end{table}")

    main = pd.read_csv(out / "main.csv")
    assert set(main["method"]) == {"multisubspace", "protonet", "dsn"}
    assert len(main) == 3 * 2
    ours = main[main["method"] == "multisubspace"]
    assert (ours["lambda1"] == 0.3).all() and (ours["n_subspaces"] == 4).all()
    assert (ours["n_seeds"] == 2).all() and ours["seed_sd"].notna().all()
    assert (main["chosen_on"] == "validation").all()
    budgets = main.groupby("method")["budget"].first().to_dict()
    assert budgets == {"multisubspace": 12, "protonet": 4, "dsn": 2}
    proto = main[main["method"] == "protonet"]
    assert (proto["tau"] == 10).all() and (proto["distance"] == "euclidean").all()
    md = (out / "main.md").read_text()
    assert "| multisubspace |" in md and "5-way 1-shot" in md and "5-way 5-shot" in md
    # each method's chosen settings and its selection budget, in the table itself
    assert "| protonet: chosen on validation | τ=10, euclidean distance (best of 4 on " in md
    assert "| dsn: chosen on validation | τ learned (from 10) (best of 2 on validation)" in md
    assert "S=4, λ1=0.3, λ2=0, τ=1 (best of 12 on validation)" in md
    paired_md = (out / "paired.md").read_text()
    assert "τ=10, euclidean distance (best of 4 on validation)" in paired_md
    assert "(sd " in md  # seed spread next to the episode CI

    lam = pd.read_csv(out / "lambdas.csv")
    assert len(lam) == 2 * (1 + 2) * 2 and lam["chosen"].sum() == 4  # shots x lambda1s x lambda2

    cons = pd.read_csv(out / "constraints.csv")
    assert len(cons) == 2 * 2 * len(report.CONSTRAINT_VARIANTS)
    off = cons[cons["variant"].str.startswith("L2 off")]
    assert (off["lambda2"] == 0).all()
    both = cons[cons["variant"].str.startswith("both off")]
    assert ((both["lambda1"] == 0) & (both["lambda2"] == 0)).all()


def test_constraints_table_paired_against_scipy(fabricated):
    """Each switched-off variant minus the both-constraints cell of the same S, on the same
    novel episodes (seed-averaged), equals scipy's Wilcoxon and paired t on the episodes
    files; a variant that is the both-constraints cell itself gets no comparison."""
    selection.run_selection(fabricated)
    report.write_tables(fabricated)
    cons = pd.read_csv(paths.tables_dir(fabricated) / "constraints.csv")
    here = cons[(cons["shot"] == 5) & (cons["n_subspaces"] == 4)].set_index("variant")

    def episodes(r):
        return np.mean([pd.read_csv(paths.eval_dir(
            fabricated, "multisubspace", "novel",
            paths.run_name(5, 5, 4, r["lambda1"], r["lambda2"], s, r["tau"])) / "episodes.csv")
            ["accuracy"].to_numpy() for s in (0, 1)], axis=0)

    both = here.loc["both constraints (λ1, λ2 chosen)"]
    assert (both["lambda1"], both["lambda2"]) == (0.3, 0)  # what validation chose at S=4
    assert np.isnan(here.loc["L2 off (λ2 = 0, λ1 chosen)", "diff_vs_both"])  # the same cell
    l1_off = here.loc["L1 off (λ1 = 0, λ2 chosen)"]
    ours, ref = episodes(l1_off), episodes(both)
    assert l1_off["diff_vs_both"] == pytest.approx(100 * (ours - ref).mean())
    assert l1_off["diff_ci95"] == pytest.approx(
        100 * 1.96 * (ours - ref).std(ddof=1) / np.sqrt(EPISODES))
    assert l1_off["p_wilcoxon"] == pytest.approx(sps.wilcoxon(ours, ref).pvalue)
    assert l1_off["p_ttest"] == pytest.approx(sps.ttest_rel(ours, ref).pvalue)
    tested = cons["p_wilcoxon"].notna()
    assert tested.sum() >= 4 and (cons.loc[tested, "p_wilcoxon_holm"]
                                  >= cons.loc[tested, "p_wilcoxon"]).all()
    md = (paths.tables_dir(fabricated) / "constraints.md").read_text()
    assert f"vs both {l1_off['diff_vs_both']:+.2f} ± {l1_off['diff_ci95']:.2f}" in md


def test_main_table_numbers_by_hand(fabricated):
    selection.run_selection(fabricated)
    report.write_tables(fabricated)
    main = pd.read_csv(paths.tables_dir(fabricated) / "main.csv")
    row = main[(main["method"] == "protonet") & (main["shot"] == 1)].iloc[0]
    # protonet at its validation choice (tau 10, euclidean), not at a fixed setting
    seeds = [pd.read_csv(paths.eval_dir(fabricated, "protonet", "novel",
                                        paths.run_name(5, 1, 1, 0, 0, s, 10, False,
                                                       "euclidean")) / "episodes.csv")
             ["accuracy"].to_numpy() for s in (0, 1)]
    per_episode = (seeds[0] + seeds[1]) / 2
    assert row["mean"] == pytest.approx(100 * per_episode.mean())
    assert row["ci95"] == pytest.approx(
        100 * 1.96 * per_episode.std(ddof=1) / np.sqrt(EPISODES))
    assert row["seed_sd"] == pytest.approx(100 * np.std([s.mean() for s in seeds], ddof=1))


def test_paired_table_against_scipy(fabricated):
    selection.run_selection(fabricated)
    report.write_tables(fabricated)
    paired = pd.read_csv(paths.tables_dir(fabricated) / "paired.csv")
    assert len(paired) == 2 * 2  # 2 shots x 2 baselines
    assert paired["test"].str.contains("Wilcoxon").all()
    row = paired[(paired["shot"] == 5) & (paired["baseline"] == "dsn")].iloc[0]

    def episodes(method, run):
        return np.mean([pd.read_csv(paths.eval_dir(fabricated, method, "novel",
                                                   run.format(seed=s)) / "episodes.csv")
                        ["accuracy"].to_numpy() for s in (0, 1)], axis=0)

    ours = episodes("multisubspace", "w5_k5_S4_l1-0.3_l2-0_seed{seed}")
    theirs = episodes("dsn", "w5_k5_S1_l1-0_l2-0.03_tlearn10_seed{seed}")
    assert row["mean_diff"] == pytest.approx(100 * (ours - theirs).mean())
    assert row["p_wilcoxon"] == pytest.approx(sps.wilcoxon(ours - theirs).pvalue)
    assert row["p_ttest"] == pytest.approx(sps.ttest_rel(ours, theirs).pvalue)
    assert row["baseline_learn_tau"] and row["baseline_budget"] == 2 and row["budget"] == 12
    raw = np.sort(paired["p_wilcoxon"].to_numpy())
    holm = np.sort(paired["p_wilcoxon_holm"].to_numpy())
    assert holm[0] == pytest.approx(min(1.0, 4 * raw[0]))
    assert (paired["p_wilcoxon_holm"] >= paired["p_wilcoxon"]).all()


def test_single_seed_has_no_seed_spread(tmp_path):
    cfg = _cfg(tmp_path, seeds=(0,))
    _fabricate(cfg)
    selection.run_selection(cfg)
    report.write_tables(cfg)
    main = pd.read_csv(paths.tables_dir(cfg) / "main.csv")
    assert main["seed_sd"].isna().all()
    assert "(sd " not in (paths.tables_dir(cfg) / "main.md").read_text()


def test_plots_written_as_png_and_pdf(fabricated):
    selection.run_selection(fabricated)
    written = report.write_plots(fabricated)
    out = paths.plots_dir(fabricated)
    assert sorted(written) == sorted(out / f"{n}.{e}" for n in report.PLOT_NAMES
                                     for e in report.PLOT_FORMATS)
    for path in written:
        head = path.read_bytes()[:8]
        assert head.startswith(b"\x89PNG") if path.suffix == ".png" else head.startswith(b"%PDF")
        assert path.stat().st_size > 5000


def test_missing_evaluation_is_named(fabricated):
    victim = paths.eval_dir(fabricated, "dsn", "novel", "w5_k1_S1_l1-0_l2-0.03_seed1")
    (victim / "episodes.csv").unlink()
    with pytest.raises(FileNotFoundError, match=re.escape("w5_k1_S1_l1-0_l2-0.03_seed1")):
        report.load_results(fabricated)


def test_an_unfinished_evaluation_is_not_read(fabricated):
    """episodes.csv without summary.json (written last): an evaluation that did not finish,
    e.g. an old episodes.csv left by a re-evaluation that was killed."""
    victim = paths.eval_dir(fabricated, "protonet", "val", "w5_k5_S1_l1-0_l2-0_seed0")
    (victim / "summary.json").unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(
            f"{victim / 'summary.json'} (the evaluation did not finish)")):
        report.load_results(fabricated)


def test_a_stale_evaluation_is_refused_naming_the_file_the_input_and_both_values(fabricated,
                                                                                   tmp_path):
    from subspace_fsl.provenance import ProvenanceError

    # other evaluation settings than the ones it was made with
    more = load_config(overrides=[*_cfg_overrides(tmp_path), "eval.episodes=600"])
    with pytest.raises(ProvenanceError, match=rf"summary.json was made with "
                       rf"eval.episodes={EPISODES} but the current settings give "
                       rf"eval.episodes=600"):
        report.load_results(more)
    # a retrained model in the run folder: its old evaluations are not its own
    run = paths.run_dir(fabricated, "multisubspace", "w5_k1_S4_l1-0.3_l2-0.1_seed0")
    (run / "best.pt").write_bytes(b"another model")
    with pytest.raises(ProvenanceError, match=r"eval/val/summary.json was made with checkpoint="):
        report.load_results(fabricated)


def test_cli_tables_refuse_a_stale_evaluation_in_one_line(fabricated, tmp_path, capsys):
    from subspace_fsl.cli import main

    config = tmp_path / "cfg.yaml"
    config.write_text(json.dumps(fabricated))
    assert main(["select", "--config", str(config)]) == 0
    run = paths.run_dir(fabricated, "dsn", "w5_k5_S1_l1-0_l2-0.03_seed1")
    (run / "best.pt").write_bytes(b"retrained")
    assert main(["tables", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("subspace-fsl tables: error: ")
    assert str(run / "eval") in err[0] and "checkpoint=" in err[0] and "Traceback" not in err[0]


def test_cli_select_tables_plots(tmp_path, capsys):
    from subspace_fsl.cli import main

    cfg = _cfg(tmp_path)
    _fabricate(cfg)
    config = tmp_path / "cfg.yaml"
    config.write_text(json.dumps(cfg))  # JSON is YAML
    assert main(["select", "--config", str(config)]) == 0
    assert paths.selection_path(cfg).is_file()
    assert main(["tables", "--config", str(config)]) == 0
    assert main(["plots", "--config", str(config)]) == 0
    printed = capsys.readouterr().out
    assert str(paths.tables_dir(cfg) / "paired.tex") in printed
    assert str(paths.plots_dir(cfg) / "training_curves.pdf") in printed
    assert main(["runs", "--config", str(config)]) == 0
    runs = capsys.readouterr().out.split()
    assert len(runs) == len(grid.all_runs(cfg)) and "dsn/w5_k1_S1_l1-0_l2-0.03_seed0" in runs


def test_eval_shots_label_the_training_shot_and_pair_within_one_eval_shot(tmp_path):
    # trained at 5 shots only, evaluated on the novel classes at 1 and 5 shots
    cfg = load_config(overrides=[*_cfg_overrides(tmp_path), "grid.shot=[5]",
                                 "eval.shots=[1, 5]"])
    _fabricate(cfg)
    rng = np.random.default_rng(1)
    one_shot = {}  # another episode plan: its own per-episode accuracies, lower
    noise = rng.normal(0, 0.05, EPISODES)
    for run in grid.all_runs(cfg):
        acc = np.clip(_true_accuracy(run, "novel") - 0.15 + noise
                      + rng.normal(0, 0.01, EPISODES), 0, 1)
        one_shot[run.name, run.method] = acc
        _write_evaluation(cfg, run, "novel", acc, shot=1)
    results = report.load_results(cfg)
    assert sorted(results.groupby(["split", "eval_shot"]).groups) == [
        ("novel", 1), ("novel", 5), ("val", 5)]  # validation only at the training shot
    selection.run_selection(cfg)
    report.write_tables(cfg)
    out = paths.tables_dir(cfg)
    main = pd.read_csv(out / "main.csv")
    assert sorted(zip(main["shot"], main["eval_shot"], strict=True)) == [(5, 1)] * 3 + [(5, 5)] * 3
    md = (out / "main.md").read_text()
    assert "5-way 1-shot (trained 5-shot)" in md and "| 5-way 5-shot |" in md
    # the 1-shot cell is the mean of the 1-shot files at the settings chosen at 5 shots
    row = main[(main["method"] == "protonet") & (main["eval_shot"] == 1)].iloc[0]
    chosen = [paths.run_name(5, 5, 1, 0, 0, s, row["tau"], False, row["distance"])
              for s in (0, 1)]
    per_episode = np.mean([one_shot[name, "protonet"] for name in chosen], axis=0)
    assert row["mean"] == pytest.approx(100 * per_episode.mean())
    paired = pd.read_csv(out / "paired.csv")
    assert len(paired) == 2 * 2  # 2 eval shots x 2 baselines, each on its own episodes
    assert (paired["n_episodes"] == EPISODES).all()
    assert "5-way 1-shot (trained 5-shot): multisubspace - dsn" in (out / "paired.md").read_text()


def _augment_accuracy(run: grid.Run, split: str) -> float:
    """Validation prefers flip for the method and none for ProtoNet; the novel split the
    opposite (standard): selection must follow validation."""
    k = run.key
    liked = {"multisubspace": "flip", "protonet": "none"}.get(run.method)
    if split == "val":
        return 0.5 + 0.08 * (k.augment == liked)
    return 0.5 + 0.08 * (k.augment == "standard")


def test_selection_chooses_the_augmentation_policy_on_validation_and_tables_name_it(tmp_path):
    cfg = load_config(overrides=[
        f"results_dir={tmp_path / 'results'}", "dataset.name=fab", "grid.way=[5]",
        "grid.shot=[5]", "grid.n_subspaces=[2]", "grid.lambda1=[0]", "grid.lambda2=[0]",
        "grid.seeds=[0]", "grid.tau=[1]", "grid.augment=[standard, flip, none]",
        "grid.baselines={protonet: {head: protonet, n_subspaces: 1, lambda1: 0, lambda2: 0,"
        " grid: {augment: [standard, none]}},"
        " dsn: {head: dsn, n_subspaces: 1, lambda1: 0, lambda2: 0.03, flip_support: one_shot}}",
        f"eval.episodes={EPISODES}"])
    _fabricate(cfg, _augment_accuracy)
    table = selection.read_selection(selection.run_selection(cfg))
    chosen = table.set_index("method")
    assert chosen.loc["multisubspace", "augment"] == "flip"
    assert chosen.loc["protonet", "augment"] == "none"
    assert chosen.loc["dsn", "augment"] == "standard"  # its one policy, train.augment's
    assert chosen["budget"].to_dict() == {"multisubspace": 3, "protonet": 2, "dsn": 1}
    report.write_tables(cfg)
    md = (paths.tables_dir(cfg) / "main.md").read_text()
    assert "S=2, λ1=0, λ2=0, τ=1, flip augmentation (best of 3 on validation)" in md
    assert "τ=1, none augmentation (best of 2 on validation)" in md
    # DSN searched no policy and uses the default: not named; its flipped support is
    assert "τ=1, 1-shot support + flips (best of 1 on validation)" in md
