"""Settings are read with YAML 1.2 core-schema rules, in files and in --set, and every number
is finite; a file that Snakemake (YAML 1.1) would read differently is refused."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from waiting import HANG_S

from subspace_fsl.config import (
    ConfigError,
    check_same_reading,
    load_config,
    save_config,
    yaml_dump,
    yaml_load,
)

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "subspace_fsl.cli"]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=HANG_S,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize(("text", "value"), [
    ("010", 10), ("0o10", 8), ("0x1F", 31), ("-010", -10), ("1e-3", 0.001), ("6.0e-4", 6e-4),
    (".5", 0.5), ("yes", "yes"), ("on", "on"), ("No", "No"), ("true", True), ("~", None),
    ("2024-01-01", "2024-01-01"), ("1_000", "1_000"), ("0b11", "0b11"), ("1:30", "1:30"),
])
def test_scalars_follow_the_yaml_1_2_core_schema(text: str, value: object):
    loaded = yaml_load(text)
    assert loaded == value and type(loaded) is type(value)


def test_a_saved_config_reads_back_the_same_under_yaml_1_1_and_1_2(tmp_path: Path):
    cfg = load_config(None, ["dataset.name='0o10'", "tracking.experiment=yes",
                             "train.lr=1e-5", "model.backbone_weights='010'"])
    save_config(cfg, tmp_path / "config.yaml")
    text = (tmp_path / "config.yaml").read_text()
    assert yaml_load(text) == cfg == yaml.safe_load(text)
    assert yaml_load(yaml_dump({"x": "1_000"})) == {"x": "1_000"} == yaml.safe_load(
        yaml_dump({"x": "1_000"}))


def test_set_values_use_yaml_1_2_through_the_command_line():
    proc = cli("show-config", "--set", "train.shot=010", "--set", "train.seed=0x1F",
               "--set", "train.lr=1e-3")
    assert proc.returncode == 0, proc.stderr
    shown = yaml_load(proc.stdout)["train"]
    assert (shown["shot"], shown["seed"], shown["lr"]) == (10, 31, 0.001)


def test_config_file_values_use_yaml_1_2(tmp_path: Path):
    (tmp_path / "c.yaml").write_text("train:\n  shot: 010\n  lr: 1e-3\n")
    cfg = load_config(tmp_path / "c.yaml")
    assert (cfg["train"]["shot"], cfg["train"]["lr"]) == (10, 0.001)


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_non_finite_numbers_are_refused_for_every_number(value: str):
    for key in ("train.lambda1", "model.tau", "train.lr", "split.counts", "grid.lambda2"):
        text = f"[1, {value}, 1]" if key.split(".")[1] in ("counts", "lambda2") else value
        with pytest.raises(ConfigError, match=rf"{key}(\.1)?: .*finite"):
            load_config(None, [f"{key}={text}"])


def test_nan_in_a_config_file_is_one_line_exit_2_naming_the_key(tmp_path: Path):
    config = tmp_path / "nan.yaml"
    config.write_text("train:\n  lambda1: .nan\n")
    proc = cli("train", "--config", str(config), "--out", str(tmp_path / "run"))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "train.lambda1" in lines[0] and "finite" in lines[0], lines
    assert not (tmp_path / "run").exists()  # nothing is left to poison a corrected rerun


def test_a_file_yaml_1_1_reads_otherwise_is_refused_for_the_workflow(tmp_path: Path):
    (tmp_path / "ok.yaml").write_text("train:\n  shot: 10\n  lr: 1.0e-3\n  augment: true\n"
                                      "tracking:\n  experiment: 'yes'\n")
    check_same_reading([tmp_path / "ok.yaml"])
    (tmp_path / "bad.yaml").write_text("train:\n  shot: 010\n")
    with pytest.raises(ConfigError, match=r"train\.shot reads as 8 under YAML 1\.1.* 10 under"):
        check_same_reading([tmp_path / "bad.yaml"])
    for text, key in (("train:\n  lr: 1e-3\n", "train.lr"),
                      ("train:\n  seed: 0o17\n", "train.seed"),
                      ("train:\n  augment: on\n", "train.augment")):
        (tmp_path / "bad.yaml").write_text(text)
        with pytest.raises(ConfigError, match=rf"{key} reads as"):
            check_same_reading([tmp_path / "bad.yaml"])
    assert math.isnan(yaml_load(".nan"))  # NaN against NaN is not a 1.1/1.2 difference
    (tmp_path / "nan.yaml").write_text("train:\n  lambda1: .nan\n")
    check_same_reading([tmp_path / "nan.yaml"])  # (validate refuses it instead)


def test_the_snakefile_refuses_such_a_file_before_building_anything(tmp_path: Path):
    (tmp_path / "bad.yaml").write_text(f"results_dir: {tmp_path / 'results'}\ntrain:\n"
                                       f"  shot: 010\n")
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("snakemake")), "--snakefile", str(REPO / "Snakefile"),
         "--directory", str(tmp_path), "--configfile", str(tmp_path / "bad.yaml"), "-n",
         "--cores", "1"],
        capture_output=True, text=True, timeout=HANG_S, cwd=tmp_path)
    assert proc.returncode != 0
    assert "train.shot reads as 8 under YAML 1.1 (Snakemake) but 10" in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()


def _one_error_line(proc: subprocess.CompletedProcess[str], *words: str) -> str:
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert len([x for x in proc.stderr.splitlines() if x.startswith("subspace-fsl ")]) == 1
    for word in words:
        assert word in line, line
    return line


def test_a_duplicate_key_is_refused_naming_file_key_and_line(tmp_path: Path):
    config = tmp_path / "dup.yaml"
    config.write_text("train:\n  shot: 1\nmodel:\n  n_subspaces: 2\n  n_subspaces: 4\n")
    _one_error_line(cli("show-config", "--config", str(config)), str(config),
                    "duplicate key 'n_subspaces'", "line 5")
    config.write_text("train:\n  shot: 1\ntrain:\n  way: 3\n")  # a whole section twice
    _one_error_line(cli("show-config", "--config", str(config)), "duplicate key 'train'",
                    "first at line 1", "line 3")
    with pytest.raises(ConfigError, match="duplicate key 'train'"):
        check_same_reading([config])  # what the Snakefile runs on its config files


def test_a_merge_key_may_still_be_overridden():
    assert yaml_load("a: &a {x: 1, y: 2}\nb:\n  <<: *a\n  x: 3\n") == {
        "a": {"x": 1, "y": 2}, "b": {"x": 3, "y": 2}}


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n"])
def test_an_empty_config_file_is_refused_not_read_as_the_full_benchmark(tmp_path: Path,
                                                                        text: str):
    config = tmp_path / "empty.yaml"
    config.write_text(text)
    _one_error_line(cli("show-config", "--config", str(config)), str(config), "empty",
                    "every default")
    assert load_config(None)["dataset"]["source"]  # no --config still means the defaults


@pytest.mark.parametrize("override", ["..train..shot..=3", "train..shot=3", ".train.shot=3",
                                      "train.shot.=3", "train. shot=3"])
def test_a_malformed_set_path_is_refused(override: str):
    _one_error_line(cli("show-config", "--set", override), repr(override), "key path")
