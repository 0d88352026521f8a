"""Seeds until decided on a real SLURM cluster: each round is one more job array."""

from __future__ import annotations

import json

import pytest
from helpers import run_cli

from bbrctl.store.decision import read_decision

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

TINY = ["data=shapes_tiny", "schedule=smoke", "backbone=resnet_tiny", "launcher=slurm",
        "launcher.cpus_per_task=1", "launcher.time=20"]


@pytest.mark.timeout(1200)
def test_rounds_are_job_arrays_and_a_rerun_submits_nothing(slurm_cluster, tmp_path):
    args = ["sweep", "loss=baseline,focal_eiou", *TINY, "sweep.seeds=auto", "sweep.compare=focal_eiou:baseline",
            "sweep.min_seeds=2", "sweep.max_seeds=3", "--name", "dec", "--runs-root", str(tmp_path / "runs"),
            "--wait"]
    out = run_cli(args, tmp_path, timeout=1100)
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    sweep = tmp_path / "runs" / "dec"
    rec = read_decision(sweep)
    launches = json.loads((sweep / "sweep.json").read_text())["launches"]
    rounds = 1 + rec["seeds"] - 2
    assert [len(x["jobs"]) for x in launches] == [4] + [2] * (rounds - 1)
    assert all(x["launcher"] == "slurm" and x["array_job_id"] for x in launches)
    assert rec["state"] in ("decided", "undecided") and rec["looks"][0] == 2
    again = run_cli(args, tmp_path, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert len(json.loads((sweep / "sweep.json").read_text())["launches"]) == len(launches)
