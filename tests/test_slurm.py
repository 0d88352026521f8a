"""SLURM launcher without a cluster: template rendering, value checks, the batch script's
signal handling (run by bash with stand-in commands), and submission through a stand-in
sbatch. The real-cluster tests are in test_slurm_e2e.py."""

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

from bbrctl.errors import UserError
from bbrctl.launch import slurm

BASE = {"name": "slurm", "template": "array.sbatch.j2", "partition": None, "account": None, "qos": None,
        "time": "04:00:00", "gpus_per_job": 0, "cpus_per_task": 2, "mem": None, "max_parallel": 8,
        "signal_seconds": 120, "extra_sbatch": [], "setup": [], "python": None}


def render(tmp_path, **over):
    s = slurm.check_settings({**BASE, **over})
    return slurm.render(s, sweep_name="demo", tasks_file=tmp_path / "my tasks.txt", n_tasks=3)


def test_render_puts_settings_into_directives(tmp_path):
    text = render(tmp_path, partition="gpu", account="proj-1", qos="high", time="1-00:00:00", mem="32G",
                  gpus_per_job=1, cpus_per_task=8, extra_sbatch=["--constraint=a100", "#SBATCH --exclusive"],
                  setup=["module load cuda/12.1", "source ~/venv/bin/activate"])
    for line in ("#SBATCH --partition=gpu", "#SBATCH --account=proj-1", "#SBATCH --qos=high",
                 "#SBATCH --time=1-00:00:00", "#SBATCH --mem=32G", "#SBATCH --gres=gpu:1",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --constraint=a100", "#SBATCH --exclusive",
                 "#SBATCH --requeue", "#SBATCH --signal=B:USR1@120", "#SBATCH --open-mode=append",
                 "module load cuda/12.1", "source ~/venv/bin/activate"):
        assert line in text.splitlines(), line
    assert f"TASKS_FILE='{tmp_path}/my tasks.txt'" in text
    assert f"PYTHON={sys.executable}" in text or f"PYTHON='{sys.executable}'" in text
    assert "torch.distributed.run" not in text
    assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0
    # All #SBATCH lines come before the first command (sbatch stops reading at it).
    lines = [ln for ln in text.splitlines() if ln.strip()]
    first_cmd = next(i for i, ln in enumerate(lines[1:], 1) if not ln.startswith("#"))
    assert not any(ln.startswith("#SBATCH") for ln in lines[first_cmd:])


def test_render_multi_gpu_uses_torchrun(tmp_path):
    text = render(tmp_path, gpus_per_job=4)
    assert "#SBATCH --gres=gpu:4" in text
    assert "-m torch.distributed.run --standalone --nproc-per-node=4 -m bbrctl train" in text
    assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0


@pytest.mark.parametrize("key, value", [
    ("partition", "gpu --wrap=touch"), ("partition", "a\nb"), ("account", "x;y"), ("qos", "$(id)"),
    ("time", "4 hours"), ("time", "01:00:00\n#SBATCH --x"), ("mem", "lots"), ("cpus_per_task", 0),
    ("max_parallel", "8"), ("gpus_per_job", -1), ("extra_sbatch", ["--constraint=a100\nrm -rf /"]),
    ("extra_sbatch", ["--comment='$(id)'"]), ("extra_sbatch", ["echo hi"]), ("extra_sbatch", "--exclusive"),
    ("python", "py\nthon"), ("setup", "module load cuda"),
])
def test_bad_launcher_values_are_rejected(key, value):
    with pytest.raises(UserError) as e:
        slurm.check_settings({**BASE, key: value})
    assert f"launcher.{key}" in str(e.value) and "\n" not in str(e.value)


def test_user_template_and_template_errors(tmp_path):
    mine = tmp_path / "site.sbatch.j2"
    mine.write_text("#!/bin/bash\n#SBATCH --partition={{ partition }}\n# site: {{ sweep_name }}\n"
                    "{{ python | q }} -m bbrctl train --run-dir \"$(sed -n \"$((SLURM_ARRAY_TASK_ID+1))p\" {{ tasks_file | q }})\"\n")
    text = slurm.render(slurm.check_settings({**BASE, "template": str(mine), "partition": "p1"}), sweep_name="s",
                        tasks_file=tmp_path / "t", n_tasks=1)
    assert "#SBATCH --partition=p1" in text and "# site: s" in text
    with pytest.raises(UserError, match="not found"):
        slurm.resolve_template(str(tmp_path / "missing.j2"))
    (tmp_path / "broken.j2").write_text("{{ no_such_variable }}\n")
    with pytest.raises(UserError, match="does not render"):
        slurm.render(slurm.check_settings({**BASE, "template": str(tmp_path / "broken.j2")}), sweep_name="s",
                     tasks_file=tmp_path / "t", n_tasks=1)


