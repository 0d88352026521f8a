"""Multi-node SLURM jobs (launcher.nodes > 1) without a cluster: the rendered script, and the
script run by bash with stand-ins for srun, scontrol and torchrun that behave as the real
ones do where it matters (srun runs one task per node and passes USR1/TERM on to them;
torchrun dies of USR1 and reports a worker's exit 75 as 1). The real-cluster test is in
test_slurm_e2e_multinode.py; a real c10d rendezvous of two agents in test_multinode_train.py.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bbrctl.launch import slurm

BASE = {"name": "slurm", "template": "array.sbatch.j2", "partition": None, "account": None, "qos": None,
        "time": "04:00:00", "gpus_per_job": 0, "cpus_per_task": 2, "mem": None, "max_parallel": 8,
        "signal_seconds": 120, "extra_sbatch": [], "setup": [], "python": None}


def render(tasks_file: Path, **over) -> str:
    return slurm.render(slurm.check_settings({**BASE, **over}), sweep_name="demo", tasks_file=tasks_file, n_tasks=3)


def test_multi_node_script_asks_for_nodes_and_starts_one_agent_per_node(tmp_path):
    text = render(tmp_path / "my tasks.txt", nodes=4, gpus_per_job=8, cpus_per_task=32, partition="gpu")
    lines = text.splitlines()
    for line in ("#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=1", "#SBATCH --cpus-per-task=32",
                 "#SBATCH --gres=gpu:8", "#SBATCH --partition=gpu", "#SBATCH --requeue", "#SBATCH --signal=B:USR1@120"):
        assert line in lines, line
    assert "#SBATCH --ntasks=1" not in lines
    # The rendezvous: the allocation's first host, a port from the job id, the job id as id.
    assert 'RDZV_HOST="${BBRCTL_RDZV_HOST:-$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)}"' in lines
    assert "RDZV_PORT=$(( 20000 + SLURM_JOB_ID % 20000 ))" in lines
    joined = " ".join(text.split())
    assert 'srun --nodes="$SLURM_JOB_NUM_NODES" --ntasks=4 ' in joined
    assert ('"$PYTHON" -m torch.distributed.run --nnodes=4 --nproc-per-node=8 --rdzv-backend=c10d '
            '--rdzv-endpoint="$RDZV_HOST:$RDZV_PORT" --rdzv-id="$SLURM_JOB_ID" --max-restarts=0 '
            '-m bbrctl train --run-dir "$RUN_DIR"') in joined
    assert "--standalone" not in text
    assert f"TASKS_FILE='{tmp_path}/my tasks.txt'" in text
    assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0
    # Every #SBATCH line before the first command (sbatch stops reading at it).
    body = [ln for ln in lines if ln.strip()]
    first_cmd = next(i for i, ln in enumerate(body[1:], 1) if not ln.startswith("#"))
    assert not any(ln.startswith("#SBATCH") for ln in body[first_cmd:])


def test_cpu_nodes_run_one_process_each_and_one_node_is_unchanged(tmp_path):
    text = render(tmp_path / "t", nodes=2, gpus_per_job=0)
    assert "--nnodes=2 --nproc-per-node=1" in " ".join(text.split()) and "--gres" not in text
    one = render(tmp_path / "t")
    assert one == render(tmp_path / "t", nodes=1)
    assert "#SBATCH --ntasks=1" in one.splitlines() and "srun" not in one and "RDZV" not in one
    assert "bbrctl.launch.exit_status" not in one     # one process: train's own exit code


def test_max_requeues_reaches_the_script(tmp_path):
    assert "-ge 3 ]" in render(tmp_path / "t", max_requeues=3)
    assert "-ge 20 ]" in render(tmp_path / "t")                  # the default


# --------------------------------------------------------------------------- the script, run by bash

FAKE_PYTHON = textwrap.dedent("""\
    #!{python}
    # `python -m torch.distributed.run ... -m bbrctl train --run-dir D`: a torchrun stand-in that,
    # like torchrun, dies of USR1 and reports a worker's non-zero exit as 1; its one worker
    # records the signals it gets and, as bbrctl train does, exits 75 after one (rank 0 first
    # writes status.json "requeued"). Other `-m` modules run for real.
    import json, os, signal, subprocess, sys, time
    argv = sys.argv[1:]
    if argv[:2] != ["-m", "torch.distributed.run"] and argv[:1] != ["--worker"]:
        os.execv({python!r}, [{python!r}, *argv])
    log = os.environ["FAKE_LOG"]
    def note(**kw):
        with open(log, "a") as f:
            f.write(json.dumps(kw) + "\\n")
    if argv[0] == "--worker":
        run_dir, node = argv[1], int(os.environ.get("SLURM_PROCID", "0"))
        got = []
        signal.signal(signal.SIGUSR1, lambda s, f: got.append(s))
        signal.signal(signal.SIGTERM, lambda s, f: got.append(s))
        note(worker=node, pid=os.getpid())
        if os.environ.get("FAKE_FAIL"):
            sys.exit(3)
        t = time.time()
        while time.time() - t < float(os.environ.get("FAKE_RUN_S", "30")):
            if got:
                note(worker=node, signal=signal.Signals(got[0]).name)
                if node == 0:
                    sys.path.insert(0, {root!r})
                    from bbrctl.store import write_status
                    write_status(run_dir, "requeued", iteration=5)
                sys.exit(75)
            time.sleep(0.05)
        sys.exit(0)
    note(agent=int(os.environ.get("SLURM_PROCID", "0")), argv=argv)
    child = subprocess.Popen([sys.executable, __file__, "--worker", argv[argv.index("--run-dir") + 1]])
    sys.exit(1 if child.wait() else 0)
