"""Backbones: output dimensions, forward shapes, registry errors, local weights files."""

from __future__ import annotations

import pytest
import torch
import torchvision

from subspace_fsl.backbones import BACKBONES, build_backbone

EXPECTED_DIMS = {("conv4", 84): 1600, ("conv4", 32): 256, ("resnet12", 84): 640,
                 ("resnet12", 32): 640, ("resnet18", 84): 512, ("resnet18", 32): 512}


def test_registry_lists_the_three_backbones():
    assert BACKBONES.names() == ["conv4", "resnet12", "resnet18"]
    with pytest.raises(ValueError, match="unknown backbone 'vgg'; choose one of: conv4"):
        build_backbone("vgg")


@pytest.mark.parametrize(("name", "size"), sorted(EXPECTED_DIMS))
def test_output_dim_matches_the_forward_pass(name, size):
    torch.manual_seed(0)
    model = build_backbone(name).eval()
    assert model.output_dim(size) == EXPECTED_DIMS[name, size]
    with torch.no_grad():
        features = model(torch.randn(2, 3, size, size))
    assert features.shape == (2, EXPECTED_DIMS[name, size])
    assert torch.isfinite(features).all()


def test_bad_inputs_raise_clear_errors():
    model = build_backbone("conv4")
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\].*\(2, 1, 84, 84\)"):
        model(torch.randn(2, 1, 84, 84))
    with pytest.raises(ValueError, match="image_size must be an integer >= 16, got 8"):
        model.output_dim(8)


def test_resnet12_blocks_have_the_standard_layout():
    model = build_backbone("resnet12")
    widths = [block.shortcut[0].out_channels for block in model.blocks]
    assert widths == [64, 160, 320, 640]
    convs = [m for m in model.blocks[0].body if isinstance(m, torch.nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(3, 3)] * 3
    assert model.blocks[0].shortcut[0].kernel_size == (1, 1)


def test_resnet18_is_torchvision_without_fc():
    reference = torchvision.models.resnet18(weights=None)
    ours = build_backbone("resnet18")
    expected = {k for k in reference.state_dict() if not k.startswith("fc.")}
    assert set(ours.state_dict()) == expected


def test_resnet18_loads_a_local_torchvision_weights_file(tmp_path):
    torch.manual_seed(1)
    reference = torchvision.models.resnet18(weights=None).eval()
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)  # includes fc.*, which is dropped
    model = build_backbone("resnet18", weights=path).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        reference.fc = torch.nn.Identity()
        torch.testing.assert_close(model(images), reference(images))


def test_weights_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.pth"):
        build_backbone("resnet18", weights=tmp_path / "missing.pth")
    wrong = tmp_path / "conv4.pth"
    torch.save(build_backbone("conv4").state_dict(), wrong)
    with pytest.raises(ValueError, match="missing keys"):
        build_backbone("resnet18", weights=wrong)
    not_state = tmp_path / "list.pth"
    torch.save([1, 2, 3], not_state)
    with pytest.raises(ValueError, match="does not hold a state_dict"):
        build_backbone("resnet18", weights=not_state)
    state = build_backbone("conv4").state_dict()
    state["features.0.weight"] = torch.zeros(32, 3, 3, 3)
    reshaped = tmp_path / "reshaped.pth"
    torch.save(state, reshaped)
    with pytest.raises(ValueError, match=r"features.0.weight has shape \(32, 3, 3, 3\)"):
        build_backbone("conv4", weights=reshaped)


def test_conv4_round_trips_its_own_weights(tmp_path):
    torch.manual_seed(2)
    source = build_backbone("conv4")
    path = tmp_path / "conv4.pth"
    torch.save(source.state_dict(), path)
    loaded = build_backbone("conv4", weights=str(path))
    for key, value in source.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)


def test_conv4_equals_the_textbook_block_order_in_values_and_gradients():
    """Conv-4 pools before its ReLU (cheaper); the reference is conv, BN, ReLU, pool."""
    torch.manual_seed(0)
    model = build_backbone("conv4").double().train()
    reference = torch.nn.Sequential(*[
        layer
        for i in range(4)
        for layer in (
            torch.nn.Conv2d(3 if i == 0 else 64, 64, 3, padding=1),
            torch.nn.BatchNorm2d(64),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
        )
    ]).double().train()
    with torch.no_grad():  # BN shifts that make many pre-activations negative
        for layer in model.features:
            if isinstance(layer, torch.nn.BatchNorm2d):
                layer.bias.uniform_(-0.5, 0.2)
    # same weights: conv and BN sit at the same positions (0, 1) of each block of four
    reference.load_state_dict(model.features.state_dict())
    images = torch.randn(6, 3, 32, 32, dtype=torch.float64)
    out, expected = model(images), reference(images).flatten(1)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    weights = torch.randn_like(out)
    grads = torch.autograd.grad((out * weights).sum(), list(model.parameters()))
    expected_grads = torch.autograd.grad((expected * weights).sum(), list(reference.parameters()))
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
