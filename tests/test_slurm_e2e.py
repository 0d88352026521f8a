"""`bbrctl sweep launcher=slurm` against a real SLURM cluster (.ci/start-slurm's single node).

Skipped with a reason where no cluster is reachable; a failure instead where CI requires one
(BBRCTL_REQUIRE_SLURM, set by .ci/run). The node has 2 CPUs, so tasks ask for one each.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from helpers import run_cli, wait_until

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

TINY = ["data=shapes_tiny", "schedule=smoke", "backbone=resnet_tiny", "launcher=slurm",
        "launcher.cpus_per_task=1", "launcher.time=20"]


ITERS = 300


cli = run_cli


def squeue_ids() -> dict[str, str]:
    out = subprocess.run(["squeue", "--noheader", "--array", "--format=%i|%T"], capture_output=True, text=True)
    return dict(line.split("|", 1) for line in out.stdout.split() if "|" in line)


def run_dirs(sweep_dir: Path) -> list[Path]:
    return sorted(p for p in sweep_dir.iterdir() if (p / "job.json").is_file())


def test_a_partition_the_cluster_lacks_is_refused_before_anything_exists(slurm_cluster, tmp_path):
    out = cli(["sweep", "loss=eiou,giou", *TINY, "launcher.partition=nosuchpartition"], tmp_path)
    assert out.returncode == 2 and "invalid partition" in out.stderr.lower(), out.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.timeout(300)
def test_a_percent_sign_in_the_runs_root_reaches_slurm_literally(slurm_cluster, tmp_path):
    """%j in a path would be a SLURM filename pattern: the log must land in the literal folder."""
    root = tmp_path / "r%j 100%A"
    out = cli(["sweep", "loss=eiou", *TINY, "--name", "pct", "--runs-root", str(root), "--wait"], tmp_path,
              timeout=250)
    assert out.returncode == 0, out.stdout + out.stderr
    (d,) = run_dirs(root / "pct")
    assert json.loads((d / "results.json").read_text())["status"] == "done"
    (launch,) = json.loads((root / "pct" / "sweep.json").read_text())["launches"]
    log = root / "pct" / "slurm" / "logs" / f"{launch['array_job_id']}_0.out"
    assert wait_until(lambda: log.is_file() and "train exited 0" in log.read_text(), 60), list(tmp_path.rglob("*.out"))
    assert sorted(p.name for p in tmp_path.iterdir()) == [root.name]


@pytest.mark.timeout(420)
def test_slurm_sweep_runs_hostile_values_to_completion_then_resubmits_nothing(slurm_cluster, tmp_path):
    canary = tmp_path / "PWNED"
    values = [f"'$(touch {canary}); ../../x'", f"'; touch {canary} \"q\" `id`'"]
    # schedule.name is a free-text label that is part of the signature: two jobs.
    args = ["sweep", "loss=eiou", "schedule.name=" + ",".join(values), *TINY, "--name", "e2e"]
    out = cli([*args, "--wait"], tmp_path, timeout=400)
    assert out.returncode == 0, out.stdout + out.stderr
    sweep_dir = tmp_path / "runs" / "e2e"
    manifest = json.loads((sweep_dir / "sweep.json").read_text())
    (launch,) = manifest["launches"]
    assert launch["launcher"] == "slurm" and launch["array_job_id"].isdigit()
    dirs = run_dirs(sweep_dir)
    assert len(dirs) == 2
    for d in dirs:
        res = json.loads((d / "results.json").read_text())
        assert res["status"] == "done" and set(res["metrics"]["bbox"]) >= {"AP", "AP50", "AP75"}
    notes = {json.loads((d / "job.json").read_text())["config"]["schedule"]["name"] for d in dirs}
    assert notes == {f"$(touch {canary}); ../../x", f"; touch {canary} \"q\" `id`"}
    # Nothing executed, nothing written outside runs/.
    assert not canary.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]
    # --wait returns once results.json is written; the task's last log line follows.
    assert wait_until(lambda: not any(k.startswith(f"{launch['array_job_id']}_") for k in squeue_ids()), 60)
    logs = list((sweep_dir / "slurm" / "logs").glob(f"{launch['array_job_id']}_*.out"))
    assert len(logs) == 2 and all("train exited 0" in p.read_text() for p in logs)

    st = json.loads(cli(["status", "e2e", "--json", "--runs-root", str(tmp_path / "runs")], tmp_path).stdout)
    assert st["counts"]["done"] == 2
    assert {j["slurm_id"] for j in st["jobs"]} == {f"{launch['array_job_id']}_0", f"{launch['array_job_id']}_1"}

    # Re-submitting the finished sweep submits nothing.
    before = set(squeue_ids())
    out = cli(args, tmp_path)
    assert out.returncode == 0, out.stderr
    assert "nothing to launch (2 done)" in out.stdout
    assert len(json.loads((sweep_dir / "sweep.json").read_text())["launches"]) == 1
    assert not set(squeue_ids()) - before


@pytest.mark.timeout(480)
def test_requeued_array_task_resumes_from_its_checkpoint(slurm_cluster, tmp_path):
    # Long enough (a few seconds on any machine) that the requeue lands mid-run, not after it.
    args = ["sweep", "loss=focal_eiou", *TINY, f"schedule.max_iter={ITERS}", "schedule.checkpoint_period=5",
            "--name", "rq"]
    out = cli(args, tmp_path)
    assert out.returncode == 0, out.stderr
    sweep_dir = tmp_path / "runs" / "rq"
    (launch,) = json.loads((sweep_dir / "sweep.json").read_text())["launches"]
    task = f"{launch['array_job_id']}_0"
    (run_dir,) = run_dirs(sweep_dir)

    # status.json's iteration is refreshed only every few seconds, longer than this whole job
    # may take on a fast machine: the first checkpoint (iteration 5) is the sign to act on.
    def checkpointed():
        st = json.loads((run_dir / "status.json").read_text()) if (run_dir / "status.json").exists() else {}
        return st.get("state") == "running" and any((run_dir / "checkpoints").glob("*.pt"))
    assert wait_until(checkpointed, 240, every=0.1), (run_dir / "train.log").read_text() if (run_dir / "train.log").exists() else ""

    subprocess.run(["scontrol", "requeue", task], check=True)
    # SLURM holds a requeued job back for a while (BeginTime); release it for the test.
    assert wait_until(lambda: squeue_ids().get(task) == "PENDING", 60), squeue_ids()
    st = json.loads(cli(["status", "rq", "--json"], tmp_path).stdout)
    assert st["jobs"][0]["state"] == "requeued" and st["jobs"][0]["active"], st
    # A re-submission while it waits in the queue submits nothing.
    again = cli(args, tmp_path)
    assert again.returncode == 0 and "nothing to launch" in again.stdout, again.stdout + again.stderr

    def released():
        if squeue_ids().get(task) == "PENDING":
            subprocess.run(["scontrol", "update", f"JobId={task}", "StartTime=now"], capture_output=True)
            return False
        return True
    assert wait_until(released, 60, every=2.0)
    assert wait_until(lambda: (run_dir / "results.json").exists(), 300), (run_dir / "train.log").read_text()
    assert wait_until(lambda: task not in squeue_ids(), 60)

    res = json.loads((run_dir / "results.json").read_text())
    assert res["status"] == "done" and res["iteration"] == ITERS
    log = (run_dir / "train.log").read_text()
    assert "stopped by signal" in log and "resuming at iteration" in log
    resumed_at = int(log.split("resuming at iteration ")[1].split("/")[0])
    assert resumed_at >= 5
    (slurm_log,) = (sweep_dir / "slurm" / "logs").glob(f"{launch['array_job_id']}_0.out")
    text = slurm_log.read_text()
    assert "restart=0" in text and "restart=1" in text and "train exited 75" in text and "train exited 0" in text
