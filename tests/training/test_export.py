"""Export: TorchScript round trip with metadata, the checkpoint CLI, failures."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.checkpoint import model_from_checkpoint
from training.export import ExportMismatchError, build_metadata, export_torchscript, main, read_metadata
from training.unet import UNet, UNetPlusPlus


@pytest.mark.parametrize(
    "net, arch",
    [
        (UNet(depth=3, base=4, batch_norm=True, dropout=0.0), "unet"),
        (UNetPlusPlus(depth=3, base=4, deep_supervision=True, batch_norm=True), "unet++"),
        (UNetPlusPlus(depth=3, base=4, padding="same"), "unet++"),
    ],
)
def test_round_trip(tmp_path, net, arch):
    torch.manual_seed(0)
    net.eval()
    meta = build_metadata({**net.config, "architecture": arch}, name="t", normalization={"kind": "none"})
    assert meta["architecture"] == arch
    path = export_torchscript(net, tmp_path / "m.pt", meta)
    loaded = torch.jit.load(str(path))
    size = 60 if net.config["padding"] == "valid" else 48
    x = torch.rand(1, 1, size, size + 8)
    with torch.no_grad():
        assert torch.allclose(loaded(x), net(x), atol=1e-5)
    back = read_metadata(path)
    # Every model verified exact also gets the record of its geometry and
    # weights (valid ones too: their tiles are measured at load as well).
    assert {k: v for k, v in back.items() if k != "verified"} == meta
    assert (back["verified"]["halo"], back["verified"]["size_multiple"]) == (meta["halo"], meta["size_multiple"])
    geo = net.geometry
    assert (back["halo"], back["size_multiple"], back["size_offset"]) == (geo.halo, geo.size_multiple, geo.size_offset)
    if net.config["padding"] == "valid":
        assert (geo.halo, geo.size_multiple, geo.size_offset) == (20, 4, 0)


def test_mismatch_fails_loudly(tmp_path):
    class Sneaky(torch.nn.Module):
        """Behaves differently once scripted."""

        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 2, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            if torch.jit.is_scripting():
                return y + 1.0
            return y

    meta = build_metadata({"depth": 1, "padding": "same", "classes": 2}, name="bad")
    net = Sneaky()
    with pytest.raises(ExportMismatchError, match="differs"):
        export_torchscript(net, tmp_path / "bad.pt", meta)
    assert not (tmp_path / "bad.pt").exists()


def test_cli_exports_checkpoint_with_provenance(tiny_run, tmp_path, capsys):
    out = tmp_path / "nuclei.pt"
    assert main([tiny_run["checkpoint"], "-o", str(out)]) == 0
    meta = read_metadata(out)
    assert meta["name"] == "tiny-nuclei" and meta["class_names"] == ["background", "nucleus"]
    assert meta["normalization"] == {"kind": "percentile", "low": 1.0, "high": 99.8}
    training = meta["training"]
    assert training["held_out"]["iou"] == tiny_run["metrics"]["test"]["iou"]
    assert "ap50" in training["held_out"] and training["steps"] == 40
    assert training["split"]["test"] == [384, 512] and "Data Science Bowl" in training["data"]
    eager, _ = model_from_checkpoint(tiny_run["checkpoint"])
    x = torch.rand(1, 1, 100, 100)
    with torch.no_grad():
        assert torch.allclose(torch.jit.load(str(out))(x), eager(x), atol=1e-5)
    assert "held-out" in capsys.readouterr().out


def test_cli_fails_on_bad_input(tmp_path, capsys):
    bogus = tmp_path / "x.pt"
    torch.save({"not": "a checkpoint"}, bogus)
    assert main([str(bogus), "-o", str(tmp_path / "y.pt")]) == 1
    assert "export failed" in capsys.readouterr().err


def test_traced_and_dict_output_modules_export_and_verify(tmp_path):
    import unet_rt
    from training.export import probe_metadata
    from training.zoo import build

    torch.manual_seed(0)


    net = _OutAndAux().eval()
    meta = probe_metadata(torch.jit.script(net))
    assert meta["output_key"] == "out" and meta["size_multiple"] == 16 and meta["padding"] == "same"
    path = export_torchscript(net, tmp_path / "dict.pt", meta)
    model = unet_rt.Model(path, device="cpu")
    assert not model.info["probed"] and model.info["output_key"] == "out"
    # Traced on the fly from an example input, and an already traced module.
    fcn = build("fcn8s").eval()
    example = torch.rand(1, 1, 64, 64)
    meta = probe_metadata(torch.jit.trace(fcn, example))
    assert (meta["size_multiple"], meta["halo"]) == (32, 220)
    export_torchscript(fcn, tmp_path / "traced.pt", meta, example=example)
    export_torchscript(torch.jit.trace(fcn, example), tmp_path / "pretraced.pt", meta)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"halo": 8}, r"tiles at overlap 32 .* differ from one whole-image pass"),
        ({"size_multiple": 8}, r"at input size 456, which it declares valid .* the network fails"),
        ({"padding": "valid", "halo": 92, "size_multiple": 16, "size_offset": 12}, r"at input size 188, .* fails"),
        # Refused by the runtime's load (the channels it declares), before the exporter's own size checks.
        ({"out_channels": 3}, r"declares 3 output channel\(s\) .* the network returns \[1, 2, 64, 64\]"),
    ],
)
def test_declared_geometry_that_the_network_does_not_have_is_refused(tmp_path, change, message):
    from training.export import ExportGeometryError, probe_metadata
    from training.zoo import build

    torch.manual_seed(0)
    net = build("fcn8s").eval()
    meta = {**probe_metadata(torch.jit.script(net)), **change}
    with pytest.raises(ExportGeometryError, match=message) as caught:
        export_torchscript(net, tmp_path / "wrong.pt", meta)
    assert "probing the network finds padding same, halo 220, sizes 0 + k * 32" in str(caught.value)
    assert not (tmp_path / "wrong.pt").exists()


def test_cli_adds_verified_metadata_to_any_torchscript_file(tmp_path, capsys):
    from training.zoo import build

    torch.manual_seed(0)
    plain = tmp_path / "theirs.pt"
    torch.jit.script(build("segnet").eval()).save(str(plain))
    out = tmp_path / "segnet.pt"
    assert main([str(plain), "-o", str(out), "--class-names", "background,cell"]) == 0
    meta = read_metadata(out)
    assert (meta["padding"], meta["size_multiple"], meta["class_names"]) == ("same", 16, ["background", "cell"])
    assert "wrote" in capsys.readouterr().out
    assert main([str(plain), "-o", str(tmp_path / "bad.pt"), "--halo", "4"]) == 1
    err = capsys.readouterr().err
    assert "export failed: the metadata does not fit the network" in err and "probing the network finds" in err
    assert not (tmp_path / "bad.pt").exists()


def test_a_declared_geometry_exports_without_probing(tmp_path, capsys, monkeypatch):
    """A network too slow to probe (the runtime gives up after a minute) is
    exported by declaring its geometry; probing it again looped back to the
    advice to export it with metadata."""
    import unet_rt
    import unet_rt.export as export

    def no_probe(module):
        raise AssertionError("probed although the geometry was declared")

    monkeypatch.setattr(export, "probe_metadata", no_probe)
    torch.manual_seed(0)


    plain = tmp_path / "slow.pt"
    torch.jit.script(_AuxAndOut().eval()).save(str(plain))
    out = tmp_path / "declared.pt"
    flags = ["--padding", "same", "--halo", "64", "--size-multiple", "16"]
    assert main([str(plain), "-o", str(out), *flags]) == 0, capsys.readouterr().err
    meta = read_metadata(out)
    assert (meta["in_channels"], meta["out_channels"], meta["output"], meta["output_key"]) == (1, 2, "softmax", "out")
    model = unet_rt.Model(out, device="cpu")
    assert not model.info["probed"] and model.info["exact"] and model.info["halo"] == 64
    # The declared values are still verified against the network.
    assert main([str(plain), "-o", str(tmp_path / "bad.pt"), "--padding", "same", "--halo", "64",
                 "--size-multiple", "8"]) == 1
    assert "at input size 8, the smallest the declared geometry allows, the network fails" in capsys.readouterr().err
    assert not (tmp_path / "bad.pt").exists()


def test_declared_metadata_names_what_it_cannot_find(tmp_path):
    from training.export import ExportGeometryError, declared_metadata
    from training.zoo import build

    net = torch.jit.script(build("segnet").eval())
    with pytest.raises(ExportGeometryError, match="needs size_multiple as well"):
        declared_metadata(net, {"padding": "same", "halo": 64})

    class Sixteen(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(2, 2, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            assert x.shape[-1] % 16 == 0, "sizes of 16 pixels only"
            return self.conv(x)

    # Size 1 (offset 1, the smallest a same-padded network of that rule
    # takes) is off its grid: the network's own error, per channel count tried.
    with pytest.raises(ExportGeometryError, match=r"at input size 1, .* fails with every input channel count .*2 channel.*16 pixels only"):
        declared_metadata(torch.jit.script(Sixteen().eval()), {"padding": "same", "halo": 4, "size_multiple": 16, "size_offset": 1})


    with pytest.raises(ExportGeometryError, match="returns 2 tensors in a tuple: name the segmentation with --output-key"):
        declared_metadata(torch.jit.script(_Twice().eval()), {"padding": "same", "halo": 64, "size_multiple": 16})
    meta = declared_metadata(torch.jit.script(_Twice().eval()),
                             {"padding": "same", "halo": 64, "size_multiple": 16, "output_key": 1})
    assert meta["output_key"] == 1 and meta["out_channels"] == 2


def test_one_class_exports_sigmoid_logits(tmp_path):
    """A softmax over one channel is 1 everywhere: one-class models were
    written as "softmax" and labelled every pixel background."""
    import numpy as np
    import unet_rt
    from training.tiny import export_tiny

    model = unet_rt.Model(export_tiny(tmp_path / "one.pt", classes=1), device="cpu")
    assert model.info["output"] == "sigmoid"
    raw = model.segment(np.random.default_rng(0).random((120, 120)), output="raw")
    labels = model.segment(np.random.default_rng(0).random((120, 120)))
    assert np.array_equal(labels, (raw[0] > 0).astype(labels.dtype))


def test_an_output_key_for_several_outputs_asks_for_the_geometry_too(tmp_path, capsys):
    """The runtime asks for --output-key where a network returns several
    tensors; the exporter then probed it as the runtime would, which
    cannot choose among them, and failed with the same advice (naming its
    temporary copy)."""

    torch.manual_seed(0)


    plain = tmp_path / "deep.pt"
    torch.jit.script(_DeepSupervision().eval()).save(str(plain))
    assert main([str(plain), "-o", str(tmp_path / "x.pt"), "--output-key", "0"]) == 1
    err = capsys.readouterr().err
    assert str(plain) in err and "plain.pt" not in err
    assert "declare the geometry too (--padding, --halo, --size-multiple)" in err
    assert main([str(plain), "-o", str(tmp_path / "x.pt"), "--output-key", "0", "--padding", "same",
                 "--halo", "64", "--size-multiple", "16"]) == 0, capsys.readouterr().err
    assert read_metadata(tmp_path / "x.pt")["output_key"] == 0


def test_a_network_of_one_size_exports_with_its_fixed_size_declared(tmp_path, capsys):
    import unet_rt

    class OneSize(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 2, 3, padding=1)
            self.position = torch.nn.Parameter(torch.zeros(1, 2, 96, 96))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x) + self.position

    plain = tmp_path / "vit.pt"
    torch.jit.script(OneSize().eval()).save(str(plain))
    with pytest.raises(unet_rt.ModelError, match="fixed_size"):
        unet_rt.Model(plain, device="cpu")
    out = tmp_path / "fixed.pt"
    assert main([str(plain), "-o", str(out), "--padding", "same", "--halo", "8", "--size-multiple", "8",
                 "--fixed-size", "96"]) == 0, capsys.readouterr().err
    model = unet_rt.Model(out, device="cpu")
    assert model.info["fixed_size"] == 96
    assert model.segment(np.random.default_rng(0).random((150, 130), dtype=np.float32)).shape == (150, 130)


class _Segnet(torch.nn.Module):
    """The zoo's SegNet inside a wrapper; subclasses return it in a container."""

    def __init__(self) -> None:
        super().__init__()
        from training.zoo import build

        self.net = build("segnet")


