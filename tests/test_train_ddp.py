"""DDP under torchrun, on the CPU with the gloo backend (world size 2).

A CUDA/NCCL run cannot be tested on this machine; this one exercises the same code path:
process-group init from torchrun's environment, the per-rank shard of the global batch,
metric all-reduce, per-rank RNG states in the checkpoint, sharded evaluation gathered on
rank 0, and rank 0 alone writing the run directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bbrctl import store
from bbrctl.detection.train.checkpoint import load_checkpoint

DDP = ["model=faster_rcnn", "loss=focal_eiou", "model.loss_in_rpn=true", "data=shapes_tiny", "schedule=smoke",
       "backbone=resnet_tiny", "backbone.widths=[8,16,32,64]", "backbone.fpn_channels=32", "model.box_head_dim=32",
       "model.box_batch_size_per_image=64", "model.rpn_post_nms_top_n_train=128", "model.rpn_post_nms_top_n_test=64"]


@pytest.mark.slow
def test_torchrun_two_cpu_processes(tmp_path):
    from bbrctl.config import compose, signature, to_container

    run_dir = tmp_path / "ddp"
    cfg = to_container(compose([*DDP, "schedule.max_iter=4", "schedule.batch_size=4"]))
    store.prepare_run_dir(run_dir, cfg, signature=signature(cfg), name="ddp", overrides=DDP)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "bbrctl", "train", "--run-dir", str(run_dir), "--device", "cpu", "--no-progress"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = store.read_json(run_dir / store.RESULTS)
    assert res["status"] == "done" and res["world_size"] == 2 and res["iteration"] == 4
    assert sorted(res["metrics"]["bbox"]) == sorted(store.AP_KEYS)
    lines = [json.loads(x) for x in (run_dir / store.METRICS).read_text().splitlines()]
    assert [x["iteration"] for x in lines if "loss" in x] == [1, 2, 3, 4]  # written once, by rank 0
    import torch

    ck = load_checkpoint(run_dir / store.CHECKPOINTS / "last.pt")
    assert len(ck["rng"]) == 2 and not torch.equal(ck["rng"][0]["torch"], ck["rng"][1]["torch"])
    assert "world size 2, batch 4" in (run_dir / store.LOG).read_text()
