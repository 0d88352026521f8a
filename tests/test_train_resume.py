"""Resume after a kill ends exactly where an uninterrupted run ends (CPU).

Faster R-CNN is used because its RPN and RoI heads sample foreground/background with
torch's global RNG: resuming bitwise needs the RNG state restored, not only the weights
and the data position.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bbrctl import store
from bbrctl.detection.train.checkpoint import load_checkpoint

OVERRIDES = ["model=faster_rcnn", "loss=giou", "model.loss_in_rpn=true", "data=shapes_tiny", "schedule=smoke",
             "schedule.max_iter=14", "schedule.checkpoint_period=4", "schedule.log_period=1", "schedule.steps=[10]",
             "backbone=resnet_tiny", "backbone.widths=[8,16,32,64]", "backbone.fpn_channels=32",
             "model.box_head_dim=32", "model.box_batch_size_per_image=64", "model.rpn_post_nms_top_n_train=128",
             "model.rpn_post_nms_top_n_test=64"]


def prepare(run_dir: Path) -> None:
    from bbrctl.config import compose, signature, to_container

    cfg = to_container(compose(OVERRIDES))
    store.prepare_run_dir(run_dir, cfg, signature=signature(cfg), name="resume", overrides=OVERRIDES)


def start(run_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # same arithmetic in every process
    return subprocess.Popen([sys.executable, "-m", "bbrctl", "train", "--run-dir", str(run_dir), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out + err


def checkpoint_iteration(run_dir: Path) -> int:
    path = run_dir / store.CHECKPOINTS / "last.pt"
    if not path.exists():
        return 0
    return int(load_checkpoint(path)["iteration"])


def wait_for(cond, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"training ended early (rc {proc.returncode}): {proc.communicate()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for the training process")
        time.sleep(0.05)


def train_losses(run_dir: Path) -> dict[int, dict]:
    out = {}
    for line in (run_dir / store.METRICS).read_text().splitlines():
        rec = json.loads(line)
        if "loss" in rec:
            assert rec["iteration"] not in out, f"iteration {rec['iteration']} logged twice"
            out[rec["iteration"]] = {k: v for k, v in rec.items() if k not in ("time", "data_time")}
    return out


def final_weights(run_dir: Path) -> dict:
    from bbrctl.detection.train.checkpoint import load_checkpoint

    return load_checkpoint(run_dir / store.CHECKPOINTS / "last.pt")["model"]


@pytest.mark.slow
def test_killed_runs_resume_to_the_same_weights_and_metrics(tmp_path):
    import torch

    full, term, kill = tmp_path / "full", tmp_path / "term", tmp_path / "kill"
    for d in (full, term, kill):
        prepare(d)

    # Both interrupted runs go at once, beside the reference run: the machine has 2 cores.
    ref = start(full)
    p_term, p_kill = start(term), None

    # SIGTERM mid-way: checkpoint at the end of the current iteration, status requeued, exit 75.
    wait_for(lambda: checkpoint_iteration(term) >= 4, p_term)
    p_term.send_signal(signal.SIGTERM)
    rc, log = finish(p_term)
    assert rc == 75, log
    stopped_at = checkpoint_iteration(term)
    assert 4 <= stopped_at < 14
    assert store.read_status(term)["state"] == "requeued" and not (term / store.RESULTS).exists()
    assert max(train_losses(term)) == stopped_at  # logs flushed up to the checkpoint

    # SIGKILL: no chance to save; the restart goes back to the last periodic checkpoint
    # (iteration 4) and redoes the iterations logged since.
    p_kill = start(kill)
    wait_for(lambda: checkpoint_iteration(kill) >= 4 and len(train_losses(kill)) >= 6, p_kill)
    p_kill.kill()
    p_kill.wait()
    assert checkpoint_iteration(kill) < 14 and not (kill / store.RESULTS).exists()

    rc, log = finish(ref)
    assert rc == 0, log
    for d in (term, kill):
        rc, log = finish(start(d))
        assert rc == 0, log
        assert "resuming at iteration" in (d / store.LOG).read_text()

    want_w, want_losses = final_weights(full), train_losses(full)
    want_res = store.read_json(full / store.RESULTS)
    assert sorted(want_losses) == list(range(1, 15))
    for d in (term, kill):
        got = final_weights(d)
        assert got.keys() == want_w.keys()
        diff = [k for k in want_w if not torch.equal(got[k], want_w[k])]
        assert not diff, f"{d.name}: {len(diff)} tensors differ, e.g. {diff[:3]}"
        assert train_losses(d) == want_losses, d.name
        res = store.read_json(d / store.RESULTS)
        assert res["status"] == "done" and res["metrics"] == want_res["metrics"]
