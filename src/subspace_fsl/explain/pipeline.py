"""The explain step: evidence maps and part measures of the chosen models on novel episodes.

Which models: for every (way, shot, S) row of the selection file, the method at its chosen
lambda2 and *every* lambda1 of the grid (so lambda1 > 0 can be compared with lambda1 = 0 on
the same episodes), each training seed; and every baseline at each (way, shot). Each model is
measured on the first ``explain.episodes`` episodes of the ``eval.seed`` novel plan, the same
episodes for every model. Writes into ``{results_dir}/explain/{dataset}/``:

- ``episodes.csv``: one row per (model, episode): accuracy, specialization, diversity,
  mean RV, mean principal angle, exact_maps, parts_available (False: the data set has no
  part annotations, the part measures are NaN);
- ``explain.csv`` / ``explain.md``: per method and grid cell, means and 95% CIs;
- ``paired.csv`` / ``paired.md``: lambda1 > 0 against lambda1 = 0 (same S, lambda2, seed),
  per-episode paired tests of specialization and diversity (``subspace_fsl.stats``);
- ``profiles.csv``: each model's part profile (subspace x part, mean over episodes);
- per (way, shot), for the selected model (``best_s``): ``examples_w{N}_k{K}.png`` (queries
  with one evidence heat map per subspace), ``profile_w{N}_k{K}.png``, ``rv_w{N}_k{K}.png``.

``done.json`` is written last: its presence marks a complete step.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from subspace_fsl import grid, paths
from subspace_fsl.config import atomic_write_text, save_config
from subspace_fsl.explain.outputs import explain_dir, way_shots

log = logging.getLogger(__name__)

MEASURES = ("accuracy", "specialization", "diversity", "mean_rv", "mean_angle")
PAIRED_MEASURES = ("specialization", "diversity")


@dataclass(frozen=True)
class Target:
    """One model to explain and whether it is the selected one of its (way, shot)."""

    method: str
    name: str
    selected: bool


def targets(cfg: Mapping[str, Any], selection: pd.DataFrame) -> list[Target]:
    """The models of the module docstring, from the selection table."""
    from subspace_fsl.selection import chosen as chosen_row
    from subspace_fsl.selection import run_name_of

    method = grid.method_name(cfg)
    out: list[Target] = []
    ours = selection[selection["method"] == method]
    for _, row in ours.iterrows():
        s = int(row["n_subspaces"])
        lambda1s = cfg["grid"]["lambda1"] if s > 1 else [float(row["lambda1"])]
        for l1 in lambda1s:
            for seed in cfg["grid"]["seeds"]:
                chosen = bool(row["best_s"]) and math.isclose(l1, row["lambda1"]) \
                    and seed == cfg["grid"]["seeds"][0]
                out.append(Target(method, run_name_of(row, seed, lambda1=float(l1)), chosen))
    # each baseline at its validation-chosen setting, every seed
    cells = sorted(set(zip(ours["way"], ours["shot"], strict=True)))
    for name in grid.baseline_names(cfg):
        for way, shot in cells:
            row = chosen_row(selection, name, int(way), int(shot))
            for seed in cfg["grid"]["seeds"]:
                out.append(Target(name, run_name_of(row, seed), False))
    return out


def _embed_maps(model: Any, split: Any, data: Any, indices: np.ndarray, batch: int,
                device: torch.device) -> torch.Tensor:
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(indices), batch):
            images = data.images_to_tensor(indices[start:start + batch], device)
            chunks.append(split.feature_map(model.backbone, images).float())
    return torch.cat(chunks)


def explain_model(cfg: Mapping[str, Any], target: Target, data: Any, parts: Any,
                  runtime: Any) -> tuple[pd.DataFrame, np.ndarray, dict[str, Any]]:
    """Per-episode measures of one model; its mean profile [S, K]; plot material."""
    from subspace_fsl.engine.evaluate import evaluation_plan, load_model
    from subspace_fsl.explain import maps as M
    from subspace_fsl.explain import measure
    from subspace_fsl.heads.multisubspace import MultiSubspaceHead, subspace_correlations

    run_cfg = grid.run_config(cfg, target.method, target.name)
    checkpoint = paths.run_dir(cfg, target.method, target.name) / "best.pt"
    model, _ = load_model(checkpoint, runtime)
    model.eval()
    plan = evaluation_plan(run_cfg, data, "novel", episodes=cfg["explain"]["episodes"])
    image_size = int(data.cache.images.shape[-1])
    radius = float(cfg["explain"]["radius"]) * image_size
    exact = M.exact_supported(model) is None
    device = runtime.device
    needed = np.unique(np.concatenate([np.concatenate([e.support_idx, e.query_idx])
                                       for e in plan]))
    row_of = np.full(int(needed.max()) + 1, -1, dtype=np.int64)
    row_of[needed] = np.arange(len(needed))
    if exact:
        split = M.POSITION_SPLITS[type(model.backbone)]
        feature_maps = _embed_maps(model, split, data, needed, cfg["eval"]["batch_size"], device)
        # f = sum_p f_p, in chunks: Conv-4's f_p are HW times the size of f
        features = torch.cat([split.split(feature_maps[i:i + 256]).sum(dim=1)
                              for i in range(0, len(feature_maps), 256)])
    else:
        log.info("%s/%s: %s; evidence maps by %s (approximate)", target.method, target.name,
                 M.exact_supported(model), M.GRADIENT)
    rows, profiles, rvs, example = [], [], [], {}
    for number, episode in enumerate(plan):
        labels = torch.as_tensor(episode.support_labels, device=device)
        query_labels = torch.as_tensor(episode.query_labels, device=device)
        if exact:
            sup = torch.from_numpy(row_of[episode.support_idx]).to(device)
            qry = torch.from_numpy(row_of[episode.query_idx]).to(device)
            result = M.evidence_maps(model, None, labels, None, support_features=features[sup],
                                     query_map=feature_maps[qry])
            support_features = features[sup]
        else:
            sup_images = data.images_to_tensor(episode.support_idx, device)
            result = M.evidence_maps(model, sup_images, labels,
                                     data.images_to_tensor(episode.query_idx, device))
            with torch.no_grad():
                support_features = model.backbone(sup_images).float()
        if parts is not None:
            xy = torch.as_tensor(parts.xy[episode.query_idx], device=device)
            visible = torch.as_tensor(parts.visible[episode.query_idx], device=device)
            shares = measure.part_shares(result.evidence, xy, visible, image_size, radius)
            profile = measure.part_profile(shares)
            specialization = float(measure.specialization(profile).nanmean())
            diversity = float(measure.profile_diversity(profile))
            profiles.append(profile.cpu().numpy())
        else:  # no part annotations: the maps only, no part measure
            specialization = diversity = math.nan
        with torch.no_grad():
            head = model.head
            if isinstance(head, MultiSubspaceHead):
                rv = subspace_correlations(head.project(support_features).double())
                geometry = M.GEOMETRIES[type(head)](head, support_features, labels)
                angles = measure.principal_angles(geometry.bases_t.double())
                n = angles.shape[1]
                off = ~torch.eye(n, dtype=torch.bool, device=angles.device)
                mean_angle = float(angles[:, off].mean())
            else:  # one feature space: no correlation between subspaces
                rv = torch.ones(1, 1, dtype=torch.float64)
                mean_angle = math.nan
        rows.append({
            "episode": number,
            "accuracy": float((result.predicted == query_labels).double().mean()),
            "specialization": specialization,
            "diversity": diversity,
            "mean_rv": float(measure.mean_off_diagonal(rv)),
            "mean_angle": mean_angle,
            "exact_maps": result.exact,
            "parts_available": parts is not None,
        })
        rvs.append(rv.cpu().numpy())
        if number == 0:
            example = {"indices": episode.query_idx, "evidence": result.evidence.cpu().numpy(),
                       "predicted": result.predicted.cpu().numpy(),
                       "labels": episode.query_labels, "classes": episode.classes}
    key = paths.parse_run_name(target.name)
    table = pd.DataFrame(rows)
    for position, field in enumerate(("way", "shot", "n_subspaces", "lambda1", "lambda2",
                                      "seed")):
        table.insert(position, field, getattr(key, field))
    table.insert(0, "run", target.name)
    table.insert(0, "method", target.method)
    profile = np.nanmean(np.stack(profiles), axis=0) if profiles else None
    example.update(rv=np.mean(np.stack(rvs), axis=0), profile=profile, method=target.method,
                   run=target.name, way=key.way, shot=key.shot)
    return table, profile, example


def summarise_runs(episodes: pd.DataFrame) -> pd.DataFrame:
    """Per model: the mean and 95% CI (1.96 s / sqrt n) of every measure over episodes."""
    from subspace_fsl.stats import ci_half_width

    keys = ["method", "run", "way", "shot", "n_subspaces", "lambda1", "lambda2", "seed"]
    records = []
    for values, group in episodes.groupby(keys, sort=False):
        record = dict(zip(keys, values, strict=True))
        record["episodes"] = len(group)
        record["exact_maps"] = bool(group["exact_maps"].all())
        record["parts_available"] = bool(group["parts_available"].all())
        for name in MEASURES:
            column = group[name].dropna()
            record[name] = float(column.mean()) if len(column) else math.nan
            record[f"{name}_ci95"] = ci_half_width(column) if len(column) else math.nan
        records.append(record)
    return pd.DataFrame(records)


def paired_lambda1(episodes: pd.DataFrame, method: str) -> pd.DataFrame:
    """lambda1 > 0 against lambda1 = 0 at the same (way, shot, S, lambda2, seed), per episode."""
    from subspace_fsl.stats import paired_compare

    ours = episodes[(episodes["method"] == method) & (episodes["n_subspaces"] > 1)]
    records = []
    for (way, shot, s, l2, seed), group in ours.groupby(
            ["way", "shot", "n_subspaces", "lambda2", "seed"]):
        base = group[group["lambda1"] == 0].set_index("episode")
        if base.empty:
            continue
        for l1, other in group[group["lambda1"] > 0].groupby("lambda1"):
            other = other.set_index("episode")
            common = base.index.intersection(other.index)
            record: dict[str, Any] = {"way": way, "shot": shot, "n_subspaces": s,
                                      "lambda2": l2, "seed": seed, "lambda1": l1,
                                      "episodes": len(common)}
            for name in PAIRED_MEASURES:
                a, b = other.loc[common, name], base.loc[common, name]
                ok = a.notna() & b.notna()
                if ok.sum() == 0:
                    continue
                result = paired_compare(a[ok].to_numpy(), b[ok].to_numpy())
                record.update({f"{name}_l1": float(a[ok].mean()),
                               f"{name}_l1_0": float(b[ok].mean()),
                               f"{name}_diff": result.mean_diff, f"{name}_ci95": result.ci95,
                               f"{name}_p_wilcoxon": result.p_wilcoxon,
                               f"{name}_p_ttest": result.p_ttest})
            records.append(record)
    columns = ["way", "shot", "n_subspaces", "lambda2", "seed", "lambda1", "episodes"]
    columns += [f"{name}_{part}" for name in PAIRED_MEASURES
                for part in ("l1", "l1_0", "diff", "ci95", "p_wilcoxon", "p_ttest")]
    return pd.DataFrame(records, columns=columns)


def run_explain(cfg: Mapping[str, Any], out_dir: str | Path | None = None) -> Path:
    """The whole step (module docstring); returns the output folder."""
    import matplotlib

    matplotlib.use("Agg")
    from subspace_fsl.engine.data import open_data
    from subspace_fsl.explain import plots
    from subspace_fsl.explain.parts import load_part_locations
    from subspace_fsl.runtime import configure
    from subspace_fsl.selection import read_selection

    out = Path(out_dir) if out_dir is not None else explain_dir(cfg)
    done = out / "done.json"
    if done.exists():
        done.unlink()  # a re-run: the folder is incomplete until done.json is written again
    selection_path = paths.selection_path(cfg)
    if not selection_path.is_file():
        raise FileNotFoundError(f"selection file {selection_path} is missing; run "
                                "`subspace-fsl select` (or the workflow) first")
    selection = read_selection(selection_path)
    runtime = configure(cfg)
    data = open_data(cfg, split_file=paths.split_path(cfg), cache_dir=paths.cache_dir(cfg))
    parts = load_part_locations(data.cache.directory, len(data.labels),
                                data_root=data.cache.meta.get("data_root"))
    if parts is None:
        log.info("%s has no part annotations (no %s): evidence maps, accuracy, RV and "
                 "principal angles only; no part profile, specialization or diversity",
                 paths.dataset_name(cfg), data.cache.directory / "parts.csv")
    tables, profile_rows, examples = [], [], {}
    for target in targets(cfg, selection):
        log.info("explaining %s/%s", target.method, target.name)
        table, profile, example = explain_model(cfg, target, data, parts, runtime)
        tables.append(table)
        if profile is None:  # one row per subspace, saying the profile is not measured
            profile_rows += [{"method": target.method, "run": target.name, "subspace": s + 1,
                              "parts_available": False}
                             for s in range(int(example["evidence"].shape[1]))]
        for s, row in enumerate(profile if profile is not None else []):
            profile_rows.append({"method": target.method, "run": target.name, "subspace": s + 1,
                                 **dict(zip(parts.names, row, strict=True))})
        if target.selected:
            examples[(example["way"], example["shot"])] = example
    episodes = pd.concat(tables, ignore_index=True)
    summary = summarise_runs(episodes)
    paired = paired_lambda1(episodes, grid.method_name(cfg))
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "episodes.csv", episodes.to_csv(index=False))
    atomic_write_text(out / "explain.csv", summary.to_csv(index=False))
    note = None if parts is not None else (
        f"{paths.dataset_name(cfg)} has no part annotations: the part measures "
        "(specialization, diversity, part profiles) are not measured (–); accuracy, RV, "
        "principal angles and the evidence maps are.")
    atomic_write_text(out / "explain.md", plots.summary_markdown(summary, note))
    atomic_write_text(out / "paired.csv", paired.to_csv(index=False))
    atomic_write_text(out / "paired.md", plots.paired_markdown(paired, note))
    profile_columns = ["method", "run", "subspace",
                       *(parts.names if parts else ["parts_available"])]
    atomic_write_text(out / "profiles.csv",
                      pd.DataFrame(profile_rows, columns=profile_columns).to_csv(index=False))
    for (way, shot) in way_shots(cfg):
        example = examples.get((way, shot))
        plots.save_examples(example, data, parts, cfg, out / f"examples_w{way}_k{shot}.png")
        plots.save_profile(example, parts.names if parts else None,
                           out / f"profile_w{way}_k{shot}.png")
        plots.save_rv(example, out / f"rv_w{way}_k{shot}.png")
    save_config(cfg, out / "config.yaml")
    atomic_write_text(done, json.dumps({"models": len(summary), "episodes":
                                        int(cfg["explain"]["episodes"]),
                                        "parts": parts is not None}) + "\n")
    return out
