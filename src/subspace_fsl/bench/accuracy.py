"""Cross-library accuracy check: this project's ProtoNet against easyfsl's, a test that can fail.

Both are trained and evaluated on the same data, episodes and budget, by one process:

- the same images: a synthetic set in CUB's layout (default) or a CUB-layout folder
  (``--root``), decoded once into this project's image cache; a random class split into
  base / validation / novel classes (``--counts``);
- the same training episodes: one ``EpisodeSampler`` seed, no augmentation for either, the
  same number of episodes (``--episodes``), Adam at ``--lr``, and the same initial Conv-4
  weights (``torch.manual_seed`` before each backbone is built; checked);
- **easyfsl 1.5.0's** ``PrototypicalNetworks`` as its tutorial trains it
  (``process_support_set`` then ``model(query)``, ``CrossEntropyLoss`` on its scores
  ``-torch.cdist(query, prototypes)``: the plain Euclidean distance at temperature 1);
- **this project's ProtoNet** trained by the engine's own ``EpisodeTrainer`` at every setting
  of its validation grid (``--tau`` x ``--distance`` x ``--embed``, by default the schema's
  ``grid.baselines.protonet.grid``), one setting chosen on the validation classes by the
  workflow's rule (``subspace_fsl.selection``: best validation accuracy, ties to the simpler
  setting);
- both evaluated on the same ``--eval-episodes`` novel-class episodes (``episode_plan`` with
  one seed). The paired per-episode difference (project - easyfsl) with its 95% CI
  (``subspace_fsl.stats.paired_compare``) decides: the bar is met when the CI is not
  entirely below 0. The exit status is 1 when it is missed.

``python -m subspace_fsl.bench accuracy [--root CUB_200_2011] [--json PATH] ...``
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

DEFAULT_JSON = Path("results/bench/accuracy.json")


# --- data ------------------------------------------------------------------------------------


def engine_data(args: argparse.Namespace, work: Path) -> Any:
    """The images as ``EngineData`` with a random base / validation / novel class split."""
    from subspace_fsl.data.cache import ImageCache, build_cache, source_stamp
    from subspace_fsl.data.cub import read_cub
    from subspace_fsl.data.splits import make_split
    from subspace_fsl.data.synth import generate
    from subspace_fsl.engine.data import EngineData

    if args.root is not None:
        root = Path(args.root)
    else:
        root = generate(work / "synthetic", args.classes, args.images_per_class,
                        args.synth_size, args.data_seed, workers=args.threads, progress=False)
    records = read_cub(root)
    cache_dir = build_cache(records, work / "cache", args.size, None, False,
                            source_stamp(records, root), root=root, workers=args.threads,
                            progress=False)
    cache = ImageCache.open(cache_dir)
    names = [str(n) for n in cache.class_names]
    split = make_split(names, "random", args.counts, args.data_seed)
    return EngineData(cache=cache, split=split)


# --- the two models --------------------------------------------------------------------------


def project_config(args: argparse.Namespace, tau: float, learn_tau: bool,
                   distance: str, embed: str = "joint") -> dict[str, Any]:
    """The project's ProtoNet run at one grid setting, everything else shared."""
    from subspace_fsl.config import load_config

    return load_config(None, [
        f"dataset.image_size={args.size}", f"model.backbone={args.backbone}",
        "model.head=protonet", f"model.tau={tau}", f"model.learn_tau={str(learn_tau).lower()}",
        f"model.distance={distance}", f"model.embed={embed}", f"train.way={args.way}",
        f"train.shot={args.shot}",
        f"train.query={args.query}", f"train.max_episodes={args.episodes}",
        f"train.lr={args.lr}", "train.lr_schedule=none", "train.augment=none",
        f"train.seed={args.seed}", f"eval.query={args.eval_query}",
        f"eval.episodes={args.eval_episodes}", f"eval.seed={args.eval_seed}",
        "runtime.device=cpu", "runtime.progress=none", "runtime.channels_last=false",
        f"runtime.threads={args.threads}", "tracking.enabled=false",
    ])


