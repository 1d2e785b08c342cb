"""Every derived path, from the settings alone: the one place the package and the workflow share.

Layout below ``results_dir`` (``{d}`` = ``dataset.name``)::

    cache/{d}/                         decoded image cache (data.cache)
    splits/{d}.json                    base / validation / novel class names
    tracking/{d}.json                  MLflow store + experiment set-up marker
    runs/{d}/{method}/{run}/           one trained model per grid cell (train)
    runs/{d}/{method}/{run}/eval/{split}/   episodes.csv + summary.json (evaluate)
    features/{d}/{backbone}.pt         frozen-protocol feature table (engine.features)
    selection/{d}.csv                  lambdas (and S) chosen on the validation split
    tables/{d}/  plots/{d}/            the report

``{run}`` is :func:`run_name`, e.g. ``w5_k1_S4_l1-0.1_l2-0.01_seed0``. Settings that are at
their default are left out of the name, so names stay short and every name made before these
dimensions existed still means the same run: a fixed temperature other than 1 adds ``_t10``,
a learned one ``_tlearn`` (initial tau 1) or ``_tlearn10`` (initial tau 10), the plain
Euclidean distance adds ``_deuc`` (the squared distance is the default), training with
separate support / query backbone passes adds ``_esep`` (one joint pass is the default), a
training augmentation policy other than ``standard`` (``train.augment``, the schema's
default) adds ``_anone`` / ``_aflip``::

    w5_k5_S1_l1-0_l2-0_t10_deuc_seed0     tau = 10 fixed, logits = -||q - c|| / 10
    w5_k1_S1_l1-0_l2-0.03_tlearn10_seed0  tau learned from 10, squared distance
    w5_k5_S4_l1-0.1_l2-0.1_aflip_seed0    trained with random flips only

Each setting has exactly one name (:func:`parse_run_name` rejects ``_t1``, ``l1-0.10``, ...).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

SPLITS = ("val", "novel")

#: distance form -> its run-name code ("" = the default, left out of the name)
DISTANCE_CODES = {"squared": "", "euclidean": "euc"}
#: training batch-norm convention (model.embed) -> its run-name code
EMBED_CODES = {"joint": "", "separate": "sep"}
#: training augmentation policy (train.augment, data.augment.AUGMENT_POLICIES) -> its code;
#: ``standard`` is the schema's default, so names made before this dimension keep their meaning
AUGMENT_CODES = {"standard": "", "flip": "flip", "none": "none"}
DEFAULT_AUGMENT = "standard"
DEFAULT_TAU = 1.0

_NUMBER = r"[0-9][0-9.e+-]*"
#: the run-name pattern without named groups (Snakemake's ``run`` wildcard constraint)
RUN_WILDCARD = (rf"w\d+_k\d+_S\d+_l1-{_NUMBER}_l2-{_NUMBER}(?:_t(?:learn)?(?:{_NUMBER})?)?"
                rf"(?:_d(?:{'|'.join(c for c in DISTANCE_CODES.values() if c)}))?"
                rf"(?:_e(?:{'|'.join(c for c in EMBED_CODES.values() if c)}))?"
                rf"(?:_a(?:{'|'.join(c for c in AUGMENT_CODES.values() if c)}))?_seed-?\d+")
_RUN_RE = re.compile(
    r"^w(?P<way>\d+)_k(?P<shot>\d+)_S(?P<n_subspaces>\d+)"
    rf"_l1-(?P<lambda1>{_NUMBER}?)_l2-(?P<lambda2>{_NUMBER}?)"
    rf"(?:_t(?P<learn>learn)?(?P<tau>{_NUMBER})?)?(?:_d(?P<distance>[a-z]+))?"
    r"(?:_e(?P<embed>[a-z]+))?(?:_a(?P<augment>[a-z]+))?"
    r"_seed(?P<seed>-?\d+)$"
)


class RunKey(NamedTuple):
    """The grid coordinates of one training run (what its name encodes). The fields after
    ``seed`` were added later and have defaults, so ``RunKey(w, k, S, l1, l2, seed)`` still
    works; ``tau`` is the (initial, with ``learn_tau``) temperature."""

    way: int
    shot: int
    n_subspaces: int
    lambda1: float
    lambda2: float
    seed: int
    tau: float = DEFAULT_TAU
    learn_tau: bool = False
    distance: str = "squared"
    embed: str = "joint"
    augment: str = DEFAULT_AUGMENT


def format_number(value: float) -> str:
    """Shortest readable form of a grid value: 0 -> "0", 0.10 -> "0.1", 1e-05 -> "1e-05"."""
    number = float(value)
    if number.is_integer() and abs(number) < 1e15:
        return str(int(number))
    return format(number, "g") if float(format(number, "g")) == number else repr(number)


def tau_code(tau: float, learn_tau: bool) -> str:
    """The temperature's part of a run name: "" (fixed 1), "10", "learn", "learn10"."""
    value = float(tau)
    if not (value > 0 and value < float("inf")):
        raise ValueError(f"tau must be a positive finite number, got {tau!r}")
    number = "" if value == DEFAULT_TAU else format_number(value)
    return f"learn{number}" if learn_tau else number


