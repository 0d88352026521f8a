"""Hardening, symlinks: nothing bbrctl writes, appends to or locks in a run or sweep directory
follows a link out of it (threat model: a group-writable shared runs root).

Each case plants a link (or a FIFO / directory) where bbrctl keeps a file of its own and checks:
one line + exit 2 (or the link replaced, never written through) and the target outside the run
directory unchanged.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from helpers import run_cli

from bbrctl import config as C
from bbrctl.store import (RunDir, SweepDir, append_lines, atomic_write_json, locks, prepare_run_dir, read_json,
                          read_results, write_eval, write_status)
from bbrctl.store.rundir import DamagedFile
from bbrctl.store.safe import UnsafePath

TINY = ["data=shapes_tiny", "schedule=smoke", "model.min_size=64", "model.max_size=64"]
METRICS = {"bbox": {"AP": 1.0}}


@pytest.fixture()
def run(tmp_path) -> Path:
    d = tmp_path / "runs" / "s" / "job-1234567890"
    cfg = C.to_container(C.compose(TINY))
    prepare_run_dir(d, cfg, signature=C.signature(cfg), name="job", sweep="s")
    return d


@pytest.fixture()
def victim(tmp_path) -> Path:
    """A file of the user's own outside the runs root (their ~/.bashrc)."""
    home = tmp_path / "home"
    home.mkdir()
    f = home / ".bashrc"
    f.write_text("# my shell\n")
    return f


def one_line(out, needle=""):
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    assert lines and lines[-1].startswith("bbrctl: error: ") and needle in lines[-1], out.stderr
    return lines[-1]


def test_issue_probe_crafted_status_and_train_log_link_to_bashrc(run, victim, tmp_path):
    """The issue's exact probe: results.json status '$(cmd)', train.log -> ~/.bashrc, `bbrctl train`."""
    canary = tmp_path / "ran"
    RunDir(run).results.write_text(json.dumps({"status": f"'$(touch {canary})'"}))
    RunDir(run).log.symlink_to(victim)
    out = run_cli(["train", "--run-dir", str(run), "--no-progress"], tmp_path)
    one_line(out, "symbolic link")
    assert victim.read_text() == "# my shell\n"
    assert not canary.exists()


def test_the_set_aside_note_quotes_the_value_as_json_on_one_line(run):
    from bbrctl.train import _results_or_set_aside

    RunDir(run).results.write_text(json.dumps({"status": "'$(id)'\nfake line"}))
    assert _results_or_set_aside(run) is None
    log = RunDir(run).log.read_text()
    assert log.count("\n") == 1, log                       # the newline did not start a line of its own
    assert '"\'$(id)\'\\nfake line"' in log and "moved aside" in log


@pytest.mark.parametrize("name", [".train.lock", ".launch.lock"])
def test_a_linked_lock_file_is_refused_and_its_target_untouched(name, run, victim):
    (run / name).symlink_to(victim)
    with pytest.raises(UnsafePath, match="symbolic link"):
        locks.try_lock(run / name, "test")
    assert victim.read_text() == "# my shell\n"
    assert not locks.is_locked(run / name)


def test_train_with_a_linked_train_lock_is_one_line(run, victim, tmp_path):
    RunDir(run).lock.symlink_to(victim)
    one_line(run_cli(["train", "--run-dir", str(run), "--no-progress"], tmp_path), ".train.lock")
    assert victim.read_text() == "# my shell\n"


def test_a_linked_sweep_lock_is_one_line_and_nothing_launched(victim, tmp_path):
    root = tmp_path / "runs"
    sweep = SweepDir(root / "s")
    sweep.path.mkdir(parents=True)
    sweep.lock.symlink_to(victim)
    out = run_cli(["sweep", *TINY, "seed=0,1", "--name", "s", "--runs-root", str(root)], tmp_path)
    one_line(out, ".sweep.lock")
    assert victim.read_text() == "# my shell\n"
    assert sorted(p.name for p in sweep.path.iterdir()) == [".sweep.lock"]


def test_a_directory_where_a_lock_belongs_is_one_line(run, tmp_path):
    RunDir(run).lock.mkdir()
    one_line(run_cli(["train", "--run-dir", str(run), "--no-progress"], tmp_path), "directory where a file belongs")


