"""Hardening: no code from a checkpoint, no writes outside the runs root, one trainer per run
directory, damaged state reported in one line (or recovered), full and read-only disks.

Real files, real processes, and a real small tmpfs where root can mount one. The kill -9 /
SIGTERM exact-resume checks live in tests/test_train_resume.py and keep holding.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import run_cli, wait_until

from bbrctl import config as C
from bbrctl.store import RunDir, prepare_run_dir, write_results, write_status

TINY = ["data=shapes_tiny", "schedule=smoke", "model.min_size=64", "model.max_size=64"]


def prepared(run_dir: Path, extra=(), name: str = "job") -> dict:
    cfg = C.to_container(C.compose([*TINY, *extra]))
    prepare_run_dir(run_dir, cfg, signature=C.signature(cfg), name=name, sweep="s")
    return cfg


def one_line_error(out, code=2, needle=""):
    lines = out.stderr.strip().splitlines()
    assert out.returncode == code, out.stdout + out.stderr
    assert lines and lines[-1].startswith("bbrctl: error: ") and needle in lines[-1], out.stderr
    assert "Traceback" not in out.stderr
    return lines[-1]


# --------------------------------------------------------------------------- security


class _Payload:
    """Unpickling this runs a shell command: what a crafted checkpoint would carry."""

    def __init__(self, canary: Path):
        self.canary = canary

    def __reduce__(self):
        return (os.system, (f"touch {self.canary}",))


def test_a_crafted_pickle_checkpoint_is_refused_and_runs_nothing(tmp_path):
    import torch

    run = tmp_path / "runs" / "s" / "job-x"
    prepared(run)
    canary = tmp_path / "PWNED"
    RunDir(run).checkpoints.mkdir()
    torch.save({"format": 2, "model": _Payload(canary)}, RunDir(run).checkpoints / "last.pt")
    out = run_cli(["train", "--run-dir", str(run), "--no-progress"], tmp_path)
    one_line_error(out, 2, "is not a checkpoint bbrctl can load safely")
    assert not canary.exists()
    # The same file where the old format kept it, and as the fallback: refused too.
    os.replace(RunDir(run).checkpoints / "last.pt", RunDir(run).checkpoints / "prev.pt")
    out = run_cli(["train", "--run-dir", str(run), "--no-progress"], tmp_path)
    one_line_error(out, 2, "no loadable checkpoint is left")
    assert not canary.exists()
    out = run_cli(["report", "--figure", "detections", "--run", str(run), "--out", str(tmp_path / "d.png")], tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr and not canary.exists()


@pytest.mark.parametrize("ovs", [
    ["backbone.name=/../../../../tmp/x"], ["backbone.name=../x"], ["data=coco", "data.name=../../x"],
    ["sweep.name=../x"], ["model.name=../x"], ["loss.name=../x"],
])
def test_traversal_values_in_name_forming_keys_are_refused(ovs, tmp_path):
    for argv in (["train", *ovs], ["sweep", *ovs], ["sweep", *ovs, "--dry-run"]):
        out = run_cli([*argv, "--runs-root", str(tmp_path / "runs")], tmp_path)
        one_line_error(out, 2, "is not")
    out = run_cli(["sweep", "seed=0,1", "--name", "../x", "--runs-root", str(tmp_path / "runs")], tmp_path)
    one_line_error(out, 2, "invalid sweep name")
    out = run_cli(["sweep", "seed=0,1", "--name", "ok\n", "--runs-root", str(tmp_path / "runs")], tmp_path)
    one_line_error(out, 2, "invalid sweep name")
    assert list(tmp_path.iterdir()) == [] and not Path("/tmp/x").exists()


def test_every_run_dir_name_is_one_safe_component():
    from bbrctl.train import run_name

    cfg = {"model": {"name": "retinanet"}, "backbone": {"name": "a/../../b"}, "loss": {"name": "x y"}}
    assert "/" not in run_name(cfg) and not run_name(cfg).startswith(".")


# --------------------------------------------------------------------------- one trainer


def test_two_trainers_of_one_directory_one_trains_one_exits_2(tmp_path):
    run = tmp_path / "job"
    prepared(run, ["schedule.max_iter=400", "schedule.steps=[]", "schedule.checkpoint_period=0",
                   "schedule.log_period=1"])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, "-m", "bbrctl", "train", "--run-dir", str(run), "--no-progress"],
                             cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(lambda: RunDir(run).metrics.exists(), 120), "the first trainer did not start"
        second = run_cli(["train", "--run-dir", str(run), "--no-progress"], tmp_path)
        line = one_line_error(second, 2, f"is being trained by bbrctl train (pid {first.pid} on ")
        assert "wait for it" in line
        lines = RunDir(run).metrics.read_text().splitlines()
        its = [json.loads(x)["iteration"] for x in lines if "loss" in json.loads(x)]
        assert len(its) == len(set(its)), "one iteration logged twice: two writers"
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
    assert first.returncode == 75


def test_a_supervisor_never_marks_a_job_another_trainer_holds_as_failed(tmp_path):
    from bbrctl.launch import local
    from bbrctl.store import locks

    run = tmp_path / "job"
    prepared(run)
    fd = locks.try_lock(RunDir(run).lock, "bbrctl train")        # a hand-started trainer holds it
    try:
        sup = local.Supervisor([run], local.settings({"max_parallel": 1, "gpus_per_job": 0}, gpus=[]))
        codes = sup.run(poll_s=0.1)
    finally:
        locks.release(fd)
    assert codes[str(run)] == 2 and not RunDir(run).results.exists()


def test_a_reused_pid_does_not_keep_a_dead_job_running(tmp_path):
    from bbrctl import status as S

    sweep = tmp_path / "s"
    run = sweep / "job-1234567890"
    prepared(run)
    write_status(run, "running", iteration=3, max_iter=9)
    st = json.loads(RunDir(run).status.read_text())
    assert st["pid"] == os.getpid() and st["pid_start"]
    (job,) = S.sweep_jobs(sweep)
    assert job.state == "running" and job.active
    st["pid_start"] = st["pid_start"] - 1000          # same pid, another process's start time
    RunDir(run).status.write_text(json.dumps(st))
    (job,) = S.sweep_jobs(sweep)
    assert job.state == "failed" and not job.active and "lost" in job.note


# --------------------------------------------------------------------------- damaged state


DAMAGED = [
    ("results.json", "{not json", "not valid JSON"),
    ("results.json", "[1, 2]", "must hold a JSON object"),
    ("results.json", '{"status": "done", "metrics": [1]}', "'metrics' must be a mapping"),
    ("results.json", '{"status": "done", "metrics": {"bbox": {"AP": 200}}}', "metrics.bbox.AP=200 is not a percentage"),
    ("results.json", '{"status": "finished"}', "'status' must be one of done, failed"),
    ("status.json", '{"state": "running", "pid": 1099511627776}', "'pid' must be a process id"),
    ("status.json", '{"state": 5}', "'state' must be one of"),
    ("status.json", "\x00\x01garbage", "not valid JSON"),
    ("results.json", '{"status": "failed", "error": "boom [/bold] [red]x"}', None),   # rich markup as text
]


@pytest.mark.parametrize("name, content, needle", DAMAGED, ids=[f"{n}:{c[:20]}" for n, c, _ in DAMAGED])
def test_a_damaged_file_is_one_line_and_leaves_the_rest_of_status_alone(name, content, needle, tmp_path):
    root = tmp_path / "runs"
    good, bad = root / "s" / "good-1111111111", root / "s" / "bad-2222222222"
    for d in (good, bad):
        prepared(d, name=d.name.split("-")[0])
    write_results(good, "done", signature="1111111111", metrics={"bbox": {"AP": 31.0}}, iteration=4, max_iter=4)
    (bad / name).write_text(content)
    for argv in (["status"], ["status", "s"], ["status", "s", "--json"]):
        out = run_cli([*argv, "--runs-root", str(root)], tmp_path)
        assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    out = run_cli(["status", "s", "--json", "--runs-root", str(root)], tmp_path)
    jobs = {j["name"]: j for j in json.loads(out.stdout)["jobs"]}
    assert jobs["good"]["state"] == "done" and jobs["good"]["ap"] == 31.0
    if needle is not None:
        assert jobs["bad"]["state"] == "failed" and needle in jobs["bad"]["note"] and name in jobs["bad"]["note"]
    else:
        assert "[/bold] [red]x" in run_cli(["status", "s", "--runs-root", str(root)], tmp_path).stdout.replace("\n", "")
    out = run_cli(["report", "--table", "1", "--runs-root", str(root), "--out", "-"], tmp_path)
    assert out.returncode in (0, 2) and "Traceback" not in out.stderr, out.stderr


def test_a_damaged_results_file_is_set_aside_and_the_job_runs_again(tmp_path):
    run = tmp_path / "job"
    prepared(run)
    RunDir(run).results.write_text('{"status": "done", "metrics": []}')
    out = run_cli(["train", "--run-dir", str(run), "--no-progress"], tmp_path)
    assert out.returncode == 0, out.stderr
    assert "moved aside" in out.stderr and "Traceback" not in out.stderr
    assert json.loads(RunDir(run).results.read_text())["status"] == "done"
    assert len(list(run.glob("results.json.damaged-*"))) == 1


@pytest.mark.parametrize("name, content, needle", [
    ("job.json", "[]", "job.json: must hold a JSON object"),
    ("config.yaml", "a: [", "is not valid YAML"),
    ("config.yaml", "- 1\n", "does not hold a config mapping"),
])
def test_damaged_identity_files_stop_train_with_one_line(name, content, needle, tmp_path):
    run = tmp_path / "job"
    prepared(run)
    (run / name).write_text(content)
    one_line_error(run_cli(["train", "--run-dir", str(run), "--no-progress"], tmp_path), 2, needle)


def test_a_damaged_sweep_manifest_is_one_line_and_other_sweeps_still_show(tmp_path):
    root = tmp_path / "runs"
    for s in ("a", "b"):
        prepared(root / s / "job-1111111111")
        (root / s / "sweep.json").write_text(json.dumps({"name": s, "jobs": {}, "launches": []}))
    (root / "b" / "sweep.json").write_text('{"jobs": [1]}')
    out = run_cli(["status", "--runs-root", str(root), "--json"], tmp_path)
    rows = {r["sweep"]: r for r in json.loads(out.stdout)["sweeps"]}
    assert out.returncode == 0 and rows["a"]["jobs"] == 1 and "sweep.json" in rows["b"]["damaged"]
    one_line_error(run_cli(["status", "b", "--runs-root", str(root)], tmp_path), 2, "'jobs' must be a mapping")


# --------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished smoke run with checkpoints at iterations 2 and 4 (prev.pt and last.pt)."""
    work = tmp_path_factory.mktemp("ckpt")
    run = work / "job"
    prepared(run, ["schedule.checkpoint_period=2"])
    out = run_cli(["train", "--run-dir", str(run), "--no-progress"], work, timeout=300)
    assert out.returncode == 0, out.stderr
    ck = RunDir(run).checkpoints
    assert sorted(p.name for p in ck.iterdir()) == ["last.pt", "prev.pt"]
    return run


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    (dst / "results.json").unlink()
    return dst


