"""N-way K-shot Q-query episodes: index sampling (numpy) and tensor assembly (torch).

An ``Episode`` holds only indices into the image cache. ``EpisodeSampler`` draws them from one
split's classes with a seeded ``numpy.random.Generator`` (its state can be saved and restored
to resume training); ``episode_plan`` fixes a list of evaluation episodes that is identical for
every method given the seed. ``EpisodeLoader`` turns an episode into normalised float tensors
on a device with one fancy-index of the uint8 cache per episode.

Augmentation (training only): random resized crop (scale 0.6-1), horizontal flip and colour
jitter (0.4, 0.4, 0.4) drawn per image and applied to the whole episode at once on its device
(``subspace_fsl.data.augment``); ``python -m subspace_fsl.bench data`` prints its cost.

The cache is either the memory-mapped uint8 array (CPU: the OS page cache shares it between
processes, nothing is copied per worker or job) or a uint8 tensor already on the device
(``runtime.cache_on_device``, for GPUs: an episode is then one on-device gather).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from subspace_fsl.data.augment import AUGMENT_POLICIES

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class EpisodeError(ValueError):
    """An impossible episode configuration (too few classes or images); names the class."""


@dataclass(frozen=True)
class Episode:
    """Cache indices and 0..N-1 labels of one episode; ``classes`` are the cache class_ids."""

    support_idx: np.ndarray
    support_labels: np.ndarray
    query_idx: np.ndarray
    query_labels: np.ndarray
    classes: np.ndarray


class EpisodeSampler:
    """Draws episodes from the images of ``classes`` (class_ids of one split).

    ``labels`` is the class_id of every cache image. Each episode picks ``way`` distinct
    classes, then ``shot + query`` distinct images of each; support and query are grouped by
    class in the order of ``Episode.classes``.
    """

    def __init__(
        self,
        labels: np.ndarray,
        classes: Sequence[int],
        way: int,
        shot: int,
        query: int,
        seed: int,
        class_names: Sequence[str] | None = None,
    ) -> None:
        labels = np.asarray(labels, dtype=np.int64)
        self.classes = np.asarray(classes, dtype=np.int64)
        self.way, self.shot, self.query, self.seed = int(way), int(shot), int(query), int(seed)
        if self.way < 1 or self.shot < 1 or self.query < 1:
            raise EpisodeError(f"way={way}, shot={shot}, query={query}: each must be >= 1")
        if len(np.unique(self.classes)) != len(self.classes):
            raise EpisodeError("the split's class list contains duplicates")
        if len(self.classes) < self.way:
            raise EpisodeError(
                f"{self.way}-way episodes need {self.way} classes, the split has "
                f"{len(self.classes)}"
            )
        self.members = [np.flatnonzero(labels == c) for c in self.classes]
        needed = self.shot + self.query
        for c, members in zip(self.classes, self.members, strict=True):
            if len(members) < needed:
                name = f" ({class_names[c]!r})" if class_names is not None else ""
                raise EpisodeError(
                    f"class {int(c)}{name} has {len(members)} images, but "
                    f"shot + query = {self.shot} + {self.query} = {needed} are needed"
                )
        self.rng = np.random.default_rng(self.seed)
        self.sampled = 0

    def sample(self) -> Episode:
        chosen = self.rng.choice(len(self.classes), self.way, replace=False)
        support, query = [], []
        for position in chosen:
            picked = self.rng.choice(self.members[position], self.shot + self.query, replace=False)
            support.append(picked[: self.shot])
            query.append(picked[self.shot :])
        self.sampled += 1
        ways = np.arange(self.way, dtype=np.int64)
        return Episode(
            support_idx=np.concatenate(support).astype(np.int64),
            support_labels=np.repeat(ways, self.shot),
            query_idx=np.concatenate(query).astype(np.int64),
            query_labels=np.repeat(ways, self.query),
            classes=self.classes[chosen],
        )

    def __iter__(self) -> EpisodeSampler:
        return self

    def __next__(self) -> Episode:
        return self.sample()

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "sampled": self.sampled, "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["seed"] != self.seed:
            raise EpisodeError(
                f"sampler state was saved with seed {state['seed']}, this sampler "
                f"has seed {self.seed}"
            )
        self.rng.bit_generator.state = state["rng"]
        self.sampled = int(state["sampled"])


def episode_plan(
    labels: np.ndarray,
    classes: Sequence[int],
    way: int,
    shot: int,
    query: int,
    n_episodes: int,
    seed: int,
    class_names: Sequence[str] | None = None,
) -> list[Episode]:
    """A fixed list of ``n_episodes`` episodes: the same for every method given the seed."""
    sampler = EpisodeSampler(labels, classes, way, shot, query, seed, class_names)
    return [sampler.sample() for _ in range(n_episodes)]


def plan_digest(plan: Sequence[Episode]) -> str:
    """sha256 of a plan's indices: record it to show two runs saw the same episodes."""
    digest = hashlib.sha256()
    for episode in plan:
        for array in (episode.classes, episode.support_idx, episode.query_idx):
            digest.update(np.ascontiguousarray(array, dtype=np.int64).tobytes())
    return digest.hexdigest()


class EpisodeLoader:
    """Episode -> (support [N*K, 3, H, W], query [N*Q, 3, H, W]) normalised float tensors.

    ``cache`` is an ``ImageCache`` (or anything with a uint8 ``images`` [n, 3, H, W]: a numpy
    array, memory-mapped or not, or a torch tensor, e.g. one already on ``device``).
    """

    def __init__(
        self,
        cache: Any,
        device: str | torch.device = "cpu",
        augment: str = "none",
        channels_last: bool = False,
    ) -> None:
        self.images = cache.images
        self.device = torch.device(device)
        self.augment = augment
        self.policy = AUGMENT_POLICIES.get(augment)
        self.channels_last = channels_last
        mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)
        # (x / 255 - mean) / std as one multiply-add: x * scale + shift
        self.scale, self.shift = 1.0 / (255.0 * std), -mean / std
        self.unit_scale = 255.0 * self.scale  # for images already in [0, 1] (augmented)

    def gather(self, indices: np.ndarray) -> torch.Tensor:
        """The uint8 images of the given cache rows, on the device."""
        indices = np.asarray(indices, dtype=np.int64)
        if isinstance(self.images, torch.Tensor):
            rows = torch.from_numpy(indices).to(self.images.device)
            return self.images.index_select(0, rows).to(self.device, non_blocking=True)
        batch = torch.from_numpy(self.images[indices])
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        return batch

    def load(self, indices: np.ndarray) -> torch.Tensor:
        """Normalised float images of the given cache indices, on the device."""
        batch = self.gather(indices).to(torch.float32)
        if self.augment != "none":
            batch = self.policy(batch.div_(255.0))
            batch = batch.mul_(self.unit_scale).add_(self.shift)
        else:
            batch = batch.mul_(self.scale).add_(self.shift)
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch

    def __call__(self, episode: Episode) -> tuple[torch.Tensor, torch.Tensor]:
        n_support = len(episode.support_idx)
        both = self.load(np.concatenate([episode.support_idx, episode.query_idx]))
        return both[:n_support], both[n_support:]

    def labels(self, episode: Episode) -> tuple[torch.Tensor, torch.Tensor]:
        """(support_labels, query_labels) as int64 tensors on the device."""
        return (
            torch.from_numpy(episode.support_labels).to(self.device),
            torch.from_numpy(episode.query_labels).to(self.device),
        )
