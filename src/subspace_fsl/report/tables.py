"""The benchmark's tables (``TABLE_NAMES``) as CSV, Markdown and LaTeX.

Accuracies are in percent: mean over the evaluation episodes +- the 95% CI ``1.96 s /
sqrt(n)`` (sample std); with several training seeds each episode's accuracy is first
averaged over the seeds (all models see the same episodes) and ``sd`` is the standard
deviation of the per-seed means. ``main`` (methods x (way, shot), novel classes, every
method at its validation-chosen settings, named with its selection budget), ``subspaces``
(accuracy over S), ``lambdas`` (the lambda1 x lambda2 grid), ``constraints`` (each
constraint switched off), ``paired`` (per-episode differences of the method against each
baseline, Wilcoxon signed-rank and paired t-test, Holm-corrected)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from subspace_fsl import grid, paths, stats, targets
from subspace_fsl.config import atomic_write_text
from subspace_fsl.report.common import (
    aligned_episodes,
    cell_rows,
    config_of,
    eval_cells,
    eval_label,
    format_cell,
    paired_episodes,
    protocol_description,
    settings_text,
    split_description,
    summarise,
    tau_text,
    way_shot_label,
    way_shots,
)
from subspace_fsl.results import (
    CONFIG_COLUMNS,
    at_training_shot,
    load_results,
)
from subspace_fsl.selection import chosen, read_selection, simplicity_order

#: train.backbone -> the sentence every caption states (the CSVs carry a ``protocol`` column)
BACKBONE_PROTOCOLS = {
    "finetune": "Protocol finetune: the backbone is trained with each head on every episode",
    "frozen": ("Protocol frozen: the pre-trained backbone embeds every image once and only "
               "the heads are meta-trained on those stored features"),
}

TABLE_NAMES = ("main", "subspaces", "lambdas", "constraints", "paired")
TABLE_FORMATS = ("csv", "md", "tex")

SELECTION_RULE = ("every method's settings chosen by validation accuracy only, by one rule "
                  "(the method: λ1, λ2, τ per S, then S; each baseline: its τ and distance "
                  "form), ties to the simpler setting; budget = validation configurations "
                  "compared per way x shot")
PAIRED_TESTS = (f"{stats.WILCOXON} and {stats.TTEST} on per-episode accuracies, "
                f"p-values {stats.HOLM}-corrected over all comparisons of the table")



# --- tables ----------------------------------------------------------------------------------


@dataclass
class Table:
    """A table: ``data`` (numeric, written as CSV) and ``display`` / ``display_tex`` (text cells,
    Markdown and LaTeX), with a caption stating the split rule and the protocol."""

    name: str
    caption: str
    data: pd.DataFrame
    display: pd.DataFrame
    display_tex: pd.DataFrame


def _display_pair(rows: list[tuple[str, str, dict[str, float] | str]]
                  ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(row label, column label, summary or text) triples -> Markdown and LaTeX frames."""
    md: dict[str, dict[str, str]] = {}
    tex: dict[str, dict[str, str]] = {}
    for row, col, value in rows:
        md.setdefault(row, {})[col] = value if isinstance(value, str) else format_cell(value)
        tex.setdefault(row, {})[col] = (value if isinstance(value, str)
                                        else format_cell(value, latex=True))
    return (pd.DataFrame.from_dict(md, orient="index").fillna(""),
            pd.DataFrame.from_dict(tex, orient="index").fillna(""))


def result_columns(cfg: Mapping[str, Any]) -> list[tuple[str, int, int, int, int, str]]:
    """(evaluated on, way, shot, eval way, eval shot, column label) of every main-table column:
    the novel classes at each eval shot, then each cross-domain target (``targets``) of each
    trained (way, shot)."""
    columns = [("novel", way, shot, way, eval_shot, eval_label(way, shot, eval_shot))
               for way, shot, eval_shot in eval_cells(cfg)]
    for name in targets.names(cfg):
        for way, shot in way_shots(cfg):
            eval_way, eval_shot = targets.eval_shape(cfg, name, way, shot)
            columns.append((targets.split_name(name), way, shot, eval_way, eval_shot,
                            targets.column_label(cfg, name, way, shot)))
    return columns