@pytest.mark.parametrize("name", ["train.log", "stdout.log"])
def test_log_appends_never_go_through_a_link(name, run, victim):
    (run / name).symlink_to(victim)
    with pytest.raises(UnsafePath):
        append_lines(run / name, "x\n")
    assert victim.read_text() == "# my shell\n"


def test_a_fifo_where_a_log_belongs_is_refused_not_waited_on(run):
    os.mkfifo(RunDir(run).log)
    with pytest.raises(UnsafePath, match="FIFO"):
        append_lines(RunDir(run).log, "x\n")
    assert read_json(RunDir(run).log, "absent") == "absent"


def test_the_supervisor_refuses_a_linked_stdout_log_and_launch_lock(run, victim, tmp_path):
    from bbrctl.launch.local import LocalSettings, Supervisor

    RunDir(run).stdout_log.symlink_to(victim)
    marker = tmp_path / "started"
    notes = []
    sup = Supervisor([run], LocalSettings(max_parallel=1, gpus_per_job=0), notes.append,
                     command=lambda d, g: [sys.executable, "-c", f"open({str(marker)!r}, 'w')"])
    assert sup.run(poll_s=0.05) == {str(run): 1}
    assert victim.read_text() == "# my shell\n" and not marker.exists()
    assert any("stdout.log" in n and "symbolic link" in n for n in notes), notes
    assert not locks.is_locked(run / ".launch.lock")       # released again


@pytest.mark.parametrize("sub", ["checkpoints", "evals"])
def test_a_linked_subdirectory_receives_nothing(sub, run, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (run / sub).symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(UnsafePath, match="symbolic link"):
        if sub == "evals":
            write_eval(run, "x", {"split": "val", "metrics": METRICS, "checkpoint": "last.pt"})
        else:
            atomic_write_json(RunDir(run).checkpoints / "last.pt", {})
    assert list(elsewhere.iterdir()) == []


def test_a_checkpoint_save_through_a_linked_checkpoints_dir_is_refused(run, tmp_path):
    pytest.importorskip("torch")
    from bbrctl.detection.train.checkpoint import checkpoint_path, save_checkpoint

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    RunDir(run).checkpoints.symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(UnsafePath):
        save_checkpoint(checkpoint_path(run), {"iteration": 1})
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("name", ["status.json", "results.json", "job.json"])
def test_an_atomic_write_replaces_a_planted_link_instead_of_writing_through_it(name, run, victim):
    (run / name).unlink(missing_ok=True)
    (run / name).symlink_to(victim)
    if name == "status.json":
        write_status(run, "running")
    else:
        atomic_write_json(run / name, {"status": "failed"})
    assert victim.read_text() == "# my shell\n"
    assert not (run / name).is_symlink() and json.loads((run / name).read_text())


def test_a_run_directory_that_is_a_link_is_refused(run, tmp_path):
    import shutil

    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(run, elsewhere)
    before = sorted(p.name for p in elsewhere.iterdir())
    link = run.parent / "linked-0000000000"
    link.symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(UnsafePath):
        write_status(link, "running")
    with pytest.raises(UnsafePath):          # two levels: evals/ would be made inside the link's target
        write_eval(link, "x", {"split": "val", "metrics": METRICS, "checkpoint": "last.pt"})
    assert sorted(p.name for p in elsewhere.iterdir()) == before
    one_line(run_cli(["train", "--run-dir", str(link), "--no-progress"], tmp_path), "symbolic link")
    assert sorted(p.name for p in elsewhere.iterdir()) == before


def test_a_result_file_linked_to_a_file_outside_is_not_read(run, tmp_path):
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"status": "done", "metrics": METRICS}))
    RunDir(run).results.symlink_to(secret)
    with pytest.raises(DamagedFile, match="symbolic link"):
        read_results(run)
    assert read_json(RunDir(run).results) is None


def test_a_linked_slurm_or_launches_dir_is_refused(tmp_path):
    from bbrctl.store.safe import ensure_dir

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    sweep = SweepDir(tmp_path / "runs" / "s")
    sweep.path.mkdir(parents=True)
    for d in (sweep.launches, sweep.slurm):
        d.symlink_to(elsewhere, target_is_directory=True)
        with pytest.raises(UnsafePath):
            ensure_dir(d)
    with pytest.raises(UnsafePath):
        ensure_dir(sweep.slurm_logs, levels=2)
    assert list(elsewhere.iterdir()) == []
