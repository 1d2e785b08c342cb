"""The GPU path, checked for correctness on a CPU: the cache as one tensor on the device,
batched on-device augmentation, bf16 autocast and torch.compile give the results of the
plain path (exactly, or within bf16's precision)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import yaml

from subspace_fsl.config import load_config
from subspace_fsl.data.cache import prepare
from subspace_fsl.data.episodes import EpisodeLoader, EpisodeSampler
from subspace_fsl.engine.data import open_data, place_cache
from subspace_fsl.engine.model import build_model
from subspace_fsl.engine.train import build_optimizer, episode_loss, train_step
from subspace_fsl.runtime import configure, maybe_compile, place_model


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("device")
    settings = {
        "results_dir": str(root / "results"),
        "data_dir": str(root / "data"),
        "dataset": {"name": "tiny", "image_size": 32,
                    "synthetic": {"classes": 6, "images_per_class": 8, "size": 32}},
        "split": {"counts": [2, 2, 2]},
        "model": {"backbone": "conv4", "head": "multisubspace", "n_subspaces": 2,
                  "subspace_dim": 4},
        "train": {"way": 2, "shot": 3, "query": 2},
        "runtime": {"threads": 1, "progress": "none", "device": "cpu"},
    }
    (root / "tiny.yaml").write_text(yaml.safe_dump(settings))
    config = load_config(root / "tiny.yaml")
    prepare(config, progress=False)
    return config


def _with_runtime(cfg: dict, **runtime: object) -> dict:
    return {**cfg, "runtime": {**cfg["runtime"], **runtime}}


def _episodes(data, cfg: dict, n: int = 3):
    sampler = EpisodeSampler(data.labels, data.split_classes("base"), 2, 3, 2, seed=5)
    return [sampler.sample() for _ in range(n)]


def test_cache_on_device_gives_the_memory_mapped_paths_tensors(cfg: dict) -> None:
    mapped = open_data(cfg)
    assert not place_cache(mapped, configure(cfg))  # auto: never on a CPU
    placed = open_data(cfg)
    assert place_cache(placed, configure(_with_runtime(cfg, cache_on_device=True)))
    assert isinstance(placed.images, torch.Tensor) and placed.images.dtype == torch.uint8
    assert np.array_equal(placed.images.numpy(), np.asarray(mapped.cache.images))
    for augment in ("none", "flip", "standard"):
        from_map = EpisodeLoader(mapped, "cpu", augment=augment, channels_last=True)
        from_tensor = EpisodeLoader(placed, "cpu", augment=augment, channels_last=True)
        for episode in _episodes(mapped, cfg):
            torch.manual_seed(11)
            expected = from_map(episode)
            torch.manual_seed(11)
            got = from_tensor(episode)
            for a, b in zip(got, expected, strict=True):
                assert torch.equal(a, b)
                assert a.is_contiguous(memory_format=torch.channels_last)


def test_a_cache_too_large_for_the_gpu_falls_back_or_names_the_setting(
    cfg: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = open_data(cfg)
    nbytes = int(np.prod(data.cache.images.shape))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (nbytes, 4 * nbytes))
    cuda = dataclasses.replace(configure(cfg), device=torch.device("cuda"))
    assert not place_cache(data, dataclasses.replace(cuda, cache_on_device="auto"))
    assert data.device_images is None
    with pytest.raises(ValueError, match=r"runtime.cache_on_device=True: the image cache .* "
                                         r"more than half of the"):
        place_cache(data, dataclasses.replace(cuda, cache_on_device=True))


def _one_step(cfg: dict, runtime, compile_backbone: bool = False) -> tuple[dict, list]:
    data = open_data(cfg)
    torch.manual_seed(0)
    model = place_model(build_model(cfg), runtime)
    step_model = model.with_backbone(maybe_compile(model.backbone, runtime))
    if compile_backbone:
        assert step_model.backbone is not model.backbone
    optimizer = build_optimizer(cfg, model)
    loader = EpisodeLoader(data, runtime.device, augment="none")
    episode = _episodes(data, cfg, 1)[0]
    support, query = loader(episode)
    support_labels, query_labels = loader.labels(episode)
    values = train_step(step_model, optimizer, support, support_labels, query, query_labels,
                        0.1, 0.1, runtime)
    # gradients, not the updated weights: Adam's first step is lr * sign(g) for every weight
    return values, [p.grad.detach().clone() for p in model.parameters()]


def test_torch_compile_trains_like_eager_mode(cfg: dict) -> None:
    eager = configure(cfg)
    compiled = dataclasses.replace(eager, compile=True)
    values, grads = _one_step(cfg, eager)
    values_c, grads_c = _one_step(cfg, compiled, compile_backbone=True)
    for key in values:
        assert values_c[key] == pytest.approx(values[key], rel=1e-4, abs=1e-5)
    # float32 sums in another order; the conv biases before BN have a zero gradient up to
    # rounding, so compare the whole gradient vector
    got, want = torch.cat([g.flatten() for g in grads_c]), torch.cat([g.flatten() for g in grads])
    assert torch.linalg.norm(got - want) <= 1e-3 * torch.linalg.norm(want)


def test_bf16_autocast_keeps_the_head_in_float32_and_the_loss_close(cfg: dict) -> None:
    data = open_data(cfg)
    full = configure(cfg)
    bf16 = dataclasses.replace(full, amp=True)  # configure sets amp on CUDA only
    torch.manual_seed(0)
    model = place_model(build_model(cfg), full)
    loader = EpisodeLoader(data, "cpu")
    episode = _episodes(data, cfg, 1)[0]
    support, query = loader(episode)
    labels = loader.labels(episode)
    seen: list[torch.dtype] = []
    hook = model.head.register_forward_pre_hook(lambda _m, args: seen.append(args[0].dtype))
    loss, _ = episode_loss(model, support, labels[0], query, labels[1], 0.1, 0.1, full)
    loss_bf16, _ = episode_loss(model, support, labels[0], query, labels[1], 0.1, 0.1,
                                         bf16)
    hook.remove()
    assert seen == [torch.float32, torch.float32]  # the backbone's bf16 output is cast back
    assert loss_bf16.dtype == torch.float32 and torch.isfinite(loss_bf16)
    assert loss_bf16.item() == pytest.approx(loss.item(), rel=0.05)
    loss_bf16.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
