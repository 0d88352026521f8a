"""File modes: bbrctl's files get the mode the umask gives (a lab-mate in the group can read a
shared runs root), and the SLURM batch script, the one file with the launcher's setup lines,
is its owner's alone whatever the umask."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from bbrctl.store import PRIVATE, atomic_write_json, atomic_write_text, default_mode
from tests.test_slurm import fake_slurm  # noqa: F401  (fixture)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield lambda m: os.umask(m)
    os.umask(old)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_writes_follow_the_umask(tmp_path, umask, mask, expected):
    umask(mask)
    atomic_write_json(tmp_path / "results.json", {"status": "done"})
    atomic_write_text(tmp_path / "report.md", "x\n")
    assert mode(tmp_path / "results.json") == expected
    assert mode(tmp_path / "report.md") == expected
    assert default_mode() == expected
    # Rewriting keeps following the umask, not the old file's mode or mkstemp's 0600.
    umask(0o022)
    atomic_write_json(tmp_path / "results.json", {"status": "done"})
    assert mode(tmp_path / "results.json") == 0o644


def test_private_mode_ignores_a_permissive_umask(tmp_path, umask):
    umask(0o000)
    atomic_write_text(tmp_path / "secret.sbatch", "token\n", mode=PRIVATE)
    assert mode(tmp_path / "secret.sbatch") == 0o600


def test_a_sweeps_files_are_group_readable_and_its_batch_script_private(tmp_path, fake_slurm):  # noqa: F811
    env, state = fake_slurm
    work = tmp_path / "work"
    work.mkdir()
    # The umask of a lab that shares its runs root with the group.
    code = ("import os, sys; os.umask(0o002); from bbrctl.cli import main; "
            "sys.argv = ['bbrctl', *sys.argv[1:]]; main()")
    out = subprocess.run([sys.executable, "-c", code, "sweep", "loss=eiou,giou", "launcher=slurm",
                          "launcher.partition=debug", "launcher.setup=['export MY_TOKEN=s3cret']"],
                         cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    script = Path((state / "submit-0.argv").read_text().splitlines()[-1])
    assert mode(script) == 0o600
    sweep_dir = work / "runs" / "loss"
    assert mode(sweep_dir / "sweep.json") == 0o664
    manifest = json.loads((sweep_dir / "sweep.json").read_text())
    for job in manifest["jobs"].values():
        run = sweep_dir / job["dir"]
        assert mode(run) == 0o775
        assert mode(run / "config.yaml") == 0o664 and mode(run / "job.json") == 0o664
