"""Training: a tiny run learns, checkpoints resume exactly, the CLI works."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_config
from training.checkpoint import load_checkpoint, model_from_checkpoint
from training.train import lr_at, main, train

ROOT = Path(__file__).resolve().parents[2]


def test_tiny_run_loss_decreases(tiny_run):
    losses = tiny_run["history"]["loss"]
    assert len(losses) == 40
    assert np.mean(losses[-8:]) < 0.9 * np.mean(losses[:8])
    val = tiny_run["history"]["val"]
    assert [v["step"] for v in val] == [20, 40]
    run = Path(tiny_run["run"])
    for name in ("config.json", "last.pt", "history.json", "metrics.json", "curves.png"):
        assert (run / name).is_file(), name
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    test = tiny_run["metrics"]["test"]
    assert 0.0 <= test["iou"] <= 1.0 and 0.0 <= test["ap50"] <= 1.0 and test["n_true"] > 0


def test_checkpoint_loads_weights_only(tiny_run):
    ck = load_checkpoint(tiny_run["checkpoint"])
    assert ck.state["step"] == 40 and "test" in ck.state["metrics"]
    # A plain weights_only load works: nothing but tensors and plain data.
    raw = torch.load(tiny_run["checkpoint"], weights_only=True)
    assert set(raw) >= {"config", "state", "model", "optimizer"}
    model, _ = model_from_checkpoint(ck)
    assert not model.training


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_resume_continues_exactly(tmp_path, dropout):
    # With dropout, the loader's iterator drew its seed from the global generator after the resumed
    # state was restored: the masks, and the weights (by 3e-3), differed from the straight run's.
    def config(out, **train_settings):
        c = tiny_config(out, **train_settings)
        c["model"]["dropout"] = dropout
        return c

    constant = {"steps": 6, "lr": 2e-3, "min_lr": 2e-3, "warmup": 0, "val_every": 3}
    straight = train(config(tmp_path / "a", **constant))
    first = train(config(tmp_path / "b", **{**constant, "steps": 3}))
    assert first["step"] == 3
    with pytest.raises(ValueError, match="already holds a run"):
        train(config(tmp_path / "b", **constant))
    resumed = train(config(tmp_path / "b", **constant), resume=Path(first["checkpoint"]))
    assert resumed["history"]["loss"][:3] == first["history"]["loss"]
    assert np.allclose(resumed["history"]["loss"], straight["history"]["loss"], rtol=1e-5)
    a = load_checkpoint(straight["checkpoint"]).model
    b = load_checkpoint(resumed["checkpoint"]).model
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6), k


def test_bf16_channels_last_unetpp(tmp_path):
    config = tiny_config(tmp_path / "bf", steps=3, bf16=True, channels_last=True, val_every=3)
    config["model"] = {"architecture": "unet++", "depth": 3, "base": 4, "deep_supervision": True}
    config["data"]["split"].pop("test")
    result = train(config)
    assert np.isfinite(result["history"]["loss"]).all()
    assert "validation" in result["metrics"]


def test_cli_with_flags(tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(["--sample", "--depth", "2", "--base", "2", "--steps", "2", "--batch-size", "1",
               "--crop", "52", "--no-progress", "--out", str(out), "--set", "loss.w0=5",
               "--set", "augment.elastic_std=4"])
    assert rc == 0
    config = json.loads((out / "config.json").read_text())
    assert config["loss"]["w0"] == 5 and config["augment"]["elastic_std"] == 4
    assert config["data"]["split"]["test"] == [384, 512]
    assert "test:" in capsys.readouterr().out


def test_invalid_crop_is_explained(tmp_path):
    with pytest.raises(ValueError, match="not a valid input size"):
        train(tiny_config(tmp_path / "x", crop=91))


def test_lr_schedule():
    cfg = {"lr": 1e-3, "min_lr": 1e-5, "warmup": 10, "steps": 100}
    lrs = [lr_at(s, cfg) for s in range(100)]
    assert lrs[9] == pytest.approx(1e-3) and lrs[0] == pytest.approx(1e-4)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lr_at(100, cfg) == pytest.approx(1e-5)


def test_boundary_run_exports_its_read_out_and_training_scale(tmp_path):
    import unet_rt

    config = tiny_config(tmp_path / "run", steps=4, val_every=4)
    config["model"]["classes"] = 3
    config["loss"]["boundary"] = 1
    config["augment"]["scale"] = [0.7, 1.4]
    read_out = {"seed_classes": [1], "grow_classes": [2], "grow": 2, "fill_holes": True, "min_size": 9}
    config["export"].update(path=str(tmp_path / "model.pt"), class_names=["background", "nucleus", "boundary"],
                            instances=read_out)
    result = train(config)
    model = unet_rt.Model(result["export"], device="cpu")
    assert model.read_out() == read_out
    # The median equivalent diameter of the training nuclei (rows 0..319).
    assert model.info["object_size"] == pytest.approx(23.59, abs=0.01)
    assert model.segment(np.zeros((100, 100), np.float32), output="instances").dtype == np.uint32


def test_a_boundary_band_asks_for_three_classes_and_names_them(tmp_path, capsys):
    # Without model.classes=3 the labels were blamed ("contain class 2 but
    # the network has 2 classes"); with it and no names, the classes were
    # written as class_1, class_2; with class masks the band was ignored.
    for extra, message in ((["--set", "loss.boundary=2"], "loss.boundary=2 trains three classes"),
                           (["--set", "loss.boundary=2", "--set", "model.classes=3", "--class-masks"],
                            "not with class masks")):
        with pytest.raises(SystemExit) as stop:
            main([*TINY, "--out", str(tmp_path / "x"), *extra])
        assert stop.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    from training.train import resolve_config

    config = tiny_config(tmp_path / "run", steps=2, val_every=2)
    config["model"]["classes"], config["loss"]["boundary"] = 3, 2
    config["export"]["class_names"] = ["background", "object"]  # the default
    assert resolve_config(config)["export"]["class_names"] == ["background", "interior", "boundary"]


def test_a_boundary_run_without_a_read_out_exports_and_scores_interiors_grown_over_the_band(tmp_path, capsys):
    # Without export.instances the model was exported with the default
    # read-out (touching objects merged across the band) and its held-out
    # AP scored on the interiors alone (0.0 for a model whose read-out
    # gave 0.83): both now use the interiors grown over the band.
    import unet_rt

    config = tiny_config(tmp_path / "run", steps=2, val_every=2)
    config["model"]["classes"] = 3
    config["loss"]["boundary"] = 2
    config["export"].update(path=str(tmp_path / "model.pt"), class_names=["background", "nucleus", "boundary"])
    result = train(config)
    want = {"seed_classes": [1], "grow_classes": [2], "grow": 4, "fill_holes": False, "min_size": 0}
    assert unet_rt.Model(result["export"], device="cpu").read_out() == want
    assert "interiors grown over the 2-pixel boundary band by up to 4 pixels" in capsys.readouterr().out
    assert result["metrics"]["instances"].startswith("the runtime's read-out")
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["export"]["instances"] == {"seed_classes": [1], "grow_classes": [2], "grow": 4}


def test_weight_average_is_what_is_evaluated_exported_and_resumed(tmp_path):
    constant = {"steps": 6, "lr": 2e-3, "min_lr": 2e-3, "warmup": 0, "val_every": 3, "ema": 0.9}
    straight = train(tiny_config(tmp_path / "a", **constant))
    ck = load_checkpoint(straight["checkpoint"])
    assert ck.ema is not None and set(ck.ema) == set(ck.model)
    moved = [k for k in ck.model if ck.model[k].is_floating_point() and not torch.equal(ck.model[k], ck.ema[k])]
    assert moved, "the average equals the trained weights"
    model, _ = model_from_checkpoint(ck)
    for k, v in model.state_dict().items():
        assert torch.equal(v, ck.ema[k]), k
    # Resuming carries the average on exactly.
    first = train(tiny_config(tmp_path / "b", **{**constant, "steps": 3}))
    resumed = train(tiny_config(tmp_path / "b", **constant), resume=Path(first["checkpoint"]))
    b = load_checkpoint(resumed["checkpoint"]).ema
    for k in ck.ema:
        assert torch.allclose(ck.ema[k].float(), b[k].float(), atol=1e-6), k


@pytest.mark.parametrize("value", [1.0, 0.0, -0.5, True, "0.9", float("nan")])
def test_invalid_ema_is_explained(tmp_path, value):
    with pytest.raises(ValueError, match="train.ema must be a decay"):
        train(tiny_config(tmp_path / "x", ema=value))


@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf"), True, "1"])
def test_invalid_dice_weight_is_explained(tmp_path, value):
    config = tiny_config(tmp_path / "x")
    config["loss"]["dice"] = value
    with pytest.raises(ValueError, match="loss.dice must be a weight"):
        train(config)


def test_an_overflowing_dice_weight_is_named_when_the_loss_overflows(tmp_path):
    config = tiny_config(tmp_path / "x", steps=2, val_every=0)
    config["loss"]["dice"] = 1e300
    with pytest.raises(FloatingPointError, match=r"loss.dice \(1e\+300\)"):
        train(config)


def test_dice_weight_adds_the_dice_term_to_what_is_trained(tmp_path):
    # Same seed, same first batch and weights: the first step's loss differs
    # by exactly the Dice term, which lies strictly between 0 and 1.
    plain = train(tiny_config(tmp_path / "plain", steps=1, val_every=0))
    config = tiny_config(tmp_path / "dice", steps=1, val_every=0)
    config["loss"]["dice"] = 1.0
    with_dice = train(config)
    added = with_dice["history"]["loss"][0] - plain["history"]["loss"][0]
    assert 0.05 < added < 1.0


def test_calibration_needs_a_validation_split_and_a_bool(tmp_path):
    config = tiny_config(tmp_path / "x", calibrate=True)
    config["data"]["split"]["val"] = None
    with pytest.raises(ValueError, match="validation split"):
        train(config)
    with pytest.raises(ValueError, match="train.calibrate must be true or false"):
        train(tiny_config(tmp_path / "y", calibrate="yes"))


def test_calibration_is_chosen_on_validation_and_carried_by_the_weights(tmp_path):
    config = tiny_config(tmp_path / "run", steps=6, val_every=6, calibrate=True)
    config["export"]["path"] = str(tmp_path / "model.pt")
    result = train(config)
    cal = load_checkpoint(result["checkpoint"]).state["calibration"]
    table = {round(r["offset"], 1): r for r in cal["candidates"]}
    chosen = cal["offsets"][0]
    assert cal["offsets"][1:] == [0.0] and chosen in table
    # The rule: best IoU among the offsets that keep AP@0.5.
    allowed = [r for r in table.values() if r["ap50"] >= table[0.0]["ap50"]]
    assert table[chosen]["iou"] == max(r["iou"] for r in allowed)
    # The exported network's logits are the checkpoint's plus the offset.
    net, _ = model_from_checkpoint(result["checkpoint"])
    exported = torch.jit.load(result["export"], map_location="cpu")
    x = torch.from_numpy(np.random.default_rng(0).random((1, 1, 92, 92), dtype=np.float32))
    with torch.no_grad():
        got, want = exported(x), net(x)
    want[:, 0] += chosen
    assert torch.allclose(got, want, atol=1e-5)
    from training.export import read_metadata

    assert read_metadata(result["export"])["training"]["calibration"]["offsets"] == cal["offsets"]


def test_cli_refuses_a_bad_setting_as_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--sample", "--steps", "2", "--out", str(tmp_path / "x"), "--set", "train.ema=NaN"])
    assert stop.value.code == 2
    assert "train.ema must be a decay" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_one_data_source_and_missing_files_named_as_given(tmp_path, capsys, monkeypatch):
    # --sample beside --image-dir trained on the sample alone, without a word.
    with pytest.raises(SystemExit) as stop:
        main(["--sample", "--image-dir", str(tmp_path), "--label-dir", str(tmp_path), "--out", str(tmp_path / "x")])
    assert stop.value.code == 2
    assert "give one data source, not --sample and --image-dir" in capsys.readouterr().err
    # A missing relative --image was named as a file of the repository;
    # it is a usage error (exit 2) as other data errors are, not exit 1.
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        main(["--image", "missing.tif", "--labels", "missing_labels.tif", "--steps", "1",
                 "--out", str(tmp_path / "y")])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "python -m training.train: error:" in err and str(tmp_path / "missing.tif") in err, err


# --- from a hostile review of the training command line -----------------------


TINY = ["--sample", "--steps", "2", "--depth", "2", "--base", "2", "--batch-size", "1", "--no-progress",
        "--threads", "1"]


@pytest.mark.parametrize(
    "setting,message",
    [
        ("trian.steps=5", "unknown setting 'trian'"),  # both were stored and ignored
        ("train.stepz=5", "unknown setting train.stepz"),
        ("train.steps=-3", "train.steps must be an integer >= 1"),  # ran "-3 steps"
        ("train.steps=2.7", "train.steps must be an integer"),
        ("train.batch_size=0", "train.batch_size must be an integer >= 1"),
        ("train.lr=NaN", "train.lr must be a number > 0"),
        ("loss.w0=-1000", "loss.w0 must be a number >= 0"),  # a negative loss rewarded errors
        ("loss.boundary=-3", "loss.boundary must be an integer >= 0"),
        ("data.split.test=[-200,-1]", r"data.split.test \[-200, -1\) is not a range of rows"),  # overlapped training
        ("data.split.val=[380,330]", "data.split.val"),
        # A misspelt test part trained on the images meant for the test; the others were ignored or a TypeError.
        ('data.split={"by":"files","tset":["im2"]}', "unknown setting data.split.tset"),
        ("data.instance=false", "unknown setting data.instance"),
        ('data.normalisation={"kind":"none"}', "unknown setting data.normalisation"),
        ("model.dropuot=0.5", "unknown setting model.dropuot"),
        # Trained through a whole run, then the export blamed the network.
        ('data.normalization={"kind":"percentile","low":90,"high":10}', "data.normalization .*0 <= low < high"),
        ('data.normalization={"kind":"zscore","mean":0,"std":0}', "data.normalization .*std > 0"),
        ('data.normalization={"kind":"percentile","low":1}', "data.normalization .*missing field `high`"),
        ("model.classes=0", "model.classes must be an integer >= 2"),
        ("augment.gamma=[2,0.1]", r"augment.gamma must satisfy 0 < low <= high"),  # failed at the first batch
        ("augment.brightness=[0.1,-0.1]", r"augment.brightness must satisfy low <= high"),
        ("train.threads=-2", "train.threads must be an integer >= 1"),
        ("seed=1.5", "seed must be an integer >= 0"),
        ('data.image="a.tif"', "give --image and --labels together"),
        # Each of these failed at the first batch (conv3d, IndexError, TypeError), its run folder made,
        # or (negative or NaN std) turned the deformation off.
        ("model.dims=3", "model.dims must be 2: training crops 2-D images"),
        ("augment.elastic_grid=0", "augment.elastic_grid must be an integer from 2"),
        ("augment.elastic_grid=2.5", "augment.elastic_grid must be an integer from 2"),
        ("augment.elastic_std=-10", "augment.elastic_std must be a number >= 0"),
        ("augment.elastic_std=NaN", "augment.elastic_std must be a number >= 0"),
    ],
)
def test_settings_a_run_cannot_use_are_usage_errors_that_leave_nothing(tmp_path, capsys, setting, message):
    import re

    with pytest.raises(SystemExit) as stop:
        main([*TINY, "--out", str(tmp_path / "x"), "--set", setting])
    assert stop.value.code == 2
    # One `error:` line, as training/README.md says: the usage block came first.
    err = capsys.readouterr().err
    assert re.search(message, err) and err.count("\n") == 1 and err.startswith("python -m training.train: error:"), err
    assert not (tmp_path / "x").exists()


def test_a_config_file_naming_unet_plus_plus_trains_it(tmp_path, capsys):
    # Refused as "unknown setting model.dropout": the default config's U-Net setting, never written.
    config = tmp_path / "upp.json"
    config.write_text(json.dumps({"model": {"architecture": "unet++", "depth": 2, "base": 2}}))
    assert main([*TINY, "--out", str(tmp_path / "a"), "--config", str(config)]) == 0
    assert json.loads((tmp_path / "a" / "config.json").read_text())["model"]["architecture"] == "unet++"
    # Resumed, and with a dropout U-Net++ does not take refused by name.
    assert main(["--resume", str(tmp_path / "a"), "--steps", "3", "--no-progress", "--threads", "1"]) == 0
    with pytest.raises(SystemExit):
        main([*TINY, "--out", str(tmp_path / "b"), "--arch", "unet++", "--set", "model.dropout=0.1"])
    assert "unknown setting model.dropout" in capsys.readouterr().err


def test_a_run_folder_another_run_is_writing_is_refused(tmp_path, capsys):
    # Two runs given one --out both passed "already holds a run" before either
    # saved, then wrote each other's checkpoints in turn.
    import fcntl

    out = tmp_path / "run"
    out.mkdir()
    fd = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a run in progress holds it
        with pytest.raises(SystemExit) as stop:
            main([*TINY, "--out", str(out)])
        assert stop.value.code == 2
        assert f"another run is writing into {out}" in capsys.readouterr().err
        assert list(out.iterdir()) == []
    finally:
        os.close(fd)
    # Once it is done, the folder is free; a finished run holds nothing.
    assert main([*TINY, "--out", str(out)]) == 0
    assert main(["--resume", str(out), "--steps", "3", "--no-progress", "--threads", "1"]) == 0


def test_resume_never_replaces_another_run_nor_rewrites_its_own_config(tmp_path, capsys):
    first, second = tmp_path / "a", tmp_path / "b"
    main([*TINY, "--out", str(first)])
    main([*TINY, "--out", str(second), "--crop", "50"])
    before = {p: (second / p).read_bytes() for p in ("last.pt", "config.json")}
    # Resuming `a` into `b` replaced b's run without a word.
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        main(["--resume", str(first / "last.pt"), "--steps", "4", "--out", str(second), "--no-progress"])
    # A usage error as every other refusal: one `error:` line, exit status 2.
    assert stop.value.code == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert "error: " in last and "already holds a run" in last
    assert {p: (second / p).read_bytes() for p in before} == before
    # A failed resume rewrote the run's config.json (batch_size 0 in it).
    config = (first / "config.json").read_bytes()
    with pytest.raises(SystemExit):
        main(["--resume", str(first / "last.pt"), "--steps", "4", "--set", "train.batch_size=0", "--no-progress"])
    assert (first / "config.json").read_bytes() == config
    # Fewer steps than done gave a checkpoint whose step contradicted its history.
    with pytest.raises(SystemExit) as stop:
        main(["--resume", str(first / "last.pt"), "--steps", "1", "--no-progress"])
    assert stop.value.code == 2
    assert "error: the run is already at step 2" in capsys.readouterr().err
    # Another network than the checkpoint's was a page of state_dict size mismatches.
    with pytest.raises(SystemExit) as stop:
        main(["--resume", str(first / "last.pt"), "--steps", "4", "--set", "model.base=3", "--no-progress"])
    assert stop.value.code == 2
    assert "model.base=2); model settings cannot change on resume" in capsys.readouterr().err
    # Its weights learned one input scaling; the export recorded the new one for every step.
    with pytest.raises(SystemExit) as stop:
        main(["--resume", str(first / "last.pt"), "--steps", "4", "--no-progress",
              "--set", 'data.normalization={"kind":"scale","factor":1000}'])
    assert stop.value.code == 2
    assert 'data.normalization {"kind": "percentile", "low": 1.0, "high": 99.8}; it cannot change on resume' in \
        capsys.readouterr().err
    # Other data trained on under the first data's object_size, without a word.
    with pytest.raises(SystemExit) as stop:
        main(["--resume", str(first / "last.pt"), "--steps", "4", "--no-progress", "--sample", "--class-masks"])
    assert stop.value.code == 2
    assert "continues its run on its own data (data.instances=true); start a new run" in capsys.readouterr().err


def test_a_moved_run_resumes_where_it_now_is(tmp_path):
    # It resumed into the folder it recorded: the old place was made again
    # and the moved folder kept its old step (and a copy was refused).
    main([*TINY, "--out", str(tmp_path / "before")])
    (tmp_path / "before").rename(tmp_path / "after")
    main(["--resume", str(tmp_path / "after" / "last.pt"), "--steps", "4", "--no-progress"])
    assert not (tmp_path / "before").exists()
    assert load_checkpoint(tmp_path / "after" / "last.pt").state["step"] == 4


def test_an_export_in_the_configs_run_folder_follows_the_run_elsewhere(tmp_path):
    from training.train import build_parser, config_from_args

    config_file = tmp_path / "c.json"
    config_file.write_text(json.dumps({"out": "runs/nuclei", "export": {"path": "runs/nuclei/nuclei.pt"}}))

    def export_path(*flags: str) -> str:
        return config_from_args(build_parser().parse_args(["--config", str(config_file), *flags]))["export"]["path"]

    assert export_path() == "runs/nuclei/nuclei.pt"
    assert export_path("--out", "runs/try") == "runs/try/nuclei.pt"
    assert export_path("--out", "runs/try", "--export", "mine.pt") == "mine.pt"


def test_export_refuses_to_write_over_the_checkpoint(tmp_path, capsys):
    from training.export import main as export_main

    main([*TINY, "--out", str(tmp_path / "r")])
    checkpoint = tmp_path / "r" / "last.pt"
    before = checkpoint.read_bytes()
    assert export_main([str(checkpoint), "-o", str(checkpoint)]) == 1
    assert "is the file being exported" in capsys.readouterr().err
    assert checkpoint.read_bytes() == before


@pytest.mark.parametrize("labels,message", [
    (np.full((64, 64), 0.5, np.float32), "not whole numbers"),  # truncated to 0
    (np.full((64, 64), -1, np.int16), "ids must be 0"),  # all background
    (np.full((64, 64), 4_000_000_000, np.uint32), "ids must be 0"),  # wrapped negative
])
def test_label_images_that_are_not_ids_are_refused(labels, message):
    from training.data import load_arrays

    with pytest.raises(ValueError, match=message):
        load_arrays([np.zeros((64, 64), np.float32)], [labels])


def test_a_name_that_is_a_path_is_a_usage_error(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        main([*TINY, "--set", 'name="../../escape"'])
    assert stop.value.code == 2 and "name must be a plain folder name" in capsys.readouterr().err


def test_evaluate_refuses_bad_paths_before_it_evaluates(tmp_path, capsys):
    from training.evaluate import main as evaluate_main

    # --json into a folder failed after minutes of evaluation (scores lost);
    # a missing model was a traceback.
    for args, message in ((["--json", str(tmp_path)], "--json"),
                          (["--json", str(tmp_path / "none" / "x.json")], "--json"),
                          (["--model", str(tmp_path / "missing.pt")], "--model: model file not found")):
        with pytest.raises(SystemExit) as stop:
            evaluate_main([*args, "--scales", "1"])
        assert stop.value.code == 2
        assert message in capsys.readouterr().err


def test_unreadable_config_and_checkpoint_files_are_usage_errors(tmp_path, capsys):
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    for args, message in ((["--config", str(tmp_path / "none.json")], "--config"),
                          (["--config", str(tmp_path / "bad.json")], "--config"),
                          (["--config", str(tmp_path / "list.json")], "not a JSON object"),
                          (["--resume", str(tmp_path / "garbage.pt")], "not a training checkpoint"),
                          (["--resume", str(tmp_path / "none.pt")], "not a training checkpoint")):
        with pytest.raises(SystemExit) as stop:
            main([*TINY, "--out", str(tmp_path / "x"), *args])
        assert stop.value.code == 2, args
        err = capsys.readouterr().err
        # torch's own message advised weights_only=False: running the file's code.
        assert message in err and "weights_only" not in err, err
    assert not (tmp_path / "x").exists()


def test_an_image_with_other_channels_than_the_rest_is_a_usage_error(tmp_path, capsys):
    import tifffile

    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    rng = np.random.default_rng(0)
    labels = np.zeros((160, 160), np.uint16)
    labels[40:80, 40:80] = 1
    tifffile.imwrite(tmp_path / "img" / "a.tif", (rng.random((160, 160)) * 255).astype(np.uint8))
    tifffile.imwrite(tmp_path / "img" / "b.tif", (rng.random((160, 160, 3)) * 255).astype(np.uint8))
    for name in ("a", "b"):
        tifffile.imwrite(tmp_path / "lab" / f"{name}.tif", labels)
    # Only the first image was checked: the run crashed at its first batch.
    with pytest.raises(SystemExit) as stop:
        main(["--image-dir", str(tmp_path / "img"), "--label-dir", str(tmp_path / "lab"), "--steps", "2",
              "--depth", "2", "--base", "2", "--batch-size", "2", "--no-progress", "--threads", "1",
              "--out", str(tmp_path / "x")])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "image b.tif" in err and "has 3 channels but model.in_channels is 1" in err
    assert not (tmp_path / "x").exists()
    # Images smaller than the default split's 384 rows train as before.
    tifffile.imwrite(tmp_path / "img" / "b.tif", (rng.random((160, 160)) * 255).astype(np.uint8))
    main(["--image-dir", str(tmp_path / "img"), "--label-dir", str(tmp_path / "lab"), "--steps", "2",
          "--depth", "2", "--base", "2", "--batch-size", "2", "--no-progress", "--threads", "1",
          "--out", str(tmp_path / "x")])
    assert (tmp_path / "x" / "last.pt").is_file()


def test_the_default_split_trains_on_every_row_of_given_data_and_keeps_the_samples_test_out(tmp_path):
    """Rows from 384 of everyone's images were in no split (the sample's
    held-out rule applied to all data), with no word."""
    from training.train import DEFAULT_CONFIG, load_splits, resolve_config

    own = resolve_config({**DEFAULT_CONFIG, "data": {**DEFAULT_CONFIG["data"], "image": "a.tif", "labels": "b.tif"}})
    assert own["data"]["split"]["train"] is None
    sample = resolve_config({**DEFAULT_CONFIG, "data": {**DEFAULT_CONFIG["data"], "sample": True}})
    assert sample["data"]["split"]["train"] == [0, 384]
    assert [s.labels.shape[0] for s in load_splits(sample["data"])["train"]] == [384]


def test_the_samples_unannotated_frame_is_neither_trained_on_nor_scored():
    """The sample's last row and column are unannotated (nuclei labelled
    background; checked in the data by test_bundled_model): training read
    the column in every training row, and its held-out record counted the
    row and column as errors, where ``training.evaluate`` leaves them out."""
    from training.evaluate import ANNOTATED
    from training.train import DEFAULT_CONFIG, load_splits, resolve_config

    split = {"by": "rows", "train": [0, 320], "val": [320, 384], "test": [384, 512]}
    sample = resolve_config({**DEFAULT_CONFIG, "data": {**DEFAULT_CONFIG["data"], "sample": True, "split": split}})
    splits = load_splits(sample["data"])
    assert [s.labels.shape for s in splits["val"]] == [(64, ANNOTATED[1])]
    assert [s.labels.shape for s in splits["train"]] == [(320, ANNOTATED[1])]
    assert [s.labels.shape for s in splits["test"]] == [(ANNOTATED[0] - 384, ANNOTATED[1])]
    assert all(s.image.shape[-2:] == s.labels.shape for part in splits.values() for s in part)


def test_steps_extend_a_run_set_by_epochs(tmp_path):
    """--resume RUN --steps N on a run set by epochs recomputed its steps
    from the epochs: nothing ran, and it said it had."""
    import argparse

    from training.train import config_from_args

    by_epochs = tmp_path / "epochs.json"
    by_epochs.write_text('{"train": {"epochs": 2}}')  # as a checkpoint's config holds it
    parser_args = dict(config=str(by_epochs), resume=None, sample=True, class_masks=False, no_progress=True, set=[], arch=None,
                       out=None, name=None, seed=None, image=None, labels=None, image_dir=None, label_dir=None,
                       depth=None, base=None, padding=None, batch_norm=None, crop=None, batch_size=None, lr=None,
                       val_every=None, bf16=None, channels_last=None, threads=None, workers=None, export=None)
    config = config_from_args(argparse.Namespace(**parser_args, steps=50, epochs=None))
    assert config["train"]["steps"] == 50 and config["train"]["epochs"] is None
    with pytest.raises(ValueError, match="--steps or --epochs, not both"):
        config_from_args(argparse.Namespace(**parser_args, steps=50, epochs=2))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_run_saves_its_last_step_and_resumes(tmp_path, signum):
    # The checkpoint came every val_every steps (200 by default): Ctrl-C lost
    # the steps since, with a KeyboardInterrupt traceback, and a run stopped
    # before its first checkpoint left a folder --resume could not read.
    out = tmp_path / "run"
    command = [sys.executable, "-m", "training.train", *TINY, "--out", str(out), "--steps", "100000",
               "--val-every", "100000"]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "config.json").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # a few steps in
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in err and f"interrupted ({signal.Signals(signum).name}) after step" in err, err
    step = load_checkpoint(out / "last.pt").state["step"]
    assert 1 <= step < 100000 and f"after step {step} of 100000" in err
    assert main(["--resume", str(out / "last.pt"), "--steps", str(step + 2), "--no-progress"]) == 0
    assert load_checkpoint(out / "last.pt").state["step"] == step + 2