def main_table(cfg: Mapping[str, Any], results: pd.DataFrame, selection: pd.DataFrame,
               context: str) -> Table:
    """Every method at its validation-chosen settings, which the table names with the
    selection budget (validation configurations compared) next to the accuracy."""
    method = grid.method_name(cfg)
    records, cells = [], []
    for evaluated_on, way, shot, eval_way, eval_shot, col in result_columns(cfg):
        for name in [method, *grid.baseline_names(cfg)]:
            row = chosen(selection, name, way, shot)  # chosen on validation at the training shot
            config = config_of(row)
            summary = summarise(cell_rows(results, name, evaluated_on, way, shot, **config,
                                          eval_shot=eval_shot))
            records.append({"method": name, "way": way, "shot": shot, "eval_shot": eval_shot,
                            **config, **summary,
                            "budget": int(row["budget"]), "chosen_on": "validation",
                            "evaluated_on": evaluated_on, "eval_way": eval_way})
            cells.append((name, col, summary))
            cells.append((f"{name}: chosen on validation", col,
                          settings_text(cfg, name, config, int(row["budget"]))))
    md, tex = _display_pair(cells)
    caption = (f"Novel-class accuracy of the method ({method}) and the baselines, each at the "
               f"settings chosen by its validation accuracy (named under it, with how many "
               f"validation configurations it compared), all trained on the same episodes. "
               f"{targets.description(cfg)} {context}")
    return Table("main", caption, pd.DataFrame(records), md, tex)


def subspaces_table(cfg: Mapping[str, Any], results: pd.DataFrame, selection: pd.DataFrame,
                    context: str) -> Table:
    method = grid.method_name(cfg)
    records, cells = [], []
    for _, row in selection[selection["method"] == method].iterrows():
        config = config_of(row)
        s = config["n_subspaces"]
        summary = summarise(cell_rows(results, method, "novel", row["way"], row["shot"],
                                      **config))
        records.append({"way": row["way"], "shot": row["shot"], **config,
                        "val_accuracy": 100 * row["val_accuracy"], **summary})
        col = way_shot_label(row["way"], row["shot"])
        cells.append((f"S = {s}", col, summary))
        cells.append((f"S = {s}: chosen on validation", col,
                      settings_text(cfg, method, config, with_s=False)))
    md, tex = _display_pair(cells)
    caption = (f"Novel-class accuracy of {method} over the number of feature subspaces S "
               f"(λ1, λ2, τ chosen by validation accuracy at each S). {context}")
    return Table("subspaces", caption, pd.DataFrame(records), md, tex)


def lambdas_table(cfg: Mapping[str, Any], results: pd.DataFrame, selection: pd.DataFrame,
                  context: str) -> Table:
    method = grid.method_name(cfg)
    records, cells = [], []
    g = cfg["grid"]
    for way, shot in way_shots(cfg):
        for s in g["n_subspaces"]:
            picked = selection[(selection["method"] == method) & (selection["way"] == way)
                               & (selection["shot"] == shot)
                               & (selection["n_subspaces"] == s)].iloc[0]
            temperature = {"tau": float(picked["tau"]),
                           "learn_tau": bool(picked["learn_tau"])}
            tau_label = tau_text(**temperature)
            for l1 in grid.method_lambda1s(cfg, s):  # S=1: one lambda1 (grid.py)
                row = (f"{way_shot_label(way, shot)}, S={s}, {tau_label}, "
                       f"λ1={paths.format_number(l1)}")
                for l2 in g["lambda2"]:
                    val = summarise(cell_rows(results, method, "val", way, shot, s, l1, l2,
                                              **temperature))
                    nov = summarise(cell_rows(results, method, "novel", way, shot, s, l1, l2,
                                              **temperature))
                    is_chosen = bool(np.isclose(picked["lambda1"], l1)
                                     and np.isclose(picked["lambda2"], l2))
                    records.append({"way": way, "shot": shot, "n_subspaces": s, "lambda1": l1,
                                    "lambda2": l2, **temperature, "val_mean": val["mean"],
                                    "val_ci95": val["ci95"], "novel_mean": nov["mean"],
                                    "novel_ci95": nov["ci95"], "n_seeds": nov["n_seeds"],
                                    "chosen": is_chosen})
                    mark = " *" if is_chosen else ""
                    cells.append((row, f"λ2={paths.format_number(l2)}",
                                  f"{format_cell(nov)} [val {val['mean']:.2f}]{mark}"))
    md, tex = _display_pair(cells)
    tex = tex.map(lambda t: t.replace("*", r"$\ast$"))
    caption = (f"{method}: novel-class accuracy over the λ1 x λ2 grid at the τ chosen on "
               f"validation for each S, with the validation accuracy in brackets; * marks the "
               f"cell chosen on validation. {context}")
    return Table("lambdas", caption, pd.DataFrame(records), md, tex)


