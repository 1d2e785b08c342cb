"""Derived files record what they were made from: a changed setting rebuilds them (their
producer, the workflow) or is refused naming the file, the setting and both values."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_workflow import job_counts
from waiting import HANG_S

from subspace_fsl.cli import main
from subspace_fsl.config import load_config
from subspace_fsl.data.cache import prepare
from subspace_fsl.provenance import ProvenanceError, check, stamp

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def settings(root: Path, counts: list[int]) -> dict:
    return {
        "results_dir": str(root / "results"),
        "data_dir": str(root / "data"),
        "dataset": {"name": "tiny", "image_size": 32,
                    "synthetic": {"classes": 6, "images_per_class": 6, "size": 32}},
        "split": {"rule": "random", "counts": counts, "seed": 0},
    }


def test_check_names_the_file_the_setting_and_both_values(tmp_path: Path):
    check("f.json", stamp({"split": {"counts": [1, 2]}}), {"split": {"counts": (1, 2)}})
    with pytest.raises(ProvenanceError) as error:
        check("f.json", {"split.seed": 0}, {"split": {"seed": 3}}, remedy="remake it")
    assert str(error.value) == (
        "f.json was made with split.seed=0 but the current settings give split.seed=3; remake it"
    )
    with pytest.raises(ProvenanceError, match=r"split.rule=\(not recorded\)"):
        check("f.json", {}, {"split.rule": "random"})


def test_a_changed_split_is_rebuilt_by_split_and_refused_by_train(tmp_path: Path, capsys,
                                                                   caplog):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(settings(tmp_path, [2, 2, 2])))
    prepare(load_config(config), progress=False)
    split_file = tmp_path / "results" / "splits" / "tiny.json"
    assert main(["split", "--config", str(config)]) == 0
    first = json.loads(split_file.read_text())
    assert first["counts"] == [2, 2, 2] and first["provenance"]["split.counts"] == [2, 2, 2]

    # the user changes split.counts; train (a consumer) refuses the old file
    run = tmp_path / "run"
    capsys.readouterr()
    code = main(["train", "--config", str(config), "--set", "split.counts=[4,1,1]",
                 "--split-file", str(split_file), "--out", str(run)])
    assert code == 2
    error = capsys.readouterr().err
    assert str(split_file) in error
    assert "split.counts=[2, 2, 2]" in error and "split.counts=[4, 1, 1]" in error
    # the same without --split-file (the default path) and for the seed
    code = main(["train", "--config", str(config), "--set", "split.seed=5", "--out", str(run)])
    assert code == 2 and "split.seed=0" in capsys.readouterr().err
    assert not (run / "checkpoint.pt").exists()

    # split (the producer) rebuilds it, atomically, and says which setting changed
    with caplog.at_level("INFO", logger="subspace_fsl.data.splits"):
        assert main(["split", "--config", str(config), "--set", "split.counts=[4,1,1]"]) == 0
    assert f"replacing {split_file}" in caplog.text and "split.counts" in caplog.text
    rebuilt = json.loads(split_file.read_text())
    assert rebuilt["counts"] == [4, 1, 1] and len(rebuilt["base"]) == 4
    assert not [p for p in split_file.parent.iterdir() if p.name.startswith(".")]
    # equivalent fractions make the same split: accepted
    from subspace_fsl.engine.data import open_data

    cfg = load_config(config, ["split.counts=[0.666666666, 0.1666666667, 0.1666666667]"])
    assert open_data(cfg).split["base"] == rebuilt["base"]


def test_a_hand_made_split_file_is_judged_by_its_own_fields(tmp_path: Path):
    from subspace_fsl.engine.data import open_data

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(settings(tmp_path, [2, 2, 2])))
    cfg = load_config(config)
    prepare(cfg, progress=False)
    data = open_data(cfg)
    hand = {k: v for k, v in data.split.items() if k != "provenance"}
    path = tmp_path / "hand.json"
    path.write_text(json.dumps(hand))
    assert open_data(cfg, split_file=path).split["base"] == hand["base"]
    with pytest.raises(ProvenanceError, match=r"split.counts=\[2, 2, 2\] but .*=\[3, 2, 1\]"):
        open_data(load_config(config, ["split.counts=[3,2,1]"]), split_file=path)


def _snakemake(workdir: Path, config: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.run(
        [str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile"), "--configfile",
         str(config), "--cores", "1", *args],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=HANG_S)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc.stdout + proc.stderr


def test_the_workflow_reruns_split_when_split_counts_change_and_only_then(tmp_path: Path):
    config = tmp_path / "tiny.yaml"
    base = {**settings(tmp_path, [2, 2, 2]),
            "runtime": {"device": "cpu", "progress": "none", "malloc_tuning": False}}
    config.write_text(yaml.safe_dump(base))
    split_file = tmp_path / "results" / "splits" / "tiny.json"
    _snakemake(tmp_path, config, str(split_file))
    assert json.loads(split_file.read_text())["counts"] == [2, 2, 2]

    # a training setting leaves the cache and the split alone
    config.write_text(yaml.safe_dump({**base, "train": {"lr": 0.01}}))
    assert "Nothing to be done" in _snakemake(tmp_path, config, "-n", str(split_file))
    # a split setting re-runs split (not prepare), which rebuilds the file
    config.write_text(yaml.safe_dump({**base, "split": {**base["split"], "counts": [4, 1, 1]}}))
    dry = _snakemake(tmp_path, config, "-n", str(split_file))
    assert job_counts(dry) == {"split": 1}
    _snakemake(tmp_path, config, str(split_file))
    assert json.loads(split_file.read_text())["counts"] == [4, 1, 1]


def test_an_evaluation_is_current_only_for_its_checkpoint_split_and_settings(tmp_path: Path):
    import shutil

    from subspace_fsl.engine.evaluate import evaluate
    from subspace_fsl.engine.train import train
    from subspace_fsl.evaluation_record import check_evaluation

    base = {**settings(tmp_path, [2, 2, 2]),
            "model": {"backbone": "conv4", "head": "multisubspace", "n_subspaces": 2,
                      "subspace_dim": 4},
            "train": {"way": 2, "shot": 2, "query": 2, "max_episodes": 2, "val_every": 2,
                      "val_episodes": 2, "checkpoint_every": 2, "log_every": 2},
            "eval": {"query": 2, "episodes": 4, "batch_size": 36},
            "tracking": {"enabled": False},
            "runtime": {"threads": 1, "progress": "none", "device": "cpu"}}
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(base))
    cfg = load_config(config)
    run = tmp_path / "run"
    train(cfg, run)
    split_file = tmp_path / "results" / "splits" / "tiny.json"
    out = run / "eval" / "val"
    evaluate(cfg, run / "best.pt", "val", out)
    summary = check_evaluation(out, cfg, run / "best.pt", "val", split_file)
    assert summary["provenance"]["eval.episodes"] == 4

    with pytest.raises(ProvenanceError, match=r"summary.json was made with eval.episodes=4 .*=8"):
        check_evaluation(out, load_config(config, ["eval.episodes=8"]), run / "best.pt", "val",
                         split_file)
    # another checkpoint (another training seed) in its place: not this evaluation's
    train(load_config(config, ["train.seed=1"]), tmp_path / "other")
    shutil.copy(tmp_path / "other" / "best.pt", run / "best.pt")
    with pytest.raises(ProvenanceError, match="checkpoint="):
        check_evaluation(out, cfg, run / "best.pt", "val", split_file)
    # a re-evaluation that fails leaves the earlier evaluation as it was (replaced as a whole
    # or not at all), and that one is still refused as not this checkpoint's (train.seed=1:
    # the settings the swapped-in checkpoint fixes, which evaluate would otherwise refuse)
    with pytest.raises(ValueError, match=r"eval\.query"):
        evaluate(load_config(config, ["train.seed=1", "eval.query=50"]), run / "best.pt", "val",
                 out)
    assert (out / "summary.json").exists()
    with pytest.raises(ProvenanceError, match="checkpoint="):
        check_evaluation(out, cfg, run / "best.pt", "val", split_file)
