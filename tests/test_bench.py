"""The performance benchmarks' own machinery: the easyfsl shim, the FLOP count of a training
step against an analytic count, the memory figures of a mapped vs a copied cache, and a tiny
end-to-end peer run (easyfsl included) whose JSON is checked; the cross-library accuracy check
(bench accuracy): easyfsl's scores against the project's ProtoNet head, its verdict, a tiny run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Sampler

from subspace_fsl.bench import memory, peer
from subspace_fsl.bench._common import every_class_data
from subspace_fsl.config import load_config
from subspace_fsl.data.cache import ImageCache
from subspace_fsl.engine.data import EngineData


class _TaskSamplerLike(Sampler):
    """What easyfsl 1.5.0's TaskSampler.__init__ does first."""

    def __init__(self) -> None:
        super().__init__(data_source=None)


def test_the_task_sampler_shim_lets_the_old_call_through_and_restores_torch() -> None:
    original = Sampler.__init__
    with pytest.raises(TypeError):  # torch >= 2.2: Sampler.__init__ takes no data_source
        _TaskSamplerLike()
    with peer.task_sampler_shim() as applied:
        assert applied
        _TaskSamplerLike()
    assert Sampler.__init__ is original
    with pytest.raises(TypeError):
        _TaskSamplerLike()


def test_easyfsl_task_sampler_builds_under_the_shim(tmp_path: Path) -> None:
    from easyfsl.datasets import EasySet
    from easyfsl.samplers import TaskSampler
    from PIL import Image

    roots = []
    for c in range(3):
        folder = tmp_path / f"class_{c}"
        folder.mkdir()
        for i in range(4):
            Image.new("RGB", (20, 20), (80 * c, 10 * i, 0)).save(folder / f"{i}.jpg")
        roots.append(str(folder))
    specs = tmp_path / "specs.json"
    specs.write_text(json.dumps({"class_names": ["a", "b", "c"], "class_roots": roots}))
    images = EasySet(specs, image_size=16)
    with peer.task_sampler_shim():
        sampler = TaskSampler(images, n_way=2, n_shot=1, n_query=2, n_tasks=3)
    episodes = list(sampler)
    assert len(episodes) == 3 and all(len(e) == 2 * 3 for e in episodes)


def _conv4_step_flops(images: int, side: int) -> float:
    """Analytic FLOPs of Conv-4's forward + backward (2 per multiply-add): each conv's
    forward and weight gradient, and the input gradient of every conv but the first."""
    forward, input_grads = 0.0, 0.0
    for layer, channels_in in enumerate((3, 64, 64, 64)):
        flops = 2 * channels_in * 64 * 9 * side * side
        forward += flops
        input_grads += flops if layer > 0 else 0
        side //= 2
    return images * (2 * forward + input_grads)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> EngineData:
    cache = memory.write_random_cache(tmp_path_factory.mktemp("bench") / "cache", 120, 6, 32)
    return every_class_data(ImageCache.open(cache))


def test_step_flops_equal_the_analytic_conv4_count_plus_a_small_head(tiny_data) -> None:
    cfg = load_config(None, ["dataset.image_size=32", "model.head=protonet", "train.way=2",
                             "train.shot=2", "train.query=3", "runtime.device=cpu",
                             "runtime.threads=1", "runtime.progress=none"])
    counted = peer.step_flops(cfg, tiny_data)
    analytic = _conv4_step_flops(images=2 * (2 + 3), side=32)
    assert analytic <= counted <= 1.01 * analytic  # the head's distances are ~0.1%
    rate = peer.sustained_rate(cfg, batch=8, repeats=2)
    assert rate["flops"] == pytest.approx(_conv4_step_flops(8, 32), rel=1e-9)
    assert rate["rate"] > 0


def test_a_copied_cache_costs_private_memory_a_mapped_one_does_not(tmp_path: Path) -> None:
    args = memory.parse(["--images", "4000", "--classes", "20", "--size", "48",
                         "--episodes", "2", "--threads", "1"])
    mapped, copied = memory.compare(args)
    assert not mapped["cache_copied"] and copied["cache_copied"]
    cache_mib = 4000 * 3 * 48 * 48 / 2**20
    assert mapped["cache_mib"] == pytest.approx(cache_mib)
    # the copy shows up as private memory at set-up; the mapped pages are all shared
    assert copied["set_up_private"] - mapped["set_up_private"] > 0.8 * cache_mib
    assert mapped["map_private"] == 0 and mapped["map_shared"] > 0
    assert mapped["peak_rss"] >= mapped["rss_anon"] > 0


def test_targets_compare_the_slower_head_with_the_peer_and_the_floor() -> None:
    results = {
        "training": {"easyfsl": {"episodes_per_s": 1.0}, "protonet": {"episodes_per_s": 3.0},
                     "multisubspace": {"episodes_per_s": 2.5}},
        "evaluation": {"easyfsl": {"seconds": 300.0}, "protonet": {"seconds": 10.0},
                       "multisubspace": {"seconds": 20.0}},
        "floor": {"episodes_per_s": 3.2},
        "setting": {"backbone": "conv4"},
    }
    checks = dict(peer.targets(results))
    assert checks == {
        "training within 1.2x of the floor: 1.28x": False,
        "training >= 2.0 episodes/s: 2.50": True,
        "training >= 2.6x easyfsl: 2.50x": False,
        "evaluation >= 20.0x easyfsl: 15.0x": False,
    }
    # the episodes/s target is Conv-4's; other backbones are held to the floor only
    results["setting"]["backbone"] = "resnet12"
    assert "training >= 2.0 episodes/s: 2.50" not in peer.targets(results)


