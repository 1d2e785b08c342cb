"""Episode sampling (deterministic, resumable) and tensor assembly from the cache."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from subspace_fsl.data.episodes import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EpisodeError,
    EpisodeLoader,
    EpisodeSampler,
    episode_plan,
    plan_digest,
)

LABELS = np.repeat(np.arange(8), 6)  # 8 classes x 6 images


def test_episode_structure() -> None:
    sampler = EpisodeSampler(LABELS, [1, 2, 3, 5, 7], way=3, shot=2, query=3, seed=0)
    episode = sampler.sample()
    assert episode.support_idx.dtype == np.int64 and episode.support_idx.shape == (6,)
    assert episode.query_idx.shape == (9,)
    assert episode.support_labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert episode.query_labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert len(set(episode.classes.tolist())) == 3 and set(episode.classes) <= {1, 2, 3, 5, 7}
    # images belong to their episode class; support and query are disjoint
    np.testing.assert_array_equal(
        LABELS[episode.support_idx], episode.classes[episode.support_labels]
    )
    np.testing.assert_array_equal(LABELS[episode.query_idx], episode.classes[episode.query_labels])
    assert not set(episode.support_idx) & set(episode.query_idx)


def test_plan_is_deterministic_and_seed_dependent() -> None:
    classes = list(range(8))
    plan = episode_plan(LABELS, classes, 5, 1, 2, 20, seed=7)
    again = episode_plan(LABELS, classes, 5, 1, 2, 20, seed=7)
    assert plan_digest(plan) == plan_digest(again)
    assert all((a.query_idx == b.query_idx).all() for a, b in zip(plan, again, strict=True))
    assert plan_digest(episode_plan(LABELS, classes, 5, 1, 2, 20, seed=8)) != plan_digest(plan)


def test_state_dict_resumes_the_sequence() -> None:
    sampler = EpisodeSampler(LABELS, range(8), 4, 2, 2, seed=1)
    for _ in range(5):
        sampler.sample()
    state = sampler.state_dict()
    expected = [sampler.sample() for _ in range(3)]
    resumed = EpisodeSampler(LABELS, range(8), 4, 2, 2, seed=1)
    resumed.load_state_dict(state)
    assert resumed.sampled == 5
    got = [resumed.sample() for _ in range(3)]
    assert plan_digest(got) == plan_digest(expected)
    with pytest.raises(EpisodeError, match="seed 1"):
        EpisodeSampler(LABELS, range(8), 4, 2, 2, seed=2).load_state_dict(state)


def test_impossible_episodes_fail_in_the_constructor() -> None:
    labels = np.concatenate([LABELS, [8, 8, 8]])  # class 8 has 3 images
    names = [f"class_{i}" for i in range(9)]
    with pytest.raises(EpisodeError, match=r"class 8 \('class_8'\) has 3 images.*5 \+ 1 = 6"):
        EpisodeSampler(labels, range(9), 5, 5, 1, seed=0, class_names=names)
    with pytest.raises(EpisodeError, match="class 8 has 3 images"):
        episode_plan(labels, [0, 8], 2, 2, 2, 10, seed=0)
    with pytest.raises(EpisodeError, match="need 5 classes, the split has 4"):
        EpisodeSampler(LABELS, range(4), 5, 1, 1, seed=0)


def test_loader_normalises_and_keeps_the_order() -> None:
    images = np.random.default_rng(0).integers(0, 256, (48, 3, 16, 16), dtype=np.uint8)
    loader = EpisodeLoader(SimpleNamespace(images=images), "cpu")
    episode = EpisodeSampler(LABELS, range(8), 3, 2, 1, seed=0).sample()
    support, query = loader(episode)
    assert support.shape == (6, 3, 16, 16) and query.shape == (3, 3, 16, 16)
    assert support.dtype == torch.float32
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    expected = (torch.from_numpy(images[episode.query_idx[2]]).float() / 255 - mean) / std
    torch.testing.assert_close(query[2], expected)
    support_labels, query_labels = loader.labels(episode)
    assert support_labels.dtype == torch.int64 and query_labels.tolist() == [0, 1, 2]


def test_augmentation_differs_per_image_and_channels_last() -> None:
    image = np.random.default_rng(1).integers(0, 256, (1, 3, 24, 24), dtype=np.uint8)
    images = np.repeat(image, 48, axis=0)  # every image identical
    torch.manual_seed(0)
    loader = EpisodeLoader(
        SimpleNamespace(images=images), "cpu", augment="standard", channels_last=True
    )
    support, query = loader(EpisodeSampler(LABELS, range(8), 4, 3, 2, seed=0).sample())
    assert support.shape == (12, 3, 24, 24) and query.shape == (8, 3, 24, 24)
    assert support.is_contiguous(memory_format=torch.channels_last)
    assert torch.isfinite(support).all()
    # identical inputs, different outputs: each image drew its own crop / flip / jitter
    assert len({round(float(x), 4) for x in support.flatten(1).mean(1)}) > 6
