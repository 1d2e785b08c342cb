"""Training augmentation policies for a whole batch at once, each image with its own draw.

``train.augment`` names a policy of :data:`AUGMENT_POLICIES`:

- ``none``: the images as they are;
- ``flip``: a horizontal flip with p = 0.5 per image (the cheapest label-preserving
  transform; what easyfsl's tutorial and most short-budget runs use);
- ``standard``: random resized crop + flip + colour jitter, below (tuned for long runs: at a
  short budget it costs accuracy, see docs/engine.md).

``standard`` is the same three transforms as the field's usual pipeline (torchvision's RandomResizedCrop,
RandomHorizontalFlip, ColorJitter), written as a few batched tensor operations so that they
cost milliseconds per episode on a CPU and a handful of kernels on a GPU, instead of one
small transform call per image:

- **random resized crop** (area ``scale`` = 0.6-1 of the image, aspect ``ratio`` 3/4-4/3,
  torchvision's rule: up to 10 draws, the first that fits is used, else the whole image) and
  **horizontal flip** (p = 0.5) are one sampling grid per image (a scaled, shifted, maybe
  mirrored copy of the pixel centres), ``F.grid_sample`` with bilinear interpolation;
- **colour jitter** with factors ``b, c, s`` drawn uniformly from [1 - 0.4, 1 + 0.4], applied
  in the fixed order brightness, contrast, saturation (torchvision shuffles the order per
  call), each clamped to [0, 1] as torchvision does::

      x <- clamp(b x);  x <- clamp(c x + (1 - c) mean(gray(x)));  x <- clamp(s x + (1 - s) gray(x))

  with ``gray = 0.2989 R + 0.587 G + 0.114 B`` (torchvision's weights).

The random parameters are drawn on the CPU from torch's global generator (saved in training
checkpoints, so a resumed run draws the same ones) and moved to the images' device in one
copy: CPU and CUDA runs of the same seed see the same crops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from subspace_fsl.registry import Registry

CROP_SCALE = (0.6, 1.0)
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
JITTER = 0.4
CROP_TRIES = 10
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)


@dataclass(frozen=True)
class AugmentParams:
    """Per-image parameters of one batch (all CPU tensors of length n).

    ``box`` is the crop as fractions of the image [n, 4]: (left, top, width, height)."""

    box: torch.Tensor
    flip: torch.Tensor  # bool
    brightness: torch.Tensor
    contrast: torch.Tensor
    saturation: torch.Tensor


def draw_params(
    n: int,
    height: int,
    width: int,
    generator: torch.Generator | None = None,
) -> AugmentParams:
    """Random parameters for ``n`` images of ``height x width`` pixels (torchvision's rules)."""
    area = height * width
    target_area = area * torch.empty(n, CROP_TRIES).uniform_(*CROP_SCALE, generator=generator)
    log_ratio = torch.empty(n, CROP_TRIES).uniform_(
        math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]), generator=generator
    )
    ratio = log_ratio.exp()
    crop_w = (target_area * ratio).sqrt().round()
    crop_h = (target_area / ratio).sqrt().round()
    fits = (crop_w > 0) & (crop_h > 0) & (crop_w <= width) & (crop_h <= height)
    # the first draw that fits, per image; none fits -> the whole image (its ratio is 1)
    first = torch.where(fits.any(dim=1), fits.int().argmax(dim=1), -1)
    rows = torch.arange(n)
    w = torch.where(first >= 0, crop_w[rows, first.clamp(min=0)], float(width))
    h = torch.where(first >= 0, crop_h[rows, first.clamp(min=0)], float(height))
    # integer offsets uniform over the valid positions, as torchvision's randint
    left = (torch.rand(n, generator=generator) * (width - w + 1)).floor()
    top = (torch.rand(n, generator=generator) * (height - h + 1)).floor()
    box = torch.stack([left / width, top / height, w / width, h / height], dim=1)
    flip = torch.rand(n, generator=generator) < 0.5
    factors = torch.empty(3, n).uniform_(1 - JITTER, 1 + JITTER, generator=generator)
    return AugmentParams(box, flip, factors[0], factors[1], factors[2])


