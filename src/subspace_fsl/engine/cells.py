"""Grid cells trained together: C runs that share their inputs as ONE stacked model.

Runs of one group (:func:`subspace_fsl.grid.cell_groups`) differ only in ``lambda1``,
``lambda2`` and the temperature value (and a baseline's fixed tau): same data, split, way,
shot, S, head structure, initial weights (``train.seed``, pretrained init) and episodes. Their
parameters are stacked along a leading cell dimension ``c`` (``torch.func.stack_module_state``)
and one ``vmap``-ed ``grad`` of

    L_c = CE(logits_c, y_q) + lambda1_c L1_c + lambda2_c L2_c

over one shared episode gives every cell's gradient; ONE optimiser over the stacked tensors
takes every cell's step (Adam and SGD are element-wise, so a stacked step is exactly C separate
steps; the learning-rate schedule is the same for all cells).

Every cell stays its own run (:class:`CellRun`, a :class:`~subspace_fsl.engine.train.TrainingRun`):
its folder, ``checkpoint.pt`` (the same layout as a run trained alone: a cell can be resumed
alone and vice versa), ``best.pt``, ``history.csv``, validation and early stopping, MLflow run,
``done`` marker, SIGTERM handling. A cell that stops (early stopping) is finished at once and
leaves the stack (its rows are dropped from the weights and the optimiser state), so it stops
changing while the others go on.

Protocols (``train.backbone``):

- ``frozen``: only the head is stacked; episodes read the stored feature table
  (:class:`~subspace_fsl.engine.features.FeatureTable`); validation runs every cell's head on
  the same stored features, one ``vmap`` per episode.
- ``finetune``: the whole model is stacked (each cell fine-tunes its own copy of the shared
  pretrained backbone). BatchNorm's running statistics are buffers stacked like the weights;
  in training mode each cell's ``running_mean``/``running_var``/``num_batches_tracked`` are
  updated in place from that cell's own batch statistics, exactly as when it trains alone.
  Validation embeds with each cell's own backbone (``TrainingRun.validate``).

Resume: each cell restores its own ``checkpoint.pt``; cells at different episodes (a kill
between two cells' checkpoint writes) are trained as separate sub-groups, one after the other.
"""

from __future__ import annotations

import copy
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, stack_module_state, vmap

from subspace_fsl.config import save_config
from subspace_fsl.engine.checkpoint import load_checkpoint, seed_everything, set_rng_state
from subspace_fsl.engine.model import FewShotModel, build_model, with_mirrored_support
from subspace_fsl.engine.progress import Progress
from subspace_fsl.engine.train import (
    CHECKPOINT,
    SettingsChanged,
    TrainingRun,
    build_optimizer,
    build_scheduler,
    check_same_run,
    check_training_config,
)

log = logging.getLogger(__name__)

#: the per-cell settings of a group; everything else must be equal (:func:`check_group`)
CELL_KEYS = (("train", "lambda1"), ("train", "lambda2"), ("model", "tau"))


def check_group(cfgs: Sequence[Mapping[str, Any]]) -> None:
    """Cells of one group differ only in :data:`CELL_KEYS`; else name the first difference."""
    from subspace_fsl.grid import training_settings
    from subspace_fsl.provenance import differences

    def shared(cfg: Mapping[str, Any]) -> dict[str, Any]:
        out = copy.deepcopy(training_settings(cfg))
        for section, key in CELL_KEYS:
            out.get(section, {}).pop(key, None)
        return out

    first = shared(cfgs[0])
    for cfg in cfgs[1:]:
        diff = differences(first, shared(cfg))
        if diff:
            raise ValueError(f"these runs cannot be trained together: {'; '.join(diff[:3])}")