# --------------------------------------------------------------------------- the batch script, run by bash

FAKE_TRAIN = textwrap.dedent("""\
    #!/usr/bin/env python3
    # Stands in for `python -m bbrctl train --run-dir D`: records its argv and the signals it
    # gets; exits 75 after a signal (checkpoint and requeue), 0 after --finish-after seconds.
    import json, os, signal, sys, time
    log = os.environ["FAKE_LOG"]
    def note(**kw):
        with open(log, "a") as f:
            f.write(json.dumps(kw) + "\\n")
    got = []
    def handler(signum, frame):
        got.append(signum)
        note(signal=signal.Signals(signum).name)
    signal.signal(signal.SIGUSR1, handler)
    signal.signal(signal.SIGTERM, handler)
    note(argv=sys.argv[1:], pid=os.getpid(), omp=os.environ.get("OMP_NUM_THREADS"))
    t = time.time()
    while time.time() - t < float(os.environ.get("FAKE_RUN_S", "30")):
        if got:
            time.sleep(0.3)
            sys.exit(75)
        time.sleep(0.05)
    sys.exit(0)
""")


@pytest.fixture
def script_env(tmp_path):
    """A rendered batch script whose python and scontrol are stand-ins that log what they see."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_py = bin_dir / "fakepython"
    fake_py.write_text(FAKE_TRAIN)
    fake_py.chmod(fake_py.stat().st_mode | stat.S_IEXEC)
    scontrol = bin_dir / "scontrol"
    scontrol.write_text('#!/bin/sh\necho "scontrol $*" >> "$FAKE_LOG"\n')
    scontrol.chmod(0o755)
    run_dirs = [tmp_path / "runs" / "s" / "a b-1", tmp_path / "runs" / "s" / "c-2"]
    for d in run_dirs:
        d.mkdir(parents=True)
    tasks = tmp_path / "tasks"
    slurm.write_tasks(tasks, run_dirs)
    text = slurm.render(slurm.check_settings({**BASE, "python": str(fake_py)}), sweep_name="s", tasks_file=tasks,
                        n_tasks=2)
    script = tmp_path / "job.sbatch"
    script.write_text(text)
    log = tmp_path / "fake.log"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_LOG": str(log),
           "SLURM_ARRAY_JOB_ID": "41", "SLURM_ARRAY_TASK_ID": "1"}
    return script, env, log, run_dirs


def _records(log: Path) -> list:
    if not log.exists():
        return []
    return [json.loads(x) if x.startswith("{") else x for x in log.read_text().splitlines()]


def _wait_for(pred, timeout=30.0):
    t = time.time()
    while time.time() - t < timeout:
        if pred():
            return True
        time.sleep(0.1)
    return False


def test_script_runs_the_tasks_run_dir_and_passes_exit_code(script_env):
    script, env, log, run_dirs = script_env
    env = {k: v for k, v in env.items() if k != "OMP_NUM_THREADS"}
    out = subprocess.run(["bash", str(script)], env={**env, "FAKE_RUN_S": "0.2", "SLURM_CPUS_PER_TASK": "3"},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    (rec,) = [r for r in _records(log) if isinstance(r, dict) and "argv" in r]
    assert rec["argv"] == ["-m", "bbrctl", "train", "--run-dir", str(run_dirs[1])]
    assert rec["omp"] == "3"                # one thread per CPU SLURM allocated
    assert "restart=0" in out.stdout and "41_1" in out.stdout


def test_script_keeps_the_users_thread_count(script_env):
    script, env, log, _ = script_env
    out = subprocess.run(["bash", str(script)], env={**env, "FAKE_RUN_S": "0.2", "SLURM_CPUS_PER_TASK": "3",
                                                     "OMP_NUM_THREADS": "2"}, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    (rec,) = [r for r in _records(log) if isinstance(r, dict) and "argv" in r]
    assert rec["omp"] == "2"


@pytest.mark.parametrize("sig, requeued", [(signal.SIGUSR1, True), (signal.SIGTERM, False)])
def test_script_forwards_signals_and_requeues_only_on_usr1(script_env, sig, requeued):
    script, env, log, _ = script_env
    proc = subprocess.Popen(["bash", str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert _wait_for(lambda: any(isinstance(r, dict) and "argv" in r for r in _records(log)))
    time.sleep(0.3)                     # let bash reach `wait`
    proc.send_signal(sig)               # SLURM's --signal=B:USR1 reaches the batch shell only
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 75, out
    recs = _records(log)
    assert {"signal": sig.name} in recs
    assert ("scontrol requeue 41_1" in recs) is requeued


# --------------------------------------------------------------------------- submission via a stand-in sbatch

@pytest.fixture
def fake_slurm(tmp_path):
    """sbatch/squeue/scontrol stand-ins: sbatch records its argv and answers a job id."""
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    state = tmp_path / "fakeslurm"
    state.mkdir()
    (bin_dir / "sbatch").write_text(textwrap.dedent(f"""\
        #!/bin/sh
        if [ "$1" = --test-only ]; then
          cat > /dev/null
          case "$*" in *--job-name=bbrctl-refused*) echo "sbatch: error: invalid partition" >&2; exit 1;; esac
          exit 0
        fi
        n=$(ls {state} | grep -c '^submit' || true)
        printf '%s\\n' "$@" > {state}/submit-$n.argv
        echo $((900 + n))
    """))
    (bin_dir / "squeue").write_text(f"#!/bin/sh\ncat {state}/queue 2>/dev/null || true\n")
    (bin_dir / "scontrol").write_text("#!/bin/sh\nexit 0\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    return env, state


def cli(args, cwd, env):
    return subprocess.run([sys.executable, "-m", "bbrctl", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_one_array_per_sweep_and_no_duplicate_submission(tmp_path, fake_slurm):
    env, state = fake_slurm
    work = tmp_path / "work"
    work.mkdir()
    args = ["sweep", "loss=eiou,giou,ciou", "launcher=slurm", "launcher.max_parallel=2", "launcher.partition=debug"]
    out = cli(args, work, env)
    assert out.returncode == 0, out.stderr
    assert "SLURM job array 900" in out.stdout
    argv = (state / "submit-0.argv").read_text().splitlines()
    assert argv[:2] == ["--parsable", "--array=0-2%2"]
    script = Path(argv[-1])
    manifest = json.loads((work / "runs" / "loss" / "sweep.json").read_text())
    (launch,) = manifest["launches"]
    assert launch["array_job_id"] == "900" and sorted(launch["tasks"].values()) == [0, 1, 2]
    task_dirs = Path(launch["tasks_file"]).read_text().splitlines()
    by_index = sorted(launch["tasks"], key=launch["tasks"].get)
    assert [Path(d).name for d in task_dirs] == [manifest["jobs"][s]["dir"] for s in by_index]
    assert all((Path(d) / "config.yaml").is_file() and (Path(d) / "job.json").is_file() for d in task_dirs)
    assert "#SBATCH --partition=debug" in script.read_text()
    # All three are in the queue: a second submission submits nothing.
    (state / "queue").write_text("900_0|RUNNING\n900_1|PENDING\n900_2|PENDING\n")
    out = cli(args, work, env)
    assert out.returncode == 0, out.stderr
    assert "nothing to launch" in out.stdout and not (state / "submit-1.argv").exists()
    # One left the queue without results (lost), one finished: only the lost one goes again.
    sig_by_task = {v: k for k, v in launch["tasks"].items()}
    done_dir = work / "runs" / "loss" / manifest["jobs"][sig_by_task[1]]["dir"]
    (done_dir / "results.json").write_text(json.dumps({"status": "done", "metrics": {"bbox": {"AP": 1.0}}}))
    (state / "queue").write_text("900_2|RUNNING\n")
    out = cli(args, work, env)
    assert out.returncode == 0, out.stderr
    argv = (state / "submit-1.argv").read_text().splitlines()
    assert argv[1] == "--array=0-0%2"
    st = json.loads(cli(["status", "loss", "--json"], work, env).stdout)
    assert {j["slurm_id"] for j in st["jobs"]} == {"901_0", "900_1", "900_2"}


def test_cancel_scancels_the_arrays_still_queued(tmp_path, fake_slurm):
    env, state = fake_slurm
    (Path(env["PATH"].split(":")[0]) / "scancel").write_text(f"#!/bin/sh\necho \"$@\" > {state}/scancel\n")
    (Path(env["PATH"].split(":")[0]) / "scancel").chmod(0o755)
    out = cli(["sweep", "loss=eiou,giou", "launcher=slurm"], tmp_path, env)
    assert out.returncode == 0, out.stderr
    (state / "queue").write_text("900_0|RUNNING\n900_1|PENDING\n")
    out = cli(["sweep", "--cancel", "loss"], tmp_path, env)
    assert out.returncode == 0, out.stderr
    assert (state / "scancel").read_text().split() == ["900"]


def test_hostile_values_never_reach_a_shell_or_leave_runs(tmp_path, fake_slurm):
    """Override values with ; $(...) quotes spaces and ../ : nothing runs, nothing lands outside runs/."""
    env, state = fake_slurm
    work = tmp_path / "work"
    work.mkdir()
    canary = tmp_path / "PWNED"
    env = {**env, "WANDB_API_KEY": "sekrit-token-123456"}
    nasty = [f"'$(touch {canary})'", f"'; touch {canary}; echo '", "'`touch " + str(canary) + "`'",
             "'../../../../escape \"q\" x'", "'a b\\'c'"]
    out = cli(["sweep", "+model.kwargs.note=" + ",".join(nasty), "loss=eiou", "launcher=slurm", "--name", "safe"], work, env)
    assert out.returncode == 0, out.stderr
    assert not canary.exists()
    assert sorted(p.name for p in work.iterdir()) == ["runs"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fakebin", "fakeslurm", "work"]
    sweep_dir = work / "runs" / "safe"
    run_dirs = [p for p in sweep_dir.iterdir() if (p / "job.json").exists()]
    assert len(run_dirs) == 5
    notes = {json.loads((d / "job.json").read_text())["config"]["model"]["kwargs"]["note"] for d in run_dirs}
    assert f"$(touch {canary})" in notes and "../../../../escape \"q\" x" in notes
    argv = (state / "submit-0.argv").read_text()
    script = Path(argv.splitlines()[-1]).read_text()
    for needle in ("touch", "escape", "PWNED"):
        assert needle not in script and needle not in argv
    # Run the batch script for each task with a stand-in python: still nothing executes.
    fake_py = tmp_path / "fakebin" / "py"
    fake_py.write_text("#!/bin/sh\nexit 0\n")
    fake_py.chmod(0o755)
    script_path = Path(argv.splitlines()[-1])
    script_path.write_text(script.replace(f"PYTHON={sys.executable}", f"PYTHON={fake_py}")
                           .replace(f"PYTHON='{sys.executable}'", f"PYTHON={fake_py}"))
    for i in range(5):
        r = subprocess.run(["bash", str(script_path)], env={**env, "SLURM_ARRAY_JOB_ID": "900",
                                                            "SLURM_ARRAY_TASK_ID": str(i)}, capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
    assert not canary.exists()
    # No token in anything bbrctl wrote.
    for p in work.rglob("*"):
        if p.is_file():
            assert "sekrit-token" not in p.read_text(errors="replace"), p


def test_a_cluster_refusal_creates_nothing(tmp_path, fake_slurm):
    env, state = fake_slurm
    out = cli(["sweep", "loss=eiou,giou", "launcher=slurm", "--name", "refused"], tmp_path, env)
    assert out.returncode == 2 and "SLURM would refuse" in out.stderr and out.stderr.count("\n") == 1
    assert list(tmp_path.iterdir()) == [] or sorted(p.name for p in tmp_path.iterdir()) == ["fakebin", "fakeslurm"]
    assert not (tmp_path / "runs").exists() and not list(state.glob("submit-*"))


def test_show_script_prints_exactly_what_a_launch_submits(tmp_path, fake_slurm):
    env, state = fake_slurm
    work = tmp_path / "work"
    work.mkdir()
    args = ["sweep", "loss=eiou,giou", "launcher=slurm", "launcher.nodes=2", "launcher.partition=debug", "--name", "ms"]
    out = cli([*args, "--dry-run", "--show-script", "--json"], work, env)
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)["submission"]
    assert list(work.iterdir()) == [] and not list(state.glob("submit-*"))      # a dry run
    text = cli([*args, "--show-script"], work, env)
    assert text.returncode == 0 and shown["script"] in text.stdout and "#SBATCH --nodes=2" in text.stdout
    assert "sbatch --parsable --array=0-1%8" in text.stdout
    out = cli(args, work, env)
    assert out.returncode == 0, out.stderr
    argv = (state / "submit-0.argv").read_text().splitlines()
    assert ["sbatch", *argv] == shown["sbatch"]
    assert Path(argv[-1]).read_text() == shown["script"]
    assert Path(shown["tasks_file"]).read_text().splitlines() == shown["tasks"]
    # Once submitted, nothing more would be: said in one line.
    (state / "queue").write_text("900_0|RUNNING\n900_1|PENDING\n")
    again = cli([*args, "--show-script"], work, env)
    assert again.returncode == 0 and again.stdout.startswith("# sweep ms: nothing would be submitted"), again.stdout


def test_show_script_needs_the_slurm_launcher(tmp_path):
    out = cli(["sweep", "loss=eiou", "--dry-run", "--show-script"], tmp_path, os.environ)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "launcher=slurm" in out.stderr, out.stderr
    assert list(tmp_path.iterdir()) == []