class _OutAndAux(_Segnet):
    def forward(self, x: torch.Tensor):
        return {"out": self.net(x), "aux": x}


class _AuxAndOut(_Segnet):
    def forward(self, x: torch.Tensor):
        return {"aux": x, "out": self.net(x)}


class _Twice(_Segnet):
    def forward(self, x: torch.Tensor):
        y = self.net(x)
        return y, y


class _DeepSupervision(_Segnet):
    def forward(self, x: torch.Tensor):
        y = self.net(x)
        return [y, y[:, :1]]


def test_checkpoint_export_takes_class_names_and_refuses_torchscript_flags(tiny_run, tmp_path, capsys):
    """--class-names, --output-kind and the geometry flags were ignored for
    checkpoints without a word."""
    out = tmp_path / "named.pt"
    assert main([tiny_run["checkpoint"], "-o", str(out), "--class-names", "bg,nucleus"]) == 0
    assert read_metadata(out)["class_names"] == ["bg", "nucleus"]
    assert main([tiny_run["checkpoint"], "-o", str(tmp_path / "x.pt"), "--class-names", "bg,nucleus,edge"]) == 1
    assert "--class-names name 3 classes; the network has 2" in capsys.readouterr().err
    for flag, value in (("--output-kind", "sigmoid"), ("--halo", "8"), ("--fixed-size", "64")):
        assert main([tiny_run["checkpoint"], "-o", str(tmp_path / "x.pt"), flag, value]) == 1
        assert f"{flag} is for TorchScript files" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()


