"""``split.rule: lists``: explicit class lists (their errors, their provenance), and the
workflow accepting every new source and split rule (dry runs, one short run of the split)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from waiting import HANG_S

from subspace_fsl.data.splits import SplitError, check_split_settings, make_split, save_split
from subspace_fsl.provenance import ProvenanceError

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
NAMES = [f"{i:03d}.Class_{i}" for i in range(1, 10)]


def write_lists(folder: Path, base: list[str], val: list[str], novel: list[str]) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    lists = {}
    for name, members in (("base", base), ("val", val), ("novel", novel)):
        path = folder / f"{name}.txt"
        path.write_text(f"# {name} classes\n" + "".join(f"{m}\n" for m in members) + "\n")
        lists[name] = str(path)
    return lists


def test_lists_split_keeps_the_data_set_order_and_records_the_lists(tmp_path: Path) -> None:
    lists = write_lists(tmp_path, NAMES[5:], [NAMES[3], NAMES[0]], [NAMES[4], NAMES[1], NAMES[2]])
    split = make_split(NAMES, "lists", lists=lists)
    assert split["base"] == NAMES[5:] and split["val"] == [NAMES[0], NAMES[3]]
    assert split["novel"] == [*NAMES[1:3], NAMES[4]]
    assert split["counts"] == [4, 2, 3] and split["seed"] is None
    assert {"split.lists.base", "split.lists.val", "split.lists.novel"} <= set(
        split["provenance"])


@pytest.mark.parametrize("case, pattern", [
    ("absent", r"class list .*novel\.txt: class '010\.Class_10' is not in the data set"),
    ("two lists", r"class list .*novel\.txt: class '001\.Class_1' is listed and in .*val\.txt"),
    ("twice", r"class list .*base\.txt: class '009\.Class_9' is listed twice"),
    ("empty", r"class list .*val\.txt \(split\.lists\.val\) lists no classes"),
    ("unlisted", r"data set class '003\.Class_3' is in none of them"),
])
def test_each_bad_list_is_one_error_naming_the_file_and_the_class(
    tmp_path: Path, case: str, pattern: str
) -> None:
    base, val, novel = NAMES[3:], NAMES[:1], NAMES[1:3]
    if case == "absent":
        novel = [*novel, "010.Class_10"]
    elif case == "two lists":
        novel = [*novel, NAMES[0]]
    elif case == "twice":
        base = [*base, NAMES[8]]
    elif case == "empty":
        base, val = NAMES[:1] + NAMES[3:], []
    elif case == "unlisted":
        novel = NAMES[1:2]
    with pytest.raises(SplitError, match=pattern):
        make_split(NAMES, "lists", lists=write_lists(tmp_path, base, val, novel))
    with pytest.raises(SplitError, match=r"needs split\.lists\.novel"):
        make_split(NAMES, "lists", lists={"base": "a", "val": "b", "novel": None})


def test_editing_a_list_makes_the_split_stale(tmp_path: Path) -> None:
    lists = write_lists(tmp_path, NAMES[3:], NAMES[:1], NAMES[1:3])
    settings = {"rule": "lists", "counts": [100, 50, 50], "seed": 0, "lists": lists}
    path = save_split(make_split(NAMES, "lists", lists=lists), tmp_path / "split.json")
    split = json.loads(path.read_text())
    check_split_settings(split, path, NAMES, settings)  # unchanged lists: accepted
    Path(lists["novel"]).write_text("# reordered, same classes\n003.Class_3\n002.Class_2\n")
    check_split_settings(split, path, NAMES, settings)  # the same classes: the same split
    write_lists(tmp_path, NAMES[4:], NAMES[:1], NAMES[1:4])
    with pytest.raises(ProvenanceError, match=r"split\.json was made with split\.lists\.base="):
        check_split_settings(split, path, NAMES, settings)


# --- the CLI and the workflow ------------------------------------------------------------


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", OMP_NUM_THREADS="1")
    return subprocess.run([str(BIN / args[0]), *args[1:]], cwd=cwd, capture_output=True,
                          text=True, timeout=HANG_S, env=env)


TINY = {k: v for k, v in yaml.safe_load((REPO / ".test" / "config.yaml").read_text()).items()
        if k not in ("results_dir", "data_dir")}
SHIPPED = {name: {s: str(REPO / "config" / "splits" / f"{name}_{s}.txt")
                  for s in ("base", "val", "novel")} for name in ("cars_dn4", "dogs_dn4")}


@pytest.mark.parametrize("dataset, split", [
    ({"source": "aircraft", "crop_to_bbox": True}, {"rule": "frn-aircraft"}),
    ({"source": "dogs"}, {"rule": "lists", "lists": SHIPPED["dogs_dn4"]}),
    ({"source": "flowers"}, {"rule": "random", "counts": [51, 25, 26]}),
    ({"source": "cars", "root": "/data/stanford_cars"},
     {"rule": "lists", "lists": SHIPPED["cars_dn4"]}),
])
def test_show_config_and_a_dry_run_accept_each_source_and_rule(
    tmp_path: Path, dataset: dict, split: dict
) -> None:
    settings = {**TINY, "results_dir": str(tmp_path / "results"),
                "data_dir": str(tmp_path / "data"),
                "dataset": {**TINY["dataset"], "name": dataset["source"], **dataset},
                "split": split}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(settings))
    shown = _run("subspace-fsl", "show-config", "--config", str(config), cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert yaml.safe_load(shown.stdout)["split"]["rule"] == split["rule"]
    dry = _run("snakemake", "-n", "--snakefile", str(REPO / "Snakefile"), "--configfile",
               str(config), cwd=tmp_path)
    assert dry.returncode == 0, dry.stdout[-3000:] + dry.stderr[-3000:]
    assert "prepare" in dry.stdout and "split" in dry.stdout


def test_the_tiny_workflow_splits_by_lists_and_an_edited_list_reruns_the_split(
    tmp_path: Path,
) -> None:
    from subspace_fsl.data import synth

    classes = tmp_path / "names"
    synth.generate(classes, 9, 2, 32, 0, progress=False)  # the tiny set's class names
    names = [line.split(" ", 1)[1] for line in (classes / "classes.txt").read_text().split("\n")
             if line]
    lists = write_lists(tmp_path / "lists", names[:3], names[3:6], names[6:])
    settings = {**TINY, "results_dir": str(tmp_path / "results"),
                "data_dir": str(tmp_path / "data"), "split": {"rule": "lists", "lists": lists}}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(settings))
    split_file = tmp_path / "results" / "splits" / "tiny.json"
    snakemake = ("snakemake", "--snakefile", str(REPO / "Snakefile"), "--configfile",
                 str(config), "--cores", "2")
    ran = _run(*snakemake, str(split_file), cwd=tmp_path)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    split = json.loads(split_file.read_text())
    assert (split["rule"], split["base"], split["val"], split["novel"]) == (
        "lists", names[:3], names[3:6], names[6:])
    # a list edited: the split (and what reads it) runs again, the cache does not
    write_lists(tmp_path / "lists", names[:4], names[4:6], names[6:])
    dry = _run(*snakemake, "-n", cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr[-3000:]
    stats = dry.stdout.split("Job stats:", 1)[1]
    assert "\nsplit " in stats and "\nprepare " not in stats and "\nsynthesise " not in stats
    assert _run(*snakemake, str(split_file), cwd=tmp_path).returncode == 0
    assert json.loads(split_file.read_text())["counts"] == [4, 2, 3]
    # a bad list: one line naming the file and the class, exit 2
    Path(lists["val"]).write_text("999.not_a_class\n")
    bad = _run("subspace-fsl", "split", "--config", str(config), cwd=tmp_path)
    assert bad.returncode == 2
    assert "val.txt: class '999.not_a_class' is not in the data set" in bad.stderr


@pytest.mark.parametrize("example", ["aircraft", "cars", "cub_bifrn", "dogs", "flowers"])
def test_example_configs_are_valid_and_their_lists_exist(example: str) -> None:
    from subspace_fsl.config import load_config

    cfg = load_config(REPO / "config" / f"{example}.yaml")
    assert cfg["dataset"]["source"] in ("aircraft", "cars", "cub", "dogs", "flowers")
    for path in (cfg["split"]["lists"] or {}).values():
        assert path is None or (REPO / path).is_file(), path