""")

FAKE_SRUN = textwrap.dedent("""\
    #!/bin/bash
    # srun inside an allocation: --ntasks copies of the command, SLURM_PROCID set, USR1 and
    # TERM passed on to every task, the highest exit code returned.
    n=1
    while [ $# -gt 0 ]; do
      case "$1" in --ntasks=*) n="${1#--ntasks=}"; shift;; --*) echo "{\\"srun_option\\": \\"$1\\"}" >> "$FAKE_LOG"; shift;; *) break;; esac
    done
    pids=()
    for i in $(seq 0 $((n - 1))); do SLURM_PROCID=$i "$@" & pids+=($!); done
    trap 'kill -USR1 "${pids[@]}" 2>/dev/null' USR1
    trap 'kill -TERM "${pids[@]}" 2>/dev/null' TERM
    rc=0
    for p in "${pids[@]}"; do
      while :; do wait "$p"; r=$?; if [ "$r" -le 128 ] || ! kill -0 "$p" 2>/dev/null; then break; fi; done
      [ "$r" -gt "$rc" ] && rc=$r
    done
    exit $rc
""")


@pytest.fixture
def multinode(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    root = str(Path(slurm.__file__).resolve().parents[2])
    fake_py = bin_dir / "fakepython"
    fake_py.write_text(FAKE_PYTHON.format(python=sys.executable, root=root))
    (bin_dir / "srun").write_text(FAKE_SRUN)
    (bin_dir / "scontrol").write_text(textwrap.dedent("""\
        #!/bin/sh
        if [ "$1 $2" = "show hostnames" ]; then printf 'node-a\\nnode-b\\n'; exit 0; fi
        echo "scontrol $*" >> "$FAKE_LOG"
    """))
    for f in bin_dir.iterdir():
        f.chmod(f.stat().st_mode | stat.S_IEXEC)
    run_dir = tmp_path / "runs" / "s" / "a b-1"
    run_dir.mkdir(parents=True)
    tasks = tmp_path / "tasks"
    slurm.write_tasks(tasks, [tmp_path / "runs" / "s" / "other", run_dir])
    log = tmp_path / "fake.log"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_LOG": str(log),
           "SLURM_ARRAY_JOB_ID": "41", "SLURM_ARRAY_TASK_ID": "1", "SLURM_JOB_ID": "123456",
           "SLURM_JOB_NODELIST": "node-[a-b]", "SLURM_JOB_NUM_NODES": "2", "SLURM_CPUS_PER_TASK": "1"}
    env.pop("BBRCTL_RDZV_HOST", None)

    def script(**over) -> Path:
        p = tmp_path / "job.sbatch"
        p.write_text(slurm.render(slurm.check_settings({**BASE, "python": str(fake_py), "nodes": 2, **over}),
                                  sweep_name="s", tasks_file=tasks, n_tasks=2))
        return p
    return script, env, log, run_dir


def _records(log: Path) -> list:
    if not log.exists():
        return []
    return [json.loads(x) if x.startswith("{") else x for x in log.read_text().splitlines()]


def _start(script: Path, env: dict, n_workers: int = 2):
    proc = subprocess.Popen(["bash", str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = Path(env["FAKE_LOG"])
    t = time.time()
    while time.time() - t < 30:
        if sum(1 for r in _records(log) if isinstance(r, dict) and "worker" in r and "pid" in r) >= n_workers:
            break
        time.sleep(0.1)
    time.sleep(0.3)                     # let the shells reach `wait`
    return proc


def test_two_agents_meet_at_the_first_host_and_usr1_reaches_every_worker(multinode):
    make, env, log, run_dir = multinode
    proc = _start(make(), env)
    proc.send_signal(signal.SIGUSR1)    # SLURM's --signal=B:USR1 reaches the batch shell only
    out, _ = proc.communicate(timeout=60)
    recs = [r for r in _records(log)]
    agents = [r for r in recs if isinstance(r, dict) and "agent" in r]
    assert sorted(a["agent"] for a in agents) == [0, 1]
    argv = agents[0]["argv"]
    assert argv[:2] == ["-m", "torch.distributed.run"] and "--nnodes=2" in argv and "--nproc-per-node=1" in argv
    assert f"--rdzv-endpoint=node-a:{20000 + 123456 % 20000}" in argv and "--rdzv-id=123456" in argv
    assert argv[-5:] == ["-m", "bbrctl", "train", "--run-dir", str(run_dir)]
    assert {"srun_option": "--kill-on-bad-exit=0"} in recs
    # Every node's worker got USR1; torchrun's exit 1 became train's 75, and the task requeued itself.
    assert sorted(r["worker"] for r in recs if isinstance(r, dict) and r.get("signal") == "SIGUSR1") == [0, 1]
    assert proc.returncode == 75, out
    assert "scontrol requeue 41_1" in recs
    assert "train exited 75" in out and "rendezvous node-a:" in out


def test_term_stops_every_worker_without_requeue(multinode):
    make, env, log, _ = multinode
    proc = _start(make(), env)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    recs = _records(log)
    assert sorted(r["worker"] for r in recs if isinstance(r, dict) and r.get("signal") == "SIGTERM") == [0, 1]
    assert proc.returncode == 75, out
    assert not any(isinstance(r, str) and r.startswith("scontrol requeue") for r in recs)


def test_requeues_are_capped_by_the_restart_count(multinode):
    make, env, log, _ = multinode
    proc = _start(make(max_requeues=2), {**env, "SLURM_RESTART_COUNT": "2"})
    proc.send_signal(signal.SIGUSR1)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 75, out
    assert not any(isinstance(r, str) and r.startswith("scontrol requeue") for r in _records(log))
    assert "not requeued" in out and "launcher.max_requeues=2" in out
    # Below the cap it requeues.
    log.unlink()
    proc = _start(make(max_requeues=2), {**env, "SLURM_RESTART_COUNT": "1"})
    proc.send_signal(signal.SIGUSR1)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 75 and "scontrol requeue 41_1" in _records(log), out


def test_a_failure_stays_a_failure(multinode):
    """torchrun's 1 becomes 75 only when rank 0 recorded a stop with a checkpoint in this run."""
    make, env, log, run_dir = multinode
    from bbrctl.store import write_status

    write_status(run_dir, "requeued", iteration=3)      # left by an earlier run of the task
    time.sleep(1.1)
    out = subprocess.run(["bash", str(make())], env={**env, "FAKE_FAIL": "1"}, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 1 and "train exited 1" in out.stdout, out.stdout
    assert not any(isinstance(r, str) and r.startswith("scontrol") for r in _records(log))
    out = subprocess.run(["bash", str(make())], env={**env, "FAKE_RUN_S": "0.3"}, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and "train exited 0" in out.stdout, out.stdout


def test_single_node_multi_gpu_requeue_gets_through_torchrun(tmp_path, multinode):
    """gpus_per_job > 1 on one node: torchrun's 1 after USR1 is train's 75, and the task requeues."""
    make, env, log, _ = multinode
    proc = _start(make(nodes=1, gpus_per_job=2), env, n_workers=1)
    proc.send_signal(signal.SIGUSR1)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 75, out
    assert "scontrol requeue 41_1" in _records(log)


@pytest.mark.parametrize("value, minutes", [(30, 30), ("30", 30), ("1:30", 2), ("04:00:00", 240), ("1-00", 1440),
                                            ("1-02:30", 1590), ("0-00:00:59", 1), ("UNLIMITED", None), (None, None)])
def test_slurm_time_in_minutes(value, minutes):
    from bbrctl.config.schema import slurm_minutes

    assert slurm_minutes(value) == minutes


def test_local_supervisor_reads_torchruns_1_as_a_stop_when_rank_0_checkpointed(tmp_path):
    """The local launcher's multi-GPU jobs run under torchrun too: a stop is not a crash."""
    from bbrctl.launch import local
    from bbrctl.store import RunDir, read_results

    stopped, crashed = tmp_path / "stopped", tmp_path / "crashed"
    for d in (stopped, crashed):
        d.mkdir()
    code = ("import sys; sys.path.insert(0, {root!r}); from bbrctl.store import write_status; "
            "d = sys.argv[1]; d.endswith('stopped') and write_status(d, 'requeued', iteration=4); sys.exit(1)")
    root = str(Path(slurm.__file__).resolve().parents[2])

    def command(run_dir, gpus):
        return [sys.executable, "-c", code.format(root=root), str(run_dir)]

    cfg = local.LocalSettings(max_parallel=1, gpus_per_job=2, gpu_groups=[["0", "1"]])
    codes = local.Supervisor([stopped, crashed], cfg, command=command).run(poll_s=0.05)
    assert codes == {str(stopped): 75, str(crashed): 1}
    assert read_results(stopped) is None                          # resumable, not failed
    assert read_results(crashed)["status"] == "failed"
    assert RunDir(stopped).path.exists()


def test_each_process_gets_its_share_of_the_tasks_cpus(tmp_path):
    text = render(tmp_path / "t", nodes=2, gpus_per_job=4, cpus_per_task=32)
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    for cpus, want in (("32", "8"), ("3", "1")):
        line = [ln for ln in text.splitlines() if ln.startswith(("cpus=", "export OMP_NUM_THREADS="))]
        out = subprocess.run(["bash", "-c", "\n".join(line) + "\necho $OMP_NUM_THREADS"], capture_output=True,
                             text=True, env={**env, "SLURM_CPUS_PER_TASK": cpus})
        assert out.stdout.strip() == want, (cpus, out.stdout, out.stderr)
    one = render(tmp_path / "t")
    assert 'export OMP_NUM_THREADS="${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}"' in one