CONSTRAINT_VARIANTS = (
    ("both constraints (λ1, λ2 chosen)", None, None),
    ("L1 off (λ1 = 0, λ2 chosen)", 0.0, None),
    ("L2 off (λ2 = 0, λ1 chosen)", None, 0.0),
    ("both off (λ1 = λ2 = 0)", 0.0, 0.0),
)


def constraints_table(cfg: Mapping[str, Any], results: pd.DataFrame, context: str) -> Table:
    """Each constraint off: the best validation cell with that lambda 0 (ties to the simpler),
    and d_e = acc_variant(e) - acc_both(e) on the same novel episodes against the both-on cell
    of the same S (Wilcoxon and paired t on d, Holm over the table)."""
    from subspace_fsl.selection import cell_scores

    method = grid.method_name(cfg)
    scores = cell_scores(results, method, "val")
    records, cells = [], []
    for way, shot in way_shots(cfg):
        for s in cfg["grid"]["n_subspaces"]:
            here = scores[(scores["way"] == way) & (scores["shot"] == shot)
                          & (scores["n_subspaces"] == s)]
            both: tuple[dict[str, Any], pd.Series] | None = None
            for label, l1, l2 in CONSTRAINT_VARIANTS:
                cand = here
                if l1 is not None:
                    cand = cand[np.isclose(cand["lambda1"], l1)]
                if l2 is not None:
                    cand = cand[np.isclose(cand["lambda2"], l2)]
                col, row = way_shot_label(way, shot), f"S = {s}: {label}"
                if cand.empty:
                    records.append({"way": way, "shot": shot, "n_subspaces": s,
                                    "variant": label, "lambda1": math.nan,
                                    "lambda2": math.nan, "tau": math.nan, "mean": math.nan,
                                    "ci95": math.nan})
                    cells.append((row, col, None))
                    continue
                config = config_of(simplicity_order(cand).iloc[0])
                rows = cell_rows(results, method, "novel", way, shot, **config)
                record = {"way": way, "shot": shot, "variant": label, **config, **summarise(rows)}
                episodes = paired_episodes(rows)
                if l1 is None and l2 is None:
                    both = (config, episodes)
                elif both is not None and config != both[0]:
                    r = stats.paired_compare(*aligned_episodes(episodes, both[1], row))
                    record.update(diff_vs_both=100 * r.mean_diff, diff_ci95=100 * r.ci95,
                                  p_wilcoxon=r.p_wilcoxon, p_ttest=r.p_ttest)
                records.append(record)
                cells.append((row, col, settings_text(cfg, method, config, with_s=False)))
    data = pd.DataFrame(records)
    tests = ("diff_vs_both", "diff_ci95", "p_wilcoxon", "p_ttest")
    data = data.reindex(columns=[*data.columns, *(c for c in tests if c not in data)])
    data["p_wilcoxon_holm"] = stats.holm(data["p_wilcoxon"].to_numpy())
    data["p_ttest_holm"] = stats.holm(data["p_ttest"].to_numpy())
    texts = []
    for (row, col, settings), (_, r) in zip(cells, data.iterrows(), strict=True):
        text = "not in grid" if settings is None else f"{format_cell(r)} ({settings})"
        if not math.isnan(r["diff_vs_both"]):  # NaN: no comparison, or not in grid
            text += (f"; vs both {r['diff_vs_both']:+.2f} ± {r['diff_ci95']:.2f}, "
                     f"p {r['p_wilcoxon_holm']:.2g}")
        texts.append((row, col, text))
    md, tex = _display_pair(texts)
    caption = (f"{method} with each constraint switched off: L1 (feature-subspace diversity) "
               f"and L2 (class-subspace discrimination); the remaining lambda is chosen on "
               f"validation among the grid cells with the switched-off lambda = 0. 'vs both': "
               f"per-episode accuracy minus that of the both-constraints cell of the same S on "
               f"the same novel episodes (percentage points, mean ± 95% CI; {PAIRED_TESTS}, "
               f"Wilcoxon p shown); none where the variant is that cell. {context}")
    return Table("constraints", caption, data, md, tex)