def test_damaged_metrics_lines_are_dropped_on_resume(trained, tmp_path):
    run = _copy(trained, tmp_path / "job")
    good = RunDir(run).metrics.read_text()
    RunDir(run).metrics.write_text(good + '{"iteration": "abc"}\n[1]\n{"iteration": 99, "loss": 1}\n\x00garbage\n')
    out = run_cli(["train", "--run-dir", str(run), "--no-progress"], tmp_path, timeout=300)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    recs = [json.loads(x) for x in RunDir(run).metrics.read_text().splitlines()]
    assert all(isinstance(r["iteration"], int) and r["iteration"] <= 4 for r in recs)


def test_checkpoints_keep_the_last_two_and_verify_on_load(trained):
    from bbrctl.detection.train.checkpoint import load_checkpoint

    ck = RunDir(trained).checkpoints
    assert load_checkpoint(ck / "last.pt")["iteration"] == 4
    assert load_checkpoint(ck / "prev.pt")["iteration"] == 2


@pytest.mark.parametrize("damage", ["garble", "truncate"])
def test_a_damaged_last_checkpoint_falls_back_to_the_previous_one(damage, trained, tmp_path):
    run = _copy(trained, tmp_path / "job")
    last = RunDir(run).checkpoints / "last.pt"
    data = bytearray(last.read_bytes())
    if damage == "garble":
        mid = len(data) // 2
        data[mid:mid + 64] = bytes(64)
    else:
        data = data[: len(data) // 3]
    last.write_bytes(bytes(data))
    out = run_cli(["train", "--run-dir", str(run), "--no-progress"], tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr
    log = RunDir(run).log.read_text()
    assert "resuming from prev.pt (iteration 2) instead" in log and "resuming at iteration 2/4" in log
    assert ("fails its checksum" in log) if damage == "garble" else ("truncated" in log or "checksum" in log)


def test_no_loadable_checkpoint_is_one_line_with_what_to_do(trained, tmp_path):
    run = _copy(trained, tmp_path / "job")
    for name in ("last.pt", "prev.pt"):
        (RunDir(run).checkpoints / name).write_bytes(b"PK\x03\x04 not really")
    one_line_error(run_cli(["train", "--run-dir", str(run), "--no-progress"], tmp_path), 2,
                   "no loadable checkpoint is left: delete")


def test_temp_files_of_an_interrupted_save_are_removed_on_the_next_start(trained, tmp_path):
    run = _copy(trained, tmp_path / "job")
    stale = [RunDir(run).checkpoints / ".last.pt.abc123.tmp", run / ".results.json.x1.tmp"]
    for p in stale:
        p.write_bytes(b"half")
    out = run_cli(["train", "--run-dir", str(run), "--no-progress"], tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr
    assert not any(p.exists() for p in stale)


def test_logged_iterations_reach_metrics_before_the_checkpoint(tmp_path):
    """A kill right after a checkpoint loses no logged iteration (log period 5, checkpoint 2)."""
    from bbrctl.detection.train import distributed, engine
    from bbrctl.store import read_config

    run = tmp_path / "job"
    prepared(run, ["schedule.max_iter=6", "schedule.steps=[]", "schedule.checkpoint_period=2",
                   "schedule.log_period=5"])
    cfg = read_config(run)

    class Killed(Exception):
        pass

    def kill(iteration):
        raise Killed(iteration)

    dist = distributed.setup_distributed("cpu")
    with pytest.raises(Killed):
        engine.run(cfg, run, dist, progress=False, on_checkpoint=kill)
    its = [json.loads(x)["iteration"] for x in RunDir(run).metrics.read_text().splitlines()]
    assert its == [1, 2]
    engine.run(cfg, run, dist, progress=False)
    its = [json.loads(x)["iteration"] for x in RunDir(run).metrics.read_text().splitlines()
           if "loss" in json.loads(x)]
    assert its == [1, 2, 3, 4, 5, 6]


# --------------------------------------------------------------------------- full and read-only disks


@pytest.fixture
def small_fs(tmp_path):
    """A real 1 MiB tmpfs (root only); yields (mount point, 'full' | 'ro' switcher)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")

    def make(kind: str) -> None:
        if kind == "full":
            subprocess.run(["dd", "if=/dev/zero", f"of={mnt}/filler", "bs=4k"], capture_output=True)
        else:
            subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)

    try:
        yield mnt, make
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.mark.parametrize("kind", ["full", "ro"])
def test_full_or_read_only_disk_is_one_line_naming_the_path(kind, small_fs, tmp_path):
    mnt, make = small_fs
    make(kind)
    err = "No space left on device (disk full)" if kind == "full" else "Read-only file system"
    runs = mnt / "runs"
    cases = [
        ["sweep", *TINY, "--runs-root", str(runs)],
        ["train", *TINY, "--runs-root", str(runs), "--no-progress"],
        ["report", "--table", "1", "--runs-root", str(tmp_path), "--out", str(mnt / "t1.md")],
        ["simulate", "--setup", "2", "--points", "2", "--iterations", "3", "--no-plots", "-q", "--out",
         str(mnt / "sim")],
    ]
    for argv in cases:
        out = run_cli(argv, tmp_path, timeout=200)
        line = one_line_error(out, 1, err)
        assert str(mnt) in line, line
    left = sorted(p.name for p in mnt.iterdir())
    assert left in ([], ["filler"]), left          # nothing half-written


def test_a_checkpoint_that_does_not_fit_says_disk_full(small_fs, tmp_path):
    mnt, _ = small_fs
    run = mnt / "job"
    prepared(run, ["schedule.checkpoint_period=2"])
    out = run_cli(["train", "--run-dir", str(run), "--no-progress"], tmp_path, timeout=300)
    line = one_line_error(out, 1, "No space left on device (disk full)")
    assert "checkpoints/last.pt" in line and "PytorchStreamWriter" not in out.stderr
    assert not any(p.name.endswith(".tmp") for p in RunDir(run).checkpoints.iterdir())
