"""Launch an expanded sweep: skip what is done or still running, create run dirs, start the rest.

One `bbrctl sweep` invocation is one *launch* of a sweep. Under the sweep's lock it
checks each job (bbrctl.status.inspect_job: done → skip; queued or running → skip;
failed, requeued, never started → launch), creates the run directories it launches with
bbrctl.runs.prepare_run_dir, hands them to the local supervisor or to one SLURM job
array, and records the launch in ``<sweep>/sweep.json``::

    {"name", "created", "updated", "runs_root", "swept_keys", "experiment", "overrides",
     "jobs": {signature: {"dir", "name", "overrides"}},
     "launches": [{"id", "time", "launcher": "local", "jobs": [signature...], "pid", "pid_start",
                   "host", "plan", "log", "mode": "background"|"foreground"}
                  | {"id", "time", "launcher": "slurm", "jobs": [...], "array_job_id",
                     "tasks": {signature: task index}, "script", "tasks_file", "log_dir"}]}
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from bbrctl.errors import UserError
from bbrctl.sweep import LOCK, SweepPlan, load_manifest, merge_jobs_into_manifest, save_manifest


@dataclass
class JobDecision:
    signature: str
    name: str
    run_dir: Path
    overrides: list[str]
    state: str                 # current state (bbrctl.status states, "new" for no run dir yet)
    action: str                # "launch" | "skip"
    reason: str = ""
    slurm_id: str | None = None

    def to_dict(self) -> dict:
        return {"name": self.name, "signature": self.signature, "run_dir": str(self.run_dir),
                "overrides": self.overrides, "state": self.state, "action": self.action, "reason": self.reason,
                "slurm_id": self.slurm_id}


@dataclass
class LaunchResult:
    plan: SweepPlan
    decisions: list[JobDecision]
    launch: dict | None = None
    message: str = ""
    waited: dict = field(default_factory=dict)

    @property
    def to_launch(self) -> list[JobDecision]:
        return [d for d in self.decisions if d.action == "launch"]

    def to_dict(self) -> dict:
        from bbrctl.sweep import plan_summary

        return {**plan_summary(self.plan), "jobs": [d.to_dict() for d in self.decisions],
                "n_launch": len(self.to_launch), "n_skip": len(self.decisions) - len(self.to_launch),
                "launch": self.launch, "message": self.message, **({"final": self.waited} if self.waited else {})}


@contextlib.contextmanager
def sweep_lock(sweep_dir: Path) -> Iterator[None]:
    """Serialise launches of one sweep (two `bbrctl sweep` runs never submit the same job)."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(sweep_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise UserError(f"another `bbrctl sweep` is launching {sweep_dir.name} right now; try again when it returns") from None
        yield
    finally:
        os.close(fd)


def decide(plan: SweepPlan, manifest: dict | None = None, query_scheduler: bool = True) -> list[JobDecision]:
    """Per job: launch it, or skip it because it is done or queued/running somewhere."""
    from bbrctl.runs import JOB
    from bbrctl.status import Scheduler, inspect_job
    from bbrctl.sweep import last_launch_of

    manifest = load_manifest(plan.sweep_dir) if manifest is None else manifest
    sched = Scheduler(manifest, query=query_scheduler)
    now = time.time()
    out = []
    for job in plan.jobs:
        assert job.run_dir is not None
        if not (job.run_dir / JOB).exists():
            out.append(JobDecision(job.signature, job.name, job.run_dir, job.overrides, "new", "launch"))
            continue
        js = inspect_job(job.run_dir, job.name, job.signature, last_launch_of(manifest, job.signature), sched, now)
        if js.state == "done":
            d = JobDecision(job.signature, job.name, job.run_dir, job.overrides, "done", "skip", "done")
        elif js.active:
            d = JobDecision(job.signature, job.name, job.run_dir, job.overrides, js.state, "skip",
                            f"{js.state} ({js.slurm_id} {js.slurm_state})" if js.slurm_id else f"{js.state} (live)")
        else:
            why = {"failed": "relaunch after failure", "requeued": "resume from checkpoint"}.get(js.state, "launch")
            d = JobDecision(job.signature, job.name, job.run_dir, job.overrides, js.state, "launch", why)
        d.slurm_id = js.slurm_id
        out.append(d)
    return out


