"""Synthetic sub-category data in CUB-200-2011's exact layout (the offline default data set).

Every class shows the same base object, a bird-like silhouette (ellipse body, round head,
wing, tail, beak, legs), and classes differ only in a combination of four local parts:
head colour, wing pattern, tail shape and beak length. Each class is a unique combination
and the combinations are chosen balanced, so every part value is shared by many classes and
no single part identifies a class. Images vary in position, scale, rotation, mirror flip,
background clutter (including blobs in the head colours), colour jitter and noise.

Written files (the ones ``data.cub.read_cub`` parses): ``images.txt``, ``classes.txt``,
``image_class_labels.txt``, ``bounding_boxes.txt`` (the bird's real extent),
``images/NNN.<name>/<name>_NNNN.jpg``, ``parts/parts.txt`` ("part_id name") and
``parts/part_locs.txt`` ("image_id part_id x y visible", pixel coordinates of the final image,
visible = 1 when the point lies inside it): CUB's own part-annotation format, for the parts
the generator draws (:data:`PART_POINTS`); plus ``parts.json`` (each class's part values) and
``synth.json`` (the generator's settings, written last: its presence marks a complete set).
"""

from __future__ import annotations

import itertools
import json
import math
import multiprocessing
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

from subspace_fsl.config import atomic_directory

GENERATOR_VERSION = 2  # 2: parts/part_locs.txt

# The part vocabulary: name -> values. Head colours are RGB centres (jittered per image).
HEAD_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (200, 40, 40),
    "orange": (225, 120, 30),
    "yellow": (220, 205, 50),
    "blue": (50, 80, 200),
    "black": (25, 25, 25),
    "white": (235, 235, 235),
}
PARTS: dict[str, tuple[str, ...]] = {
    "head": tuple(HEAD_COLOURS),
    "wing": ("plain", "striped", "spotted", "barred"),
    "tail": ("fan", "forked", "pointed", "square"),
    "beak": ("short", "medium", "long"),
}
BEAK_LENGTH = {"short": 0.18, "medium": 0.42, "long": 0.72}
BODY_COLOUR = (125, 105, 80)
SUPERSAMPLE = 2  # drawn at twice the size, then downsampled: smooth edges

# Annotated part locations, in the bird's own frame (half body length = 1, x towards the
# beak, y up), each a point inside the drawn part that nothing drawn later covers. The beak
# point is computed per image (its length varies): half-way from the head's edge to the tip.
HEAD_CENTRE, HEAD_RADIUS, BEAK_BASE = (1.05, 0.45), 0.36, 1.3
PART_POINTS: dict[str, tuple[float, float] | None] = {
    "head": HEAD_CENTRE,
    "beak": None,
    "wing": (-0.1, 0.05),
    "tail": (-1.2, 0.03),
    "eye": (1.17, 0.55),
    "body": (0.45, -0.3),
    "leg": (-0.2, -0.7),
}
PART_IDS: dict[str, int] = {name: i + 1 for i, name in enumerate(PART_POINTS)}


def max_classes() -> int:
    """How many distinct part combinations (classes) the vocabulary allows."""
    return math.prod(len(values) for values in PARTS.values())


def choose_combinations(classes: int, seed: int) -> list[dict[str, str]]:
    """``classes`` distinct part combinations, each part's values used as evenly as possible.

    Greedy: among the remaining combinations (in a seeded random order) take the one whose
    values are used least so far. With ``classes >= 2 * 6`` every value is shared by at least
    two classes.
    """
    if not 1 <= classes <= max_classes():
        raise ValueError(
            f"classes={classes}: the synthetic part vocabulary allows 1..{max_classes()}"
        )
    names = list(PARTS)
    remaining = list(itertools.product(*(range(len(PARTS[n])) for n in names)))
    order = np.random.default_rng([seed, 7919]).permutation(len(remaining))
    remaining = [remaining[i] for i in order]
    counts = [np.zeros(len(PARTS[n]), dtype=np.int64) for n in names]
    chosen = []
    for _ in range(classes):
        costs = [sum(int(counts[p][v]) for p, v in enumerate(combo)) for combo in remaining]
        best = remaining.pop(int(np.argmin(costs)))
        for p, v in enumerate(best):
            counts[p][v] += 1
        chosen.append({n: PARTS[n][v] for n, v in zip(names, best, strict=True)})
    return chosen