class _Cell:
    """What a cell's :class:`CellRun` serialises: its own model, optimiser and scheduler
    (real torch objects, so ``checkpoint.pt`` is a single run's), the group's sampler."""

    def __init__(self, cfg: Mapping[str, Any], model: FewShotModel, prefix: str,
                 sampler: Any) -> None:
        self.model, self.sampler = model, sampler
        # over the whole model, as the single-run trainers (a frozen backbone gets no state)
        self.optimizer = build_optimizer(cfg, model)
        self.scheduler = build_scheduler(cfg, self.optimizer)
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.prefix = prefix  # the stacked module's place in the model ("head." when frozen)

    def position(self, name: str) -> int:
        """Index in the optimiser's parameter list of the stacked parameter ``name``."""
        return self.names.index(self.prefix + name)


class CellRun(TrainingRun):
    """One cell: TrainingRun's files, resume, tracking and signals; the group trains it."""

    group_accuracies: np.ndarray | None = None

    def val_accuracies(self) -> np.ndarray:
        """The group's head-only accuracies of this cell (frozen), else the single run's."""
        if self.group_accuracies is not None:
            return self.group_accuracies
        return super().val_accuracies()


class _Stack:
    """The trained parameters of C cells stacked ``[C, ...]``, their buffers, one optimiser."""

    def __init__(self, cfg: Mapping[str, Any], modules: Sequence[nn.Module],
                 cells: Sequence[_Cell]) -> None:
        self.template = copy.deepcopy(modules[0]).to("meta")
        params, buffers = stack_module_state(list(modules))
        self.params = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        self.buffers = {k: v.detach() for k, v in buffers.items()}
        holder = nn.ParameterList([nn.Parameter(v, requires_grad=True)
                                   for v in self.params.values()])
        self.params = dict(zip(self.params, holder, strict=True))
        # Adam's fused kernel: 40 cells of S = 8 on 1600-d features are 33M stacked weights,
        # updated 4x faster than by the default foreach path on 2 CPU cores (bench cellstep)
        self.optimizer = build_optimizer(cfg, holder, fused=True)
        self.scheduler = build_scheduler(cfg, self.optimizer)
        self._load_optimizer(cells)

    def _load_optimizer(self, cells: Sequence[_Cell]) -> None:
        first = cells[0].optimizer
        for group, source in zip(self.optimizer.param_groups, first.param_groups, strict=True):
            group.update({k: v for k, v in source.items() if k != "params"})
        if cells[0].scheduler is not None:
            self.scheduler.load_state_dict(cells[0].scheduler.state_dict())
        for name, stacked in self.params.items():
            per_cell = [c.optimizer.state.get(c.optimizer.param_groups[0]["params"]
                                              [c.position(name)], {}) for c in cells]
            if per_cell[0]:
                self.optimizer.state[stacked] = {
                    k: (torch.stack([s[k] for s in per_cell]) if _per_cell(v) else v.clone())
                    for k, v in per_cell[0].items()
                }

    def write_back(self, index: int, module: nn.Module, cell: _Cell) -> None:
        """Cell ``index``'s rows into its own module, optimiser and scheduler."""
        with torch.no_grad():
            named = dict(module.named_parameters())
            for k, v in self.params.items():
                named[k].copy_(v[index])
            for k, b in module.named_buffers():
                b.copy_(self.buffers[k][index])
        params = cell.optimizer.param_groups[0]["params"]
        for name, stacked in self.params.items():
            state = self.optimizer.state.get(stacked)
            if state:
                cell.optimizer.state[params[cell.position(name)]] = {
                    k: (v[index].clone() if _per_cell(v) else v.clone()) for k, v in state.items()
                }
        for group, source in zip(cell.optimizer.param_groups, self.optimizer.param_groups,
                                 strict=True):
            group.update({k: v for k, v in source.items() if k != "params"})
        if cell.scheduler is not None:
            cell.scheduler.load_state_dict(self.scheduler.state_dict())

    def keep(self, rows: Sequence[int]) -> None:
        """Drop every cell but ``rows`` (finished cells leave the stack: they stop changing)."""
        index = torch.as_tensor(list(rows), dtype=torch.long)
        new_params = {}
        for k, p in self.params.items():
            q = nn.Parameter(p.detach().index_select(0, index))
            state = self.optimizer.state.pop(p, None)
            if state:
                self.optimizer.state[q] = {
                    s: (v.index_select(0, index) if _per_cell(v) else v) for s, v in state.items()
                }
            new_params[k] = q
        self.optimizer.param_groups[0]["params"] = list(new_params.values())
        self.params = new_params
        self.buffers = {k: v.index_select(0, index) for k, v in self.buffers.items()}


