"""The local launcher: slots and GPUs, the supervisor (with stand-in jobs), and a real sweep
of tiny training jobs run in the background, followed, cancelled, resumed and re-run."""

from __future__ import annotations

import json
import os
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from helpers import run_cli, wait_until

from bbrctl.errors import UserError
from bbrctl.launch import local
from bbrctl.store import read_json

FAKE_JOB = textwrap.dedent("""\
    import json, os, signal, sys, time
    run_dir = sys.argv[1]
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    t0 = time.time()
    mode = open(os.path.join(run_dir, "mode")).read().strip() if os.path.exists(os.path.join(run_dir, "mode")) else "ok"
    while time.time() - t0 < float(os.environ.get("FAKE_S", "0.6")) and not stop:
        time.sleep(0.02)
    rec = {"start": t0, "end": time.time(), "gpus": os.environ.get("CUDA_VISIBLE_DEVICES"),
           "launcher": os.environ.get("BBRCTL_LAUNCHER"), "omp": os.environ.get("OMP_NUM_THREADS")}
    open(os.path.join(run_dir, "rec.json"), "w").write(json.dumps(rec))
    if stop:
        sys.exit(75)
    if mode == "crash":
        sys.exit(3)
    open(os.path.join(run_dir, "results.json"), "w").write(json.dumps({"status": "done", "metrics": {}}))
""")


def fake_command(run_dir, gpus_per_job):
    return [sys.executable, "-c", FAKE_JOB, str(run_dir)]


def make_dirs(tmp_path, n):
    dirs = []
    for i in range(n):
        d = tmp_path / f"job{i}"
        d.mkdir()
        (d / "job.json").write_text(json.dumps({"signature": f"s{i}", "name": f"job{i}"}))
        dirs.append(d)
    return dirs


def test_settings_slots_and_gpus():
    s = local.settings({"max_parallel": "auto", "gpus_per_job": 2}, gpus=["0", "1", "2", "3", "4"])
    assert s.max_parallel == 2 and s.gpu_groups == [["0", "1"], ["2", "3"]]
    assert local.settings({"max_parallel": 8, "gpus_per_job": 1}, gpus=["0", "1"]).max_parallel == 2
    assert local.settings({"max_parallel": "auto", "gpus_per_job": 1}, gpus=[]).max_parallel == 1
    assert local.settings({"max_parallel": 3, "gpus_per_job": 1}, gpus=[]).max_parallel == 3
    assert local.settings({"max_parallel": 1, "gpus_per_job": 0}, gpus=["0"]).hide_gpus
    with pytest.raises(UserError, match="only 2 GPU"):
        local.settings({"gpus_per_job": 3}, gpus=["0", "1"])
    with pytest.raises(UserError, match="max_parallel"):
        local.settings({"max_parallel": 0, "gpus_per_job": 1}, gpus=[])
    assert "torch.distributed.run" in local.train_command("/x", 2) and "--nproc-per-node=2" in local.train_command("/x", 2)
    assert local.train_command("/x", 1)[-4:] == ["bbrctl", "train", "--run-dir", "/x"]


