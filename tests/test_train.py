"""`bbrctl train` end to end on tiny data (data=shapes_tiny schedule=smoke), and the
pieces of the training engine that can be checked without training."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from bbrctl import store
from bbrctl.detection.train.checkpoint import load_checkpoint

TINY = ["data=shapes_tiny", "schedule=smoke", "backbone=resnet_tiny", "backbone.widths=[8,16,32,64]",
        "backbone.fpn_channels=32"]
ONE_STAGE = ["model.head_convs=1"]
TWO_STAGE = ["model.box_head_dim=32", "model.box_batch_size_per_image=64", "model.rpn_post_nms_top_n_train=128",
             "model.rpn_post_nms_top_n_test=64"]
# The main job's CPU settings (cpu_small), forced on so that they run on a CPU without AMX too.
CPU_FAST = ["schedule.cpu_amp=bf16", "schedule.channels_last=true"]
CASES = {  # each model once, with a loss from each family
    "retinanet": ["loss=focal_eiou", *ONE_STAGE],
    "fcos": ["loss=ciou", *ONE_STAGE],
    "faster_rcnn": ["loss=focal_l1", "model.loss_in_rpn=true", *TWO_STAGE],
    "mask_rcnn": ["loss=eiou", "model.mask_head_channels=16", *TWO_STAGE],
    "atss": ["loss=baseline", *ONE_STAGE, "model.anchor_base=8", *CPU_FAST],
    "paa": ["loss=focal_eiou", *ONE_STAGE, "model.anchor_base=8", *CPU_FAST],
    "detr": ["loss=giou", *CPU_FAST, "model.d_model=32", "model.nhead=4", "model.enc_layers=1", "model.dec_layers=2",
             "model.dim_feedforward=32", "model.num_queries=8", "schedule.optimizer=adamw",
             "+schedule.backbone_lr_factor=0.1"],
}


def cli(capsys, *args: str) -> tuple[int, str, str]:
    from bbrctl.cli import main

    with pytest.raises(SystemExit) as e:
        main(list(args))
    out = capsys.readouterr()
    code = e.value.code
    return (0 if code is None else code), out.out, out.err


def only_run_dir(root: Path) -> Path:
    dirs = list((root / "train").iterdir())
    assert len(dirs) == 1, dirs
    return dirs[0]


@pytest.fixture(autouse=True)
def _one_thread():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on a shared CPU
    yield
    torch.set_num_threads(n)


@pytest.mark.slow
@pytest.mark.parametrize("model", list(CASES))
def test_train_writes_a_complete_run_directory(model, tmp_path, capsys):
    code, out, err = cli(capsys, "train", f"model={model}", *CASES[model], *TINY, f"runs_root={tmp_path}",
                         "--no-progress")
    assert code == 0, err
    run_dir = only_run_dir(tmp_path)
    assert run_dir.name.startswith(f"{model}-resnet_tiny-") and str(run_dir) in out

    res = json.loads((run_dir / store.RESULTS).read_text())
    assert res["status"] == "done" and res["error"] is None
    assert res["iteration"] == res["max_iter"] == 4
    iou_types = ["bbox", "segm"] if model == "mask_rcnn" else ["bbox"]
    assert sorted(res["metrics"]) == iou_types
    for t in iou_types:
        assert sorted(res["metrics"][t]) == sorted(store.AP_KEYS)
        assert all(v is None or 0.0 <= v <= 100.0 for v in res["metrics"][t].values())
    job = json.loads((run_dir / store.JOB).read_text())
    assert res["signature"] == job["signature"] and run_dir.name.endswith(job["signature"])
    assert res["wall_time_s"] > 0

    lines = [json.loads(x) for x in (run_dir / store.METRICS).read_text().splitlines()]
    train_lines = [x for x in lines if "loss" in x]
    assert [x["iteration"] for x in train_lines] == [1, 2, 3, 4]
    assert all(math.isfinite(x["loss"]) and x["lr"] > 0 and x["time"] > 0 for x in train_lines)
    reg = "loss_box_reg" if "rcnn" in model else "bbox_regression"
    assert all(reg in x for x in train_lines)
    assert lines[-1]["iteration"] == 4 and sorted(lines[-1]["eval"]) == iou_types

    ck = load_checkpoint(run_dir / store.CHECKPOINTS / "last.pt")
    assert ck["iteration"] == 4 and ck["signature"] == job["signature"]
    if model == "detr":  # the trunk's param group at backbone_lr_factor x the lr
        groups = ck["optimizer"]["param_groups"]
        assert [g["lr_scale"] for g in groups] == [1.0, 0.1]
        assert groups[1]["lr"] == pytest.approx(0.1 * groups[0]["lr"]) and groups[0]["lr"] > 0
    assert store.read_json(run_dir / store.STATUS)["iteration"] == 4
    assert "evaluating" in (run_dir / store.LOG).read_text()

    if model == "retinanet":  # a finished run is not re-run
        before = (run_dir / store.RESULTS).stat().st_mtime_ns
        code, out, err = cli(capsys, "train", f"model={model}", *CASES[model], *TINY, f"runs_root={tmp_path}")
        assert code == 0 and "already done" in out
        assert (run_dir / store.RESULTS).stat().st_mtime_ns == before
        code, out, _ = cli(capsys, "train", "--run-dir", str(run_dir))
        assert code == 0 and "already done" in out


@pytest.mark.parametrize("override, message", [
    ("model.norm=layer", "model.norm='layer' is not valid"),
    ("schedule.max_iter=0", "schedule.max_iter=0 is not valid: must be an integer in [1, 2147483647]"),
    ("schedule.base_lr=-1", "schedule.base_lr=-1 is not valid: must be a number > 0"),
    ("loss=nope", "unknown loss option 'nope'"),
    ("model.anchor_sizes=[8,16]", "one positive size per pyramid level"),
    ("data.image_size=8", "data.image_size"),
    ("gamma=-1", "gamma"),
    ("weight=heavy", "weight='heavy' is not valid: must be a number >= 0 or 'stock' (the detector's own box-loss weight)"),
])
def test_bad_input_is_one_line_and_creates_nothing(override, message, tmp_path, capsys):
    root = tmp_path / "runs"
    code, out, err = cli(capsys, "train", override, *TINY, f"runs_root={root}")
    assert code == 2
    assert err.startswith("bbrctl: error:") and err.count("\n") == 1 and message in err, err
    assert not root.exists()


def test_missing_coco_files_are_reported_before_anything_is_created(tmp_path, capsys):
    root = tmp_path / "runs"
    code, _, err = cli(capsys, "train", "data=coco", f"data.root={tmp_path / 'nowhere'}", f"runs_root={root}")
    assert code == 2 and "does not exist" in err and "data.train_images" in err
    assert not root.exists()


def test_run_dir_errors(tmp_path, capsys):
    code, _, err = cli(capsys, "train", "--run-dir", str(tmp_path / "none"))
    assert code == 2 and "does not exist" in err
    code, _, err = cli(capsys, "train", "--run-dir", str(tmp_path), "loss=eiou")
    assert code == 2 and "takes no overrides" in err


def _prepare(run_dir: Path, overrides: list[str]) -> dict:
    from bbrctl.config import compose, signature, to_container

    cfg = to_container(compose(overrides))
    store.prepare_run_dir(run_dir, cfg, signature=signature(cfg), name="t", overrides=overrides)
    return cfg


@pytest.mark.slow
def test_a_diverging_run_is_recorded_as_failed(tmp_path, capsys):
    run_dir = tmp_path / "run"
    _prepare(run_dir, ["model=retinanet", "loss=eiou", *ONE_STAGE, *TINY, "schedule.base_lr=1e30",
                       "schedule.clip_grad_norm=null", "schedule.warmup_iters=0"])
    code, _, err = cli(capsys, "train", "--run-dir", str(run_dir), "--no-progress")
    last = err.strip().splitlines()[-1]  # progress lines come first, the error last
    assert code == 1 and last.startswith("bbrctl: error: training failed:") and "non-finite" in last
    res = store.read_json(run_dir / store.RESULTS)
    assert res["status"] == "failed" and "non-finite" in res["error"] and res["metrics"] == {}
    assert store.read_status(run_dir)["state"] == "failed"
    assert "Traceback" in (run_dir / store.LOG).read_text()


def test_a_bad_prepared_config_is_recorded_as_failed(tmp_path, capsys):
    run_dir = tmp_path / "run"
    cfg = _prepare(run_dir, ["model=retinanet", *TINY])
    cfg["schedule"]["batch_size"] = 0
    import yaml

    (run_dir / store.CONFIG).write_text(yaml.safe_dump(cfg))
    code, _, err = cli(capsys, "train", "--run-dir", str(run_dir))
    assert code == 2 and "schedule.batch_size" in err
    res = store.read_json(run_dir / store.RESULTS)
    assert res["status"] == "failed" and "schedule.batch_size" in res["error"]


# --------------------------------------------------------------------------- schedule


def test_learning_rate_schedule():
    from bbrctl.detection.train.engine import lr_factor, scaled_lr

    s = {"base_lr": 0.01, "batch_size": 4, "base_batch_size": 16, "warmup_iters": 100, "warmup_factor": 0.001,
         "steps": [50000, 70000, 80000], "gamma": 0.1}
    assert scaled_lr(s) == pytest.approx(0.0025)  # linear scaling to the actual batch
    assert lr_factor(0, s) == pytest.approx(0.001)
    assert lr_factor(50, s) == pytest.approx(0.001 + 0.999 * 0.5)
    assert lr_factor(100, s) == 1.0 and lr_factor(49999, s) == 1.0
    assert lr_factor(50000, s) == pytest.approx(0.1)
    assert lr_factor(70000, s) == pytest.approx(0.01)
    assert lr_factor(89999, s) == pytest.approx(0.001)


def test_shipped_schedules_are_valid_and_paper_90k_is_the_papers():
    from bbrctl.config import compose, group_options, to_container, validate

    for name in group_options("schedule"):
        validate(to_container(compose([f"schedule={name}"])))
    s = to_container(compose(["schedule=paper_90k"]))["schedule"]
    assert (s["max_iter"], s["batch_size"], s["base_lr"], s["steps"], s["gamma"], s["momentum"], s["weight_decay"]) \
        == (90000, 16, 0.01, [50000, 70000, 80000], 0.1, 0.9, 1e-4)


# --------------------------------------------------------------------------- wandb


def test_wandb_mode_resolution(monkeypatch, tmp_path):
    from bbrctl.detection.tracking import wandb_run as ws

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert ws.resolve_mode("online") == "offline"
    assert ws.resolve_mode("disabled") == "disabled" and ws.resolve_mode(None) == "disabled"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert ws.resolve_mode("online") == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert ws.resolve_mode("online") == "disabled"
    monkeypatch.setenv("WANDB_MODE", "sometimes")
    from bbrctl.errors import UserError

    with pytest.raises(UserError, match="valid: online, offline, disabled"):
        ws.resolve_mode(None)


@pytest.mark.slow
def test_offline_wandb_run_is_named_after_the_run_dir(tmp_path, capsys, monkeypatch):
    from bbrctl.detection.tracking.wandb_run import run_id

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = tmp_path / "run"
    _prepare(run_dir, ["model=retinanet", "loss=giou", *ONE_STAGE, *TINY, "wandb.mode=offline",
                       "schedule.max_iter=2", "schedule.steps=[1]"])
    code, _, err = cli(capsys, "train", "--run-dir", str(run_dir), "--no-progress")
    assert code == 0, err
    found = list((run_dir / "wandb").glob(f"offline-run-*-{run_id(run_dir)}"))
    assert found, list((run_dir / "wandb").iterdir())


def test_train_module_needs_no_torch_to_validate():
    import subprocess
    import sys

    code = ("import sys; from bbrctl import preflight; from bbrctl.config import compose, to_container, validate;"
            "cfg = to_container(compose([])); validate(cfg); preflight.check_files(cfg);"
            "assert 'torch' not in sys.modules")
    env = {**os.environ, "BBRCTL_DATA_DIR": "/nonexistent"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_backbone_lr_factor_builds_two_param_groups(optimizer):
    # Schema-valid with every optimizer: SGD's fused-kernel check once read param groups as tensors.
    import torch

    from bbrctl.detection.train.engine import build_optimizer

    model = torch.nn.Module()
    model.backbone = torch.nn.Module()
    model.backbone.body = torch.nn.Linear(2, 2)
    model.head = torch.nn.Linear(2, 1)
    sched = {"base_lr": 0.01, "batch_size": 4, "base_batch_size": 16, "optimizer": optimizer,
             "backbone_lr_factor": 0.1}
    opt = build_optimizer(model, sched)
    scales = sorted(g["lr_scale"] for g in opt.param_groups)
    assert scales == [0.1, 1.0]
    trunk = next(g for g in opt.param_groups if g["lr_scale"] == 0.1)
    assert {id(p) for p in trunk["params"]} == {id(p) for p in model.backbone.body.parameters()}
    loss = model.head(model.backbone.body(torch.ones(1, 2))).sum()
    loss.backward()
    opt.step()


@pytest.mark.parametrize("device, message", [
    ("cuda:3", "--device 'cuda:3' is not valid; valid: auto, cpu, cuda"),
    ("tpu", "--device 'tpu' is not valid; valid: auto, cpu, cuda"),
])
def test_a_bad_device_creates_no_run_directory(tmp_path, capsys, device, message):
    code, _, err = cli(capsys, "train", *TINY, f"runs_root={tmp_path / 'runs'}", "--device", device)
    assert code == 2 and err.strip() == f"bbrctl: error: {message}"
    assert not (tmp_path / "runs").exists()