def paired_table(cfg: Mapping[str, Any], results: pd.DataFrame, selection: pd.DataFrame,
                 context: str) -> Table:
    """The method minus each baseline on identical novel episodes, both at their
    validation-chosen settings (named, with each one's selection budget)."""
    method = grid.method_name(cfg)
    records = []
    # pairs only within one evaluation shot: the same (way, eval shot) means the same episodes
    for evaluated_on, way, shot, eval_way, eval_shot, col in result_columns(cfg):
        mine = chosen(selection, method, way, shot)
        ours_config = config_of(mine)
        ours = paired_episodes(cell_rows(results, method, evaluated_on, way, shot,
                                         **ours_config, eval_shot=eval_shot))
        for name in grid.baseline_names(cfg):
            theirs_row = chosen(selection, name, way, shot)
            theirs_config = config_of(theirs_row)
            theirs = paired_episodes(cell_rows(results, name, evaluated_on, way, shot,
                                               **theirs_config, eval_shot=eval_shot))
            r = stats.paired_compare(*aligned_episodes(ours, theirs, f"{method} and {name}"))
            records.append({"way": way, "shot": shot, "eval_shot": eval_shot,
                            "method": method, **ours_config,
                            "budget": int(mine["budget"]), "baseline": name,
                            **{f"baseline_{k}": v for k, v in theirs_config.items()},
                            "baseline_budget": int(theirs_row["budget"]),
                            "mean_diff": 100 * r.mean_diff, "ci95": 100 * r.ci95,
                            "p_wilcoxon": r.p_wilcoxon, "p_ttest": r.p_ttest,
                            "n_episodes": r.n, "evaluated_on": evaluated_on,
                            "eval_way": eval_way, "column": col})
    data = pd.DataFrame(records)
    data["p_wilcoxon_holm"] = stats.holm(data["p_wilcoxon"].to_numpy())
    data["p_ttest_holm"] = stats.holm(data["p_ttest"].to_numpy())
    data["test"] = PAIRED_TESTS
    column = data.pop("column")  # the main table's column label of each row
    md_rows, tex_rows = [], []
    for i, r in data.iterrows():
        label = f"{column[i]}: {method} - {r['baseline']}"
        baseline_config = {k: r[f"baseline_{k}"] for k in CONFIG_COLUMNS}
        values = {f"{method} (chosen on validation)":
                  settings_text(cfg, method, r, int(r["budget"])),
                  "baseline (chosen on validation)":
                  settings_text(cfg, r["baseline"], baseline_config, int(r["baseline_budget"])),
                  "difference (pp)": f"{r['mean_diff']:+.2f} ± {r['ci95']:.2f}",
                  "Wilcoxon p (Holm)": f"{r['p_wilcoxon_holm']:.2g}",
                  "t-test p (Holm)": f"{r['p_ttest_holm']:.2g}",
                  "episodes": str(r["n_episodes"])}
        md_rows.append(pd.Series(values, name=label))
        tex_rows.append(pd.Series({**values, "difference (pp)":
                                   f"${r['mean_diff']:+.2f} \\pm {r['ci95']:.2f}$"}, name=label))
    caption = (f"Paired comparison on identical novel-class episodes: per-episode accuracy of "
               f"{method} minus each baseline (percentage points, mean ± 95% CI), each at the "
               f"settings its validation accuracy chose (best of its budget of validation "
               f"configurations). Tests: {PAIRED_TESTS}. {targets.description(cfg)} {context}")
    return Table("paired", caption, data, pd.DataFrame(md_rows), pd.DataFrame(tex_rows))