def test_detect_gpus_reads_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    assert local.detect_gpus() == ["2", "5"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert local.detect_gpus() == []


def test_supervisor_caps_parallelism_and_gives_each_job_its_own_gpus(tmp_path):
    dirs = make_dirs(tmp_path, 6)
    cfg = local.settings({"max_parallel": "auto", "gpus_per_job": 2}, gpus=["0", "1", "2", "3"])
    codes = local.Supervisor(dirs, cfg, command=fake_command).run(poll_s=0.05)
    assert all(codes[str(d)] == 0 for d in dirs)
    recs = [json.loads((d / "rec.json").read_text()) for d in dirs]
    assert {r["launcher"] for r in recs} == {"local"}
    for i, a in enumerate(recs):
        overlapping = [b for b in recs[i + 1:] if b["start"] < a["end"] and a["start"] < b["end"]]
        assert len(overlapping) <= 1
        for b in overlapping:
            assert not set(a["gpus"].split(",")) & set(b["gpus"].split(","))
    assert {r["gpus"] for r in recs} == {"0,1", "2,3"}
    assert any(b["start"] < a["end"] and a["start"] < b["end"] for a in recs for b in recs if a is not b)


def test_parallel_cpu_jobs_split_the_cores(tmp_path, monkeypatch):
    cpu2 = local.settings({"max_parallel": 2, "gpus_per_job": 0}, gpus=[])
    assert local.cpu_threads_per_job(cpu2, environ={}, cores=8) == 4
    assert local.cpu_threads_per_job(cpu2, environ={}, cores=1) == 1
    assert local.cpu_threads_per_job(cpu2, environ={"OMP_NUM_THREADS": "3"}, cores=8) is None   # the user's
    cpu1 = local.settings({"max_parallel": 1, "gpus_per_job": 0}, gpus=[])
    assert local.cpu_threads_per_job(cpu1, environ={}, cores=8) is None                          # all cores
    gpus = local.settings({"max_parallel": 2, "gpus_per_job": 1}, gpus=["0", "1"])
    assert local.cpu_threads_per_job(gpus, environ={}, cores=8) is None
    # And the jobs see it.
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    dirs = make_dirs(tmp_path, 2)
    assert all(c == 0 for c in local.Supervisor(dirs, cpu2, command=fake_command).run(poll_s=0.05).values())
    want = str(local.cpu_threads_per_job(cpu2, environ={}))
    assert {json.loads((d / "rec.json").read_text())["omp"] for d in dirs} == {want}


def test_supervisor_records_crashes_and_skips_done_and_locked_jobs(tmp_path):
    import fcntl

    dirs = make_dirs(tmp_path, 3)
    (dirs[0] / "mode").write_text("crash")
    (dirs[1] / "results.json").write_text(json.dumps({"status": "done", "metrics": {"bbox": {"AP": 30.0}}}))
    fd = os.open(dirs[2] / local.RUN_LOCK, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)          # another launcher holds it
    try:
        codes = local.Supervisor(dirs, local.settings({"max_parallel": 2, "gpus_per_job": 0}, gpus=[]),
                                 command=fake_command).run(poll_s=0.05)
    finally:
        os.close(fd)
    assert codes[str(dirs[0])] == 3
    res = read_json(dirs[0] / "results.json")
    assert res["status"] == "failed" and "exited with code 3" in res["error"] and res["signature"] == "s0"
    assert codes[str(dirs[1])] == 0 and not (dirs[1] / "rec.json").exists()
    assert codes[str(dirs[2])] is None and not (dirs[2] / "rec.json").exists()


def test_supervisor_stop_asks_jobs_to_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_S", "60")
    dirs = make_dirs(tmp_path, 3)
    sup = local.Supervisor(dirs, local.settings({"max_parallel": 2, "gpus_per_job": 0}, gpus=[]), command=fake_command)
    threading.Timer(1.5, sup.request_stop).start()
    t = time.time()
    codes = sup.run(poll_s=0.05)
    assert time.time() - t < 30
    assert [codes.get(str(d)) for d in dirs] == [75, 75, None]     # the third never started
    assert not (dirs[0] / "results.json").exists()                  # 75 is not a failure


# --------------------------------------------------------------------------- real training jobs

# Long enough (several seconds on any machine) that the test sees the jobs running and can
# stop them mid-run (6 iterations finished before the first status poll on an idle machine).
ITERS = 300
TINY = ["data=shapes_tiny", "schedule=smoke", "backbone=resnet_tiny", f"schedule.max_iter={ITERS}",
        "schedule.checkpoint_period=5"]


cli = run_cli


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_local_sweep_background_cancel_resume_and_rerun(tmp_path):
    args = ["sweep", "loss=eiou,focal_eiou", *TINY, "launcher.max_parallel=2"]
    out = cli(args, tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "background supervisor" in out.stdout
    sweep_dir = tmp_path / "runs" / "loss"
    manifest = json.loads((sweep_dir / "sweep.json").read_text())
    (launch,) = manifest["launches"]
    assert launch["mode"] == "background"

    def status():
        r = cli(["status", "loss", "--json"], tmp_path, timeout=60)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    # Both start; once each has a checkpoint, cancel: they checkpoint and stop (exit 75).
    # (status.json's iteration is refreshed only every few seconds: the first checkpoint,
    # at iteration 5, is the sign that a job is under way.)
    def both_checkpointed():
        jobs = status()["jobs"]
        return all(j["state"] == "running" and any((Path(j["dir"]) / "checkpoints").glob("*.pt")) for j in jobs)
    assert wait_until(both_checkpointed, 300, every=0.2), status()
    # A second launch while they run launches nothing.
    again = cli(args, tmp_path, timeout=120)
    assert again.returncode == 0 and "nothing to launch" in again.stdout, again.stdout + again.stderr
    out = cli(["sweep", "--cancel", "loss"], tmp_path, timeout=60)
    assert out.returncode == 0 and str(launch["pid"]) in out.stdout, out.stdout + out.stderr
    def all_stopped():
        s = status()
        return s if all(j["state"] in ("requeued", "done") for j in s["jobs"]) else None
    st = wait_until(all_stopped, 180)
    assert st, status()
    stopped = [j for j in st["jobs"] if j["state"] == "requeued"]
    assert stopped, st                          # at least one was stopped mid-run
    assert "stopped" in (sweep_dir / "sweep.log").read_text()

    # Re-running resumes the stopped jobs from their checkpoints and waits for them.
    out = cli([*args, "--wait"], tmp_path, timeout=400)
    assert out.returncode == 0, out.stdout + out.stderr
    for j in stopped:
        log = (Path(j["dir"]) / "train.log").read_text()
        assert "resuming at iteration" in log
    for d in (p for p in sweep_dir.iterdir() if (p / "job.json").exists()):
        res = json.loads((d / "results.json").read_text())
        assert res["status"] == "done" and res["iteration"] == ITERS and "AP" in res["metrics"]["bbox"]
    # And once more: everything is done, nothing is launched.
    out = cli(args, tmp_path, timeout=120)
    assert out.returncode == 0 and "nothing to launch (2 done)" in out.stdout
    assert len(json.loads((sweep_dir / "sweep.json").read_text())["launches"]) == 2