def test_a_tiny_peer_run_writes_every_figure(tmp_path: Path, capsys) -> None:
    out = tmp_path / "peer.json"
    code = peer.main([
        "--classes", "6", "--images-per-class", "12", "--synth-size", "48", "--size", "32",
        "--way", "2", "--shot", "2", "--query", "3", "--eval-query", "3",
        "--train-episodes", "2", "--warmup", "1", "--eval-episodes", "10",
        "--peer-eval-episodes", "3", "--peer-workers", "0", "--floor-batch", "16",
        "--threads", "1", "--device", "cpu", "--no-memory", "--json", str(out),
        "--work", str(tmp_path / "work"),
    ])  # fmt: skip
    assert code == 0
    results = json.loads(out.read_text())
    for name in ("easyfsl", "easyfsl_tuned", "protonet", "multisubspace"):
        assert results["training"][name]["episodes_per_s"] > 0
    for name in ("easyfsl", "protonet", "multisubspace"):
        assert results["evaluation"][name]["seconds"] > 0
    assert results["evaluation"]["easyfsl"]["extrapolated"] is True
    assert results["evaluation"]["multisubspace"]["images"] == 6 * 12
    assert results["floor"]["step_gflop"] > _conv4_step_flops(2 * 5, 32) / 1e9
    assert "task_sampler_shim" in results["shim"]
    assert len(results["targets"]) == 4
    printed = capsys.readouterr().out
    assert "easyfsl ProtoNet as shipped" in printed and "compute floor" in printed
    assert f"written to {out}" in printed
    assert torch.get_num_threads() == 1


def test_an_error_inside_the_shim_propagates_and_torch_is_restored() -> None:
    original = Sampler.__init__
    with pytest.raises(TypeError, match="raised by the caller"), peer.task_sampler_shim():
        raise TypeError("raised by the caller")
    assert Sampler.__init__ is original


def test_on_a_torch_that_accepts_data_source_the_shim_does_nothing_and_hides_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def old_torch_init(self, data_source=None) -> None:  # torch < 2.2's signature
        pass

    monkeypatch.setattr(Sampler, "__init__", old_torch_init)
    with peer.task_sampler_shim() as applied:
        assert not applied
        _TaskSamplerLike()
    assert Sampler.__init__ is old_torch_init
    with pytest.raises(TypeError, match="raised by the caller"), peer.task_sampler_shim():
        raise TypeError("raised by the caller")


# --- the cross-library accuracy check (bench accuracy) ----------------------------------------


def test_easyfsl_scores_are_the_project_protonet_with_the_euclidean_distance() -> None:
    """easyfsl's PrototypicalNetworks (identity backbone) against ProtoNetHead(euclidean):
    the same logits on the same features, so the comparison is of training, not of maths."""
    from easyfsl.methods import PrototypicalNetworks

    from subspace_fsl.heads import ProtoNetHead

    g = torch.Generator().manual_seed(0)
    support, query = torch.randn(6, 12, generator=g), torch.randn(9, 12, generator=g)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    peer_model = PrototypicalNetworks(torch.nn.Identity())
    peer_model.process_support_set(support, labels)
    ours = ProtoNetHead(12, distance="euclidean")(support, labels, query).logits
    torch.testing.assert_close(ours, peer_model(query), rtol=1e-5, atol=1e-5)
    squared = ProtoNetHead(12)(support, labels, query).logits
    torch.testing.assert_close(squared, -peer_model(query).square(), rtol=1e-4, atol=1e-4)


def test_the_accuracy_bar_fails_when_the_project_is_worse() -> None:
    from subspace_fsl.bench.accuracy import verdict

    rng = np.random.default_rng(0)
    theirs = rng.uniform(0.4, 0.8, 200)
    worse = verdict(theirs - 0.05 + rng.normal(0, 0.01, 200), theirs)
    diff = (theirs - 0.05 + rng.normal(0, 0.01, 200)) - theirs  # reference, by hand
    assert not worse["bar_met"] and worse["high"] < 0
    assert worse["mean_diff"] == pytest.approx(100 * diff.mean(), abs=0.2)
    same = verdict(theirs, theirs)
    assert same["bar_met"] and same["mean_diff"] == 0 and same["ci95"] == 0
    noisy = theirs - 0.01 + rng.normal(0, 0.2, 200)  # worse on average, CI straddles 0
    tie = verdict(np.clip(noisy, 0, 1), theirs)
    half = 100 * 1.96 * (np.clip(noisy, 0, 1) - theirs).std(ddof=1) / np.sqrt(200)
    assert tie["ci95"] == pytest.approx(half)
    assert tie["bar_met"] == (tie["mean_diff"] + half >= 0)


