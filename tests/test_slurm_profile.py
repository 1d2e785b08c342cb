"""profiles/slurm asks a GPU and its runtime for every rule that runs the model, and every rule of
the workflow is accounted for, so a new rule cannot silently land on the CPU partition with the
default hour (the real submission is tests/cluster/cluster_tests.py, `make test-cluster`)."""

from __future__ import annotations

from pathlib import Path

import yte
from test_workflow import _rule_blocks

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