def initial_weights(model: torch.nn.Module) -> torch.Tensor:
    """All parameters of a backbone, flattened (to check both start from the same ones)."""
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def train_project(cfg: dict[str, Any], data: Any) -> tuple[Any, dict[str, Any]]:
    """The engine's own training steps (``EpisodeTrainer``) for ``train.max_episodes``."""
    from subspace_fsl.engine.model import build_model
    from subspace_fsl.engine.train import EpisodeTrainer, episode_tensors, train_step
    from subspace_fsl.runtime import configure

    runtime = configure(cfg)
    torch.manual_seed(cfg["train"]["seed"])
    model = build_model(cfg)
    start = initial_weights(model.backbone)
    trainer = EpisodeTrainer(cfg, data, model, runtime)
    losses, classes = [], []
    started = time.perf_counter()
    for _ in range(cfg["train"]["max_episodes"]):
        episode = trainer.sampler.sample()
        classes.append(episode.classes.tolist())
        # EpisodeTrainer.step() with the episode kept (to check both saw the same ones)
        tensors = episode_tensors(trainer.loader, episode, runtime.device)
        values = train_step(trainer.step_model, trainer.optimizer, *tensors, 0.0, 0.0, runtime)
        losses.append(values["loss"])
    return trainer.model, {"seconds": time.perf_counter() - started, "losses": losses,
                           "episode_classes": classes, "start": start,
                           "tau": float(trainer.model.head.tau.detach())}


def train_easyfsl(cfg: dict[str, Any], data: Any, args: argparse.Namespace
                  ) -> tuple[Any, dict[str, Any]]:
    """easyfsl's ``PrototypicalNetworks`` and its tutorial's training step, on the episodes
    of the same sampler (seed ``train.seed``) and loader as the project's run."""
    from easyfsl.methods import PrototypicalNetworks

    from subspace_fsl.backbones import build_backbone
    from subspace_fsl.data.episodes import EpisodeLoader, EpisodeSampler

    settings = cfg["train"]
    torch.manual_seed(settings["seed"])
    model = PrototypicalNetworks(build_backbone(args.backbone))
    start = initial_weights(model.backbone)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings["lr"])
    loss_function = torch.nn.CrossEntropyLoss()
    sampler = EpisodeSampler(data.labels, data.split_classes("base"), settings["way"],
                             settings["shot"], settings["query"], settings["seed"])
    loader = EpisodeLoader(data, "cpu", augment="none")
    model.train()
    losses, classes = [], []
    started = time.perf_counter()
    for _ in range(settings["max_episodes"]):
        episode = sampler.sample()
        classes.append(episode.classes.tolist())
        support, query = loader(episode)
        # the tutorial's training_epoch, line by line
        optimizer.zero_grad()
        model.process_support_set(support, torch.as_tensor(episode.support_labels))
        scores = model(query)
        loss = loss_function(scores, torch.as_tensor(episode.query_labels))
        loss.backward()
        optimizer.step()
        losses.append(float(loss.item()))
    return model, {"seconds": time.perf_counter() - started, "losses": losses,
                   "episode_classes": classes, "start": start}


def easyfsl_accuracies(model: Any, data: Any, plan: list[Any], batch_size: int = 256
                       ) -> np.ndarray:
    """easyfsl's evaluation of each episode (as ``evaluate_on_one_task``: the argmax of its
    scores) on the plan's images, loaded exactly as for the project's model.

    In eval mode the backbone is a fixed function (batch norm uses its running statistics),
    so every image is embedded once by easyfsl's trained backbone and easyfsl's own
    ``process_support_set`` / ``forward`` score each episode on those features (an
    ``nn.Identity`` backbone): the same predictions as re-embedding every episode, at a
    fraction of the cost.
    """
    from easyfsl.methods import PrototypicalNetworks

    from subspace_fsl.data.episodes import EpisodeLoader

    needed = np.unique(np.concatenate([np.concatenate([e.support_idx, e.query_idx])
                                       for e in plan]))
    loader = EpisodeLoader(data, "cpu", augment="none")
    model.eval()
    with torch.no_grad():
        features = torch.cat([model.backbone(loader.load(needed[i:i + batch_size]))
                              for i in range(0, len(needed), batch_size)])
        row_of = {int(index): row for row, index in enumerate(needed)}
        scorer = PrototypicalNetworks(torch.nn.Identity()).eval()
        out = []
        for episode in plan:
            support = features[[row_of[int(i)] for i in episode.support_idx]]
            query = features[[row_of[int(i)] for i in episode.query_idx]]
            scorer.process_support_set(support, torch.as_tensor(episode.support_labels))
            predicted = scorer(query).argmax(dim=1)
            out.append((predicted == torch.as_tensor(episode.query_labels)).double().mean())
    return torch.stack(out).numpy()


