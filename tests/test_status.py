"""`bbrctl status`: job states from run directories, scheduler view, JSON, speed, no torch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bbrctl import status as S
from bbrctl.store import atomic_write_json, write_status
from bbrctl.store.manifest import save_manifest
from bbrctl.store.procs import proc_start_time


def make_run(sweep_dir: Path, name: str, sig: str, results=None, status=None) -> Path:
    d = sweep_dir / f"{name}-{sig}"
    d.mkdir(parents=True)
    atomic_write_json(d / "job.json", {"signature": sig, "name": name, "sweep": sweep_dir.name, "overrides": [],
                                       "created": time.time(), "config": {"loss": {"name": "eiou"}}})
    if status is not None:
        atomic_write_json(d / "status.json", status)
    if results is not None:
        atomic_write_json(d / "results.json", results)
    return d


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.fixture
def sweep_dir(tmp_path):
    return tmp_path / "runs" / "demo"


def test_states_progress_and_ap(sweep_dir):
    host = socket.gethostname()
    make_run(sweep_dir, "a", "1111111111", results={"status": "done", "iteration": 8, "max_iter": 8,
                                                    "metrics": {"bbox": {"AP": 37.51, "AP50": 56.0}}})
    make_run(sweep_dir, "b", "2222222222", results={"status": "failed", "error": "CUDA out of\nmemory"})
    # A pid counts as running only with its recorded start time (store.procs.pid_alive).
    make_run(sweep_dir, "c", "3333333333", status={"state": "running", "iteration": 3, "max_iter": 12,
                                                  "pid": os.getpid(), "pid_start": proc_start_time(os.getpid()),
                                                  "host": host, "updated": time.time()})
    make_run(sweep_dir, "d", "4444444444", status={"state": "running", "iteration": 5, "max_iter": 12,
                                                  "pid": dead_pid(), "host": host, "updated": time.time()})
    make_run(sweep_dir, "e", "5555555555", status={"state": "requeued", "iteration": 6, "max_iter": 12})
    make_run(sweep_dir, "f", "6666666666")
    make_run(sweep_dir, "g", "7777777777", status={"state": "running", "iteration": 1, "max_iter": 12,
                                                  "pid": 1, "host": "elsewhere", "updated": time.time() - 30})
    jobs = {j.name: j for j in S.sweep_jobs(sweep_dir)}
    assert jobs["a"].state == "done" and jobs["a"].ap == pytest.approx(37.51) and jobs["a"].progress == 1.0
    assert jobs["b"].state == "failed" and jobs["b"].note == "CUDA out of memory"
    assert jobs["c"].state == "running" and jobs["c"].active and jobs["c"].progress == pytest.approx(0.25)
    assert jobs["d"].state == "failed" and not jobs["d"].active and "lost" in jobs["d"].note
    assert jobs["e"].state == "requeued" and not jobs["e"].active
    assert jobs["f"].state == "pending"
    assert jobs["g"].state == "running" and jobs["g"].active and "elsewhere" in jobs["g"].note
    assert S.counts(jobs.values()) == {"pending": 1, "running": 2, "requeued": 1, "done": 1, "failed": 2}


def test_slurm_queue_decides_what_is_alive(sweep_dir, monkeypatch):
    sigs = ["1111111111", "2222222222", "3333333333", "4444444444"]
    for i, sig in enumerate(sigs):
        make_run(sweep_dir, f"j{i}", sig)
    write_status(sweep_dir / f"j1-{sigs[1]}", "running", iteration=2, max_iter=9)
    atomic_write_json(sweep_dir / f"j2-{sigs[2]}" / "status.json",
                      {"state": "running", "iteration": 4, "max_iter": 9, "host": "node7", "pid": 5, "updated": time.time()})
    write_status(sweep_dir / f"j3-{sigs[3]}", "requeued", iteration=4, max_iter=9)
    save_manifest(sweep_dir, {"name": "demo", "jobs": {s: {"dir": f"j{i}-{s}", "name": f"j{i}"} for i, s in enumerate(sigs)},
                              "launches": [{"id": 1, "launcher": "slurm", "array_job_id": "77", "time": 0,
                                            "jobs": sigs, "tasks": {s: i for i, s in enumerate(sigs)}}]})
    from bbrctl.status import slurm_queue as slurm

    monkeypatch.setattr(slurm, "squeue", lambda ids=None: {"77_0": "PENDING", "77_1": "RUNNING", "77_3": "PENDING"})
    monkeypatch.setattr(slurm, "sacct", lambda ids: {"77_2": "NODE_FAIL"})
    jobs = {j.name: j for j in S.sweep_jobs(sweep_dir)}
    assert (jobs["j0"].state, jobs["j0"].active, jobs["j0"].slurm_id) == ("pending", True, "77_0")
    assert (jobs["j1"].state, jobs["j1"].active, jobs["j1"].slurm_state) == ("running", True, "RUNNING")
    # Left the queue without results: lost, even though status.json is fresh on another host.
    assert (jobs["j2"].state, jobs["j2"].active) == ("failed", False) and "NODE_FAIL" in jobs["j2"].note
    assert (jobs["j3"].state, jobs["j3"].active) == ("requeued", True)
    # squeue unreachable: the run directory is all there is, and nothing is relaunched blindly.
    monkeypatch.setattr(slurm, "squeue", lambda ids=None: None)
    jobs = {j.name: j for j in S.sweep_jobs(sweep_dir)}
    assert jobs["j0"].active and "unreachable" in jobs["j0"].note


def test_live_local_supervisor_owns_its_pending_jobs(sweep_dir):
    make_run(sweep_dir, "a", "1111111111")
    make_run(sweep_dir, "b", "2222222222", results={"status": "failed", "error": "x"})
    launch = {"id": 1, "launcher": "local", "time": 0, "jobs": ["1111111111", "2222222222"], "pid": os.getpid(),
              "pid_start": proc_start_time(os.getpid()), "host": socket.gethostname()}
    save_manifest(sweep_dir, {"name": "demo", "jobs": {"1111111111": {"dir": "a-1111111111", "name": "a"},
                                                       "2222222222": {"dir": "b-2222222222", "name": "b"}},
                              "launches": [launch]})
    jobs = {j.name: j for j in S.sweep_jobs(sweep_dir)}
    assert jobs["a"].active and jobs["a"].state == "pending"
    assert not jobs["b"].active and jobs["b"].state == "failed"   # launched before it failed: not retried
    # A reused pid is not the supervisor.
    launch["pid_start"] = -1
    save_manifest(sweep_dir, {"name": "demo", "jobs": {}, "launches": [launch]})
    assert not S.sweep_jobs(sweep_dir)[0].active


def test_cli_json_and_table(tmp_path, sweep_dir):
    make_run(sweep_dir, "a", "1111111111", results={"status": "done", "metrics": {"bbox": {"AP": 12.0}}})
    make_run(sweep_dir, "b", "2222222222")
    env = {**os.environ, "BBRCTL_RUNS_ROOT": str(tmp_path / "runs")}
    out = subprocess.run([sys.executable, "-m", "bbrctl", "status", "demo", "--json"], capture_output=True, text=True,
                         env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["counts"]["done"] == 1 and data["counts"]["pending"] == 1
    assert {j["name"]: j["ap"] for j in data["jobs"]} == {"a": 12.0, "b": None}
    out = subprocess.run([sys.executable, "-m", "bbrctl", "status"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0 and "demo" in out.stdout
    out = subprocess.run([sys.executable, "-m", "bbrctl", "status", "nope"], capture_output=True, text=True, env=env,
                         cwd=tmp_path)
    assert out.returncode == 2 and "no sweep 'nope'" in out.stderr and "demo" in out.stderr


def test_status_over_many_runs_is_fast_and_light(tmp_path):
    """1,000 run dirs in well under the 1 s budget, without importing torch (benchmarks/sweep.py measures it)."""
    sweep_dir = tmp_path / "runs" / "big"
    for i in range(300):
        make_run(sweep_dir, f"seed={i}", f"{i:010d}", results={"status": "done", "metrics": {"bbox": {"AP": 1.0}}}
                 if i % 2 else None, status={"state": "running", "iteration": 1, "max_iter": 9,
                                             "host": "elsewhere", "updated": time.time()})
    code = ("import sys, time\nfrom bbrctl.cli import main\nt = time.perf_counter()\n"
            f"try:\n    main(['status', 'big', '--json', '--runs-root', {str(tmp_path / 'runs')!r}])\n"
            "except SystemExit:\n    pass\n"
            "print('T=%f' % (time.perf_counter() - t), 'torch' in sys.modules, file=sys.stderr)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert len(data["jobs"]) == 300 and data["counts"]["done"] == 150
    t, torch_loaded = out.stderr.strip().splitlines()[-1].split()
    assert torch_loaded == "False"
    assert float(t[2:]) < 5.0    # generous: shared 2-core CI machine
