"""The paper's arithmetic, and geometry helpers against real forward shapes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from training.unet import (
    UNet,
    UNetPlusPlus,
    _unetpp_valid_output,
    build_model,
    geometry,
    model_geometry,
    offset_logits,
    output_size,
    unetpp_geometry,
    valid_sizes,
)


def conv_params(cin: int, cout: int, k: int) -> int:
    return k * k * cin * cout + cout


def test_paper_parameter_count_by_hand():
    widths = [64, 128, 256, 512, 1024]
    expected = 0
    cin = 1
    for w in widths:  # contracting path: two 3x3 convolutions per level
        expected += conv_params(cin, w, 3) + conv_params(w, w, 3)
        cin = w
    for w in reversed(widths[:-1]):  # expansive path: 2x2 up-conv, then two 3x3 convs
        expected += conv_params(2 * w, w, 2)
        expected += conv_params(2 * w, w, 3) + conv_params(w, w, 3)
    expected += conv_params(64, 2, 1)  # final 1x1 convolution
    assert expected == 31_030_658
    net = UNet()
    assert sum(p.numel() for p in net.parameters()) == expected


def test_paper_layers_and_sizes():
    net = UNet()
    convs = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert len(convs) == 23
    assert output_size(572) == 388
    assert geometry(5, "valid").halo == 92
    g = geometry(5, "valid")
    assert (g.size_offset, g.size_multiple) == (12, 16)
    assert valid_sizes(5, up_to=572)[-1] == 572


@pytest.mark.slow
def test_paper_forward_shape():
    # The real paper network, once: 572 -> 388 (about a second on two cores).
    net = UNet().eval()
    with torch.no_grad():
        assert net(torch.zeros(1, 1, 572, 572)).shape == (1, 2, 388, 388)


@pytest.mark.parametrize("arch", ["unet", "unet++"])
@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("padding", ["valid", "same"])
def test_geometry_matches_forward(arch: str, depth: int, padding: str):
    config = {"architecture": arch, "depth": depth, "base": 2, "padding": padding}
    if arch == "unet":
        config["dropout"] = 0.0
    net = build_model(config).eval()
    geo = model_geometry(config)
    assert geo == (geometry if arch == "unet" else unetpp_geometry)(depth, padding)
    sizes = valid_sizes(depth, padding, up_to=geo.size_offset + 2 * geo.halo + 3 * geo.size_multiple)[:2]
    for size in sizes:
        with torch.no_grad():
            out = net(torch.zeros(1, 1, size, size + geo.size_multiple))
        if padding == "valid":
            assert (size - out.shape[-2]) == 2 * geo.halo
            assert out.shape[-1] == size + geo.size_multiple - 2 * geo.halo
            assert (size - geo.size_offset) % geo.size_multiple == 0
        else:
            assert out.shape[-2:] == (size, size + geo.size_multiple)


@pytest.mark.parametrize("depth", [2, 3, 4])
def test_unetpp_size_rule_over_a_range(depth: int):
    net = UNetPlusPlus(depth=depth, base=2).eval()
    geo = unetpp_geometry(depth, "valid")
    for size in range(2 * geo.halo + 1, 2 * geo.halo + 2 * geo.size_multiple + 2):
        want = _unetpp_valid_output(size, depth)
        valid = (size - geo.size_offset) % geo.size_multiple == 0
        assert (want > 0) == valid, size
        if valid:
            with torch.no_grad():
                assert net(torch.zeros(1, 1, size, size)).shape[-1] == want == size - 2 * geo.halo


@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("deep", [False, True])
def test_unetpp_scripts_and_deep_supervision(padding: str, deep: bool):
    torch.manual_seed(0)
    net = UNetPlusPlus(depth=3, base=4, padding=padding, deep_supervision=deep, batch_norm=True)
    size = 60 if padding == "valid" else 32
    x = torch.rand(2, 1, size, size)
    net.train()
    heads = net(x)
    if deep:
        assert isinstance(heads, list) and len(heads) == 2
        assert len({h.shape for h in heads}) == 1
    else:
        assert isinstance(heads, torch.Tensor)
    net.eval()
    with torch.no_grad():
        eager = net(x)
        assert isinstance(eager, torch.Tensor)
        if deep:
            assert torch.allclose(eager, torch.stack(net.forward_heads(x)).mean(0))
        scripted = torch.jit.script(net)
        assert torch.allclose(scripted(x), eager, atol=1e-5)
        scripted.train()
        assert isinstance(scripted(x), torch.Tensor)  # TorchScript always returns one tensor


def test_unetpp_nested_structure():
    net = UNetPlusPlus(depth=4, base=8)
    # Nodes X[i][j], j >= 1: 3 + 2 + 1 = 6, each with its own up-convolution.
    assert len(net.nodes) == len(net.ups) == 6
    # X[0][3] concatenates X[0][0..2] and Up(X[1][2]): 4 * 8 input channels.
    assert net.nodes[-1].body[0].in_channels == 32


def test_unetpp_3d():
    net = UNetPlusPlus(depth=2, base=2, dims=3).eval()
    geo = unetpp_geometry(2, "valid")
    size = valid_sizes(2, up_to=40)[0]
    with torch.no_grad():
        assert net(torch.zeros(1, 1, size, size, size)).shape[-1] == size - 2 * geo.halo


def test_build_model_rejects_unknown():
    with pytest.raises(ValueError):
        build_model({"architecture": "resnet"})
    with pytest.raises(TypeError):
        build_model({"architecture": "unet++", "dropout": 0.5})


@pytest.mark.parametrize("arch, extra", [("unet", {}), ("unet++", {"deep_supervision": True})])
def test_offset_logits_shifts_the_output_by_class(arch: str, extra: dict):
    net = build_model({"architecture": arch, "depth": 2, "base": 4, "classes": 3, **extra}).eval()
    x = torch.rand(1, 1, 60, 60)
    with torch.no_grad():
        before = net(x)
        offset_logits(net, [0.75, 0.0, -0.25])
        after = net(x)
    want = before + torch.tensor([0.75, 0.0, -0.25]).view(1, 3, 1, 1)
    assert torch.allclose(after, want, atol=1e-5)
    with pytest.raises(ValueError, match="one value per class"):
        offset_logits(net, [1.0, 0.0])
