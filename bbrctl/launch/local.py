"""Run a sweep's jobs on this machine: `bbrctl train --run-dir D` subprocesses.

At most ``max_parallel`` run at once. When GPUs are visible each job gets its own
``gpus_per_job`` of them through CUDA_VISIBLE_DEVICES (several GPUs per job run under
torchrun for DDP); without GPUs, jobs run on the CPU.

The supervisor either runs in the foreground (`bbrctl sweep --wait`, with a progress view)
or as a detached process (``python -m bbrctl.launch.local PLAN``, own session, logging to
the sweep's sweep.log) that `bbrctl status` follows and `bbrctl sweep --cancel` stops.
On SIGTERM/SIGINT it stops starting jobs and passes SIGTERM to the running ones, which
checkpoint and exit 75 ("requeued"; a re-run of the sweep resumes them).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from bbrctl.errors import REQUEUE_EXIT, UserError
from bbrctl.store import RunDir, atomic_write_json, locks, safe, read_job, read_json, read_status, write_results

RUN_LOCK = ".launch.lock"        # held by the supervisor while a job of it runs
_GRACE_S = 120.0                 # after SIGTERM, how long jobs get to checkpoint


# --------------------------------------------------------------------------- settings

def detect_gpus() -> list[str]:
    """Visible GPU ids, without importing torch: CUDA_VISIBLE_DEVICES, else nvidia-smi."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    try:
        out = subprocess.run([smi, "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip().isdigit()] if out.returncode == 0 else []


@dataclass
class LocalSettings:
    max_parallel: int
    gpus_per_job: int
    gpu_groups: list[list[str]] = field(default_factory=list)   # one entry per GPU slot; [] on CPU
    hide_gpus: bool = False      # gpus_per_job: 0 on a GPU machine: the jobs must not see them


def settings(launcher: dict, gpus: Sequence[str] | None = None) -> LocalSettings:
    """Check launcher.* for the local launcher and work out the job slots."""
    gpj = launcher.get("gpus_per_job", 1)
    if isinstance(gpj, bool) or not isinstance(gpj, int) or gpj < 0:
        raise UserError(f"launcher.gpus_per_job must be an integer >= 0, got {gpj!r}")
    mp = launcher.get("max_parallel", "auto")
    if not (mp in (None, "auto") or (isinstance(mp, int) and not isinstance(mp, bool) and mp >= 1)):
        raise UserError(f"launcher.max_parallel must be an integer >= 1 or 'auto', got {mp!r}")
    gpus = list(detect_gpus() if gpus is None else gpus)
    groups: list[list[str]] = []
    if gpj > 0 and gpus:
        if gpj > len(gpus):
            raise UserError(f"launcher.gpus_per_job={gpj} but only {len(gpus)} GPU(s) are visible "
                            f"({','.join(gpus)}); use launcher.gpus_per_job<={len(gpus)}")
        groups = [gpus[i:i + gpj] for i in range(0, len(gpus) - gpj + 1, gpj)]
    slots = len(groups) if groups else 1
    if mp in (None, "auto"):
        mp = slots
    elif groups:
        mp = min(mp, slots)    # never two jobs on one GPU slot
    return LocalSettings(max_parallel=int(mp), gpus_per_job=gpj if groups else 0, gpu_groups=groups,
                         hide_gpus=gpj == 0 and bool(gpus))


def check_world_size(cfg: dict, settings: LocalSettings) -> None:
    """With GPUs visible, a job of gpus_per_job > 1 runs DDP: its batch must split evenly."""
    world = settings.gpus_per_job if settings.gpu_groups else 1
    bs = cfg["schedule"]["batch_size"]
    if world > 1 and bs % world:
        raise UserError(f"schedule.batch_size={bs} is not divisible by the {world} GPUs of a job "
                        f"(launcher.gpus_per_job={world}); choose a multiple of {world}")


def train_command(run_dir: str | os.PathLike, gpus_per_job: int) -> list[str]:
    if gpus_per_job > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus_per_job}",
                "-m", "bbrctl", "train", "--run-dir", str(run_dir)]
    return [sys.executable, "-m", "bbrctl", "train", "--run-dir", str(run_dir)]


# --------------------------------------------------------------------------- supervisor

@dataclass
class _Running:
    run_dir: Path
    proc: subprocess.Popen
    slot: int
    lock_fd: int
    started: float


