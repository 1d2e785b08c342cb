"""profiles/slurm asks a GPU and its runtime for every rule that runs the model, and every rule of
the workflow is accounted for, so a new rule cannot silently land on the CPU partition with the
default hour (the real submission is tests/cluster/cluster_tests.py, `make test-cluster`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yte
from test_workflow import TINY, _rule_blocks, _write_config

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "profiles" / "slurm" / "config.yaml"

# the rules that load a model or train one: a GPU each
MODEL_RULES = {"pretrain", "train", "evaluate", "evaluate_shot", "explain", "embed",
               "evaluate_target"}
# data, selection and reporting: the CPU partition's default resources
CPU_RULES = {"synthesise", "prepare", "split", "select", "tables", "plots", "prepare_target",
             "report_pages"}
LOCAL_RULES = {"init_tracking"}  # `localrule: True`: runs on the submit host


def _profile() -> dict:
    # read as Snakemake reads a profile (yte over YAML: anchors and merge keys resolved)
    with PROFILE.open() as stream:
        return yte.process_yaml(stream, require_use_yte=True)


def test_every_rule_of_the_workflow_is_classified() -> None:
    assert set(_rule_blocks()) == MODEL_RULES | CPU_RULES | LOCAL_RULES


def test_local_rules_are_the_ones_marked_local() -> None:
    blocks = _rule_blocks()
    assert {name for name, body in blocks.items() if "localrule: True" in body} == LOCAL_RULES


def test_every_model_rule_asks_for_one_gpu_its_threads_memory_and_runtime() -> None:
    profile = _profile()
    resources, threads = profile["set-resources"], profile["set-threads"]
    for rule in sorted(MODEL_RULES):
        assert resources[rule]["gpu"] == 1, rule
        assert resources[rule]["slurm_partition"] == resources["train"]["slurm_partition"], rule
        assert resources[rule]["mem_mb"] >= 8000, rule
        assert resources[rule]["runtime"] >= 60, rule
        assert threads[rule] == threads["train"], rule
    # pre-training (20k batches) and training (60k episodes) need more than the default hour
    assert resources["pretrain"]["runtime"] > profile["default-resources"]["runtime"]
    assert resources["train"]["runtime"] > resources["pretrain"]["runtime"]


def test_cpu_rules_ask_for_no_gpu() -> None:
    profile = _profile()
    for rule in sorted(CPU_RULES):
        assert "gpu" not in profile["set-resources"].get(rule, {}), rule
    assert "gpu" not in profile["default-resources"]


def test_the_cell_families_are_gpu_jobs_for_every_generated_rule() -> None:
    """train.batch_cells' rules are generated (train_cells_0, evaluate_cells_0_val, ...): the
    profile names their families instead."""
    profile = _profile()
    resources, threads = profile["set-resources"], profile["set-threads"]
    for family in ("train_cells", "evaluate_cells"):
        assert resources[family]["gpu"] == 1, family
        assert resources[family]["slurm_partition"] == resources["train"]["slurm_partition"]
        assert threads[family] == threads["train"], family
    # a group trains up to 20 cells in one process: more than one run's memory and time
    assert resources["train_cells"]["runtime"] > resources["train"]["runtime"]
    assert resources["train_cells"]["mem_mb"] > resources["train"]["mem_mb"]


@pytest.mark.slow
def test_generated_cell_rules_take_their_familys_set_resources(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batched tiny grid parsed by Snakemake's own API with set-resources / set-threads (what
    a profile's entries become): every train_cells_N gets train_cells' memory and threads, every
    evaluate_cells_N_* gets evaluate's (no evaluate_cells entry: the family falls back to the
    per-run rule's), and an entry naming a generated rule itself wins. (A dry run prints the
    rules' messages, not their resources, so the rules are read from the parsed workflow.)"""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings

    config = _write_config(tmp_path, {
        **TINY, "train": {**TINY["train"], "backbone": "frozen", "batch_cells": True},
        "eval": {k: v for k, v in TINY["eval"].items() if k not in ("shots", "targets")},
        "tracking": {"enabled": False}})
    monkeypatch.chdir(tmp_path)
    resources = ResourceSettings(
        cores=8, overwrite_threads={"train_cells": 3, "evaluate": 2},
        overwrite_resources={"train_cells": {"mem_mb": 12345}, "evaluate": {"mem_mb": 2345},
                             "train_cells_1": {"mem_mb": 777}})
    with SnakemakeApi(OutputSettings(quiet=True)) as api:
        workflow_api = api.workflow(
            resource_settings=resources, config_settings=ConfigSettings(configfiles=[config]),
            snakefile=REPO / "Snakefile", workdir=tmp_path)
        workflow_api.dag()  # parses the Snakefile: the rules exist from here on
        workflow = workflow_api._workflow

        def threads_and_memory(rule: str) -> tuple[int, int]:
            parsed = workflow.get_rule(rule).resources
            return parsed["_cores"].value, parsed["mem_mb"].value

        assert threads_and_memory("train_cells_0") == (3, 12345)
        assert threads_and_memory("train_cells_1") == (3, 777)
        for split in ("val", "novel"):
            for index in (0, 1):
                assert threads_and_memory(f"evaluate_cells_{index}_{split}") == (2, 2345)
        # the rules the families do not name keep their own settings
        assert threads_and_memory("pretrain")[1] != 12345