def run_name(way: int, shot: int, n_subspaces: int, lambda1: float, lambda2: float,
             seed: int, tau: float = DEFAULT_TAU, learn_tau: bool = False,
             distance: str = "squared", embed: str = "joint",
             augment: str = DEFAULT_AUGMENT) -> str:
    """``run_name(5, 1, 4, 0.1, 0.01, 0) == "w5_k1_S4_l1-0.1_l2-0.01_seed0"``;
    ``run_name(5, 5, 1, 0, 0, 0, tau=10, distance="euclidean")
    == "w5_k5_S1_l1-0_l2-0_t10_deuc_seed0"``."""
    if distance not in DISTANCE_CODES:
        raise ValueError(f"distance must be one of {list(DISTANCE_CODES)}, got {distance!r}")
    if embed not in EMBED_CODES:
        raise ValueError(f"embed must be one of {list(EMBED_CODES)}, got {embed!r}")
    if augment not in AUGMENT_CODES:
        raise ValueError(f"augment must be one of {list(AUGMENT_CODES)}, got {augment!r}")
    t = tau_code(tau, bool(learn_tau))
    d, e, a = DISTANCE_CODES[distance], EMBED_CODES[embed], AUGMENT_CODES[augment]
    return (f"w{int(way)}_k{int(shot)}_S{int(n_subspaces)}"
            f"_l1-{format_number(lambda1)}_l2-{format_number(lambda2)}"
            f"{f'_t{t}' if t else ''}{f'_d{d}' if d else ''}{f'_e{e}' if e else ''}"
            f"{f'_a{a}' if a else ''}_seed{int(seed)}")


def parse_run_name(name: str) -> RunKey:
    """Inverse of :func:`run_name`; ``ValueError`` for anything else, including a
    non-canonical spelling of a valid setting (``_t1``, ``l1-0.10``): one name per run."""
    match = _RUN_RE.match(name)
    if match is None:
        raise ValueError(f"{name!r} is not a run name like 'w5_k1_S4_l1-0.1_l2-0.01_seed0' "
                         "(optionally _t10 / _tlearn / _tlearn10, _deuc, _esep and _anone / "
                         "_aflip before _seed)")
    g = match.groupdict()
    codes = {code: form for form, code in DISTANCE_CODES.items()}
    embeds = {code: form for form, code in EMBED_CODES.items()}
    if g["distance"] is not None and g["distance"] not in codes:
        raise ValueError(f"{name!r} is not a run name: unknown distance code "
                         f"'_d{g['distance']}' (known: _deuc)")
    if g["embed"] is not None and g["embed"] not in embeds:
        raise ValueError(f"{name!r} is not a run name: unknown embed code "
                         f"'_e{g['embed']}' (known: _esep)")
    augments = {code: policy for policy, code in AUGMENT_CODES.items()}
    if g["augment"] is not None and g["augment"] not in augments:
        known = ", ".join(f"_a{c}" for c in augments if c)
        raise ValueError(f"{name!r} is not a run name: unknown augmentation code "
                         f"'_a{g['augment']}' (known: {known})")
    try:
        key = RunKey(int(g["way"]), int(g["shot"]), int(g["n_subspaces"]),
                     float(g["lambda1"]), float(g["lambda2"]), int(g["seed"]),
                     float(g["tau"]) if g["tau"] is not None else DEFAULT_TAU,
                     g["learn"] is not None, codes[g["distance"] or ""],
                     embeds[g["embed"] or ""], augments[g["augment"] or ""])
        canonical = run_name(*key)
    except ValueError:
        raise ValueError(f"{name!r} is not a run name: a number does not parse") from None
    if canonical != name:
        raise ValueError(f"{name!r} is not a run name in its one spelling {canonical!r}")
    return key


def run_name_of(cfg: Mapping[str, Any]) -> str:
    """The run name of the configuration's own train/model settings."""
    train, model = cfg["train"], cfg["model"]
    return run_name(train["way"], train["shot"], model["n_subspaces"], train["lambda1"],
                    train["lambda2"], train["seed"], model["tau"], model["learn_tau"],
                    model.get("distance", "squared"), model.get("embed", "joint"),
                    train.get("augment", DEFAULT_AUGMENT))


def results_dir(cfg: Mapping[str, Any]) -> Path:
    return Path(cfg["results_dir"])


def dataset_name(cfg: Mapping[str, Any]) -> str:
    return str(cfg["dataset"]["name"])


