"""Episodic meta-training (method.md step 2) with validation, early stopping and exact resume.

``train(cfg, out_dir)`` writes into ``out_dir``:

- ``config.yaml``      the resolved settings (first);
- ``checkpoint.pt``    everything needed to continue (model, optimiser, scheduler, sampler and
                       RNG states, episode counter, best-so-far, patience counter, history),
                       every ``train.checkpoint_every`` episodes and after each validation;
- ``best.pt``          the weights with the best mean validation accuracy (plus the config);
- ``history.csv``      episode, train loss/acc, l1, l2 (window means), val acc / ci95, lr;
- ``train_summary.json`` final metrics, then ``done`` (last: a finished run is a no-op).

Killed at any moment and started again with the same command, a run resumes from its last
checkpoint and ends with exactly the metrics of an uninterrupted run (same machine).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
import yaml
from torch.profiler import record_function

from subspace_fsl.config import atomic_write_text, save_config
from subspace_fsl.engine.checkpoint import (
    load_checkpoint,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)
from subspace_fsl.engine.data import EngineData, check_episode_fits, open_data, place_cache
from subspace_fsl.engine.evaluate import episode_accuracies, evaluation_plan, summarise
from subspace_fsl.engine.model import FewShotModel, build_model, check_head_episode
from subspace_fsl.engine.progress import Progress
from subspace_fsl.runtime import Runtime, configure, maybe_compile, place_model, to_input

log = logging.getLogger(__name__)

CHECKPOINT, BEST, HISTORY, SUMMARY, DONE = (
    "checkpoint.pt",
    "best.pt",
    "history.csv",
    "train_summary.json",
    "done",
)
HISTORY_COLUMNS = ["episode", "train_loss", "train_acc", "l1", "l2", "val_acc", "val_ci95", "lr"]
# settings that change what a run computes; runtime and tracking may differ on resume
RESULT_SECTIONS = ("dataset", "split", "model", "train", "eval")


# --- pieces ----------------------------------------------------------------------------------


def build_optimizer(cfg: Mapping[str, Any], model: torch.nn.Module) -> torch.optim.Optimizer:
    train = cfg["train"]
    if train["optimizer"] == "adam":
        return torch.optim.Adam(
            model.parameters(), lr=train["lr"], weight_decay=train["weight_decay"]
        )
    return torch.optim.SGD(
        model.parameters(),
        lr=train["lr"],
        momentum=0.9,
        nesterov=True,
        weight_decay=train["weight_decay"],
    )


def build_scheduler(
    cfg: Mapping[str, Any], optimizer: torch.optim.Optimizer
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Stepped per episode: ``step`` (x lr_gamma every lr_step_episodes), ``cosine``, ``none``."""
    train = cfg["train"]
    if train["lr_schedule"] == "step":
        return torch.optim.lr_scheduler.StepLR(
            optimizer, train["lr_step_episodes"], train["lr_gamma"]
        )
    if train["lr_schedule"] == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=train["max_episodes"])
    return None