def _per_cell(value: Any) -> bool:
    return isinstance(value, Tensor) and value.dim() > 0


def _cell_loss(template: nn.Module, params: dict[str, Tensor], buffers: dict[str, Tensor],
               lambdas: Tensor, inputs: tuple[Tensor, Tensor, Tensor], query_labels: Tensor
               ) -> tuple[Tensor, Tensor]:
    """One cell's L = CE + lambda1 L1 + lambda2 L2 and its (loss, acc, l1, l2)."""
    out = functional_call(template, (params, buffers), inputs)
    logits = out.logits.float()
    loss = (F.cross_entropy(logits, query_labels) + lambdas[0] * out.l1.float()
            + lambdas[1] * out.l2.float())
    accuracy = (logits.argmax(dim=1) == query_labels).float().mean()
    return loss, torch.stack([loss, accuracy, out.l1.float(), out.l2.float()]).detach()


def _stacked_losses(out: Any, lambdas: Tensor, query_labels: Tensor) -> tuple[Tensor, Tensor]:
    """Every cell's L_c = CE_c + lambda1_c L1_c + lambda2_c L2_c from a stacked head output
    (logits [C, Q, N], l1 / l2 [C]) and its ``[C, 4]`` (loss, acc, l1, l2)."""
    logits = out.logits.float()
    cells, queries = logits.shape[:2]
    ce = F.cross_entropy(logits.flatten(0, 1), query_labels.repeat(cells),
                         reduction="none").view(cells, queries).mean(dim=1)
    l1, l2 = out.l1.float(), out.l2.float()
    losses = ce + lambdas[:, 0] * l1 + lambdas[:, 1] * l2
    accuracy = (logits.argmax(dim=2) == query_labels).float().mean(dim=1)
    return losses, torch.stack([losses, accuracy, l1, l2], dim=1).detach()


