"""The workflow's house: formatted rules, readable jobs, the job glue, the generated settings page
and the README's layout (the end-to-end run is tests/test_workflow.py)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from waiting import HANG_S

from subspace_fsl import schema_docs
from subspace_fsl.config import load_schema

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess[str]:
    import os

    full_env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                **(env or {})}
    return subprocess.run(args, cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=HANG_S)


def test_rules_are_snakefmt_clean():
    proc = _run([str(BIN / "snakefmt"), "--check", "Snakefile", "workflow"], cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dry_run_prints_short_job_descriptions_not_the_configuration(tmp_path):
    proc = _run([str(BIN / "snakemake"), "-n", "-p", "--profile", "profiles/demo", "--config",
                 f"results_dir={tmp_path / 'results'}", f"data_dir={tmp_path / 'data'}"],
                cwd=REPO)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "Job stats" in out
    for line in ("train multisubspace/w5_k5_S4_l1-0.3_l2-0.1_t4_anone_seed0",
                 "evaluate protonet/w5_k5_S1_l1-0_l2-0_deuc_anone_seed0 on novel",
                 "evaluate dsn/w5_k5_S1_l1-0_l2-0.03_t10_anone_seed0 on val",
                 "pretrain conv4 on the base classes of synthetic",
                 "prepare the image cache of synthetic", "tables of synthetic"):
        assert re.search(rf"^Job \d+: {re.escape(line)}$", out, flags=re.M), line
    # no settings on any job's line: no --set, no JSON, no Python mapping of a section
    assert "--set" not in out and '{"' not in out and "'train': {" not in out
    # the rule, the method and the run name (with its non-default settings), nothing else
    assert max(len(line) for line in out.splitlines() if line.startswith("Job ")) < 100


# --- the rules' params (subspace_fsl.snakemake_job) -------------------------------------------


def test_params_do_not_depend_on_the_order_of_the_config_file():
    from subspace_fsl import snakemake_job
    from subspace_fsl.config import load_config

    cfg = load_config(REPO / ".test" / "config.yaml")
    shuffled = {k: (dict(reversed(v.items())) if isinstance(v, dict) else v)
                for k, v in reversed(cfg.items())}
    assert list(shuffled) != list(cfg)
    for params in (lambda c: snakemake_job.grid_settings(c),
                   lambda c: snakemake_job.stage_settings(c, "split"),
                   lambda c: snakemake_job.run_settings(c, "protonet",
                                                        "w3_k1_S1_l1-0_l2-0_anone_seed0")):
        assert repr(params(shuffled)) == repr(params(cfg))  # Snakemake compares the repr


def test_a_job_records_the_evaluation_only_settings_without_depending_on_them():
    from subspace_fsl import snakemake_job
    from subspace_fsl.config import load_config

    cfg = load_config(REPO / ".test" / "config.yaml")
    name = "w3_k1_S1_l1-0_l2-0_anone_seed0"

    class Params(dict):  # what a script sees as snakemake.params
        __getattr__ = dict.__getitem__

    train = snakemake_job.run_settings(cfg, "protonet", name)
    assert set(train["eval"]) == {"batch_size", "query", "seed"}  # the rerun trigger
    only = snakemake_job.evaluation_only(cfg)
    # (and the cross-domain targets: their own evaluations read them, eval.targets)
    assert only == {"eval": {"episodes": 6, "shots": [1, 2], "targets": cfg["eval"]["targets"]}}
    # the train job's settings (and its config.yaml) hold the user's eval section, not the
    # schema's defaults (eval.episodes 600, eval.shots null)
    job = snakemake_job.job_config(Params(settings=train, evaluation=only), "train")
    assert job["eval"] == cfg["eval"]
    # an evaluation's own eval.episodes (its rerun trigger) wins over the recorded one
    evaluation = snakemake_job.evaluation_settings(cfg, "protonet", name)
    assert evaluation["eval"]["episodes"] == 6 and "shots" not in evaluation["eval"]
    job = snakemake_job.job_config(Params(settings=evaluation,
                                          evaluation={"eval": {"episodes": 99, "shots": [1]}}))
    assert job["eval"]["episodes"] == 6 and job["eval"]["shots"] == [1]


def test_each_data_stage_gets_the_sections_it_reads():
    from subspace_fsl import snakemake_job
    from subspace_fsl.config import load_config

    cfg = load_config(REPO / ".test" / "config.yaml")
    assert set(snakemake_job.stage_settings(cfg, "split")) == {
        "results_dir", "data_dir", "dataset", "split"}
    assert "split" not in snakemake_job.stage_settings(cfg, "prepare")
    runtime = snakemake_job.runtime_settings(cfg, threads=3)
    assert set(runtime) == {"runtime", "tracking"} and runtime["runtime"]["threads"] == 3
    with pytest.raises(ValueError, match="unknown stage 'train'"):
        snakemake_job.stage_settings(cfg, "train")


# --- the job glue (subspace_fsl.snakemake_job) in real Snakemake jobs --------------------------


def _one_job(tmp_path: Path, params: str, env: dict[str, str] | None = None
             ) -> tuple[subprocess.CompletedProcess[str], str]:
    """One rule running the real split script, as the workflow's rules do."""
    (tmp_path / "not_a_cache").mkdir()
    (tmp_path / "Snakefile").write_text(f'''
rule split:
    input: "not_a_cache"
    output: "split.json"
    params: {params}
    log: "split.log"
    script: "{REPO / 'workflow' / 'scripts' / 'split.py'}"
''')
    proc = _run([str(BIN / "snakemake"), "--cores", "1"], cwd=tmp_path, env=env)
    return proc, (tmp_path / "split.log").read_text()