def test_a_declared_geometry_out_of_bounds_is_refused_at_once(tmp_path, capsys):
    # A size multiple of 0 looked for a first size forever, and a halo of
    # 10^30 for 10^30 steps.
    plain = tmp_path / "conv.pt"
    torch.jit.script(torch.nn.Conv2d(1, 2, 3, padding=1).eval()).save(str(plain))
    for flags, said in [(["--size-multiple", "0", "--halo", "1"], "size_multiple is 0: an integer from 1"),
                        (["--size-multiple", "1", "--halo", str(10**30)], "halo is 1000000000000000000000000000000"),
                        (["--size-multiple", "1", "--halo", "-5"], "halo is -5")]:
        assert main([str(plain), "-o", str(tmp_path / "out.pt"), "--padding", "same", *flags]) == 1
        assert said in capsys.readouterr().err
    assert not (tmp_path / "out.pt").exists()


def test_declared_halos_are_checked_on_passes_the_machine_holds(tmp_path, capsys):
    """A declared halo of 6000 ran a first pass of 12002 px (9 GB asked
    before a word) where a same-padded network takes 2 px; a valid one
    that needs such passes, or tiles no machine holds, is refused at once."""

    class SmallOnly(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 2, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            assert x.shape[-1] <= 100, "a pass of more than 100 px"
            return self.conv(x)

    from unet_rt.export import declared_metadata

    net = torch.jit.script(SmallOnly().eval())
    meta = declared_metadata(net, {"padding": "same", "halo": 6000, "size_multiple": 2})
    assert (meta["in_channels"], meta["out_channels"]) == (1, 2)
    plain = tmp_path / "conv.pt"
    torch.jit.script(torch.nn.Conv2d(1, 2, 3, padding=1).eval()).save(str(plain))
    for padding, said in [("valid", ["needs a pass at input size 24002 (576,096,004 values), beyond the 67,108,864"]),
                          # Tiles of 24002 px (refused by the runtime's memory
                          # check) and a whole-image pass of 24004 px.
                          ("same", ["the tiles at overlap 12000 could not be compared with one whole-image pass: ",
                                    "needs a pass at input size 24004"])]:
        flags = ["--padding", padding, "--halo", "12000", "--size-multiple", "2"]
        assert main([str(plain), "-o", str(tmp_path / "out.pt"), *flags]) == 1
        failed = capsys.readouterr().err.splitlines()[-1]
        assert failed.startswith("export failed") and any(s in failed for s in said), failed
    assert not (tmp_path / "out.pt").exists()



class _Noisy(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y + torch.rand_like(y)


def test_a_network_whose_output_changes_between_passes_is_refused(tmp_path, capsys):
    # Probing made up a geometry for it (same, halo 512, sizes k * 64), written with "wrote".
    plain = tmp_path / "noisy.pt"
    torch.jit.script(_Noisy().eval()).save(str(plain))
    assert main([str(plain), "-o", str(tmp_path / "out.pt")]) == 1
    err = capsys.readouterr().err
    assert "its output changes between two passes on one input" in err and "evaluation mode" in err, err
    assert not (tmp_path / "out.pt").exists()


def test_an_approximate_result_is_said_before_it_is_written(tmp_path, capsys):
    # A declared fixed size with too small a halo (the network reaches 1 px) was "wrote ...
    # halo 0" without a word, though every load of the file warns.
    plain = tmp_path / "conv.pt"
    torch.jit.script(torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
                                         torch.nn.Conv2d(4, 2, 1)).eval()).save(str(plain))
    assert main([str(plain), "-o", str(tmp_path / "fixed.pt"), "--fixed-size", "64", "--halo", "0"]) == 0
    captured = capsys.readouterr()
    assert "warning: tiled results are approximate" in captured.err and "wrote" in captured.out, captured
    assert main([str(plain), "-o", str(tmp_path / "probed.pt")]) == 0
    assert "warning" not in capsys.readouterr().err


def test_metadata_overrides_are_checked_before_any_work(tmp_path, capsys):
    # A misspelt field was dropped; bad numbers and names were written, then refused by the
    # runtime's parser ("invalid value: integer -1, expected usize at line 8 column 32").
    from unet_rt.export import ExportGeometryError, check_overrides, export_module_file

    plain = tmp_path / "conv.pt"
    torch.jit.script(torch.nn.Conv2d(1, 2, 3, padding=1).eval()).save(str(plain))
    for overrides, said in [({"size_mulitple": 2}, "size_mulitple is not a metadata field (size_multiple?)"),
                            ({"halo": -1}, "halo is -1: an integer from 0"),
                            ({"size_offset": 10**23}, "size_offset is 100000000000000000000000"),
                            ({"fixed_size": 0}, "fixed_size is 0: an integer from 1"),
                            ({"halo": np.int64(1)}, "halo is np.int64(1), which metadata (JSON) cannot hold"),
                            ({"object_size": float("nan")}, "object_size is nan, which metadata (JSON) cannot hold"),
                            ({"name": "\udcff"}, "name is '\\udcff', which metadata (JSON) cannot hold"),
                            ({"name": 5}, "name is 5: a string is expected"),
                            ({"class_names": ["a", "", "c"]}, "class name 1 of ['a', '', 'c'] is empty"),
                            ({"class_names": ["a", "a"]}, "class names repeat 'a'")]:
        with pytest.raises(ExportGeometryError, match="^" + __import__("re").escape(said)):
            check_overrides(overrides)
        with pytest.raises(ExportGeometryError):
            export_module_file(plain, tmp_path / "out.pt", overrides)
    # On the command line too, with the flag's value named.
    assert main([str(plain), "-o", str(tmp_path / "out.pt"), "--halo", "-1"]) == 1
    assert "export failed: halo is -1" in capsys.readouterr().err
    assert main([str(plain), "-o", str(tmp_path / "out.pt"), "--class-names", ""]) == 1
    assert "class name 0 of [''] is empty" in capsys.readouterr().err
    # An output that cannot be a file, before probing (it failed after, naming a temporary).
    for output in (tmp_path, f"{tmp_path}/new/", ""):
        assert main([str(plain), "-o", str(output)]) == 1
        assert "is a folder: name the .pt file to write" in capsys.readouterr().err
    assert main([str(plain), "-o", str(plain / "x.pt")]) == 1
    assert f"lies inside {plain}, which is a file" in capsys.readouterr().err
    assert not (tmp_path / "out.pt").exists() and not (tmp_path / "new").exists()


def test_the_tile_check_keeps_a_few_tiles_per_axis(tmp_path, monkeypatch):
    """A same-padded network of size multiple 1 was checked with its smallest
    tiles, one pixel kept each: (2 * halo + 2)^2 passes, ten minutes for a
    halo of 89. Tiles keep 16 pixels now; a too-small halo is still caught."""
    import unet_rt
    from unet_rt.export import CHECK_STRIDE, ExportGeometryError, export_module_file

    layers = []
    for dilation in (1, 2, 4, 8):
        layers += [torch.nn.Conv2d(1 if not layers else 4, 4, 3, padding=dilation, dilation=dilation), torch.nn.ReLU()]
    plain = tmp_path / "dilated.pt"
    torch.jit.script(torch.nn.Sequential(*layers, torch.nn.Conv2d(4, 2, 1)).eval()).save(str(plain))
    tiles = []
    segment = unet_rt.Model.segment

    def spy(self, image, *args, **kwargs):
        if kwargs.get("tile") != "whole":
            tiles.append(self.layout(image.shape[1:], tile=kwargs["tile"]))
        return segment(self, image, *args, **kwargs)

    monkeypatch.setattr(unet_rt.Model, "segment", spy)
    meta = read_metadata(export_module_file(plain, tmp_path / "out.pt"))
    assert (meta["padding"], meta["halo"], meta["size_multiple"]) == ("same", 15, 1)
    (layout,) = tiles
    assert layout["stride"][0] >= CHECK_STRIDE and layout["tiles"] <= 4, layout
    with pytest.raises(ExportGeometryError, match="differ from one whole-image pass"):
        export_module_file(plain, tmp_path / "small.pt", {"padding": "same", "halo": 12, "size_multiple": 1})


def test_export_leaves_the_callers_module_and_folders_as_they_were(tmp_path):
    # The module was left in evaluation mode (dropout off for training that went on); folders
    # made for a failed export stayed; None was checked as the bundled model.
    from unet_rt.export import ExportGeometryError, export_torchscript, probe_metadata, verify_metadata

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.Dropout()).train()
    meta = probe_metadata(torch.jit.script(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1)).eval()))
    assert export_torchscript(net, tmp_path / "a" / "m.pt", meta).is_file() and net.training
    with pytest.raises(ExportGeometryError, match="differ from one whole-image pass"):
        export_torchscript(net, tmp_path / "x" / "y" / "m.pt", {**meta, "halo": 0})
    assert net.training and not (tmp_path / "x").exists()
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got NoneType"):
        export_torchscript(None, tmp_path / "n.pt", meta)
    with pytest.raises(ExportGeometryError, match="the metadata lacks spatial_dims, in_channels"):
        export_torchscript(net, tmp_path / "n.pt", {})
    with pytest.raises(TypeError, match="path must name the model file to check, got None"):
        verify_metadata(None)