class CellGroup:
    """C cells (their settings and run folders) trained together; see the module docstring."""

    def __init__(self, cfgs: Sequence[Mapping[str, Any]], out_dirs: Sequence[str | os.PathLike],
                 *, split_file: str | os.PathLike[str] | None = None,
                 cache_dir: str | os.PathLike[str] | None = None,
                 features_file: str | os.PathLike[str] | None = None,
                 restart_changed: bool = False) -> None:
        if len(cfgs) != len(out_dirs) or not cfgs:
            raise ValueError("a cell group needs one run folder per cell setting")
        check_group(cfgs)
        self.cfgs, self.outs = list(cfgs), [Path(p) for p in out_dirs]
        self.split_file, self.cache_dir = split_file, cache_dir
        self.features_file = features_file
        self.restart_changed = restart_changed
        from subspace_fsl.frozen_protocol import is_frozen

        self.frozen = is_frozen(self.cfgs[0])

    # --- the whole group ---------------------------------------------------------------------

    def run(self) -> list[dict[str, Any]]:
        """Train (resume, or only complete) every cell; their final metrics in order."""
        runs = [CellRun(c, o, split_file=self.split_file, cache_dir=self.cache_dir,
                        features_file=self.features_file, restart_changed=self.restart_changed)
                for c, o in zip(self.cfgs, self.outs, strict=True)]
        for run in runs:
            try:
                check_same_run(run.cfg, run.out)
            except SettingsChanged as exc:
                if not self.restart_changed:
                    raise
                run.start_afresh(str(exc))
            if run.frozen:  # the single run's check: current table, checkpoint made on it
                run.open_table()
        results: dict[int, dict[str, Any]] = {}
        with runs[0].signals as signals:
            for run in runs:
                run.signals = signals  # one SIGTERM handler for the process
            todo = []
            for i, run in enumerate(runs):
                done = run.finished()
                if done is None:
                    todo.append(i)
                else:
                    results[i] = done
            for episode in sorted({_saved_episode(runs[i].out) for i in todo}):
                part = [i for i in todo if _saved_episode(runs[i].out) == episode]
                results.update(self._train([runs[i] for i in part], part))
        return [results[i] for i in range(len(runs))]

    def _train(self, runs: list[CellRun], indices: list[int]) -> dict[int, dict[str, Any]]:
        try:
            self._setup(runs)
            return dict(zip(indices, self._loop(runs), strict=True))
        except BaseException as exc:
            for run in runs:
                if not (run.out / "done").is_file():
                    run._stopped_by(exc)
            raise

    # --- setup: shared data and episodes, one model per cell, the stack ---------------------

    def _setup(self, runs: list[CellRun]) -> None:
        from subspace_fsl import tracking
        from subspace_fsl.data.episodes import EpisodeLoader, EpisodeSampler
        from subspace_fsl.engine.data import EngineData, open_data, place_cache
        from subspace_fsl.engine.evaluate import evaluation_plan
        from subspace_fsl.runtime import configure, place_model

        cfg = runs[0].cfg
        settings = cfg["train"]
        self.runtime = runtime = configure(cfg)
        if self.frozen:
            from subspace_fsl.engine.data import resolve_split

            self.table = runs[0].table.to(runtime.device)
            cache = self.table.as_cache()
            split, path = resolve_split(cfg, self.split_file, list(cache.class_names))
            data = EngineData(cache=cache, split=split, split_file=path)
        else:
            data = open_data(cfg, split_file=self.split_file, cache_dir=self.cache_dir)
        sampler = EpisodeSampler(data.labels, data.split_classes("base"), settings["way"],
                                 settings["shot"], settings["query"], settings["seed"])
        val_plan = evaluation_plan(cfg, data, "val", episodes=settings["val_episodes"])
        if cfg["tracking"]["enabled"]:
            tracking.tracking_uri(cfg)
        start_rng = None
        self.models: list[FewShotModel] = []
        self.cells: list[_Cell] = []
        for run in runs:  # each cell built as it would be alone (same seed: same init)
            seed_everything(settings["seed"])
            model = build_model(run.cfg)
            check_training_config(run.cfg, data, model)
            if settings["init"] == "pretrained" and not (run.out / CHECKPOINT).is_file():
                from subspace_fsl import paths
                from subspace_fsl.engine.pretrain import load_pretrained_backbone

                load_pretrained_backbone(run.cfg, model.backbone,
                                         paths.pretrained_backbone(run.cfg))
            if self.frozen:  # as engine.train.FeatureEpisodeTrainer: the backbone never runs
                model.backbone.requires_grad_(False)
            model = place_model(model, runtime)
            if self.frozen:
                model.backbone.eval()
            start_rng = start_rng or _rng()
            cell = _Cell(run.cfg, model, "head." if self.frozen else "", sampler)
            run.runtime, run.data, run.model, run.trainer = runtime, data, model, cell
            run.feature_dim, run.val_plan = model.feature_dim, val_plan
            self.models.append(model)
            self.cells.append(cell)
        _set_rng(start_rng)
        for run in runs:
            run.resume()  # weights, optimiser, scheduler, sampler, RNG (equal in a sub-group)
        self.sampler, self.data, self.val_plan = sampler, data, val_plan
        if not self.frozen:
            place_cache(data, runtime)
            self.loader = EpisodeLoader(data, runtime.device, settings["augment"],
                                        runtime.channels_last)
        self.flip = self.models[0].flips(settings["shot"])
        self.stack = _Stack(cfg, [self._trained(m) for m in self.models], self.cells)
        # a head written with a cell dimension (MultiSubspaceHead.forward_cells) trains the
        # stack in one batched pass; others (and the whole model when fine-tuned) use vmap
        self.cell_head = (self.frozen and bool(self.stack.params)
                          and hasattr(self.stack.template, "forward_cells"))
        self.lambdas = torch.tensor([[r.settings["lambda1"], r.settings["lambda2"]] for r in runs],
                                    dtype=torch.float32, device=runtime.device)
        for run in runs:
            run.out.mkdir(parents=True, exist_ok=True)
            save_config(run.cfg, run.out / "config.yaml")
            run.start_tracking()

    def _trained(self, model: FewShotModel) -> nn.Module:
        """What a cell trains: the head (frozen) or backbone + head (finetune)."""
        return model.head if self.frozen else model

    # --- one episode for every cell ----------------------------------------------------------

    def _episode(self) -> tuple[tuple[Tensor, Tensor, Tensor], Tensor]:
        """The shared episode's (support, support labels, query) inputs and query labels."""
        device = self.runtime.device
        episode = self.sampler.sample()
        labels = torch.as_tensor(episode.support_labels, device=device)
        query_labels = torch.as_tensor(episode.query_labels, device=device)
        if self.frozen:
            n = len(episode.support_idx) + len(episode.query_idx)
            mask = (torch.rand(n) < 0.5) if self.cfgs[0]["train"]["augment"] == "flip" else None
            support, query = self.table.episode(episode.support_idx, episode.query_idx, mask,
                                                mirror_support=self.flip)
            if self.flip:
                labels = torch.cat([labels, labels])
        else:
            support, query = self.loader(episode)
            if self.flip:
                support, labels = with_mirrored_support(support, labels)
        return (support, labels, query), query_labels

    def step(self, active: int) -> Tensor:
        """One optimiser step of every active cell on one episode; ``[C, 4]`` values."""
        inputs, query_labels = self._episode()
        stack = self.stack
        if not stack.params:  # nothing trains (a fixed-tau baseline on frozen features)
            with torch.no_grad():
                return vmap(lambda b, lam: _cell_loss(stack.template, {}, b, lam, inputs,
                                                      query_labels)[1],
                            randomness="same")(stack.buffers, self.lambdas[:active])
        if self.cell_head:  # the head has a cell dimension: one batched pass and backward
            with torch.autocast(device_type=self.runtime.device.type, enabled=False):
                out = stack.template.forward_cells({**stack.buffers, **stack.params}, *inputs)
                losses, values = _stacked_losses(out, self.lambdas[:active], query_labels)
                # the cells share no parameter, so d(sum_c L_c)/d theta_c = dL_c/d theta_c
                losses.sum().backward()
        else:
            per_cell = vmap(
                grad(lambda p, b, lam: _cell_loss(stack.template, p, b, lam, inputs,
                                                  query_labels), has_aux=True),
                in_dims=(0, 0, 0), randomness="same",
            )
            with torch.autocast(device_type=self.runtime.device.type, enabled=False):
                grads, values = per_cell({k: v.detach() for k, v in stack.params.items()},
                                         stack.buffers, self.lambdas[:active])
            for k, p in stack.params.items():
                p.grad = grads[k]
        stack.optimizer.step()
        stack.optimizer.zero_grad(set_to_none=True)
        return values

    def head_accuracies(self) -> Tensor:
        """``[C, E]`` accuracy of every active cell's head on the validation episodes (stored
        features), one vmap over cells per episode."""
        stack, device = self.stack, self.runtime.device
        rows = []
        with torch.no_grad():
            for episode in self.val_plan:
                support, query = self.table.episode(episode.support_idx, episode.query_idx,
                                                    mirror_support=self.flip)
                labels = torch.as_tensor(episode.support_labels, device=device)
                if self.flip:
                    labels = torch.cat([labels, labels])
                query_labels = torch.as_tensor(episode.query_labels, device=device)
                if self.cell_head:
                    logits = stack.template.forward_cells(
                        {**stack.buffers, **stack.params}, support, labels, query).logits
                    rows.append((logits.argmax(dim=2) == query_labels).double().mean(dim=1))
                    continue

                def accuracy(p: dict, b: dict, s=support, y=labels, q=query, yq=query_labels):
                    logits = functional_call(stack.template, (p, b), (s, y, q)).logits
                    return (logits.argmax(dim=1) == yq).double().mean()

                rows.append(vmap(accuracy, randomness="same")(
                    {k: v.detach() for k, v in stack.params.items()}, stack.buffers))
        return torch.stack(rows, dim=1) if rows else torch.zeros(len(self.models), 0)

    def _finish(self, runs: list[CellRun], active: list[int], results: dict[int, Any],
                finished: list[int]) -> list[int]:
        """Finish the ``finished`` cells (final files, done) and drop them from the stack."""
        for i in finished:
            results[i] = runs[i].finish()
        keep = [row for row, i in enumerate(active) if i not in finished]
        if finished and keep:
            self.stack.keep(keep)
            self.lambdas = self.lambdas[keep]
        return [active[row] for row in keep]

    # --- the loop ----------------------------------------------------------------------------

    def _loop(self, runs: list[CellRun]) -> list[dict[str, Any]]:
        settings = runs[0].settings
        max_episodes = settings["max_episodes"]
        active = list(range(len(runs)))  # row r of the stack is cell active[r]
        for run in runs:
            run.progress = Progress("none", max_episodes, run.state["episode"],
                                    settings["log_every"])
        progress = Progress(self.runtime.progress, max_episodes, runs[0].state["episode"],
                            settings["log_every"])
        results: dict[int, dict[str, Any]] = {}
        # resumed cells already stopped (killed before their done marker) finish first
        active = self._finish(runs, active, results,
                              [i for i in active if runs[i].state["stopped"] is not None
                               or runs[i].state["episode"] >= max_episodes])
        start = runs[active[0]].state["episode"] + 1 if active else max_episodes + 1
        for episode in range(start, max_episodes + 1):
            values = self.step(len(active)).tolist()
            lr = self.stack.optimizer.param_groups[0]["lr"]
            if self.stack.scheduler is not None:
                self.stack.scheduler.step()
            for row, i in enumerate(active):
                run = runs[i]
                numbers = dict(zip(("loss", "acc", "l1", "l2"), values[row], strict=True))
                if not all(math.isfinite(v) for v in numbers.values()):
                    raise FloatingPointError(
                        f"{run.out}: non-finite training values {numbers} at episode "
                        f"{episode}; lower train.lr={settings['lr']} or the lambdas")
                run.window.add(numbers)
                run.state["episode"] = episode
            validate = episode % settings["val_every"] == 0 or episode == max_episodes
            checkpoint = validate or episode % settings["checkpoint_every"] == 0
            if validate or checkpoint or episode % settings["log_every"] == 0:
                accuracies = self.head_accuracies().cpu().numpy() if (
                    validate and self.frozen) else None
                for row, i in enumerate(active):
                    self.stack.write_back(row, self._trained(self.models[i]), self.cells[i])
                    if accuracies is not None:
                        runs[i].group_accuracies = accuracies[row]
                    if validate or episode % settings["log_every"] == 0:
                        runs[i].record(episode, lr, validate)
                    if checkpoint:
                        runs[i].checkpoint()
            progress.update(episode, {"loss": values[0][0],
                                      "val": runs[active[0]].last_val})
            finished = [i for i in active if runs[i].state["stopped"] is not None
                        or episode == max_episodes]
            active = self._finish(runs, active, results, finished)
            if not active:
                break
        progress.close()
        return [results[i] for i in range(len(runs))]


def _saved_episode(out: Path) -> int:
    if not (out / CHECKPOINT).is_file():
        return 0
    return int(load_checkpoint(out / CHECKPOINT, map_location="cpu")["episode"])


def _rng() -> Any:
    from subspace_fsl.engine.checkpoint import rng_state

    return rng_state()


def _set_rng(state: Any) -> None:
    set_rng_state(state)


def train_cells(cfgs: Sequence[Mapping[str, Any]], out_dirs: Sequence[str | os.PathLike],
                **options: Any) -> list[dict[str, Any]]:
    """Train the cells of one group together into their run folders (see the module
    docstring); the final metrics of each (its ``train_summary.json``)."""
    return CellGroup(cfgs, out_dirs, **options).run()