def project_accuracies(model: Any, cfg: dict[str, Any], data: Any, plan: list[Any]
                       ) -> np.ndarray:
    """The engine's evaluation (features embedded once, the head per episode)."""
    from subspace_fsl.engine.evaluate import episode_accuracies
    from subspace_fsl.runtime import configure

    return episode_accuracies(model, data, plan, cfg["eval"]["batch_size"], configure(cfg))


# --- the verdict -----------------------------------------------------------------------------


def verdict(ours: np.ndarray, theirs: np.ndarray) -> dict[str, Any]:
    """Paired difference ours - theirs (percentage points) and whether the bar is met:
    the 95% CI of the mean difference is not entirely below 0 (mean + half-width >= 0)."""
    from subspace_fsl import stats

    r = stats.paired_compare(ours, theirs)
    diff, half = 100 * r.mean_diff, 100 * r.ci95
    return {"mean_diff": diff, "ci95": half, "low": diff - half, "high": diff + half,
            "p_wilcoxon": r.p_wilcoxon, "p_ttest": r.p_ttest, "n_episodes": r.n,
            "bar_met": bool(diff + half >= 0)}


def choose(val_rows: list[dict[str, Any]]) -> pd.Series:
    """The workflow's rule (``selection.select``) over the grid's validation episodes."""
    from subspace_fsl.selection import select

    return select(pd.DataFrame(val_rows), "protonet").query("best_s").iloc[0]


def grid_settings(args: argparse.Namespace) -> list[tuple[float, bool, str, str]]:
    from subspace_fsl.grid import tau_setting

    return [(*tau_setting(t), d, e) for t in args.tau for d in args.distance
            for e in args.embed]