def crop_and_flip(images: torch.Tensor, params: AugmentParams) -> torch.Tensor:
    """Resample each image's crop box to the full size, mirrored where ``flip``: one grid_sample.

    In ``grid_sample``'s coordinates (-1..1 spans the image's pixel edges) output pixel centre
    ``u`` reads input ``x = w u sign + 2 left + w - 1`` (``sign`` = -1 mirrors), likewise for
    ``y``. The grid is separable, so it is built from two 1-D rows instead of ``affine_grid``
    (8x cheaper on a CPU)."""
    n, _, height, width = images.shape
    box = params.box.to(images.device, images.dtype)
    left, top, w, h = (v.unsqueeze(1) for v in box.unbind(dim=1))
    sign = 1.0 - 2.0 * params.flip.to(images.device, images.dtype).unsqueeze(1)

    def centres(size: int) -> torch.Tensor:
        return (torch.arange(size, device=images.device, dtype=images.dtype) * 2 + 1) / size - 1

    grid_x = (w * sign) * centres(width) + (2 * left + w - 1)  # [n, W]
    grid_y = h * centres(height) + (2 * top + h - 1)  # [n, H]
    grid = torch.stack(
        torch.broadcast_tensors(grid_x[:, None, :], grid_y[:, :, None]), dim=-1
    )  # [n, H, W, 2] as (x, y)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def gray(images: torch.Tensor) -> torch.Tensor:
    """Luma ``0.2989 R + 0.587 G + 0.114 B`` [n, 1, H, W] (torchvision's rgb_to_grayscale)."""
    r, g, b = images.unbind(dim=1)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(1)


def color_jitter(images: torch.Tensor, params: AugmentParams) -> torch.Tensor:
    """Brightness, contrast, saturation per image (see the module docstring); images in [0, 1]."""
    shape = (-1, 1, 1, 1)
    b, c, s = (
        f.to(images.device, images.dtype).view(shape)
        for f in (params.brightness, params.contrast, params.saturation)
    )
    images = (images * b).clamp_(0, 1)
    mean = gray(images).mean(dim=(1, 2, 3), keepdim=True)
    images = (images * c + (1 - c) * mean).clamp_(0, 1)
    return (images * s + (1 - s) * gray(images)).clamp_(0, 1)


#: ``train.augment`` -> a function of a float batch [n, 3, H, W] in [0, 1] (same shape out)
AUGMENT_POLICIES: Registry[torch.Tensor] = Registry("augmentation policy")


@AUGMENT_POLICIES.register("none")
def no_augmentation(images: torch.Tensor) -> torch.Tensor:
    """The identity (evaluation, and training without augmentation)."""
    return images


@AUGMENT_POLICIES.register("flip")
def random_flip(images: torch.Tensor, flip: torch.Tensor | None = None) -> torch.Tensor:
    """Mirror each image left-right where ``flip`` (default: a fresh p = 0.5 draw per image
    from torch's global generator, on the CPU like the ``standard`` policy's draws)."""
    if flip is None:
        flip = torch.rand(images.shape[0]) < 0.5
    where = flip.to(images.device).view(-1, 1, 1, 1)
    return torch.where(where, images.flip(-1), images)


@AUGMENT_POLICIES.register("standard")
def augment(images: torch.Tensor, params: AugmentParams | None = None) -> torch.Tensor:
    """Crop, flip and colour-jitter a float batch [n, 3, H, W] in [0, 1], on its own device.

    ``params`` default to a fresh draw from torch's global generator."""
    if params is None:
        params = draw_params(images.shape[0], images.shape[-2], images.shape[-1])
    return color_jitter(crop_and_flip(images, params), params)
