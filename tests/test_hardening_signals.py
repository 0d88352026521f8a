"""Hardening, signals with proof: `sweep --cancel` and every "is it running" check act on a pid
only when its recorded process start time matches the live process (bbrctl.store.procs).

A hand-made sweep.json or status.json in a group-writable runs root names a pid; without its
start time (or with another one) that process is never signalled and never counts as running.
A time stamp from the future (clock skew, or a crafted file) does not keep a job live.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

import pytest
from helpers import run_cli

from bbrctl import config as C
from bbrctl import status as S
from bbrctl.launch import cancel
from bbrctl.store import RunDir, atomic_write_json, prepare_run_dir, write_status
from bbrctl.store.procs import pid_alive, proc_start_time

TINY = ["data=shapes_tiny", "schedule=smoke", "model.min_size=64", "model.max_size=64"]


@pytest.fixture()
def bystander():
    """Someone else's process on this host (here a child, so the test can see it die)."""
    p = subprocess.Popen(["sleep", "120"])
    yield p
    p.kill()
    p.wait()


def _sweep(root: Path, name="s") -> tuple[Path, Path]:
    sweep = root / name
    run = sweep / "job-1234567890"
    cfg = C.to_container(C.compose(TINY))
    sig = C.signature(cfg)
    prepare_run_dir(run, cfg, signature=sig, name="job", sweep=name)
    return sweep, run


def _manifest(sweep: Path, run: Path, **launch):
    sig = json.loads(RunDir(run).job.read_text())["signature"]
    atomic_write_json(sweep / "sweep.json", {
        "name": sweep.name, "jobs": {sig: {"dir": run.name, "name": "job", "index": 0}},
        "launches": [{"id": 1, "time": time.time(), "launcher": "local", "jobs": [sig], "host": socket.gethostname(),
                      **launch}]})


def _alive(p) -> bool:
    return p.poll() is None


@pytest.mark.parametrize("start", [None, "absent", "12345", 0.5, True])
def test_issue_probe_a_manifest_pid_without_matching_start_time_is_not_signalled(start, bystander, tmp_path):
    sweep, run = _sweep(tmp_path / "runs")
    launch = {"pid": bystander.pid} if start == "absent" else {"pid": bystander.pid, "pid_start": start}
    _manifest(sweep, run, **launch)
    out = run_cli(["sweep", "--cancel", "s", "--runs-root", str(tmp_path / "runs")], tmp_path)
    assert out.returncode in (0, 2) and "Traceback" not in out.stderr, out.stderr
    time.sleep(0.3)
    assert _alive(bystander)


@pytest.mark.parametrize("start", ["absent", None, "other"])
def test_a_status_pid_without_matching_start_time_is_not_signalled_nor_running(start, bystander, tmp_path):
    sweep, run = _sweep(tmp_path / "runs")
    st = {"state": "running", "updated": time.time(), "pid": bystander.pid, "host": socket.gethostname()}
    if start != "absent":
        st["pid_start"] = None if start is None else proc_start_time(bystander.pid) + 7
    RunDir(run).status.write_text(json.dumps(st))
    (job,) = S.sweep_jobs(sweep)
    assert not job.active and job.state == "failed" and "lost" in job.note
    out = cancel(str(sweep), tmp_path / "runs", wait_s=1)
    assert out["local_stopped"] == [] and _alive(bystander)


def test_control_a_matching_start_time_is_signalled(bystander, tmp_path):
    """The same probe with the real start time: proof given, the process is stopped (the test can fail)."""
    sweep, run = _sweep(tmp_path / "runs")
    _manifest(sweep, run, pid=bystander.pid, pid_start=proc_start_time(bystander.pid), mode="background")
    out = cancel(str(sweep), tmp_path / "runs", wait_s=10)
    assert out["local_stopped"] == [bystander.pid]
    assert bystander.wait(10) == -15


def test_pid_alive_needs_the_start_time(bystander):
    start = proc_start_time(bystander.pid)
    assert pid_alive(bystander.pid, start)
    for bad in (None, start + 1, "x", True, float("nan")):
        assert not pid_alive(bystander.pid, bad)
    for pid in (None, 0, -1, True, 1 << 40, "1"):
        assert not pid_alive(pid, start)


@pytest.mark.parametrize("ahead_s, live", [(10, True), (-10, True), (1e6, False), (1e12, False), (-1e6, False)])
def test_a_future_updated_time_does_not_keep_a_remote_job_live(ahead_s, live, tmp_path):
    sweep, run = _sweep(tmp_path / "runs")
    write_status(run, "running", iteration=1, max_iter=9)
    st = json.loads(RunDir(run).status.read_text())
    st.update(host="some-other-node", updated=time.time() + ahead_s)
    RunDir(run).status.write_text(json.dumps(st))
    (job,) = S.sweep_jobs(sweep)
    assert job.active is live
    assert job.state == ("running" if live else "failed")


def test_a_reused_pid_of_our_own_status_is_not_running(tmp_path):
    sweep, run = _sweep(tmp_path / "runs")
    write_status(run, "running", iteration=1, max_iter=9)
    (job,) = S.sweep_jobs(sweep)
    assert job.active                                      # control: our own live process, start time matches
    st = json.loads(RunDir(run).status.read_text())
    del st["pid_start"]
    RunDir(run).status.write_text(json.dumps(st))
    (job,) = S.sweep_jobs(sweep)
    assert not job.active and job.state == "failed"


def test_a_non_numeric_start_time_in_status_is_damaged_not_a_traceback(tmp_path):
    sweep, run = _sweep(tmp_path / "runs")
    RunDir(run).status.write_text(json.dumps({"state": "running", "pid": 1, "pid_start": "soon"}))
    (job,) = S.sweep_jobs(sweep)
    assert job.state == "failed" and "pid_start" in job.note