def _tau_value(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def default_grid() -> dict[str, list[Any]]:
    """The schema's grid for the protonet baseline (what the workflow searches)."""
    from subspace_fsl.config import load_schema

    baselines = load_schema()["properties"]["grid"]["properties"]["baselines"]["default"]
    return dict(baselines["protonet"]["grid"])


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from subspace_fsl.engine.evaluate import evaluation_plan
    from subspace_fsl.paths import format_number

    started = time.perf_counter()
    data = engine_data(args, work)
    settings = grid_settings(args)
    configs = {s: project_config(args, *s) for s in settings}
    reference = next(iter(configs.values()))
    val_plan = evaluation_plan(reference, data, "val", episodes=args.val_episodes)
    novel_plan = evaluation_plan(reference, data, "novel")

    print(f"easyfsl PrototypicalNetworks: training {args.episodes} episodes...", flush=True)
    peer, peer_log = train_easyfsl(reference, data, args)
    peer_val = easyfsl_accuracies(peer, data, val_plan)
    peer_novel = easyfsl_accuracies(peer, data, novel_plan)

    trained, val_rows, runs = {}, [], []
    for (tau, learn, distance, embed), cfg in configs.items():
        label = f"tau={'learn:' if learn else ''}{format_number(tau)}, {distance}, {embed}"
        model, log = train_project(cfg, data)
        if not torch.equal(log["start"], peer_log["start"]):
            raise RuntimeError("the two backbones did not start from the same weights")
        if log["episode_classes"] != peer_log["episode_classes"]:
            raise RuntimeError("the two models were not trained on the same episodes")
        val = project_accuracies(model, cfg, data, val_plan)
        trained[(tau, learn, distance, embed)] = (model, cfg)
        val_rows += [{"method": "protonet", "split": "val", "way": args.way,
                      "shot": args.shot, "n_subspaces": 1, "lambda1": 0.0, "lambda2": 0.0,
                      "tau": tau, "learn_tau": learn, "distance": distance, "embed": embed,
                      "augment": "none", "seed": args.seed,
                      "episode": i, "accuracy": a} for i, a in enumerate(val)]
        runs.append({"setting": label, "tau": tau, "learn_tau": learn, "distance": distance,
                     "embed": embed,
                     "val_accuracy": 100 * float(val.mean()), "final_tau": log["tau"],
                     "loss_first": log["losses"][0], "loss_last10": float(
                         np.mean(log["losses"][-10:])), "train_s": log["seconds"]})
        print(f"  project ProtoNet {label:<38} val {100 * val.mean():6.2f} %  "
              f"(loss {log['losses'][0]:.2f} -> {runs[-1]['loss_last10']:.2f}, "
              f"{log['seconds']:.0f} s)", flush=True)
    best = choose(val_rows)
    key = (float(best["tau"]), bool(best["learn_tau"]), str(best["distance"]),
           str(best["embed"]))
    model, cfg = trained[key]
    ours_novel = project_accuracies(model, cfg, data, novel_plan)
    result = verdict(ours_novel, peer_novel)
    fixed_key = (1.0, False, "squared", "joint")  # the project's old fixed setting
    fixed = None
    if fixed_key in trained and fixed_key != key:
        fixed_model, fixed_cfg = trained[fixed_key]
        fixed = verdict(project_accuracies(fixed_model, fixed_cfg, data, novel_plan),
                        peer_novel)
    same_key = (1.0, False, "euclidean", "separate")  # easyfsl's form and convention
    same_form = None
    if same_key in trained and same_key != key:
        same_model, same_cfg = trained[same_key]
        same_form = verdict(project_accuracies(same_model, same_cfg, data, novel_plan),
                            peer_novel)
    from subspace_fsl import stats

    return {
        "setting": {
            "data": f"{len(data.labels)} images of {len(data.cache.class_names)} classes "
                    f"from {args.root or 'a synthetic CUB-layout set'}; split "
                    f"{len(data.split['base'])} base / {len(data.split['val'])} val / "
                    f"{len(data.split['novel'])} novel classes",
            "backbone": args.backbone, "size": args.size, "way": args.way, "shot": args.shot,
            "query": args.query, "eval_query": args.eval_query, "episodes": args.episodes,
            "lr": args.lr, "val_episodes": args.val_episodes,
            "eval_episodes": args.eval_episodes, "threads": args.threads,
            "torch": torch.__version__, "easyfsl": _easyfsl_version(),
        },
        "easyfsl": {"val_accuracy": 100 * float(peer_val.mean()),
                    "novel": [100 * v for v in stats.mean_ci(peer_novel)],
                    "loss_first": peer_log["losses"][0],
                    "loss_last10": float(np.mean(peer_log["losses"][-10:])),
                    "train_s": peer_log["seconds"]},
        "project_grid": runs,
        "chosen": {"setting": runs[settings.index(key)]["setting"],
                   "budget": int(best["budget"]),
                   "novel": [100 * v for v in stats.mean_ci(ours_novel)]},
        "paired": result,
        "novel_episodes": {"easyfsl": peer_novel.tolist(), "project": ours_novel.tolist()},
        "paired_fixed_tau1_squared": fixed,
        "paired_same_form_as_easyfsl": same_form,
        "seconds": time.perf_counter() - started,
    }


def _easyfsl_version() -> str:
    from importlib.metadata import version

    return version("easyfsl")


def report(results: dict[str, Any]) -> str:
    s, peer, chosen, paired = (results["setting"], results["easyfsl"], results["chosen"],
                               results["paired"])
    lines = [
        f"{s['backbone']} at {s['size']} px, {s['way']}-way {s['shot']}-shot, {s['query']} "
        f"queries per class, {s['episodes']} training episodes (Adam {s['lr']:g}, no "
        f"augmentation), {s['threads']} threads, torch {s['torch']}, easyfsl {s['easyfsl']}",
        f"data: {s['data']}",
        f"validation: {s['val_episodes']} episodes; novel: {s['eval_episodes']} episodes, "
        f"{s['eval_query']} queries per class, identical for both",
        "",
        f"  easyfsl PrototypicalNetworks (-cdist, tau 1)   val {peer['val_accuracy']:6.2f} %   "
        f"novel {peer['novel'][0]:6.2f} ± {peer['novel'][1]:.2f} %",
        f"  project ProtoNet, chosen on validation: {chosen['setting']} (best of "
        f"{chosen['budget']})",
        f"{'':47}novel {chosen['novel'][0]:6.2f} ± {chosen['novel'][1]:.2f} %",
        "",
        f"paired difference, project - easyfsl, on {paired['n_episodes']} identical novel "
        f"episodes: {paired['mean_diff']:+.2f} ± {paired['ci95']:.2f} points "
        f"(95% CI [{paired['low']:+.2f}, {paired['high']:+.2f}]; Wilcoxon p = "
        f"{paired['p_wilcoxon']:.2g})",
    ]
    fixed = results.get("paired_fixed_tau1_squared")
    if fixed is not None:
        lines.append(f"  (the project's old fixed setting, tau = 1 squared: "
                     f"{fixed['mean_diff']:+.2f} ± {fixed['ci95']:.2f} points)")
    same_form = results.get("paired_same_form_as_easyfsl")
    if same_form is not None:
        lines.append(f"  (the project at easyfsl's own form, tau = 1 euclidean, separate passes: "
                     f"{same_form['mean_diff']:+.2f} ± {same_form['ci95']:.2f} points)")
    mark = "met" if paired["bar_met"] else "MISSED"
    lines += ["", f"bar (the project's ProtoNet no worse than easyfsl's: the paired CI not "
                  f"entirely below 0): {mark}",
              f"({results['seconds']:.0f} s in all)"]
    return "\n".join(lines)


# --- main ------------------------------------------------------------------------------------


def parse(argv: list[str] | None) -> argparse.Namespace:
    grid = default_grid()
    parser = argparse.ArgumentParser(prog="python -m subspace_fsl.bench accuracy",
                                     description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--root", type=Path, default=None, help="a data set in CUB's layout (default: synthetic)")
    add("--classes", type=int, default=30, help="synthetic classes")
    add("--images-per-class", type=int, default=30, help="synthetic images per class")
    add("--synth-size", type=int, default=84, help="synthetic JPEG side")
    add("--counts", type=float, nargs=3, default=[14, 8, 8],
        help="base / validation / novel class counts (or fractions)")
    add("--data-seed", type=int, default=0, help="synthetic data and class split seed")
    add("--size", type=int, default=48, help="image side the networks see")
    add("--backbone", default="conv4")
    add("--way", type=int, default=5)
    add("--shot", type=int, default=5)
    add("--query", type=int, default=6, help="training queries per class")
    add("--eval-query", type=int, default=15)
    add("--episodes", type=int, default=150, help="training episodes of each model")
    add("--lr", type=float, default=1e-3)
    add("--seed", type=int, default=0, help="training seed (weights and episodes)")
    add("--val-episodes", type=int, default=100)
    add("--eval-episodes", type=int, default=300)
    add("--eval-seed", type=int, default=2024)
    add("--tau", type=_tau_value, nargs="+", default=grid.get("tau", [1]),
        help="the project's temperature grid (numbers, learn, learn:<tau0>)")
    add("--distance", nargs="+", choices=["squared", "euclidean"],
        default=grid.get("distance", ["squared"]), help="the project's distance forms")
    add("--embed", nargs="+", choices=["joint", "separate"],
        default=grid.get("embed", ["joint"]),
        help="the project's training batch-norm conventions (model.embed)")
    add("--threads", type=int, default=None, help="torch threads (default: the cores given)")
    add("--json", type=Path, default=DEFAULT_JSON)
    add("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        import easyfsl  # noqa: F401
    except ImportError:
        print("easyfsl is not installed: pip install -e '.[bench]'")
        return 2
    from subspace_fsl.runtime import cores_given

    args.threads = args.threads or cores_given()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-accuracy-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        results = run(args, work)
    print()
    print(report(results))
    from subspace_fsl.config import atomic_write_text

    atomic_write_text(args.json, json.dumps(results, indent=2, default=str) + "\n")
    print(f"\nwritten to {args.json}")
    return 0 if results["paired"]["bar_met"] else 1
