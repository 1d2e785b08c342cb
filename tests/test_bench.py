"""The performance benchmarks' own machinery: the easyfsl shim, the FLOP count of a training
step against an analytic count, the memory figures of a mapped vs a copied cache, and a tiny
end-to-end peer run (easyfsl included) whose JSON is checked."""

from __future__ import annotations

import json
from pathlib import Path

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
