"""A multi-node (launcher.nodes=2) array task on the real single-node SLURM cluster.

The cluster has one node with 2 CPUs, so the rendered two-node script is submitted with
``sbatch --nodes=1 --ntasks=2`` on its command line (which overrides the script's own
``#SBATCH --nodes=2 --ntasks-per-node=1``): one allocation with two tasks stands in for
two nodes. Everything else is the script as bbrctl renders it: srun starts two torchrun
agents, they meet in the c10d rendezvous on the allocation's first host, train one world
of two ranks; SLURM's USR1 to the batch shell reaches both workers, rank 0 checkpoints,
torchrun's exit is mapped back to 75, the task requeues itself and resumes; the second
USR1 finds launcher.max_requeues=1 used up and the task stays stopped.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import wait_until

from bbrctl import store
from bbrctl.detection.train.checkpoint import load_checkpoint
from bbrctl.launch import slurm

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

CFG = ["data=shapes_tiny", "schedule=smoke", "backbone=resnet_tiny", "model.norm=group", "loss=eiou",
       "schedule.max_iter=5000", "schedule.batch_size=2", "schedule.checkpoint_period=5", "schedule.log_period=1"]
SETTINGS = {"name": "slurm", "template": "array.sbatch.j2", "partition": None, "account": None, "qos": None,
            "time": "20", "gpus_per_job": 0, "nodes": 2, "max_requeues": 1, "cpus_per_task": 1, "mem": None,
            "max_parallel": 1, "signal_seconds": 120, "extra_sbatch": [], "setup": [], "python": sys.executable}


def squeue() -> dict[str, str]:
    out = subprocess.run(["squeue", "--noheader", "--array", "--format=%i|%T"], capture_output=True, text=True)
    return dict(line.split("|", 1) for line in out.stdout.split() if "|" in line)


def checkpoint_iteration(run_dir: Path) -> int:
    p = run_dir / store.CHECKPOINTS / "last.pt"
    if not p.exists():
        return -1
    try:
        return int(load_checkpoint(p)["iteration"])
    except Exception:       # noqa: BLE001 - being replaced right now: try again
        return -1


def running_past(run_dir: Path, iteration: int):
    def check():
        st = store.read_json(run_dir / store.STATUS) or {}
        return st.get("state") == "running" and checkpoint_iteration(run_dir) > iteration
    return check


@pytest.mark.timeout(900)
def test_two_agent_array_task_rendezvouses_requeues_resumes_and_stops_at_the_cap(slurm_cluster, tmp_path):
    from bbrctl.config import compose, signature, to_container

    sweep = store.SweepDir(tmp_path / "runs" / "mn")
    run_dir = sweep.run("job")
    cfg = to_container(compose(CFG))
    store.prepare_run_dir(run_dir.path, cfg, signature=signature(cfg), name="job", sweep="mn", overrides=CFG)
    tasks, script = sweep.slurm_tasks(1), sweep.slurm_script(1)
    slurm.write_tasks(tasks, [run_dir.path])
    script.write_text(slurm.render(slurm.check_settings(SETTINGS), sweep_name="mn", tasks_file=tasks, n_tasks=1))
    sweep.slurm_logs.mkdir(parents=True)
    argv = slurm.sbatch_argv(script, 1, 1, sweep.slurm_logs, "bbrctl-mn")
    stand_in = ["--nodes=1", "--ntasks=2", "--ntasks-per-node=2"]       # two tasks on one node for two nodes
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo"}                    # loopback only
    out = subprocess.run([argv[0], *stand_in, *argv[1:]], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    job = f"{out.stdout.strip().split(';')[0]}_0"
    try:
        # Training in a world of two, from a real rendezvous; then USR1 as SLURM sends it.
        assert wait_until(running_past(run_dir.path, 0), 300, every=0.5), _logs(sweep, run_dir)
        subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True)
        assert wait_until(lambda: squeue().get(job) == "PENDING", 120), (squeue(), _logs(sweep, run_dir))
        stopped_at = checkpoint_iteration(run_dir.path)
        assert (store.read_json(run_dir.status) or {}).get("state") == "requeued"

        def released():
            if squeue().get(job) == "PENDING":      # SLURM holds a requeued job back a while
                subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], capture_output=True)
                return False
            return True
        assert wait_until(released, 120, every=2.0)
        # Resumed from its checkpoint, and past it; then the second USR1: the cap holds.
        assert wait_until(running_past(run_dir.path, stopped_at), 300, every=0.5), _logs(sweep, run_dir)
        subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True)
        assert wait_until(lambda: job not in squeue(), 120), (squeue(), _logs(sweep, run_dir))
    finally:
        subprocess.run(["scancel", job], capture_output=True)

    log = run_dir.log.read_text()
    assert "world size 2, batch 2" in log
    assert log.count("stopped by signal") == 2
    assert f"resuming at iteration {stopped_at}/" in log
    assert (store.read_json(run_dir.status) or {}).get("state") == "requeued"
    assert store.read_results(run_dir.path) is None          # stopped, not failed: a re-run resumes it
    text = _logs(sweep, run_dir)
    assert "2 node(s) x 1 process(es): rendezvous" in text
    assert "restart=0" in text and "restart=1" in text
    assert text.count("train exited 75") == 2
    assert "not requeued: it ran 1 time(s) after a requeue (launcher.max_requeues=1)" in text


def _logs(sweep: store.SweepDir, run_dir: store.RunDir) -> str:
    parts = [p.read_text(errors="replace") for p in sorted(sweep.slurm_logs.glob("*.out"))]
    if run_dir.log.exists():
        parts.append(run_dir.log.read_text()[-3000:])
    return "\n".join(parts)[-8000:]
