"""A user loss from a config file (``loss.target``) and one from ``register_loss``, trained by a
sweep in other processes: the local launcher's subprocesses and a real SLURM array.

Both ways reach the jobs through the config alone (its ``loss`` group carries the target), so
the jobs re-import the function from its module (tests/user_loss_pkg.py, on PYTHONPATH as a
user's package would be installed). The entry-point way runs in tests/test_own_loss_guide.py.
"""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

import user_loss_pkg
from bbrctl.launch import launch
from bbrctl.losses import SPECS, register_loss, user
from bbrctl.sweep import expand

pytestmark = [pytest.mark.slow]

TINY = ["data=shapes_tiny", "schedule=smoke", "backbone=resnet_tiny"]
SLURM = ["launcher=slurm", "launcher.cpus_per_task=1", "launcher.time=20"]


@pytest.fixture
def two_ways(tmp_path, monkeypatch):
    tests_dir = str(Path(__file__).resolve().parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (tests_dir, os.environ.get("PYTHONPATH")) if p))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    cfgdir = tmp_path / "cfg"
    (cfgdir / "loss").mkdir(parents=True)
    (cfgdir / "loss" / "corner.yaml").write_text(textwrap.dedent("""\
        # @package _global_
        loss:
          name: corner
          target: "user_loss_pkg:corner_l1"
          space: boxes
          params: {scale: 1.0}
          param_ranges: {scale: [0.0, 10.0]}
        weight: 2.5
        """))
    register_loss("corner_reg", user_loss_pkg.user_eiou, space="boxes")
    yield cfgdir
    for d in (SPECS, user._FUNCTIONS, user._TARGETS, user._WEIGHTS):
        for name in ("corner", "corner_reg"):
            d.pop(name, None)


def _run(cfgdir: Path, root: Path, extra: list[str], name: str) -> list[dict]:
    plan = expand(["loss=corner,corner_reg", *TINY, *extra], [cfgdir], name=name, runs_root=str(root))
    result = launch(plan, wait=True, progress=False, echo=lambda _m: None)
    assert result.waited.get("done") == 2, result.waited
    out = []
    for j in plan.jobs:
        res = json.loads((j.run_dir / "results.json").read_text())
        cfg = json.loads((j.run_dir / "job.json").read_text())["config"]
        out.append({"loss": cfg["loss"], "status": res["status"], "AP": res["metrics"]["bbox"]["AP"]})
    return out


def _check(jobs: list[dict]) -> None:
    by = {j["loss"]["name"]: j for j in jobs}
    assert by["corner"]["loss"]["target"] == "user_loss_pkg:corner_l1"
    assert by["corner_reg"]["loss"]["target"] == "user_loss_pkg:user_eiou"
    assert all(j["status"] == "done" for j in jobs)


def test_config_file_and_registered_losses_train_through_the_local_launcher(two_ways, tmp_path):
    _check(_run(two_ways, tmp_path / "runs", [], "ul_local"))


@pytest.mark.slurm
@pytest.mark.timeout(600)
def test_config_file_and_registered_losses_train_through_slurm(two_ways, tmp_path, slurm_cluster):
    jobs = _run(two_ways, tmp_path / "runs", SLURM, "ul_slurm")
    _check(jobs)
    launches = json.loads((tmp_path / "runs" / "ul_slurm" / "sweep.json").read_text())["launches"]
    assert launches[0]["launcher"] == "slurm"