def class_name(index: int, parts: dict[str, str]) -> str:
    """CUB-style folder name, e.g. ``003.red_head_striped_wing_fan_tail_long_beak``."""
    label = "_".join(f"{parts[p]}_{p}" for p in PARTS)
    return f"{index + 1:03d}.{label}"


# --- drawing -----------------------------------------------------------------------------


def _ellipse(
    cx: float, cy: float, a: float, b: float, angle: float = 0.0, n: int = 28
) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    x, y = a * np.cos(t), b * np.sin(t)
    c, s = math.cos(angle), math.sin(angle)
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], axis=1)


def _tail(shape: str) -> np.ndarray:
    if shape == "fan":
        return np.array([[-0.8, 0.12], [-1.75, 0.6], [-1.9, 0.1], [-1.75, -0.4], [-0.8, -0.05]])
    if shape == "forked":
        return np.array([[-0.8, 0.12], [-1.9, 0.5], [-1.35, 0.05], [-1.9, -0.4], [-0.8, -0.05]])
    if shape == "pointed":
        return np.array([[-0.8, 0.14], [-2.05, 0.02], [-0.8, -0.08]])
    if shape == "square":
        return np.array([[-0.8, 0.2], [-1.6, 0.2], [-1.6, -0.15], [-0.8, -0.15]])
    raise ValueError(f"unknown tail shape {shape!r}")


def _jitter(rng: np.random.Generator, colour: Sequence[int], amount: float) -> tuple[int, ...]:
    shifted = np.asarray(colour, dtype=np.float64) + rng.normal(0, amount, 3)
    return tuple(int(v) for v in np.clip(shifted, 0, 255))


def _draw_background(draw: ImageDraw.ImageDraw, rng: np.random.Generator, side: int) -> None:
    heads = list(HEAD_COLOURS.values())
    for _ in range(int(rng.integers(6, 12))):
        if rng.random() < 0.15:  # distractor blobs in the head colours: colour alone is no cue
            colour = _jitter(rng, heads[int(rng.integers(len(heads)))], 25)
        else:
            colour = tuple(int(v) for v in rng.integers(30, 220, 3))
        kind = rng.integers(3)
        x, y = rng.uniform(-0.1, 1.1, 2) * side
        r = rng.uniform(0.04, 0.22) * side
        if kind == 0:
            points = _ellipse(x, y, r, r * rng.uniform(0.3, 1.0), rng.uniform(0, np.pi), 16)
            draw.polygon([tuple(p) for p in points], fill=colour)
        elif kind == 1:
            x2, y2 = rng.uniform(-0.1, 1.1, 2) * side
            draw.line([(x, y), (x2, y2)], fill=colour, width=max(1, int(r * 0.25)))
        else:
            points = np.stack([x + rng.uniform(-r, r, 3), y + rng.uniform(-r, r, 3)], axis=1)
            draw.polygon([tuple(p) for p in points], fill=colour)


def render(
    parts: dict[str, str], size: int, rng: np.random.Generator
) -> tuple[Image.Image, tuple[float, float, float, float]]:
    """One image of a bird with the given parts; returns (RGB image, bbox x, y, w, h)."""
    image, bbox, _ = render_with_parts(parts, size, rng)
    return image, bbox