def check_launcher(plan: SweepPlan) -> dict:
    """Validate launcher.* before anything is created; returns the checked settings."""
    name = plan.launcher.get("name")
    if name == "local":
        from bbrctl.launch import local

        return {"name": "local", "local": local.settings(plan.launcher)}
    if name == "slurm":
        from bbrctl.launch import slurm

        settings = slurm.check_settings(plan.launcher)
        slurm.resolve_template(settings["template"])
        # Render once with placeholders so a broken template fails before anything exists.
        slurm.render(settings, sweep_name=plan.name, tasks_file=plan.sweep_dir / "slurm" / "check.tasks", n_tasks=1)
        return {"name": "slurm", "slurm": settings}
    raise UserError(f"unknown launcher {name!r}; valid launchers: local, slurm")


def launch(plan: SweepPlan, *, wait: bool = False, echo: Callable[[str], None] | None = None,
           progress: bool = True) -> LaunchResult:
    """Create what is missing and start it. Returns once submitted (or finished, with wait)."""
    from bbrctl.runs import prepare_run_dir

    echo = echo or (lambda msg: print(msg, file=sys.stderr))
    checked = check_launcher(plan)
    if checked["name"] == "slurm":
        from bbrctl.launch import slurm

        slurm.require_slurm()
        # The cluster's own check (partition, account, time, ...) before anything exists.
        n = max(1, len(plan.jobs))
        text = slurm.render(checked["slurm"], sweep_name=plan.name, tasks_file=plan.sweep_dir / "slurm" / "check.tasks",
                            n_tasks=n)
        slurm.test_submit(slurm.sbatch_argv(Path("-"), n, checked["slurm"]["max_parallel"],
                                            plan.sweep_dir / "slurm" / "logs", f"bbrctl-{plan.name}"), text)

    with sweep_lock(plan.sweep_dir):
        manifest = load_manifest(plan.sweep_dir)
        decisions = decide(plan, manifest)
        todo = [d for d in decisions if d.action == "launch"]
        merge_jobs_into_manifest(manifest, plan)
        by_sig = {j.signature: j for j in plan.jobs}
        for d in todo:
            job = by_sig[d.signature]
            prepare_run_dir(d.run_dir, job.config, signature=job.signature, name=job.name, sweep=plan.name,
                            overrides=job.overrides)
        result = LaunchResult(plan, decisions)
        if not todo:
            save_manifest(plan.sweep_dir, manifest)
            result.message = f"sweep {plan.name}: nothing to launch ({_skip_summary(decisions)})"
            if not wait:
                return result
        elif checked["name"] == "local":
            result.launch = _launch_local(plan, manifest, todo, checked["local"], foreground=wait)
        else:
            result.launch = _launch_slurm(plan, manifest, todo, checked["slurm"])
        if todo:
            save_manifest(plan.sweep_dir, manifest)
            result.message = _launched_message(plan, result.launch, len(todo), decisions, wait)

    if wait:
        echo(result.message)
        sigs = [j.signature for j in plan.jobs]
        if result.launch and result.launch.get("mode") == "foreground":
            result.waited = _run_foreground(plan, result.launch, checked["local"], sigs, progress)
        else:
            result.waited = follow(plan.name, plan.sweep_dir, sigs, progress=progress)
    return result


def _skip_summary(decisions: list[JobDecision]) -> str:
    done = sum(1 for d in decisions if d.reason == "done")
    active = sum(1 for d in decisions if d.action == "skip" and d.reason != "done")
    parts = [f"{done} done"] if done else []
    if active:
        parts.append(f"{active} queued or running")
    return ", ".join(parts) or "no jobs"