def cpu_threads_per_job(cfg: LocalSettings, environ=None, cores: int | None = None) -> int | None:
    """OMP_NUM_THREADS for each job when several train on the CPU at once, else None.

    Each torch process starts one OpenMP thread per core, and idle OpenMP threads spin
    while they wait for a core another process holds: two 2-thread jobs on 2 cores ran
    several times slower than one after the other. Splitting the cores avoids that. A
    user's own OMP_NUM_THREADS is left alone.
    """
    environ = os.environ if environ is None else environ
    if cfg.gpu_groups or cfg.max_parallel <= 1 or "OMP_NUM_THREADS" in environ:
        return None
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // cfg.max_parallel)


class Supervisor:
    """Runs ``run_dirs`` with at most ``max_parallel`` at a time; returns {run_dir: exit code}."""

    def __init__(self, run_dirs: Sequence[str | os.PathLike], cfg: LocalSettings,
                 log: Callable[[str], None] | None = None,
                 command: Callable[[Path, int], list[str]] | None = None):
        self.queue = [Path(d) for d in run_dirs]
        self.cfg = cfg
        self.command = command or train_command
        self.log = log or (lambda msg: None)
        self.running: list[_Running] = []
        self.codes: dict[str, int | None] = {}
        self.stopping = False

    def request_stop(self, *_: object) -> None:
        if not self.stopping:
            self.log("stop requested: no new jobs; asking running jobs to checkpoint")
        self.stopping = True
        for r in self.running:
            _signal(r.proc, signal.SIGTERM)

    def run(self, tick: Callable[[], None] | None = None, poll_s: float = 0.5) -> dict[str, int | None]:
        stop_deadline = None
        while self.queue or self.running:
            while not self.stopping and self.queue and len(self.running) < self.cfg.max_parallel:
                self._start(self.queue.pop(0))
            for r in list(self.running):
                rc = r.proc.poll()
                if rc is not None:
                    self._finish(r, rc)
            if self.stopping:
                self.queue.clear()
                if stop_deadline is None:
                    stop_deadline = time.monotonic() + _GRACE_S
                elif time.monotonic() > stop_deadline:
                    for r in self.running:
                        _signal(r.proc, signal.SIGKILL)
            if tick:
                tick()
            if self.running or self.queue:
                time.sleep(poll_s)
        return self.codes

    def _free_slot(self) -> int:
        used = {r.slot for r in self.running}
        return next(i for i in range(max(len(self.cfg.gpu_groups), self.cfg.max_parallel)) if i not in used)

    def _start(self, run_dir: Path) -> None:
        try:
            done = read_status(run_dir).get("state") == "done"
        except UserError as e:          # a damaged results/status file: train says what to do
            self.log(f"note {run_dir.name}: {e}")
            done = False
        if done:
            self.log(f"skip {run_dir.name}: already done")
            self.codes[str(run_dir)] = 0
            return
        # The lock makes two supervisors (two `bbrctl sweep` runs) never train one run dir at once.
        try:
            fd = locks.try_lock(run_dir / RUN_LOCK, "a bbrctl local supervisor")
        except UserError as e:          # a link or directory where the lock belongs
            self.log(f"FAILED {run_dir.name}: {' '.join(str(e).split())}")
            self.codes[str(run_dir)] = 1
            return
        if fd is None:
            self.log(f"skip {run_dir.name}: another launcher is running it")
            self.codes[str(run_dir)] = None
            return
        slot = self._free_slot()
        env = dict(os.environ)
        env["BBRCTL_LAUNCHER"] = "local"
        if self.cfg.gpu_groups:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(self.cfg.gpu_groups[slot])
        elif self.cfg.hide_gpus:
            env["CUDA_VISIBLE_DEVICES"] = ""
        threads = cpu_threads_per_job(self.cfg)
        if threads is not None:
            env["OMP_NUM_THREADS"] = str(threads)
        cmd = self.command(run_dir, self.cfg.gpus_per_job)
        try:
            with safe.open_append(RunDir(run_dir).stdout_log) as out:   # no link followed
                # Its own session: a Ctrl-C in the terminal reaches only the supervisor, which
                # turns it into SIGTERM (checkpoint, exit 75) instead of killing jobs mid-step.
                proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                        env=env, close_fds=True, start_new_session=True)
        except (UserError, OSError) as e:
            locks.release(fd)
            self.log(f"FAILED {run_dir.name}: {' '.join(str(e).split())}")
            self.codes[str(run_dir)] = 1
            return
        self.running.append(_Running(run_dir, proc, slot, fd, time.time()))
        gpu_note = f" on GPU {env['CUDA_VISIBLE_DEVICES']}" if self.cfg.gpu_groups else ""
        self.log(f"start {run_dir.name} (pid {proc.pid}){gpu_note}")

    def _finish(self, r: _Running, rc: int) -> None:
        self.running.remove(r)
        locks.release(r.lock_fd)
        if rc not in (0, REQUEUE_EXIT) and self.cfg.gpus_per_job > 1:
            # torchrun reports its workers' checkpoint-and-stop (75) as 1: the run directory says.
            from bbrctl.launch.exit_status import exit_status

            rc = exit_status(str(r.run_dir), r.started, rc)
        self.codes[str(r.run_dir)] = rc
        took = time.time() - r.started
        if rc == 0:
            self.log(f"done {r.run_dir.name} in {took:.0f}s")
        elif rc == REQUEUE_EXIT:
            self.log(f"stopped {r.run_dir.name} after {took:.0f}s (checkpointed; re-run the sweep to resume)")
        else:
            self.log(f"FAILED {r.run_dir.name} (exit {rc}); see {RunDir(r.run_dir).stdout_log}")
            record_crash(r.run_dir, rc)


