"""Decode one image file into a fixed-size uint8 array [3, H, W] (the cache's unit).

Colour handling (documented in docs/data.md): every image becomes 8-bit RGB. Grayscale (L),
CMYK, YCbCr and palette (P) images go through PIL's ``convert("RGB")``; images with an alpha
channel (RGBA, LA, PA, palette transparency) are composited onto white; 16-bit grayscale
(``I;16``) keeps its top 8 bits. Any file PIL cannot decode completely (unreadable,
truncated, not an image) raises ``ImageDecodeError`` naming the file.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError


class ImageDecodeError(ValueError):
    """An image file that cannot be decoded; the message names the file."""


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB version of any PIL image (see the module docstring for the rules)."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I;16"):
        high_bits = (np.asarray(image, dtype=np.uint16) >> 8).astype(np.uint8)
        return Image.fromarray(high_bits).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        with warnings.catch_warnings():  # PIL warns that palette transparency becomes alpha
            warnings.simplefilter("ignore")
            rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(
    path: str | os.PathLike[str],
    image_size: int,
    resize: int | None = None,
    bbox: Sequence[float] | None = None,
) -> np.ndarray:
    """Decode ``path``, crop to ``bbox`` (x, y, w, h) if given, resize the shorter side to
    ``resize`` (default ``image_size``), centre-crop to ``image_size``; uint8 [3, H, W]."""
    resize = resize or image_size
    if resize < image_size:
        raise ValueError(f"resize={resize} is smaller than image_size={image_size}")
    try:
        with Image.open(path) as image:
            full_w, full_h = image.size
            box = (
                (0.0, 0.0, float(full_w), float(full_h))
                if bbox is None
                else _clip_box(bbox, full_w, full_h, path)
            )
            # JPEG draft mode decodes at 1/2, 1/4 or 1/8 scale when that still leaves the
            # (cropped) region at least `resize` pixels on its shorter side: much faster.
            scale = resize / min(box[2], box[3])
            if image.format == "JPEG" and scale < 0.5:
                image.draft("RGB", (math.ceil(full_w * scale), math.ceil(full_h * scale)))
            image.load()
            factor_x, factor_y = image.size[0] / full_w, image.size[1] / full_h
            image = to_rgb(image)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(f"cannot decode image {path}: {exc}") from exc
    if bbox is not None:
        x, y, w, h = box
        image = image.crop(
            (
                round(x * factor_x),
                round(y * factor_y),
                round((x + w) * factor_x),
                round((y + h) * factor_y),
            )
        )
    return _resize_centre_crop(image, image_size, resize)


def _clip_box(
    bbox: Sequence[float], width: int, height: int, path: object
) -> tuple[float, float, float, float]:
    x, y, w, h = (float(v) for v in bbox)
    x0, y0 = max(0.0, x), max(0.0, y)
    x1, y1 = min(float(width), x + w), min(float(height), y + h)
    if not (x1 - x0 >= 1 and y1 - y0 >= 1):
        raise ImageDecodeError(
            f"bounding box {tuple(bbox)} of {path} lies outside the {width}x{height} image"
        )
    return x0, y0, x1 - x0, y1 - y0


def _resize_centre_crop(image: Image.Image, image_size: int, resize: int) -> np.ndarray:
    width, height = image.size
    scale = resize / min(width, height)
    new_w, new_h = max(resize, round(width * scale)), max(resize, round(height * scale))
    image = image.resize((new_w, new_h), Image.Resampling.BICUBIC, reducing_gap=3.0)
    left, top = (new_w - image_size) // 2, (new_h - image_size) // 2
    image = image.crop((left, top, left + image_size, top + image_size))
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))