def _launched_message(plan: SweepPlan, launch: dict, n: int, decisions: list[JobDecision], wait: bool) -> str:
    skipped = len(decisions) - n
    skip = f" ({_skip_summary([d for d in decisions if d.action == 'skip'])} skipped)" if skipped else ""
    if launch["launcher"] == "slurm":
        how = f"SLURM job array {launch['array_job_id']} ({n} task(s))"
    elif launch.get("mode") == "background":
        how = f"a background supervisor (pid {launch['pid']}, log {launch['log']})"
    else:
        how = "this terminal"
    follow_hint = "" if wait else f"; follow with `bbrctl status {plan.name}`"
    return f"sweep {plan.name}: launching {n} job(s) on {how}{skip}{follow_hint}"


def _next_launch_id(manifest: dict) -> int:
    return 1 + max((int(l.get("id", 0)) for l in manifest.get("launches") or []), default=0)


def _launch_local(plan: SweepPlan, manifest: dict, todo: list[JobDecision], cfg, foreground: bool) -> dict:
    from bbrctl.launch import local
    from bbrctl.status import proc_start_time

    lid = _next_launch_id(manifest)
    entry = {"id": lid, "time": time.time(), "launcher": "local", "jobs": [d.signature for d in todo],
             "host": socket.gethostname(), "max_parallel": cfg.max_parallel, "gpu_groups": cfg.gpu_groups}
    if foreground:
        entry.update(mode="foreground", pid=os.getpid(), pid_start=proc_start_time(os.getpid()))
    else:
        launches_dir = plan.sweep_dir / "launches"
        launches_dir.mkdir(exist_ok=True)
        plan_path = launches_dir / f"local-{lid}.json"
        local.write_plan(plan_path, [d.run_dir for d in todo], cfg, plan.sweep_dir)
        log = plan.sweep_dir / "sweep.log"
        proc = local.spawn_detached(plan_path, log)
        entry.update(mode="background", pid=proc.pid, pid_start=proc_start_time(proc.pid), plan=str(plan_path),
                     log=str(log))
    entry["run_dirs"] = [str(d.run_dir) for d in todo]
    manifest.setdefault("launches", []).append(entry)
    return entry


def _run_foreground(plan: SweepPlan, entry: dict, cfg, sigs: list[str], progress: bool) -> dict:
    from bbrctl.launch import local
    from bbrctl.status import ProgressView, counts

    log_path = plan.sweep_dir / "sweep.log"

    def log(msg: str) -> None:
        with open(log_path, "a", encoding="utf-8") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} [{os.getpid()}] {msg}\n")

    sup = local.Supervisor(entry["run_dirs"], cfg, log)
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    interrupted = []

    def stop(signum, frame):
        interrupted.append(signum)
        sup.request_stop()

    for s in old:
        signal.signal(s, stop)
    try:
        with ProgressView(plan.name, plan.sweep_dir, sigs) if progress else contextlib.nullcontext() as view:
            sup.run(tick=(lambda: view.refresh(query_scheduler=False)) if view else None)
            jobs = view.refresh(force=True) if view else []
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if interrupted:
        raise KeyboardInterrupt
    from bbrctl.status import sweep_jobs

    jobs = jobs or sweep_jobs(plan.sweep_dir, only=sigs, query_scheduler=False)
    return counts(jobs)


def follow(name: str, sweep_dir: Path, sigs: list[str] | None = None, progress: bool = True,
           poll_s: float = 2.0, timeout_s: float | None = None) -> dict:
    """Block until no job of the sweep is queued or running; show progress meanwhile."""
    from bbrctl.status import ProgressView, counts, sweep_jobs

    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    if sigs is None:
        sigs = list((load_manifest(sweep_dir).get("jobs") or {}).keys())
    view_cm = ProgressView(name, sweep_dir, sigs) if progress else contextlib.nullcontext()
    with view_cm as view:
        while True:
            jobs = view.refresh(force=True) if view else sweep_jobs(sweep_dir, only=sigs)
            if not any(j.active for j in jobs):
                return counts(jobs)
            if deadline is not None and time.monotonic() > deadline:
                return counts(jobs)
            time.sleep(poll_s)