def raw_root(cfg: Mapping[str, Any]) -> Path:
    """Extracted (or synthesised) raw data: ``dataset.root`` or ``{data_dir}/{dataset.name}``."""
    root = cfg["dataset"].get("root")
    return Path(root) if root else Path(cfg["data_dir"]) / dataset_name(cfg)


def cache_dir(cfg: Mapping[str, Any]) -> Path:
    return results_dir(cfg) / "cache" / dataset_name(cfg)


def split_path(cfg: Mapping[str, Any]) -> Path:
    return results_dir(cfg) / "splits" / f"{dataset_name(cfg)}.json"


def tracking_marker(cfg: Mapping[str, Any]) -> Path:
    """Written once the MLflow store and the data set's experiment exist."""
    return results_dir(cfg) / "tracking" / f"{dataset_name(cfg)}.json"


def runs_root(cfg: Mapping[str, Any]) -> Path:
    return results_dir(cfg) / "runs" / dataset_name(cfg)


def run_dir(cfg: Mapping[str, Any], method: str, run: str | None = None) -> Path:
    """``{results_dir}/runs/{dataset.name}/{method}/{run}``; ``run`` defaults to the
    configuration's own :func:`run_name_of` (a workflow may pass ``"{run}"``)."""
    return runs_root(cfg) / method / (run if run is not None else run_name_of(cfg))


def eval_dir(cfg: Mapping[str, Any], method: str, split: str, run: str | None = None,
             shot: int | None = None) -> Path:
    """Where the evaluation of a run on ``split`` (``val`` or ``novel``) writes its files:
    ``eval/{split}`` at the run's training shot (``shot=None``), ``eval/{split}_shot{k}`` at
    another evaluation shot ``k`` (``eval.shots``)."""
    return run_dir(cfg, method, run) / "eval" / (split if shot is None else f"{split}_shot{shot}")


def eval_shots(cfg: Mapping[str, Any], split: str, train_shot: int) -> list[int]:
    """The shots a model trained at ``train_shot`` is evaluated at on ``split``: the
    validation split (which the selection reads) only at the training shot; the novel classes
    at every shot of ``eval.shots`` (null: the training shot), the training shot first."""
    shots = cfg.get("eval", {}).get("shots")
    if split != "novel" or not shots:
        return [train_shot]
    return sorted(set(shots), key=lambda k: (k != train_shot, k))


def eval_shot_dir(cfg: Mapping[str, Any], method: str, split: str, run: str, train_shot: int,
                  shot: int) -> Path:
    """:func:`eval_dir` of the evaluation at ``shot`` of a run trained at ``train_shot``."""
    return eval_dir(cfg, method, split, run, None if shot == train_shot else shot)


def selection_path(cfg: Mapping[str, Any]) -> Path:
    return results_dir(cfg) / "selection" / f"{dataset_name(cfg)}.csv"


def tables_dir(cfg: Mapping[str, Any]) -> Path:
    return results_dir(cfg) / "tables" / dataset_name(cfg)


def plots_dir(cfg: Mapping[str, Any]) -> Path:
    return results_dir(cfg) / "plots" / dataset_name(cfg)


def logs_dir(cfg: Mapping[str, Any]) -> Path:
    return results_dir(cfg) / "logs" / dataset_name(cfg)


def benchmarks_dir(cfg: Mapping[str, Any]) -> Path:
    return results_dir(cfg) / "benchmarks" / dataset_name(cfg)


def pretrain_dir(cfg: Mapping[str, Any]) -> Path:
    """``{results_dir}/pretrain/{dataset}/{backbone}``: one pre-training per data set and
    backbone, shared by every grid cell (its ``config.yaml`` says what it was made from)."""
    return results_dir(cfg) / "pretrain" / dataset_name(cfg) / str(cfg["model"]["backbone"])


def pretrained_backbone(cfg: Mapping[str, Any]) -> Path:
    """The pre-trained weights a ``train.init: pretrained`` run starts from."""
    return pretrain_dir(cfg) / "backbone.pt"


def protocol(cfg: Mapping[str, Any]) -> str:
    """Which protocol the runs' numbers come from (``train.backbone``): ``finetune`` (the
    backbone trains on every episode; the default, and what settings without the key meant)
    or ``frozen`` (heads on :func:`features_path`)."""
    return str(cfg.get("train", {}).get("backbone", "finetune"))


def features_path(cfg: Mapping[str, Any]) -> Path:
    """``{results_dir}/features/{dataset}/{backbone}.pt``: every cache image embedded once by
    the pretrain stage's backbone (``train.backbone: frozen``; its provenance inside)."""
    return results_dir(cfg) / "features" / dataset_name(cfg) / f"{cfg['model']['backbone']}.pt"