SLOW_CHECK = """
import sys, torch

class SlowWhenLarge(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 3, padding=1)
    def forward(self, x):
        n = 0
        if x.shape[-1] >= 16:
            for i in range(500000000):
                n += 1
        return self.conv(x) + float(n) * 0.0

torch.jit.save(torch.jit.script(SlowWhenLarge().eval()), sys.argv[1])
"""


def test_sigterm_during_an_export_removes_its_temporary(tmp_path):
    # `timeout` or a scheduler's SIGTERM left `.NAME.pt.XXXX.tmp` beside the output.
    import os
    import signal
    import subprocess
    import sys
    import time

    plain = tmp_path / "slow.pt"
    script = tmp_path / "slow_check.py"  # torch.jit.script reads the module's source
    script.write_text(SLOW_CHECK)
    subprocess.run([sys.executable, str(script), str(plain)], check=True, timeout=120)
    out = tmp_path / "out"
    out.mkdir()
    # Declared: the passes at 1 and 2 px are quick, the tile check's are not.
    with subprocess.Popen([sys.executable, "-m", "unet_rt.export", str(plain), "-o", str(out / "m.pt"), "--padding",
                           "same", "--halo", "1", "--size-multiple", "1"], stderr=subprocess.PIPE, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}) as proc:
        try:
            deadline = time.monotonic() + 120
            while not any(out.iterdir()) and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.2)
            assert [p.name for p in out.iterdir()][0].endswith(".tmp")
            time.sleep(1.0)
            proc.send_signal(signal.SIGTERM)
            # 143; or 1 where the load's pass outlasts the 10 s the interpreter's exit waits for it.
            assert proc.wait(timeout=60) in (128 + signal.SIGTERM, 1), proc.stderr.read()
        finally:
            proc.kill()
    assert list(out.iterdir()) == []


def test_a_file_that_is_no_checkpoint_is_named_without_torchs_advice(tmp_path, capsys):
    # torch.load's message advised re-running with weights_only=False, which
    # runs whatever code a file of unknown origin holds.
    import tifffile

    from training.export import main as export_main

    tifffile.imwrite(tmp_path / "img.tif", np.zeros((8, 8), np.uint8))
    assert export_main([str(tmp_path / "img.tif"), "-o", str(tmp_path / "x.pt")]) == 1
    err = capsys.readouterr().err
    assert "img.tif is not a training checkpoint" in err and "weights_only" not in err, err
    assert not (tmp_path / "x.pt").exists()