def _launch_slurm(plan: SweepPlan, manifest: dict, todo: list[JobDecision], settings: dict) -> dict:
    from bbrctl.launch import slurm

    lid = _next_launch_id(manifest)
    sdir = plan.sweep_dir / "slurm"
    log_dir = sdir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    tasks_file = sdir / f"launch-{lid}.tasks"
    script = sdir / f"launch-{lid}.sbatch"
    run_dirs = [d.run_dir.resolve() for d in todo]
    slurm.write_tasks(tasks_file, run_dirs)
    from bbrctl.runs import atomic_write_text

    text = slurm.render(settings, sweep_name=plan.name, tasks_file=tasks_file.resolve(), n_tasks=len(todo))
    atomic_write_text(script, text)
    os.chmod(script, 0o755)
    argv = slurm.sbatch_argv(script.resolve(), len(todo), settings["max_parallel"], log_dir.resolve(),
                             f"bbrctl-{plan.name}")
    array_id = slurm.submit(argv, cwd=Path.cwd())
    entry = {"id": lid, "time": time.time(), "launcher": "slurm", "jobs": [d.signature for d in todo],
             "array_job_id": array_id, "tasks": {d.signature: i for i, d in enumerate(todo)},
             "script": str(script), "tasks_file": str(tasks_file), "log_dir": str(log_dir),
             "sbatch": argv, "settings": slurm.describe(settings)}
    manifest.setdefault("launches", []).append(entry)
    return entry


def cancel(sweep: str, runs_root: Path, wait_s: float = 180.0) -> dict:
    """Stop what is queued or running for a sweep: its SLURM arrays and local supervisors."""
    from bbrctl.status import find_sweep_dir, pid_alive, sweep_jobs

    sweep_dir = find_sweep_dir(sweep, runs_root)
    manifest = load_manifest(sweep_dir)
    jobs = sweep_jobs(sweep_dir, manifest=manifest)
    out: dict = {"sweep": sweep_dir.name, "slurm_cancelled": [], "local_stopped": [], "errors": []}
    arrays = sorted({j.slurm_id.split("_")[0] for j in jobs if j.slurm_id and j.active})
    if arrays:
        from bbrctl.launch import slurm

        ok, err = slurm.cancel(arrays)
        if ok:
            out["slurm_cancelled"] = arrays
        else:
            out["errors"].append(f"scancel {' '.join(arrays)}: {err}")
    host = socket.gethostname()
    for l in manifest.get("launches") or []:
        if l.get("launcher") != "local" or l.get("host") != host or not pid_alive(l.get("pid"), l.get("pid_start")):
            continue
        pid = int(l["pid"])
        try:
            # The supervisor (background, or a `--wait` in another terminal) passes SIGTERM
            # on to its jobs, which checkpoint and exit 75.
            os.kill(pid, signal.SIGTERM)
            out["local_stopped"].append(pid)
        except (ProcessLookupError, PermissionError) as e:
            out["errors"].append(f"pid {pid}: {e}")
    # Train processes started by hand or orphaned: status.json names them (a supervisor's
    # own jobs already got SIGTERM from it).
    supervisors = set(out["local_stopped"])
    for j in jobs:
        if j.state == "running" and j.active and not j.slurm_id:
            from bbrctl.runs import read_json

            st = read_json(Path(j.dir) / "status.json") or {}
            if st.get("host") == host and pid_alive(st.get("pid")) and st.get("pid") not in out["local_stopped"] \
                    and _parent_pid(st["pid"]) not in supervisors:
                try:
                    os.kill(int(st["pid"]), signal.SIGTERM)
                    out["local_stopped"].append(int(st["pid"]))
                except (ProcessLookupError, PermissionError) as e:
                    out["errors"].append(f"pid {st['pid']}: {e}")
    # Return once the jobs have checkpointed and the supervisors are gone, so that a
    # re-run right after the cancel sees them stopped, not still owned.
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and any(pid_alive(p) for p in out["local_stopped"]):
        time.sleep(0.5)
    out["still_running"] = [p for p in out["local_stopped"] if pid_alive(p)]
    return out


def _parent_pid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None