def render_with_parts(
    parts: dict[str, str], size: int, rng: np.random.Generator
) -> tuple[Image.Image, tuple[float, float, float, float], dict[str, tuple[float, float, int]]]:
    """``render`` plus each annotated part's (x, y, visible) in the final image's pixels
    (:data:`PART_POINTS`; visible = 1 when the point lies inside the image). Draws the same
    random numbers as ``render``, so the image is identical."""
    side = size * SUPERSAMPLE
    background = tuple(int(v) for v in rng.integers(60, 200, 3))
    image = Image.new("RGB", (side, side), background)
    draw = ImageDraw.Draw(image)
    _draw_background(draw, rng, side)

    # pose: scale (half body length in pixels), rotation, mirror, position
    unit = side * rng.uniform(0.15, 0.21)
    angle = rng.uniform(-0.6, 0.6)
    mirror = -1.0 if rng.random() < 0.5 else 1.0
    cx, cy = rng.uniform(0.35, 0.65, 2) * side
    cos, sin = math.cos(angle), math.sin(angle)
    bird_points: list[np.ndarray] = []

    def to_image(points: np.ndarray) -> np.ndarray:
        x, y = points[:, 0] * mirror, points[:, 1]
        px = cx + unit * (cos * x - sin * y)
        py = cy - unit * (sin * x + cos * y)  # image y grows downwards
        return np.stack([px, py], axis=1)

    def place(points: np.ndarray) -> list[tuple[float, float]]:
        placed = to_image(points)
        bird_points.append(placed)
        return [tuple(p) for p in placed]

    body = _jitter(rng, BODY_COLOUR, 22)
    dark = tuple(int(v * 0.6) for v in body)
    light = tuple(min(255, int(v * 1.6) + 40) for v in body)
    width = max(1, int(unit * 0.08))
    for leg_x in (-0.15, 0.2):  # legs: shared by every class
        draw.line(place(np.array([[leg_x, -0.4], [leg_x - 0.1, -0.95]])), fill=dark, width=width)
    draw.polygon(place(_tail(parts["tail"])), fill=dark)
    draw.polygon(place(_ellipse(0, 0, 1.0, 0.55)), fill=body)

    # the wing and its pattern
    wing_angle = 0.12
    draw.polygon(place(_ellipse(-0.1, 0.05, 0.72, 0.3, wing_angle)), fill=dark)
    pattern = parts["wing"]
    if pattern == "striped":
        for x in (-0.55, -0.3, -0.05, 0.2):
            draw.line(
                place(np.array([[x + 0.05, 0.3], [x - 0.05, -0.18]])), fill=light, width=width
            )
    elif pattern == "spotted":
        for x, y in ((-0.5, 0.02), (-0.2, 0.12), (0.1, 0.0), (0.35, 0.12), (-0.2, -0.1)):
            draw.polygon(place(_ellipse(x, y, 0.08, 0.08, 0, 10)), fill=light)
    elif pattern == "barred":
        draw.polygon(place(_ellipse(-0.1, 0.05, 0.6, 0.08, wing_angle, 16)), fill=light)

    head = _jitter(rng, HEAD_COLOURS[parts["head"]], 18)
    beak_length = BEAK_LENGTH[parts["beak"]] * rng.uniform(0.9, 1.1)
    beak = np.array([[BEAK_BASE, 0.58], [BEAK_BASE + beak_length, 0.42], [BEAK_BASE, 0.32]])
    draw.polygon(place(beak), fill=_jitter(rng, (90, 80, 60), 15))
    draw.polygon(place(_ellipse(*HEAD_CENTRE, HEAD_RADIUS, HEAD_RADIUS, 0, 20)), fill=head)
    draw.polygon(place(_ellipse(1.17, 0.55, 0.07, 0.07, 0, 8)), fill=(10, 10, 10))

    image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 0.8)))
    image = image.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
    pixels = np.asarray(image, dtype=np.float32)
    gain = rng.uniform(0.9, 1.1, 3)  # per-channel colour jitter of the whole photo
    pixels = (pixels - 128) * rng.uniform(0.8, 1.2) + 128 + rng.uniform(-20, 20)
    pixels = pixels * gain + rng.normal(0, rng.uniform(3, 10), pixels.shape)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))

    extent = np.concatenate(bird_points) / SUPERSAMPLE
    x0, y0 = np.clip(extent.min(axis=0), 0, size)
    x1, y1 = np.clip(extent.max(axis=0), 0, size)
    beak_x = (HEAD_CENTRE[0] + HEAD_RADIUS + BEAK_BASE + beak_length) / 2
    frame = np.array(
        [point if point is not None else (beak_x, 0.44) for point in PART_POINTS.values()]
    )
    # the drawing's coordinates are continuous (0 = left edge of pixel 0): downsampling by
    # SUPERSAMPLE divides them, pixel index = floor
    located = to_image(frame) / SUPERSAMPLE
    locations = {
        name: (float(x), float(y), int(0 <= x < size and 0 <= y < size))
        for name, (x, y) in zip(PART_POINTS, located, strict=True)
    }
    return image, (float(x0), float(y0), float(x1 - x0), float(y1 - y0)), locations


# --- the data set ------------------------------------------------------------------------


Located = dict[str, tuple[float, float, int]]


