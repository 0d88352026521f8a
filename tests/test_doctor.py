"""`bbrctl doctor`: the environment report, its JSON, and what it flags."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from bbrctl import __version__
from tests.test_extras import core_env  # noqa: F401  (fixture: wandb and scipy hidden)


def doctor(args=(), env=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "bbrctl", "doctor", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=120)


def by_name(out: str) -> dict:
    return {(c["area"], c["name"]): c for c in json.loads(out)}


def test_json_report_names_versions_paths_and_never_the_api_key(tmp_path):
    env = {**os.environ, "WANDB_API_KEY": "k3y-do-not-print-0123456789abcdef", "BBRCTL_DATA_DIR": str(tmp_path)}
    out = doctor(["--json", "--runs-root", str(tmp_path / "runs")], env=env)
    checks = by_name(out.stdout)
    assert f"bbrctl {__version__}" in checks["bbrctl", "version"]["detail"]
    assert "torch " in checks["torch", "build"]["detail"]
    assert checks["paths", "runs root"]["state"] == "ok" and checks["paths", "data cache"]["state"] == "ok"
    assert checks["wandb", "login"]["state"] == "ok" and "an API key is available" in checks["wandb", "login"]["detail"]
    assert "k3y-do-not-print" not in out.stdout + out.stderr
    assert not (tmp_path / "runs").exists()  # nothing created
    if shutil.which("sinfo") and os.environ.get("BBRCTL_REQUIRE_SLURM"):
        assert checks["slurm", "controller"]["state"] == "ok"
    plain = doctor(env=env, cwd=tmp_path)
    assert "area" in plain.stdout and "runs root" in plain.stdout


def test_an_unwritable_runs_root_is_a_problem_and_exit_1(tmp_path):
    out = doctor(["--json", "--runs-root", "/proc/bbrctl-runs"])
    assert out.returncode == 1
    c = by_name(out.stdout)["paths", "runs root"]
    assert c["state"] == "problem" and "/proc" in c["detail"] and "--runs-root" in c["fix"]


def test_missing_extras_are_named_with_their_install_line(core_env, tmp_path):  # noqa: F811
    out = doctor(["--json"], env=core_env, cwd=tmp_path)
    checks = by_name(out.stdout)
    assert checks["extras", "wandb"]["state"] == "missing" and checks["extras", "wandb"]["fix"] == \
        "pip install 'bbrctl[wandb]'"
    assert checks["extras", "scipy"]["fix"] == "pip install 'bbrctl[detr]'"
    assert ("wandb", "login") not in checks