def test_a_tiny_accuracy_check_prints_the_paired_difference(tmp_path: Path, capsys) -> None:
    from subspace_fsl.bench import accuracy

    out = tmp_path / "accuracy.json"
    code = accuracy.main([
        "--classes", "9", "--images-per-class", "10", "--synth-size", "32", "--size", "16",
        "--counts", "3", "3", "3", "--way", "2", "--shot", "2", "--query", "2",
        "--eval-query", "3", "--episodes", "4", "--val-episodes", "4",
        "--eval-episodes", "12", "--tau", "1", "learn:10", "--distance", "euclidean",
        "--embed", "joint", "separate", "--threads", "1", "--json", str(out),
        "--work", str(tmp_path / "w"),
    ])  # fmt: skip
    results = json.loads(out.read_text())
    printed = capsys.readouterr().out
    # the project's grid: 2 temperatures x 2 batch-norm conventions, one chosen on validation
    assert [r["setting"] for r in results["project_grid"]] == [
        "tau=1, euclidean, joint", "tau=1, euclidean, separate",
        "tau=learn:10, euclidean, joint", "tau=learn:10, euclidean, separate"]
    best = max(results["project_grid"], key=lambda r: r["val_accuracy"])
    assert results["chosen"]["budget"] == 4
    chosen = next(r for r in results["project_grid"] if r["setting"] ==
                  results["chosen"]["setting"])
    assert chosen["val_accuracy"] == best["val_accuracy"]
    # the paired difference, recomputed from the per-episode accuracies it reports
    ours = np.array(results["novel_episodes"]["project"])
    theirs = np.array(results["novel_episodes"]["easyfsl"])
    assert len(ours) == len(theirs) == 12
    paired = results["paired"]
    assert paired["mean_diff"] == pytest.approx(100 * (ours - theirs).mean())
    assert paired["ci95"] == pytest.approx(
        100 * 1.96 * (ours - theirs).std(ddof=1) / np.sqrt(12))
    assert code == (0 if paired["bar_met"] else 1)
    assert paired["bar_met"] == (paired["mean_diff"] + paired["ci95"] >= 0)
    assert "paired difference, project - easyfsl, on 12 identical novel episodes" in printed
    bar = ("bar (the project's ProtoNet no worse than easyfsl's: the paired CI not entirely "
           "below 0): ")
    assert (bar + "met" in printed) == paired["bar_met"]
    assert (bar + "MISSED" in printed) != paired["bar_met"]


def test_easyfsl_on_features_embedded_once_equals_its_per_episode_evaluation(
    tmp_path: Path,
) -> None:
    from subspace_fsl.bench import accuracy
    from subspace_fsl.data.episodes import EpisodeLoader
    from subspace_fsl.engine.evaluate import evaluation_plan

    args = accuracy.parse([
        "--classes", "9", "--images-per-class", "10", "--synth-size", "32", "--size", "16",
        "--counts", "3", "3", "3", "--way", "2", "--shot", "2", "--query", "2",
        "--eval-query", "3", "--episodes", "3", "--threads", "1",
    ])  # fmt: skip
    data = accuracy.engine_data(args, tmp_path)
    cfg = accuracy.project_config(args, 1.0, False, "euclidean")
    model, _ = accuracy.train_easyfsl(cfg, data, args)
    plan = evaluation_plan(cfg, data, "novel", episodes=15)
    fast = accuracy.easyfsl_accuracies(model, data, plan)
    loader, slow = EpisodeLoader(data, "cpu", augment="none"), []
    model.eval()
    with torch.no_grad():  # easyfsl's evaluate_on_one_task: the backbone on every episode
        for episode in plan:
            support, query = loader(episode)
            model.process_support_set(support, torch.as_tensor(episode.support_labels))
            predicted = model(query).argmax(1)
            slow.append((predicted == torch.as_tensor(episode.query_labels)).double().mean())
    np.testing.assert_array_equal(fast, torch.stack(slow).numpy())


def test_bench_cells_runs_and_prints_its_ratio(tmp_path: Path) -> None:
    """``bench cells`` at a tiny size: 2 cells together vs one process each (real
    subprocesses), head-only on stored features; it prints both rates and the ratio."""
    import subprocess
    import sys

    result = tmp_path / "cells.json"
    out = subprocess.run(
        [sys.executable, "-m", "subspace_fsl.bench", "cells", "--cells", "2", "--episodes", "3",
         "--way", "2", "--shot", "1", "--threads", "1", "--root", str(tmp_path / "work"),
         "--json", str(result)],
        capture_output=True, text=True, check=True).stdout
    assert "trained together (1 process):" in out and "one process per cell:" in out
    assert "ratio:" in out
    figures = json.loads(result.read_text())
    assert figures["cells"] == 2 and figures["together_s"] > 0 and figures["alone_s"] > 0
    assert len(list((tmp_path / "work" / "together").glob("cell-*/done"))) == 2
    assert len(list((tmp_path / "work" / "alone").glob("cell-*/done"))) == 2
