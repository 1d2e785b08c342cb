"""Reading what the runs wrote: per-episode evaluations and training histories of the grid.

One long table (:func:`load_results`) feeds both the validation choices
(``subspace_fsl.selection``) and the report (``subspace_fsl.report``); it lives here so that
neither of those imports the other. The key columns are a run's grid coordinates (what its
name encodes, ``paths.RunKey``): :data:`CONFIG_COLUMNS` are what a method chooses on
validation, ``seed`` is a replicate; ``eval_shot`` is the shot an evaluation was made at
(``shot`` is the training shot; they differ for the other shots of ``eval.shots``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pandas as pd

from subspace_fsl import grid, paths
from subspace_fsl.evaluation_record import REMEDY, SUMMARY_FILE, check_evaluation
from subspace_fsl.readers import UnreadableFileError, read_table

EPISODES_FILE = "episodes.csv"
BEST_FILE = "best.pt"
HISTORY_FILE = "history.csv"
#: every setting a run name encodes besides way, shot and seed
CONFIG_COLUMNS = ["n_subspaces", "lambda1", "lambda2", "tau", "learn_tau", "distance",
                  "embed", "augment"]
KEY_COLUMNS = ["method", "way", "shot", *CONFIG_COLUMNS, "seed"]
#: the columns of :func:`load_results`
RESULT_COLUMNS = [*KEY_COLUMNS, "eval_shot", "run", "split", "episode", "accuracy"]


def key_frame(run: grid.Run) -> dict[str, Any]:
    """The key columns (and ``run``) of one run, from its name."""
    return {"method": run.method, "run": run.name, **run.key._asdict()}


def load_results(cfg: Mapping[str, Any], splits: Sequence[str] = paths.SPLITS,
                 runs: Iterable[grid.Run] | None = None) -> pd.DataFrame:
    """Long per-episode table of every run of the grid: the key columns, ``eval_shot``,
    ``run``, ``split``, ``episode`` and ``accuracy`` (a fraction), one evaluation per
    (run, split, eval shot of ``paths.eval_shots``).

    Only current evaluations are read: each one's ``summary.json`` (written last) must be
    there and its provenance must match the run's ``best.pt``, the split file and the
    current evaluation settings (``evaluation_record.check_evaluation``). Missing or
    unfinished evaluations raise FileNotFoundError (how many, and one of them); a stale one
    raises ``provenance.ProvenanceError`` naming its file, the input and both values."""
    split_file = paths.split_path(cfg)
    frames, missing = [], []
    for run in (grid.all_runs(cfg) if runs is None else runs):
        key = key_frame(run)
        run_cfg = grid.run_config(cfg, run.method, run.name)
        checkpoint = paths.run_dir(cfg, run.method, run.name) / BEST_FILE
        for split in splits:
            for shot in paths.eval_shots(cfg, split, key["shot"]):
                folder = paths.eval_shot_dir(cfg, run.method, split, run.name, key["shot"],
                                             shot)
                if not (folder / EPISODES_FILE).is_file():
                    missing.append(str(folder / EPISODES_FILE))
                    continue
                if not (folder / SUMMARY_FILE).is_file():
                    missing.append(f"{folder / SUMMARY_FILE} (the evaluation did not finish)")
                    continue
                if not checkpoint.is_file():
                    missing.append(f"{checkpoint} (the model of {folder})")
                    continue
                summary = check_evaluation(folder, run_cfg, checkpoint, split, split_file,
                                           None if shot == key["shot"] else shot)
                table = read_table(folder / EPISODES_FILE, REMEDY, ("episode", "accuracy"))
                if len(table) != summary.get("episodes"):
                    raise UnreadableFileError(
                        f"{folder / EPISODES_FILE} holds {len(table)} episodes, its summary.json "
                        f"{summary.get('episodes')} (truncated?); {REMEDY}")
                table = table[["episode", "accuracy"]]
                frames.append(table.assign(split=split, eval_shot=shot, **key))
    if missing:
        raise FileNotFoundError(f"{len(missing)} evaluation(s) missing, e.g. {missing[0]}")
    return pd.concat(frames, ignore_index=True)[RESULT_COLUMNS]


def at_training_shot(results: pd.DataFrame) -> pd.DataFrame:
    """The rows of evaluations made at the training shot (what validation choices, the
    per-setting tables and the plots read)."""
    return results[results["eval_shot"] == results["shot"]]


def load_histories(cfg: Mapping[str, Any], runs: Iterable[grid.Run] | None = None
                   ) -> pd.DataFrame:
    """Every run's ``history.csv`` (rows with a validation accuracy), with the key columns."""
    frames = []
    for run in (grid.all_runs(cfg) if runs is None else runs):
        path = paths.run_dir(cfg, run.method, run.name) / HISTORY_FILE
        if not path.is_file():
            raise FileNotFoundError(f"training history missing: {path}")
        table = read_table(path, "train the run again (subspace-fsl train, or the workflow)",
                           ("episode", "val_acc"))
        table = table[table["val_acc"].notna()][["episode", "val_acc"]]
        frames.append(table.assign(**key_frame(run)))
    return pd.concat(frames, ignore_index=True)
