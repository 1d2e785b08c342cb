"""Handlers of the workflow's sub-commands (``split``, ``init-tracking``, ``select``,
``tables``, ``plots``, ``runs``, ``show-config``): load the settings, call the package."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from subspace_fsl import grid, paths
from subspace_fsl.config import atomic_write_text, load_config, yaml_dump


def _cfg(args: argparse.Namespace) -> dict:
    return load_config(args.config, args.overrides)


def run_split(args: argparse.Namespace) -> int:
    """Class names of the cache (class_id order) -> ``make_split`` -> ``save_split``.

    The split file's producer: an existing file is replaced (atomically) whatever it was
    made from, and the log says which setting changed; consumers only ever refuse one."""
    from subspace_fsl import provenance
    from subspace_fsl.data.cache import ImageCache
    from subspace_fsl.data.splits import check_split_settings, load_split, make_split, save_split

    cfg = _cfg(args)
    cache = ImageCache.open(args.cache or paths.cache_dir(cfg), verify=False)
    names = [str(n) for n in cache.class_names]
    settings = cfg["split"]
    out = Path(args.out or paths.split_path(cfg))
    if out.is_file():
        try:
            check_split_settings(load_split(out), out, names, settings)
        except (provenance.ProvenanceError, ValueError) as exc:
            print(f"replacing {out}: {exc}")
    split = make_split(names, settings["rule"], settings["counts"], settings["seed"])
    save_split(split, out)
    print(f"{out}: rule {split['rule']}, {len(split['base'])} base / {len(split['val'])} "
          f"validation / {len(split['novel'])} novel classes")
    return 0


def run_init_tracking(args: argparse.Namespace) -> int:
    """``tracking.ensure_store`` once, before the training jobs fan out; writes a marker."""
    from subspace_fsl import tracking

    cfg = _cfg(args)
    tracking.check_store(cfg)
    experiment_id = tracking.ensure_store(cfg)
    record = {"enabled": cfg["tracking"]["enabled"], "experiment_id": experiment_id,
              "experiment": tracking.experiment_name(cfg) if experiment_id else None,
              "uri": tracking.tracking_uri(cfg) if experiment_id else None}
    out = Path(args.out or paths.tracking_marker(cfg))
    atomic_write_text(out, json.dumps(record, indent=2) + "\n")
    print(json.dumps(record))
    return 0


def run_select(args: argparse.Namespace) -> int:
    from subspace_fsl.selection import read_selection, run_selection

    path = run_selection(_cfg(args))
    print(f"{path}:")
    print(read_selection(path).to_string(index=False))
    return 0


def run_tables(args: argparse.Namespace) -> int:
    from subspace_fsl.report import write_tables

    for path in write_tables(_cfg(args)):
        print(path)
    return 0


def run_plots(args: argparse.Namespace) -> int:
    from subspace_fsl.report import write_plots

    for path in write_plots(_cfg(args)):
        print(path)
    return 0


def run_runs(args: argparse.Namespace) -> int:
    for run in grid.all_runs(_cfg(args)):
        print(f"{run.method}/{run.name}")
    return 0


def run_show_config(args: argparse.Namespace) -> int:
    print(yaml_dump(_cfg(args)), end="")  # quoted so YAML 1.1 and 1.2 read it back alike
    return 0