@pytest.mark.parametrize(("params", "named"), [
    ("settings={}", "not_a_cache"),  # a stage's own check: the folder is not an image cache
    ("settings={'split': {'rule': 'halves'}}", "split.rule"),  # settings the schema refuses
])
def test_a_user_error_in_a_job_is_one_message_and_exit_code_2(tmp_path, params, named):
    proc, log = _one_job(tmp_path, params)
    assert proc.returncode != 0
    assert "returned non-zero exit status 2" in proc.stdout + proc.stderr
    assert log.startswith("subspace-fsl split: error: ") and named in log, log
    assert "Traceback" not in log
    # the same line reaches the terminal, with the log's path
    assert re.search(r"^subspace-fsl split: error: .*\(log: split\.log\)$",
                     proc.stdout + proc.stderr, flags=re.M | re.S)
    assert not (tmp_path / "split.json").exists()


def test_debug_variable_shows_the_traceback(tmp_path):
    proc, log = _one_job(tmp_path, "settings={}", env={"SUBSPACE_FSL_DEBUG": "1"})
    assert proc.returncode != 0
    assert "Traceback" in log and "not_a_cache" in log


# --- config/README.md ------------------------------------------------------------------------


def test_config_readme_is_the_page_generated_from_the_schema():
    committed = (REPO / schema_docs.README_PATH).read_text()
    assert committed == schema_docs.render(), (
        "config/README.md is out of date: python -m subspace_fsl.schema_docs > config/README.md")


def test_config_readme_has_one_row_per_setting():
    keys = [key for key, _ in schema_docs.settings(load_schema())]
    assert "dataset.synthetic.classes" in keys and "grid.baselines" in keys
    assert "dataset" not in keys and "dataset.synthetic" not in keys  # sections are walked
    rows = re.findall(r"^\| `([^`]+)` \|", schema_docs.render(), flags=re.M)
    assert rows == keys


@pytest.mark.parametrize(("node", "words"), [
    ({"type": "integer", "minimum": 1}, "integer >= 1"),
    ({"type": "number", "exclusiveMinimum": 0}, "number > 0"),
    ({"type": ["integer", "null"], "minimum": 16}, "integer or null >= 16"),
    ({"enum": ["none", "step"]}, "one of: none, step"),
    ({"type": "array", "items": {"type": "number"}, "minItems": 3, "maxItems": 3},
     "list of 3, each number"),
    ({"type": "array", "items": {"type": "integer", "minimum": 2}, "minItems": 1},
     "non-empty list, each integer >= 2"),
    ({"type": "string", "pattern": "^[a-z]+$"}, "string matching `^[a-z]+$`"),
])
def test_allowed_values_in_words(node, words):
    assert schema_docs.allowed(node) == words


def test_shared_definitions_are_resolved():
    schema = {"$defs": {"taus": {"type": "array", "minItems": 1, "uniqueItems": True,
                                 "items": {"anyOf": [{"type": "number", "exclusiveMinimum": 0},
                                                     {"enum": ["learn"]}]}}},
              "properties": {"grid": {"type": "object", "properties": {
                  "tau": {"$ref": "#/$defs/taus", "default": [1, 4], "description": "temps"}}}}}
    (key, node), = schema_docs.settings(schema)
    assert key == "grid.tau" and node["default"] == [1, 4]
    assert schema_docs.allowed(node) == (
        "non-empty list of distinct values, each number > 0 or one of: learn")
    assert "| `grid.tau` | `[1, 4]` |" in schema_docs.render(schema)


# --- README ----------------------------------------------------------------------------------


def test_readme_layout_names_every_top_level_entry():
    readme = (REPO / "README.md").read_text()
    layout = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.split()
    top = {path.split("/")[0] for path in tracked} - {".gitignore", "README.md"}
    for entry in sorted(top):
        assert re.search(rf"(^|[\s,]){re.escape(entry)}(/|[\s,]|$)", layout, flags=re.M), entry
    for folder in ("workflow/rules", "workflow/scripts", "workflow/schemas", "workflow/report",
                   "src/subspace_fsl"):
        assert folder in layout, folder


def test_docs_layout_names_every_module_of_the_package():
    layout = (REPO / "docs" / "layout.md").read_text()
    package = REPO / "src" / "subspace_fsl"
    for path in sorted(package.rglob("*.py")):
        if path.name in ("__init__.py", "__main__.py") or "__pycache__" in path.parts:
            continue
        name = path.stem.lstrip("_")
        assert re.search(rf"\b{re.escape(name)}\b", layout), path.relative_to(REPO)
