"""Backbones by name: images [B, 3, H, W] -> features [B, D]; ``output_dim(image_size)`` = D.

- ``conv4``: 4 x [conv3x3 64 (padding 1), BatchNorm, ReLU, max-pool 2], flattened
  (computed as max-pool then ReLU, the same function and gradients, cheaper):
  D = 64 * (s // 16)^2 for side s (1600 at 84 px).
- ``resnet12``: the few-shot ResNet-12 (widths 64-160-320-640; each block 3 x conv3x3 + BN +
  LeakyReLU(0.1), a 1x1 conv + BN shortcut, max-pool 2), global average pooling: D = 640.
- ``resnet18``: torchvision's resnet18(weights=None) with fc removed: D = 512.

``build_backbone(name, weights)`` loads a local state_dict file (torch.load(weights_only=True));
for resnet18 the keys of a torchvision checkpoint's ``fc`` layer are dropped.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from subspace_fsl.registry import Registry


class Backbone(nn.Module):
    """Common checks: a [B, 3, H, W] float input; ``output_dim`` for a square side."""

    def output_dim(self, image_size: int) -> int:
        raise NotImplementedError

    @staticmethod
    def check_images(images: Tensor) -> None:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [B, 3, H, W], got shape {tuple(images.shape)}")


BACKBONES: Registry[Backbone] = Registry("backbone")


def _check_size(image_size: int, minimum: int) -> None:
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < minimum:
        raise ValueError(f"image_size must be an integer >= {minimum}, got {image_size!r}")


@BACKBONES.register("conv4")
class Conv4(Backbone):
    """Four conv blocks of 64 channels; the output is the flattened last feature map."""

    def __init__(self) -> None:
        super().__init__()
        blocks = []
        for in_channels in (3, 64, 64, 64):
            # max-pool before ReLU: relu(max(x)) == max(relu(x)) (both monotone), gradients
            # included, and the ReLU and its backward then touch a quarter of the values
            blocks += [
                nn.Conv2d(in_channels, 64, kernel_size=3, padding=1),
                nn.BatchNorm2d(64),
                nn.MaxPool2d(2),
                nn.ReLU(inplace=True),
            ]
        self.features = nn.Sequential(*blocks)

    def output_dim(self, image_size: int) -> int:
        _check_size(image_size, 16)
        side = image_size
        for _ in range(4):
            side //= 2
        return 64 * side * side

    def forward(self, images: Tensor) -> Tensor:
        self.check_images(images)
        return self.features(images).flatten(1)


class ResNet12Block(nn.Module):
    """3 x (conv3x3, BN, LeakyReLU 0.1) with a 1x1 conv + BN shortcut, then max-pool 2."""

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(3):
            layers += [
                nn.Conv2d(in_channels if i == 0 else channels, channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(channels),
            ]
            if i < 2:
                layers.append(nn.LeakyReLU(0.1))
        self.body = nn.Sequential(*layers)
        self.shortcut = nn.Sequential(
            nn.Conv2d(in_channels, channels, 1, bias=False), nn.BatchNorm2d(channels)
        )
        self.activation = nn.LeakyReLU(0.1)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.activation(self.body(x) + self.shortcut(x)))


@BACKBONES.register("resnet12")
class ResNet12(Backbone):
    """The standard few-shot ResNet-12 (MetaOptNet / FEAT layout, without DropBlock)."""

    widths = (64, 160, 320, 640)

    def __init__(self) -> None:
        super().__init__()
        channels = (3, *self.widths)
        self.blocks = nn.Sequential(
            *(ResNet12Block(channels[i], channels[i + 1]) for i in range(len(self.widths)))
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="leaky_relu")

    def output_dim(self, image_size: int) -> int:
        _check_size(image_size, 16)
        return self.widths[-1]

    def forward(self, images: Tensor) -> Tensor:
        self.check_images(images)
        return self.blocks(images).mean(dim=(2, 3))


@functools.cache
def _resnet18_class() -> type[Backbone]:
    """torchvision's ResNet as a Backbone, made on first use: importing torchvision costs
    seconds (it imports torch._dynamo), which every job and command without resnet18 (each
    Snakemake job is a process) would otherwise pay."""
    from torchvision.models.resnet import BasicBlock, ResNet

    class ResNet18(ResNet, Backbone):
        """torchvision's resnet18(weights=None) with ``fc`` replaced by the identity.

        Subclassing keeps torchvision's state_dict keys, so its checkpoints load directly.
        """

        def __init__(self) -> None:
            super().__init__(BasicBlock, [2, 2, 2, 2])
            self.fc = nn.Identity()

        def output_dim(self, image_size: int) -> int:
            _check_size(image_size, 1)
            return 512

        def forward(self, images: Tensor) -> Tensor:
            self.check_images(images)
            return super().forward(images)

    ResNet18.__module__, ResNet18.__qualname__ = __name__, "ResNet18"  # picklable by name
    return ResNet18


@BACKBONES.register("resnet18")
def _resnet18() -> Backbone:
    return _resnet18_class()()


def __getattr__(name: str) -> Any:
    """``backbones.ResNet18``: the class, built (torchvision imported) when first asked for."""
    if name == "ResNet18":
        return _resnet18_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_weights(model: nn.Module, path: str | Path, drop_prefixes: tuple[str, ...] = ()) -> None:
    """Load a local state_dict file into ``model`` strictly; clear errors otherwise."""
    from subspace_fsl.engine.checkpoint import CheckpointError, torch_load_plain

    path = Path(path)
    try:
        state = torch_load_plain(path, "model.backbone_weights")
    except CheckpointError as exc:  # "is not a checkpoint" reads wrong for a weights file
        raise ValueError(str(exc).replace("is not a checkpoint", "is not a weights file")) from None
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(
            f"model.backbone_weights {path} does not hold a state_dict (a mapping of names to "
            f"tensors)"
        )
    state = {k: v for k, v in state.items() if not k.startswith(drop_prefixes)}
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"weights in {path} do not match the backbone: missing keys {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}, unexpected keys {unexpected[:5]}"
            f"{' ...' if len(unexpected) > 5 else ''}"
        )
    wrong = [k for k in expected if expected[k].shape != state[k].shape]
    if wrong:
        k = wrong[0]
        raise ValueError(
            f"weights in {path} do not match the backbone: {k} has shape "
            f"{tuple(state[k].shape)}, expected {tuple(expected[k].shape)}"
        )
    model.load_state_dict(state)


def build_backbone(name: str, weights: str | Path | None = None) -> Backbone:
    """Build backbone ``name``; ``weights``: optional local state_dict file to load."""
    model = BACKBONES.build(name)
    if weights is not None:
        load_weights(model, weights, drop_prefixes=("fc.",) if name == "resnet18" else ())
    return model