def record_crash(run_dir: Path, rc: int) -> None:
    """A train that died without results.json (killed, crashed on import) gets one, so
    status and report see a failure instead of a run that is forever "running"."""
    rd = RunDir(run_dir)
    if isinstance(read_json(rd.results), dict):
        return
    if locks.is_locked(rd.lock):
        return          # another trainer holds the directory: this one was refused, the job runs on
    try:
        job = read_job(rd.path) or {}
    except UserError:
        job = {}
    write_results(rd.path, "failed", signature=job.get("signature"),
                  error=f"train exited with code {rc} without writing results; see {rd.stdout_log.name}")


def _signal(proc: subprocess.Popen, sig: int) -> None:
    """Signal a job (torchrun passes TERM on to its workers)."""
    try:
        proc.send_signal(sig)
    except (ProcessLookupError, OSError):
        pass


# --------------------------------------------------------------------------- detached mode

def write_plan(path: Path, run_dirs: Sequence[Path], cfg: LocalSettings, sweep_dir: Path) -> None:
    atomic_write_json(path, {"run_dirs": [str(d) for d in run_dirs], "max_parallel": cfg.max_parallel,
                             "gpus_per_job": cfg.gpus_per_job, "gpu_groups": cfg.gpu_groups,
                             "hide_gpus": cfg.hide_gpus,
                             "sweep_dir": str(sweep_dir)})


def spawn_detached(plan_path: Path, log_path: Path) -> subprocess.Popen:
    """Start ``python -m bbrctl.launch.local PLAN`` in its own session, logging to log_path."""
    with safe.open_append(log_path) as log:
        return subprocess.Popen([sys.executable, "-m", "bbrctl.launch.local", str(plan_path)],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True)


def _main(argv: Sequence[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m bbrctl.launch.local PLAN.json", file=sys.stderr)
        return 2
    with open(argv[0], encoding="utf-8") as f:
        plan = json.load(f)
    cfg = LocalSettings(max_parallel=plan["max_parallel"], gpus_per_job=plan["gpus_per_job"],
                        gpu_groups=plan.get("gpu_groups") or [], hide_gpus=bool(plan.get("hide_gpus")))

    def log(msg: str) -> None:
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} [{os.getpid()}] {msg}", flush=True)

    sup = Supervisor(plan["run_dirs"], cfg, log)
    signal.signal(signal.SIGTERM, sup.request_stop)
    signal.signal(signal.SIGINT, sup.request_stop)
    log(f"supervising {len(sup.queue)} job(s), {cfg.max_parallel} at a time")
    codes = sup.run()
    failed = sum(1 for c in codes.values() if c not in (0, None, REQUEUE_EXIT))
    log(f"finished: {sum(1 for c in codes.values() if c == 0)} done, {failed} failed, "
        f"{sum(1 for c in codes.values() if c == REQUEUE_EXIT)} stopped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