def episode_loss(
    model: torch.nn.Module,
    support: torch.Tensor,
    support_labels: torch.Tensor,
    query: torch.Tensor,
    query_labels: torch.Tensor,
    lambda1: float,
    lambda2: float,
    runtime: Runtime,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L = CE(logits, query labels) + lambda1 L1 + lambda2 L2 for one episode."""
    with runtime.autocast():
        out = model(to_input(support, runtime), support_labels, to_input(query, runtime))
    logits = out.logits.float()
    ce = F.cross_entropy(logits, query_labels)
    loss = ce + lambda1 * out.l1.float() + lambda2 * out.l2.float()
    accuracy = (logits.detach().argmax(dim=1) == query_labels).float().mean()
    return loss, {
        "loss": loss.detach(),
        "acc": accuracy,
        "l1": out.l1.detach().float(),
        "l2": out.l2.detach().float(),
    }


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    support: torch.Tensor,
    support_labels: torch.Tensor,
    query: torch.Tensor,
    query_labels: torch.Tensor,
    lambda1: float,
    lambda2: float,
    runtime: Runtime,
) -> dict[str, float]:
    """One optimiser step on one episode; returns loss, acc, l1, l2 as numbers."""
    # the named ranges show up in `python -m subspace_fsl.bench profile` (and cost ~1 us)
    optimizer.zero_grad(set_to_none=True)
    with record_function("step/forward"):
        loss, stats = episode_loss(
            model, support, support_labels, query, query_labels, lambda1, lambda2, runtime
        )
    with record_function("step/backward"):
        loss.backward()
    with record_function("step/optimizer"):
        optimizer.step()
    values = torch.stack([stats["loss"], stats["acc"], stats["l1"], stats["l2"]]).tolist()
    return dict(zip(("loss", "acc", "l1", "l2"), values, strict=True))


def episode_tensors(
    loader: Any, episode: Any, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(support images, support labels, query images, query labels) on the device."""
    with record_function("step/load+augment"):
        support, query = loader(episode)
    return (
        support,
        torch.as_tensor(episode.support_labels, device=device),
        query,
        torch.as_tensor(episode.query_labels, device=device),
    )


class EpisodeTrainer:
    """What one training episode needs, built once: the placed model (and its training view,
    with the backbone compiled when ``runtime.compile``), optimiser, scheduler, the base
    split's episode sampler and the episode loader (cache placed per the runtime).

    ``step()`` draws an episode, loads (and augments) it and takes one optimiser step; the
    scheduler is the caller's (it steps per episode, after the bookkeeping)."""

    def __init__(
        self, cfg: Mapping[str, Any], data: EngineData, model: FewShotModel, runtime: Runtime
    ) -> None:
        from subspace_fsl.data.episodes import EpisodeLoader, EpisodeSampler

        settings = cfg["train"]
        self.settings, self.runtime = settings, runtime
        self.model = place_model(model, runtime)
        # only the backbone is compiled (the heads' small solves gain nothing); same weights
        self.step_model = self.model.with_backbone(maybe_compile(self.model.backbone, runtime))
        self.optimizer = build_optimizer(cfg, self.model)
        self.scheduler = build_scheduler(cfg, self.optimizer)
        self.sampler = EpisodeSampler(
            data.labels,
            data.split_classes("base"),
            settings["way"],
            settings["shot"],
            settings["query"],
            settings["seed"],
        )
        place_cache(data, runtime)
        self.loader = EpisodeLoader(
            data, runtime.device, settings["augment"], runtime.channels_last
        )

    def step(self) -> dict[str, float]:
        """One episode: sample, load, augment, forward, backward, optimiser step."""
        tensors = episode_tensors(self.loader, self.sampler.sample(), self.runtime.device)
        return train_step(
            self.step_model,
            self.optimizer,
            *tensors,
            self.settings["lambda1"],
            self.settings["lambda2"],
            self.runtime,
        )


def check_training_config(cfg: Mapping[str, Any], data: EngineData, model: FewShotModel) -> None:
    """Every episode shape the run will use fits its split and its head; else name the key."""
    train = cfg["train"]
    check_episode_fits(data, "base", train["way"], train["shot"], train["query"], "train.query")
    check_episode_fits(data, "val", train["way"], train["shot"], cfg["eval"]["query"], "eval.query")
    way, shot = train["way"], train["shot"]
    check_head_episode(model, way, shot, f"train.way={way}, train.shot={shot}", cfg["model"])


def _differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    from subspace_fsl.tracking import flatten

    old = flatten({k: saved.get(k, {}) for k in RESULT_SECTIONS})
    new = flatten({k: current.get(k, {}) for k in RESULT_SECTIONS})
    return [
        f"{k}: {old.get(k)} -> {new.get(k)}"
        for k in sorted(old.keys() | new.keys())
        if old.get(k) != new.get(k)
    ]


def check_same_run(cfg: Mapping[str, Any], out: Path) -> None:
    """Refuse to resume (or re-finish) a run directory made with other result settings."""
    saved_path = out / "config.yaml"
    if not saved_path.is_file():
        return
    saved = yaml.safe_load(saved_path.read_text()) or {}
    diff = _differences(saved, cfg)
    if diff:
        raise ValueError(
            f"{out} holds a run with other settings ({'; '.join(diff[:5])}); "
            f"choose another --out or delete that directory"
        )


class _Window:
    """Sums of per-episode values between two history rows (kept in the checkpoint)."""

    def __init__(self, state: Mapping[str, float] | None = None) -> None:
        self.sums: dict[str, float] = dict(
            state or {"n": 0.0, "loss": 0.0, "acc": 0.0, "l1": 0.0, "l2": 0.0}
        )

    def add(self, values: Mapping[str, float]) -> None:
        self.sums["n"] += 1
        for key in ("loss", "acc", "l1", "l2"):
            self.sums[key] += values[key]

    def means(self) -> dict[str, float]:
        n = self.sums["n"]
        return {
            f"train_{k}" if k in ("loss", "acc") else k: (self.sums[k] / n if n else math.nan)
            for k in ("loss", "acc", "l1", "l2")
        }

    def reset(self) -> None:
        self.sums = {key: 0.0 for key in self.sums}


def _write_history(out: Path, history: list[dict[str, float]]) -> None:
    atomic_write_text(
        out / HISTORY, pd.DataFrame(history, columns=HISTORY_COLUMNS).to_csv(index=False)
    )


# --- the loop --------------------------------------------------------------------------------


def train(
    cfg: Mapping[str, Any],
    out_dir: str | os.PathLike[str],
    *,
    split_file: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Train (or resume, or do nothing when finished) one configuration into ``out_dir``.

    Returns the final metrics (``train_summary.json``).
    """
    from subspace_fsl import __version__, tracking

    out = Path(out_dir)
    check_same_run(cfg, out)
    if (out / DONE).is_file():
        log.info("%s is finished; nothing to do", out)
        return json.loads((out / SUMMARY).read_text())

    settings = cfg["train"]
    runtime = configure(cfg)
    seed_everything(settings["seed"])
    data = open_data(
        cfg, split_file=split_file, cache_dir=cache_dir, progress=runtime.progress == "bar"
    )
    model = build_model(cfg)
    check_training_config(cfg, data, model)
    if cfg["tracking"]["enabled"]:
        tracking.tracking_uri(cfg)  # refuse a bad URI before any work

    trainer = EpisodeTrainer(cfg, data, model, runtime)
    model, optimizer, scheduler, sampler = (
        trainer.model,
        trainer.optimizer,
        trainer.scheduler,
        trainer.sampler,
    )
    val_plan = evaluation_plan(cfg, data, "val", episodes=settings["val_episodes"])

    state: dict[str, Any] = {
        "episode": 0,
        "best_val_acc": -1.0,
        "best_episode": 0,
        "bad_checks": 0,
        "stopped": None,
        "history": [],
        "window": None,
        # the best weights also live in checkpoint.pt, so best.pt can always be rewritten
        # (a workflow manager deletes the outputs of an interrupted job before rerunning it)
        "best_model": None,
    }
    if (out / CHECKPOINT).is_file():
        saved = load_checkpoint(out / CHECKPOINT, map_location="cpu")
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(saved["scheduler"])
        sampler.load_state_dict(saved["sampler"])
        set_rng_state(saved["rng"])
        state.update({k: saved[k] for k in state})
        log.info("resuming %s from episode %d", out, state["episode"])
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")

    tracker = tracking.open_run(
        cfg,
        out,
        tags=tracking.default_tags(
            {
                "dataset": cfg["dataset"]["name"],
                "data_stamp": data.stamp,
                "device": str(runtime.device),
                "backbone": cfg["model"]["backbone"],
                "head": cfg["model"]["head"],
                "subspace_fsl.version": __version__,
            }
        ),
    )
    if isinstance(tracker, tracking.RunTracker):
        tracker.reopen()
        tracking.log_training_start(tracker, cfg, data, out)  # params, data, sampler
        tracker.log_artifact(out / "config.yaml")

    window = _Window(state["window"])
    history: list[dict[str, float]] = state["history"]
    progress = Progress(
        runtime.progress, settings["max_episodes"], state["episode"], settings["log_every"]
    )
    last_val = next(
        (r["val_acc"] for r in reversed(history) if not math.isnan(r["val_acc"])), math.nan
    )

    def save_best() -> None:
        save_checkpoint(
            {
                "config": dict(cfg),
                "model": state["best_model"],
                "episode": state["best_episode"],
                "val_acc": state["best_val_acc"],
                "feature_dim": model.feature_dim,
            },
            out / BEST,
        )

    def save_state() -> None:
        save_checkpoint(
            {
                "config": dict(cfg),
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "sampler": sampler.state_dict(),
                "rng": rng_state(),
                **state,
                "history": history,
                "window": dict(window.sums),
            },
            out / CHECKPOINT,
        )
        _write_history(out, history)

    started = time.monotonic()
    try:
        for episode in _episodes(state, settings["max_episodes"]):
            values = trainer.step()
            if not all(math.isfinite(v) for v in values.values()):
                raise FloatingPointError(
                    f"non-finite training values {values} at episode {episode}; "
                    f"lower train.lr={settings['lr']} or the lambdas"
                )
            lr = optimizer.param_groups[0]["lr"]
            if scheduler is not None:
                scheduler.step()
            window.add(values)
            state["episode"] = episode
            validate = episode % settings["val_every"] == 0 or episode == settings["max_episodes"]
            if validate or episode % settings["log_every"] == 0:
                row = {
                    "episode": episode,
                    **window.means(),
                    "val_acc": math.nan,
                    "val_ci95": math.nan,
                    "lr": lr,
                }
                window.reset()
                metrics = {k: row[k] for k in ("train_loss", "train_acc", "l1", "l2", "lr")}
                if validate:
                    summary = summarise(
                        episode_accuracies(
                            model, data, val_plan, cfg["eval"]["batch_size"], runtime
                        )
                    )
                    row.update(val_acc=summary["mean"], val_ci95=summary["ci95"])
                    last_val = summary["mean"]
                    _update_best(state, episode, summary["mean"], settings["patience"])
                    if state["best_episode"] == episode:
                        state["best_model"] = {
                            k: v.detach().to("cpu", copy=True)
                            for k, v in model.state_dict().items()
                        }
                        save_best()
                    metrics.update(
                        val_acc=summary["mean"],
                        val_ci95=summary["ci95"],
                        best_val_acc=state["best_val_acc"],
                    )
                    progress.message(
                        f"episode {episode}: val acc {100 * summary['mean']:.2f}% "
                        f"+- {100 * summary['ci95']:.2f}% (best {100 * state['best_val_acc']:.2f}% "
                        f"at {state['best_episode']})"
                    )
                history.append(row)
                metrics["episodes_per_s"] = progress.rate()
                tracker.log_metrics(metrics, step=episode)
            progress.update(episode, {"loss": values["loss"], "val": last_val})
            if validate or episode % settings["checkpoint_every"] == 0:
                save_state()
    except BaseException as exc:
        progress.close()
        if isinstance(tracker, tracking.RunTracker):
            try:  # a crash is recorded; a resumed run sets it RUNNING again
                tracker.finish("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
            except Exception:  # the store may be what failed
                log.exception("could not mark MLflow run %s as failed", tracker.run_id)
        raise
    progress.close()
    if state["stopped"] is None:
        state["stopped"] = "max_episodes"
    save_state()
    save_best()
    summary = _final_summary(state, history)
    atomic_write_text(out / SUMMARY, json.dumps(summary, indent=2) + "\n")
    tracker.log_metrics(
        {"best_val_acc": summary["best_val_acc"], "episodes_per_s": progress.rate()},
        step=state["episode"],
    )
    for name in (BEST, HISTORY, SUMMARY):
        tracker.log_artifact(out / name)
    tracking.log_training_end(tracker, cfg, out)  # best.pt as an MLflow model
    tracker.finish("FINISHED")
    atomic_write_text(
        out / DONE,
        f"finished after {state['episode']} episodes "
        f"({time.monotonic() - started:.1f} s in the last session)\n",
    )
    log.info("training finished: %s", summary)
    return summary


def _episodes(state: dict[str, Any], max_episodes: int) -> Iterator[int]:
    """Episode numbers still to run; stops once early stopping has fired."""
    episode = state["episode"] + 1
    while state["stopped"] is None and episode <= max_episodes:
        yield episode
        episode += 1


def _update_best(state: dict[str, Any], episode: int, val_acc: float, patience: int) -> None:
    if val_acc > state["best_val_acc"]:
        state.update(best_val_acc=val_acc, best_episode=episode, bad_checks=0)
        return
    state["bad_checks"] += 1
    if state["bad_checks"] >= patience:
        state["stopped"] = "early_stopping"


def _final_summary(state: Mapping[str, Any], history: list[dict[str, float]]) -> dict[str, Any]:
    last = history[-1] if history else {}
    return {
        "episodes": state["episode"],
        "stopped": state["stopped"],
        "best_episode": state["best_episode"],
        "best_val_acc": state["best_val_acc"],
        "last_val_acc": next(
            (r["val_acc"] for r in reversed(history) if not math.isnan(r["val_acc"])), None
        ),
        "final_train_loss": last.get("train_loss"),
        "final_train_acc": last.get("train_acc"),
        "validation_checks": sum(not math.isnan(r["val_acc"]) for r in history),
    }
