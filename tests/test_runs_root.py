"""One runs root for every command: --runs-root, else runs_root=, else $BBRCTL_RUNS_ROOT, else ./runs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bbrctl import sweep as S
from bbrctl.errors import UserError
from bbrctl.store.root import runs_root


def test_resolution_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BBRCTL_RUNS_ROOT", raising=False)
    assert runs_root() == tmp_path / "runs"
    monkeypatch.setenv("BBRCTL_RUNS_ROOT", str(tmp_path / "env"))
    assert runs_root() == tmp_path / "env"
    assert runs_root(configured="cfg") == tmp_path / "cfg"
    assert runs_root("opt", configured="cfg") == tmp_path / "opt"
    with pytest.raises(UserError, match="must be a directory path"):
        runs_root("a\nb")


def test_every_command_reads_the_same_environment_variable(tmp_path, monkeypatch):
    """sweep and train create under $BBRCTL_RUNS_ROOT, and status and report read from it."""
    work, root = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    env = {**__import__("os").environ, "BBRCTL_RUNS_ROOT": str(root), "WANDB_MODE": "disabled"}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "bbrctl", *args], cwd=work, env=env, capture_output=True,
                              text=True, timeout=300)

    tiny = ["data=shapes_tiny", "schedule=smoke", "model.min_size=64", "model.max_size=64"]
    r = cli("sweep", *tiny, "seed=0,1", "--name", "envroot", "--dry-run", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["sweep_dir"] == str(root / "envroot"), r.stderr
    r = cli("train", *tiny, "seed=1", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in root.iterdir()) == ["train"] and list(work.iterdir()) == []
    st = json.loads(cli("status", "--json").stdout)
    assert st["runs_root"] == str(root) and {s["sweep"] for s in st["sweeps"]} == {"train"}
    rep = cli("report", "--table", "1", "--format", "json", "--out", "-")
    assert rep.returncode == 0, rep.stderr
    rows = {r["id"]: r for r in json.loads(rep.stdout)["rows"]}
    assert rows["focal_eiou"]["state"] == "done" and rows["focal_eiou"]["runs"][0].startswith(str(root))
    # --runs-root wins over the variable, for every command.
    r = cli("status", "--runs-root", str(work / "none"), "--json")
    assert json.loads(r.stdout)["sweeps"] == []


def test_a_sweep_option_wins_over_the_config_value(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plan = S.expand(["runs_root=from_config"], runs_root=tmp_path / "opt")
    assert plan.runs_root == tmp_path / "opt"
    assert S.expand(["runs_root=from_config"]).runs_root == tmp_path / "from_config"


def test_version_and_completion():
    from bbrctl import __version__

    r = subprocess.run([sys.executable, "-m", "bbrctl", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == f"bbrctl {__version__}"
    r = subprocess.run([sys.executable, "-m", "bbrctl", "--help"], capture_output=True, text=True)
    assert "--install-completion" in r.stdout and "--show-completion" in r.stdout
