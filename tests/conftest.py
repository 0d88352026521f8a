"""Shared fixtures. Tests never touch the network, never read ~/.cache, and run W&B disabled."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("default", max_examples=80, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=2000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(autouse=True)
def _hermetic_env(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_DIR", raising=False)
    # Set by wandb itself in a process that logged (an in-process offline test): children
    # would share that process's wandb service instead of starting their own.
    monkeypatch.delenv("WANDB_SERVICE", raising=False)
    # Tests that turn W&B on (offline) keep its staging, cache and settings out of ~.
    wb = tmp_path_factory.getbasetemp() / "wandb-home"
    for var, sub in (("WANDB_DATA_DIR", "data"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_CONFIG_DIR", "config"),
                     ("WANDB_ARTIFACT_DIR", "artifacts")):
        monkeypatch.setenv(var, str(wb / sub))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("BBRCTL_CONFIG_PATH", raising=False)
    # The synthetic dataset is deterministic, so one copy serves the whole session.
    monkeypatch.setenv("BBRCTL_DATA_DIR", str(tmp_path_factory.getbasetemp() / "data"))


# The heavy tier: end-to-end files that train sweeps, drive real SLURM arrays or kill trainers
# (about 16 of the suite's 30 minutes on a 2-core CPU, from the full run's per-test times).
# `pytest` runs the rest (pyproject: -m "not heavy"); `pytest -m heavy` runs these; .ci/run both.
HEAVY_FILES = {
    "test_tune.py", "test_faults.py", "test_wandb.py", "test_own_loss_guide.py", "test_slurm_e2e.py",
    "test_sweep_local.py", "test_rounds.py", "test_slurm_rounds.py", "test_user_losses_e2e.py",
    "test_train_resume.py", "test_slurm_e2e_multinode.py",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in HEAVY_FILES:
            item.add_marker(pytest.mark.heavy)


def slurm_reachable() -> tuple[bool, str]:
    if not shutil.which("sinfo") or not shutil.which("sbatch"):
        return False, "sinfo/sbatch not on PATH"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"sinfo failed: {e}"
    if out.returncode != 0:
        return False, f"sinfo failed: {out.stderr.strip()}"
    states = out.stdout.split()
    if not any(s in ("idle", "mixed", "allocated") for s in states):
        return False, f"no usable node (states: {states or 'none'})"
    return True, ""


@pytest.fixture(scope="session")
def slurm_cluster():
    """A reachable SLURM cluster, or a skip; a failure where CI requires one."""
    ok, why = slurm_reachable()
    if not ok:
        if os.environ.get("BBRCTL_REQUIRE_SLURM"):
            pytest.fail(f"SLURM is required here (BBRCTL_REQUIRE_SLURM) but not reachable: {why}")
        pytest.skip(f"no SLURM cluster reachable ({why}); start one with `sudo bash .ci/start-slurm`")
    return True