def build_tables(cfg: Mapping[str, Any], results: pd.DataFrame,
                 selection: pd.DataFrame) -> list[Table]:
    context = (f"Split rule: {split_description(cfg)}. {SELECTION_RULE}. "
               f"{protocol_description(cfg, results[results['split'] == 'novel'])}. "
               f"{BACKBONE_PROTOCOLS[paths.protocol(cfg)]}.")
    # the per-setting tables at the training shot; main and paired at every eval shot
    trained = at_training_shot(results)
    return [main_table(cfg, results, selection, context),
            subspaces_table(cfg, trained, selection, context),
            lambdas_table(cfg, trained, selection, context),
            constraints_table(cfg, trained, context),
            paired_table(cfg, results, selection, context)]


# --- writers ---------------------------------------------------------------------------------


def to_markdown(frame: pd.DataFrame, index_name: str = "") -> str:
    header = [index_name, *map(str, frame.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for label, row in frame.iterrows():
        lines.append("| " + " | ".join([str(label), *map(str, row.tolist())]) + " |")
    return "\n".join(lines) + "\n"


_TEX_ESCAPES = {"&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "λ": r"$\lambda$",
                "±": r"$\pm$"}


def _tex_escape(text: str) -> str:
    """Escape LaTeX specials outside ``$...$`` math spans."""
    parts = text.split("$")
    return "$".join(part if i % 2 else "".join(_TEX_ESCAPES.get(ch, ch) for ch in part)
                    for i, part in enumerate(parts))


def to_latex(frame: pd.DataFrame, caption: str, label: str) -> str:
    cols = "l" + "c" * len(frame.columns)
    lines = [r"\begin{table}[t]", r"\centering", r"\small",
             rf"\caption{{{_tex_escape(caption)}}}", rf"\label{{tab:{label}}}",
             rf"\begin{{tabular}}{{{cols}}}", r"\toprule",
             " & ".join(["", *(_tex_escape(str(c)) for c in frame.columns)]) + r" \\",
             r"\midrule"]
    for row_label, row in frame.iterrows():
        cells = [_tex_escape(str(row_label)), *(_tex_escape(str(v)) for v in row.tolist())]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def write_table(table: Table, out_dir: str | Path, split_rule: str,
                protocol: str = "finetune") -> list[Path]:
    out = Path(out_dir)
    data = table.data.assign(split_rule=split_rule, protocol=protocol)
    files = {
        "csv": data.to_csv(index=False),
        "md": f"**Table {table.name}.** {table.caption}\n\n{to_markdown(table.display)}",
        "tex": to_latex(table.display_tex, table.caption, table.name),
    }
    written = []
    for ext in TABLE_FORMATS:
        path = out / f"{table.name}.{ext}"
        atomic_write_text(path, files[ext])
        written.append(path)
    return written


def write_tables(cfg: Mapping[str, Any], out_dir: str | Path | None = None) -> list[Path]:
    """Every table of ``TABLE_NAMES`` in every format, into ``paths.tables_dir(cfg)``."""
    results = load_results(cfg)
    if targets.names(cfg):  # the cross-domain targets' rows (split target-{name})
        results = pd.concat([results, targets.load_results(cfg)], ignore_index=True)
    selection = read_selection(paths.selection_path(cfg))
    rule = split_description(cfg)
    out = Path(out_dir) if out_dir is not None else paths.tables_dir(cfg)
    written = []
    for table in build_tables(cfg, results, selection):
        written += write_table(table, out, rule, paths.protocol(cfg))
    return written