def _render_class(
    task: tuple[Path, int, str, dict[str, str], int, int, int],
) -> list[tuple[str, tuple[float, ...], Located]]:
    """Render and save one class's images; returns (relative path, bbox, parts) per image."""
    root, index, name, parts, images_per_class, size, seed = task
    folder = root / "images" / name
    folder.mkdir(parents=True, exist_ok=True)
    stem = name.split(".", 1)[1]
    rows = []
    for image_index in range(images_per_class):
        rng = np.random.default_rng([seed, index, image_index])
        image, bbox, located = render_with_parts(parts, size, rng)
        relative = f"{name}/{stem}_{image_index + 1:04d}.jpg"
        image.save(root / "images" / relative, quality=90)
        rows.append((relative, bbox, located))
    return rows


def settings(classes: int, images_per_class: int, size: int, seed: int) -> dict[str, Any]:
    """What ``synth.json`` records: equal settings mean an identical data set."""
    return {
        "generator_version": GENERATOR_VERSION,
        "classes": classes,
        "images_per_class": images_per_class,
        "size": size,
        "seed": seed,
    }


def is_generated(
    out: str | os.PathLike[str], classes: int, images_per_class: int, size: int, seed: int
) -> bool:
    """True when ``out`` holds a complete synthetic set made with exactly these settings."""
    marker = Path(out) / "synth.json"
    if not marker.is_file():
        return False
    return json.loads(marker.read_text()) == settings(classes, images_per_class, size, seed)


def generate(
    out: str | os.PathLike[str],
    classes: int,
    images_per_class: int,
    size: int,
    seed: int,
    workers: int | None = None,
    progress: bool = True,
) -> Path:
    """Write the synthetic data set to ``out`` (which must not exist) and return it.

    Built in a temporary sibling folder and renamed at the end, so ``out`` is either absent
    or complete. Deterministic: image ``j`` of class ``c`` depends only on ``(seed, c, j)``.
    """
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} already exists; remove it or choose another --out")
    if images_per_class < 1 or size < 16:
        raise ValueError(
            f"images_per_class={images_per_class} and size={size} must be >= 1 and >= 16"
        )
    combos = choose_combinations(classes, seed)
    names = [class_name(i, parts) for i, parts in enumerate(combos)]
    with atomic_directory(out) as tmp:
        tasks = [
            (tmp, i, names[i], combos[i], images_per_class, size, seed) for i in range(classes)
        ]
        workers = min(classes, workers or os.cpu_count() or 1)
        bar = tqdm(total=classes, desc=f"synth {out.name}", unit="class", disable=not progress)
        if workers > 1:
            with multiprocessing.get_context("fork").Pool(workers) as pool:
                results = []
                for rows in pool.imap(_render_class, tasks):
                    results.append(rows)
                    bar.update()
        else:
            results = []
            for task in tasks:
                results.append(_render_class(task))
                bar.update()
        bar.close()
        _write_lists(tmp, names, results)
        (tmp / "parts.json").write_text(
            json.dumps(
                {
                    "parts": {k: list(v) for k, v in PARTS.items()},
                    "classes": {name: parts for name, parts in zip(names, combos, strict=True)},
                },
                indent=1,
            )
        )
        (tmp / "synth.json").write_text(json.dumps(settings(classes, images_per_class, size, seed)))
    return out


def _write_lists(
    root: Path, names: list[str], results: list[list[tuple[str, tuple[float, ...], Located]]]
) -> None:
    images, labels, boxes, part_locs = [], [], [], []
    image_id = 0
    for class_index, rows in enumerate(results):
        for relative, (x, y, w, h), located in rows:
            image_id += 1
            images.append(f"{image_id} {relative}\n")
            labels.append(f"{image_id} {class_index + 1}\n")
            boxes.append(f"{image_id} {x:.1f} {y:.1f} {w:.1f} {h:.1f}\n")
            part_locs.extend(
                f"{image_id} {PART_IDS[part]} {px:.1f} {py:.1f} {visible}\n"
                for part, (px, py, visible) in located.items()
            )
    (root / "parts").mkdir(exist_ok=True)
    (root / "parts" / "parts.txt").write_text(
        "".join(f"{i} {name}\n" for name, i in PART_IDS.items())
    )
    (root / "parts" / "part_locs.txt").write_text("".join(part_locs))
    (root / "classes.txt").write_text("".join(f"{i + 1} {n}\n" for i, n in enumerate(names)))
    (root / "images.txt").write_text("".join(images))
    (root / "image_class_labels.txt").write_text("".join(labels))
    (root / "bounding_boxes.txt").write_text("".join(boxes))
