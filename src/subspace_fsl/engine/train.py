"""Episodic meta-training (method.md step 2) with validation, early stopping and exact resume.

``train(cfg, out_dir)`` writes into ``out_dir``:

- ``config.yaml``      the resolved settings (first);
- ``checkpoint.pt``    everything needed to continue (model, optimiser, scheduler, sampler and
                       RNG states, episode counter, best-so-far, patience counter, history),
                       every ``train.checkpoint_every`` episodes and after each validation;
- ``best.pt``          the weights with the best mean validation accuracy (plus the config);
- ``history.csv``      episode, train loss/acc, l1, l2 (window means), val acc / ci95, lr;
- ``train_summary.json`` final metrics, then ``done`` (last: a finished run trains nothing;
                       a missing output is rewritten from ``checkpoint.pt``).

Killed at any moment (SIGKILL, Ctrl-C, SIGTERM) and started again with the same command, a run
resumes from its last checkpoint and ends with exactly the metrics of an uninterrupted run
(same machine). :class:`TrainingRun` holds the lifecycle's rules in one place.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.profiler import record_function

from subspace_fsl.config import atomic_write_text, read_yaml, save_config
from subspace_fsl.engine.checkpoint import (
    load_checkpoint,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)
from subspace_fsl.engine.data import EngineData, check_episode_fits, open_data, place_cache
from subspace_fsl.engine.evaluate import (
    episode_accuracies,
    evaluation_plan,
    summarise,
    table_accuracies,
)
from subspace_fsl.engine.features import feature_data
from subspace_fsl.engine.model import (
    FewShotModel,
    build_model,
    check_head_episode,
    with_mirrored_support,
)
from subspace_fsl.engine.progress import Progress
from subspace_fsl.paths import protocol
from subspace_fsl.readers import read_json
from subspace_fsl.runtime import Runtime, configure, maybe_compile, place_model, to_input

log = logging.getLogger(__name__)

CHECKPOINT, BEST, HISTORY, SUMMARY, DONE = (
    "checkpoint.pt",
    "best.pt",
    "history.csv",
    "train_summary.json",
    "done",
)
#: what to do about an unreadable train_summary.json (rewritten from checkpoint.pt when absent)
SUMMARY_REMEDY = "delete it and run train again: it is rewritten from checkpoint.pt"
HISTORY_COLUMNS = ["episode", "train_loss", "train_acc", "l1", "l2", "val_acc", "val_ci95", "lr"]


# --- pieces ----------------------------------------------------------------------------------


def build_optimizer(cfg: Mapping[str, Any], model: torch.nn.Module, *,
                    fused: bool = False) -> torch.optim.Optimizer:
    """Adam or SGD over the parameters that train (a frozen backbone's do not). A model with
    none (a fixed-tau ProtoNet / DSN head on frozen features) gets an optimiser of one empty
    tensor, so its run has the checkpoint, scheduler and history of any run. ``fused``: Adam's
    fused kernel (same update rule, float rounding aside), for the stacked weights of cells
    trained together (engine/cells.py), where the element-wise update is memory bound."""
    train = cfg["train"]
    params = [p for p in model.parameters() if p.requires_grad] or [
        torch.nn.Parameter(torch.zeros(0))
    ]
    if train["optimizer"] == "adam":
        return torch.optim.Adam(params, lr=train["lr"], weight_decay=train["weight_decay"],
                                fused=fused or None)
    return torch.optim.SGD(
        params,
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
    return output_loss(out, query_labels, lambda1, lambda2)


def output_loss(
    out: Any, query_labels: torch.Tensor, lambda1: float, lambda2: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L = CE(out.logits, query labels) + lambda1 out.l1 + lambda2 out.l2, and its stats."""
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
        if loss.requires_grad:  # a head with nothing to train has no graph
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
        # model.flip_support: the (augmented) support images plus their mirror images
        self.flip = self.model.flips(settings["shot"])

    def step(self) -> dict[str, float]:
        """One episode: sample, load, augment, forward, backward, optimiser step."""
        support, labels, query, query_labels = episode_tensors(
            self.loader, self.sampler.sample(), self.runtime.device
        )
        if self.flip:
            support, labels = with_mirrored_support(support, labels)
        return train_step(
            self.step_model,
            self.optimizer,
            support,
            labels,
            query,
            query_labels,
            self.settings["lambda1"],
            self.settings["lambda2"],
            self.runtime,
        )


class HeadOnly(torch.nn.Module):
    """A head as a ``model(support, labels, query)``: stored features in, float32, outside any
    autocast (the heads' small solves)."""

    def __init__(self, head: torch.nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, support: torch.Tensor, labels: torch.Tensor, query: torch.Tensor) -> Any:
        with torch.autocast(device_type=support.device.type, enabled=False):
            return self.head(support.float(), labels, query.float())


class FeatureEpisodeTrainer(EpisodeTrainer):
    """``train.backbone: frozen``: the same episodes, optimiser and scheduler as
    :class:`EpisodeTrainer`, but each episode's support and query are rows of the stored
    :class:`~subspace_fsl.engine.features.FeatureTable` (``table.episode``) and only the head
    trains; the backbone (kept in the model so ``best.pt`` is a whole model) is never run.

    ``train.augment: flip`` picks each image's stored mirrored row with p = 0.5 (a draw from
    torch's global generator, saved in checkpoints like the image policies' draws)."""

    def __init__(
        self, cfg: Mapping[str, Any], data: EngineData, model: FewShotModel, runtime: Runtime,
        table: Any,
    ) -> None:
        from subspace_fsl.data.episodes import EpisodeSampler

        settings = cfg["train"]
        self.settings, self.runtime = settings, runtime
        model.backbone.requires_grad_(False)
        self.model = place_model(model, runtime)
        self.model.backbone.eval()
        self.step_model = HeadOnly(self.model.head)
        self.optimizer = build_optimizer(cfg, self.model)
        self.scheduler = build_scheduler(cfg, self.optimizer)
        self.sampler = EpisodeSampler(
            data.labels, data.split_classes("base"), settings["way"], settings["shot"],
            settings["query"], settings["seed"],
        )
        self.table = table.to(runtime.device)
        self.flip = self.model.flips(settings["shot"])
        self.random_flip = settings["augment"] == "flip"

    def step(self) -> dict[str, float]:
        """One episode on stored features: sample, gather rows, head forward, backward, step."""
        episode = self.sampler.sample()
        n_images = len(episode.support_idx) + len(episode.query_idx)
        mask = torch.rand(n_images) < 0.5 if self.random_flip else None
        with record_function("step/load+augment"):
            support, query = self.table.episode(
                episode.support_idx, episode.query_idx, mask, mirror_support=self.flip
            )
        device = self.runtime.device
        labels = torch.as_tensor(episode.support_labels, device=device)
        if self.flip:
            labels = torch.cat([labels, labels])
        return train_step(
            self.step_model, self.optimizer, support, labels, query,
            torch.as_tensor(episode.query_labels, device=device),
            self.settings["lambda1"], self.settings["lambda2"], self.runtime,
        )


def check_training_config(cfg: Mapping[str, Any], data: EngineData, model: FewShotModel) -> None:
    """Every episode shape the run will use fits its split and its head; else name the key."""
    train = cfg["train"]
    check_episode_fits(data, "base", train["way"], train["shot"], train["query"], "train.query")
    check_episode_fits(data, "val", train["way"], train["shot"], cfg["eval"]["query"], "eval.query")
    way, shot = train["way"], train["shot"]
    check_head_episode(model, way, shot, f"train.way={way}, train.shot={shot}", cfg["model"])


def _result_sections(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The sections of ``grid.training_settings`` (not the folders: a moved results_dir is
    the same run)."""
    from subspace_fsl.grid import training_settings

    return {k: v for k, v in training_settings(cfg).items() if isinstance(v, Mapping)}


def _differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    from subspace_fsl.provenance import differences

    return differences(_result_sections(saved), _result_sections(current))


class SettingsChanged(ValueError):
    """A run directory holds a run made with other result settings."""


def check_same_run(cfg: Mapping[str, Any], out: Path) -> None:
    """Refuse to resume (or re-finish) a run directory made with other result settings."""
    saved_path = out / "config.yaml"
    if not saved_path.is_file():
        return
    saved = read_yaml(saved_path, "run settings") or {}
    diff = _differences(saved, cfg)
    if diff:
        raise SettingsChanged(
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


# --- the run --------------------------------------------------------------------------------


class RunError(ValueError):
    """A run directory that cannot be continued as it is; names the directory and files."""


class Terminated(SystemExit):
    """SIGTERM (Snakemake's and SLURM's cancel) in the main thread: the run ends as on
    Ctrl-C (last checkpoint kept, MLflow run KILLED) and the process exits with 128 + 15."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum


class _Signals:
    """Turns SIGTERM into :class:`Terminated` while a run is active; inside ``deferred()``
    (an output being written) the signal is held and raised once the write is complete."""

    def __init__(self) -> None:
        self.pending: int | None = None
        self.depth = 0
        self.previous: Any = None

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.depth:
            self.pending = signum
            return
        raise Terminated(signum)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
        if not self.depth and self.pending is not None:
            signum, self.pending = self.pending, None
            raise Terminated(signum)


class TrainingRun:
    """One run directory from start (or resume) to the ``done`` marker.

    The rules, in the order ``run()`` applies them:

    - ``check_same_run``: a directory made with other result settings is refused;
    - ``finished()``: with ``done`` present, every output it stands for (``best.pt``,
      ``history.csv``, ``train_summary.json``) must exist; a missing one is rewritten from
      ``checkpoint.pt`` (it holds the best weights, the history and the run's state), and
      without ``checkpoint.pt`` the run is refused; nothing is trained again;
    - ``setup()`` then ``resume()``: seeded build of data, model and trainer, then the state
      of ``checkpoint.pt`` when there is one (exactly where the interrupted run was);
    - ``step()`` per episode, ``validate()`` every ``train.val_every`` episodes (and at the
      last), ``checkpoint()`` every ``train.checkpoint_every`` episodes and after each
      validation; ``finish()`` writes the final outputs and ``done`` last;
    - an exception, Ctrl-C or SIGTERM ends the MLflow run FAILED / KILLED / KILLED and keeps
      the last checkpoint; a SIGTERM during a write is held until the file is complete.

    Tracking goes through ``start_tracking``, ``track``, ``track_outputs`` and
    ``end_tracking`` only.
    """

    def __init__(
        self,
        cfg: Mapping[str, Any],
        out_dir: str | os.PathLike[str],
        *,
        split_file: str | os.PathLike[str] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        restart_changed: bool = False,
        features_file: str | os.PathLike[str] | None = None,
    ) -> None:
        from subspace_fsl.frozen_protocol import is_frozen
        from subspace_fsl.tracking import NullTracker

        self.cfg, self.out = cfg, Path(out_dir)
        self.restart_changed = restart_changed
        self.settings = cfg["train"]
        self.split_file, self.cache_dir = split_file, cache_dir
        self.features_file = features_file
        self.frozen = is_frozen(cfg)
        self.table: Any = None  # the stored features of a frozen run (open_table)
        self.state: dict[str, Any] = {
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
        self.window = _Window()
        self.tracker: Any = NullTracker()
        self.signals = _Signals()
        self.feature_dim: int | None = None
        self.last_val = math.nan
        self.started = time.monotonic()

    @property
    def history(self) -> list[dict[str, float]]:
        return self.state["history"]

    # --- the finished marker ----------------------------------------------------------------

    def finished(self) -> dict[str, Any] | None:
        """The final metrics when ``done`` is present (missing outputs rewritten), else None."""
        if not (self.out / DONE).is_file():
            return None
        outputs = {
            BEST: self._write_best,
            HISTORY: self._write_history,
            SUMMARY: self._write_summary,
        }
        missing = [name for name in outputs if not (self.out / name).is_file()]
        if missing:
            if not (self.out / CHECKPOINT).is_file():
                raise RunError(
                    f"{self.out} is marked finished ({DONE}) but {', '.join(missing)} "
                    f"{'is' if len(missing) == 1 else 'are'} missing and there is no "
                    f"{CHECKPOINT} to rewrite {'it' if len(missing) == 1 else 'them'} from; "
                    f"delete {self.out} to train the run again"
                )
            self._restore(load_checkpoint(self.out / CHECKPOINT, map_location="cpu"))
            with self.signals.deferred():
                for name in missing:
                    outputs[name]()
            log.warning(
                "%s is finished but %s %s missing; rewrote %s from %s",
                self.out,
                ", ".join(missing),
                "was" if len(missing) == 1 else "were",
                "it" if len(missing) == 1 else "them",
                CHECKPOINT,
            )
        else:
            log.info("%s is finished; nothing to do", self.out)
        from subspace_fsl import tracking

        tracking.replay_pending(self.cfg, self.out)  # what a dead server missed, if anything
        return read_json(self.out / SUMMARY, SUMMARY_REMEDY)

    # --- setup and resume -------------------------------------------------------------------

    def setup(self) -> None:
        """Seed, open the data, build model and trainer, check every shape; no file written."""
        from subspace_fsl import tracking

        cfg = self.cfg
        self.runtime = configure(cfg)
        seed_everything(self.settings["seed"])
        if self.frozen:
            self.data = feature_data(cfg, self.table, self.split_file)
        else:
            self.data = open_data(
                cfg,
                split_file=self.split_file,
                cache_dir=self.cache_dir,
                progress=self.runtime.progress == "bar",
            )
        model = build_model(cfg)
        check_training_config(cfg, self.data, model)
        if self.settings["init"] == "pretrained" and not (self.out / CHECKPOINT).is_file():
            from subspace_fsl import paths
            from subspace_fsl.engine.pretrain import load_pretrained_backbone

            weights = paths.pretrained_backbone(cfg)
            load_pretrained_backbone(cfg, model.backbone, weights)
            log.info("backbone initialised from %s", weights)
        if cfg["tracking"]["enabled"]:
            tracking.tracking_uri(cfg)  # refuse a bad URI before any work
        self.trainer = (
            FeatureEpisodeTrainer(cfg, self.data, model, self.runtime, self.table)
            if self.frozen
            else EpisodeTrainer(cfg, self.data, model, self.runtime)
        )
        self.model = self.trainer.model
        self.feature_dim = self.model.feature_dim
        self.val_plan = evaluation_plan(
            cfg, self.data, "val", episodes=self.settings["val_episodes"]
        )

    def resume(self) -> None:
        """Continue from ``checkpoint.pt`` when there is one: weights, optimiser, scheduler,
        sampler, RNG states and the run's counters, exactly as they were saved."""
        if not (self.out / CHECKPOINT).is_file():
            return
        saved = load_checkpoint(self.out / CHECKPOINT, map_location="cpu")
        trainer = self.trainer
        trainer.model.load_state_dict(saved["model"])
        trainer.optimizer.load_state_dict(saved["optimizer"])
        if trainer.scheduler is not None:
            trainer.scheduler.load_state_dict(saved["scheduler"])
        trainer.sampler.load_state_dict(saved["sampler"])
        set_rng_state(saved["rng"])
        self._restore(saved)
        log.info("resuming %s from episode %d", self.out, self.state["episode"])

    def _restore(self, saved: Mapping[str, Any]) -> None:
        self.state.update({k: saved[k] for k in self.state})
        self.window = _Window(self.state["window"])
        self.feature_dim = saved.get("feature_dim", self.feature_dim)
        self.last_val = next(
            (r["val_acc"] for r in reversed(self.history) if not math.isnan(r["val_acc"])),
            math.nan,
        )

    # --- one episode, one validation, one checkpoint -----------------------------------------

    def step(self, episode: int) -> dict[str, float]:
        """Train on one episode, step the scheduler, add the values to the window."""
        values = self.trainer.step()
        if not all(math.isfinite(v) for v in values.values()):
            raise FloatingPointError(
                f"non-finite training values {values} at episode {episode}; "
                f"lower train.lr={self.settings['lr']} or the lambdas"
            )
        values["lr"] = self.trainer.optimizer.param_groups[0]["lr"]  # the lr this step used
        if self.trainer.scheduler is not None:
            self.trainer.scheduler.step()
        self.window.add(values)
        self.state["episode"] = episode
        return values

    def val_accuracies(self) -> np.ndarray:
        """Accuracy of each fixed validation episode with the current weights."""
        if self.frozen:
            return table_accuracies(self.model, self.trainer.table, self.val_plan)
        return episode_accuracies(
            self.model, self.data, self.val_plan, self.cfg["eval"]["batch_size"], self.runtime
        )

    def validate(self, episode: int) -> dict[str, float]:
        """Mean accuracy (and ci95) on the fixed validation episodes; keeps the best weights
        (and rewrites ``best.pt``) when it improves; counts towards early stopping."""
        summary = summarise(self.val_accuracies())
        self.last_val = summary["mean"]
        state = self.state
        _update_best(state, episode, summary["mean"], self.settings["patience"])
        if state["best_episode"] == episode:
            state["best_model"] = {
                k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()
            }
            with self.signals.deferred():
                self._write_best()
        self.progress.message(
            f"episode {episode}: val acc {100 * summary['mean']:.2f}% "
            f"+- {100 * summary['ci95']:.2f}% (best {100 * state['best_val_acc']:.2f}% "
            f"at {state['best_episode']})"
        )
        return summary

    def record(self, episode: int, lr: float, validate: bool) -> None:
        """One history row: the window's means (and a validation), logged to tracking."""
        row = {"episode": episode, **self.window.means(), "val_acc": math.nan,
               "val_ci95": math.nan, "lr": lr}
        self.window.reset()
        metrics = {k: row[k] for k in ("train_loss", "train_acc", "l1", "l2", "lr")}
        if validate:
            summary = self.validate(episode)
            row.update(val_acc=summary["mean"], val_ci95=summary["ci95"])
            metrics.update(
                val_acc=summary["mean"],
                val_ci95=summary["ci95"],
                best_val_acc=self.state["best_val_acc"],
            )
        self.history.append(row)
        metrics["episodes_per_s"] = self.progress.rate()
        self.track(metrics, episode)

    def checkpoint(self) -> None:
        """``checkpoint.pt`` (everything needed to continue) then ``history.csv``."""
        trainer = self.trainer
        with self.signals.deferred():
            save_checkpoint(
                {
                    "config": dict(self.cfg),
                    "model": trainer.model.state_dict(),
                    "optimizer": trainer.optimizer.state_dict(),
                    "scheduler": (
                        trainer.scheduler.state_dict() if trainer.scheduler is not None else None
                    ),
                    "sampler": trainer.sampler.state_dict(),
                    "rng": rng_state(),
                    **self.state,
                    "window": dict(self.window.sums),
                    "feature_dim": self.feature_dim,
                    "features_stamp": self.features_stamp,
                },
                self.out / CHECKPOINT,
            )
            self._write_history()

    # --- the outputs ------------------------------------------------------------------------

    def _write_best(self) -> None:
        state = self.state
        if self.feature_dim is None:  # a checkpoint written before feature_dim was stored
            settings = {**self.cfg, "model": {**self.cfg["model"], "backbone_weights": None}}
            self.feature_dim = build_model(settings).feature_dim
        save_checkpoint(
            {
                "config": dict(self.cfg),
                "model": state["best_model"],
                "episode": state["best_episode"],
                "val_acc": state["best_val_acc"],
                "feature_dim": self.feature_dim,
                "features_stamp": self.features_stamp,
            },
            self.out / BEST,
        )

    def _write_history(self) -> None:
        _write_history(self.out, self.history)

    def _write_summary(self) -> None:
        summary = _final_summary(self.state, self.history)
        atomic_write_text(self.out / SUMMARY, json.dumps(summary, indent=2) + "\n")

    def finish(self) -> dict[str, Any]:
        """Final checkpoint, ``best.pt``, ``train_summary.json``, tracking, then ``done``."""
        if self.state["stopped"] is None:
            self.state["stopped"] = "max_episodes"
        self.checkpoint()
        with self.signals.deferred():
            self._write_best()
            self._write_summary()
        summary = read_json(self.out / SUMMARY, SUMMARY_REMEDY)
        self.track_outputs(summary)
        self.end_tracking("FINISHED")
        with self.signals.deferred():
            atomic_write_text(
                self.out / DONE,
                f"finished after {self.state['episode']} episodes "
                f"({time.monotonic() - self.started:.1f} s in the last session)\n",
            )
        log.info("training finished: %s", summary)
        return summary

    # --- tracking (the only calls into subspace_fsl.tracking) -------------------------------

    def start_tracking(self) -> None:
        """Open (or reopen, on resume) the run directory's MLflow run; log settings."""
        from subspace_fsl import __version__, tracking

        cfg = self.cfg
        self.tracker = tracking.open_run(
            cfg,
            self.out,
            tags=tracking.default_tags(
                {
                    "dataset": cfg["dataset"]["name"],
                    "data_stamp": self.data.stamp,
                    "device": str(self.runtime.device),
                    "backbone": cfg["model"]["backbone"],
                    "head": cfg["model"]["head"],
                    "protocol": protocol(cfg),
                    "subspace_fsl.version": __version__,
                }
            ),
        )
        if isinstance(self.tracker, tracking.RunTracker):
            self.tracker.reopen()
            tracking.log_training_start(self.tracker, cfg, self.data, self.out)  # params, data
            self.tracker.log_artifact(self.out / "config.yaml")

    def track(self, metrics: Mapping[str, float], step: int) -> None:
        self.tracker.log_metrics(metrics, step=step)

    def track_outputs(self, summary: Mapping[str, Any]) -> None:
        """The final metrics, the output files and the best model."""
        from subspace_fsl import tracking
        from subspace_fsl.mlflow_model import log_best_model

        self.track(
            {"best_val_acc": summary["best_val_acc"], "episodes_per_s": self.progress.rate()},
            self.state["episode"],
        )
        for name in (BEST, HISTORY, SUMMARY):
            self.tracker.log_artifact(self.out / name)
        if isinstance(self.tracker, tracking.RunTracker):  # not kept while the server is away
            self.tracker.guard(log_best_model, self.tracker, self.cfg, self.out)

    def end_tracking(self, status: str) -> None:
        """FINISHED, KILLED (Ctrl-C, SIGTERM) or FAILED; a resumed run sets RUNNING again."""
        self.tracker.finish(status)

    # --- the whole run ----------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Train (or resume, or only complete a finished run's outputs); the final metrics."""
        try:
            check_same_run(self.cfg, self.out)
        except SettingsChanged as exc:
            if not self.restart_changed:
                raise
            self.start_afresh(str(exc))
        if self.frozen:
            self.open_table()
        with self.signals:
            done = self.finished()
            if done is not None:
                return done
            try:
                self._run()
                return self.finish()
            except BaseException as exc:
                self._stopped_by(exc)
                raise

    @property
    def features_stamp(self) -> str | None:
        """The stamp of the feature table a frozen run trains on (None: fine-tuned)."""
        return None if self.table is None else self.table.stamp

    def open_table(self) -> None:
        """A frozen run's feature table, checked current (a stale one is refused); a run
        folder whose checkpoint was trained on another table is refused, or, with
        ``restart_changed``, started afresh: nothing trained on old features is resumed."""
        from subspace_fsl.engine.features import open_features
        from subspace_fsl.frozen_protocol import check_frozen_settings

        check_frozen_settings(self.cfg)
        self.table = open_features(self.cfg, self.features_file, self.cache_dir)
        saved = self.out / CHECKPOINT
        if not saved.is_file():
            return
        recorded = load_checkpoint(saved, map_location="cpu").get("features_stamp")
        if recorded != self.table.stamp:
            reason = (
                f"{saved} was trained on features {recorded} but {self.table.path} is now "
                f"{self.table.stamp}"
            )
            if not self.restart_changed:
                raise SettingsChanged(f"{reason}; choose another --out or delete {self.out}")
            self.start_afresh(reason)

    def start_afresh(self, reason: str) -> None:
        """The workflow's answer to changed settings (its job re-runs because its params
        changed): the folder's MLflow run is retired and the stale folder removed, so nothing
        of the old run is resumed or reported as this one."""
        from subspace_fsl import tracking

        log.warning("%s: starting afresh, the settings changed: %s", self.out, reason)
        tracking.retire_run(self.cfg, self.out, reason)
        shutil.rmtree(self.out)

    def _run(self) -> None:
        self.setup()
        self.resume()
        self.out.mkdir(parents=True, exist_ok=True)
        # the run's own settings: not the grid section (the benchmark's, or the schema's
        # default where the job's settings are the run's), which no training reads
        save_config({k: v for k, v in self.cfg.items() if k != "grid"},
                    self.out / "config.yaml")
        self.start_tracking()
        settings = self.settings
        self.progress = Progress(
            self.runtime.progress,
            settings["max_episodes"],
            self.state["episode"],
            settings["log_every"],
        )
        for episode in _episodes(self.state, settings["max_episodes"]):
            values = self.step(episode)
            validate = episode % settings["val_every"] == 0 or episode == settings["max_episodes"]
            if validate or episode % settings["log_every"] == 0:
                self.record(episode, values["lr"], validate)
            self.progress.update(episode, {"loss": values["loss"], "val": self.last_val})
            if validate or episode % settings["checkpoint_every"] == 0:
                self.checkpoint()
        self.progress.close()

    def _stopped_by(self, exc: BaseException) -> None:
        """Close the progress display and the MLflow run; the last checkpoint stays."""
        if hasattr(self, "progress"):
            self.progress.close()
        killed = isinstance(exc, (KeyboardInterrupt, Terminated))
        if isinstance(exc, Terminated):
            log.warning(
                "stopped by signal %d at episode %d; %s kept; run the same command to resume",
                exc.signum,
                self.state["episode"],
                self.out / CHECKPOINT,
            )
        try:  # a crash is recorded; a resumed run sets it RUNNING again
            self.end_tracking("KILLED" if killed else "FAILED")
        except Exception:  # the store may be what failed
            log.exception("could not mark MLflow run %s as ended", self.tracker.run_id)


def train(
    cfg: Mapping[str, Any],
    out_dir: str | os.PathLike[str],
    *,
    split_file: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    restart_changed: bool = False,
    features_file: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Train (or resume, or do nothing when finished) one configuration into ``out_dir``.

    With ``train.backbone: frozen`` the head trains on ``features_file`` (default
    ``paths.features_path``; ``cache_dir`` is then only read for its ``meta.json``, to check
    the table is current).

    A folder holding a run with other result settings is refused, or, with
    ``restart_changed`` (the workflow's train stage), started afresh. Returns the final
    metrics (``train_summary.json``). See :class:`TrainingRun`.
    """
    return TrainingRun(
        cfg, out_dir, split_file=split_file, cache_dir=cache_dir, restart_changed=restart_changed,
        features_file=features_file,
    ).run()


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
