"""Launch an expanded sweep: skip what is done or still running, create run dirs, start the rest.

One `bbrctl sweep` invocation is one *launch* of a sweep. Under the sweep's lock it
decides per job (bbrctl.launch.decide: done → skip; queued or running → skip; failed,
requeued, never started → launch), creates the run directories it launches
(bbrctl.store.prepare_run_dir), hands them to the local supervisor (bbrctl.launch.local) or
to one SLURM job array (bbrctl.launch.slurm), and records the launch in the sweep's
manifest (bbrctl.store.manifest). Everything a user can get wrong is checked before the
first directory exists: the configs by the schema (bbrctl.sweep.expand), the launcher
settings and, for local jobs, the data and weight files here; for SLURM, the cluster's
own ``sbatch --test-only``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from bbrctl import preflight
from bbrctl.errors import UserError
from bbrctl.launch import local, slurm
from bbrctl.launch.decide import JobDecision, decide
from bbrctl.launch.follow import follow
from bbrctl.status import ProgressView, counts, sweep_jobs
from bbrctl.store import PRIVATE, RunDir, SweepDir, append_lines, atomic_write_text, locks, prepare_run_dir, safe
from bbrctl.store.atomic import made_dirs
from bbrctl.store.manifest import load_manifest, next_launch_id, save_manifest
from bbrctl.store.procs import proc_start_time
from bbrctl.sweep import SweepPlan


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
        return {**self.plan.summary(), "jobs": [d.to_dict() for d in self.decisions],
                "n_launch": len(self.to_launch), "n_skip": len(self.decisions) - len(self.to_launch),
                "launch": self.launch, "message": self.message, **({"final": self.waited} if self.waited else {})}


def check_launcher(plan: SweepPlan) -> dict:
    """Validate launcher.* (and, for local jobs, their files) before anything is created."""
    name = plan.launcher.get("name")
    if name == "local":
        settings = local.settings(plan.launcher)
        for job in plan.jobs:
            local.check_world_size(job.config, settings)
        preflight.check_files_once([job.config for job in plan.jobs])
        return {"name": "local", "local": settings}
    if name == "slurm":
        settings = slurm.check_settings(plan.launcher)
        slurm.resolve_template(settings["template"])
        # Render once with placeholders so a broken template fails before anything exists.
        slurm.render(settings, sweep_name=plan.name, tasks_file=plan.sweep_dir / "slurm" / "check.tasks", n_tasks=1)
        return {"name": "slurm", "slurm": settings}
    raise UserError(f"unknown launcher {name!r}; valid launchers: local, slurm")


def launch(plan: SweepPlan, *, wait: bool = False, echo: Callable[[str], None] | None = None,
           progress: bool = True) -> LaunchResult:
    """Create what is missing and start it. Returns once submitted (or finished, with wait)."""
    echo = echo or (lambda msg: print(msg, file=sys.stderr))
    checked = check_launcher(plan)
    if checked["name"] == "slurm":
        slurm.require_slurm()
        # The cluster's own check (partition, account, time, ...) before anything exists.
        n = max(1, len(plan.jobs))
        text = slurm.render(checked["slurm"], sweep_name=plan.name, tasks_file=plan.sweep_dir / "slurm" / "check.tasks",
                            n_tasks=n)
        slurm.test_submit(slurm.sbatch_argv(Path("-"), n, checked["slurm"]["max_parallel"],
                                            plan.sweep_dir / "slurm" / "logs", f"bbrctl-{plan.name}"), text)

    sweep = SweepDir(plan.sweep_dir)
    # A launch that fails before anything was made leaves no empty sweep directory behind.
    with made_dirs(sweep.path, keep=(sweep.lock.name,)), \
            locks.locked(sweep.lock, f"bbrctl sweep {plan.name}",
                         f"another `bbrctl sweep` is launching {plan.name} right now; try again when it returns"):
        manifest = load_manifest(plan.sweep_dir)
        decisions = decide(plan, manifest)
        todo = [d for d in decisions if d.action == "launch"]
        plan.merge_into(manifest)
        by_sig = {j.signature: j for j in plan.jobs}
        for j in plan.jobs:
            if j.previous_signatures and RunDir(j.run_dir).job.exists():
                # Adopt the directory an older bbrctl made (see bbrctl.config.signature).
                prepare_run_dir(j.run_dir, j.config, signature=j.signature, name=j.name, sweep=plan.name,
                                overrides=j.overrides, previous_signatures=j.previous_signatures)
        for d in todo:
            job = by_sig[d.signature]
            prepare_run_dir(d.run_dir, job.config, signature=job.signature, name=job.name, sweep=plan.name,
                            overrides=job.overrides, previous_signatures=job.previous_signatures)
        result = LaunchResult(plan, decisions)
        if not todo:
            save_manifest(plan.sweep_dir, manifest)
            result.message = f"sweep {plan.name}: nothing to launch ({skip_summary(decisions)})"
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


def skip_summary(decisions: list[JobDecision]) -> str:
    done = sum(1 for d in decisions if d.reason == "done")
    active = sum(1 for d in decisions if d.action == "skip" and d.reason != "done")
    parts = [f"{done} done"] if done else []
    if active:
        parts.append(f"{active} queued or running")
    return ", ".join(parts) or "no jobs"


def _launched_message(plan: SweepPlan, launch: dict, n: int, decisions: list[JobDecision], wait: bool) -> str:
    skipped = len(decisions) - n
    skip = f" ({skip_summary([d for d in decisions if d.action == 'skip'])} skipped)" if skipped else ""
    if launch["launcher"] == "slurm":
        how = f"SLURM job array {launch['array_job_id']} ({n} task(s))"
    elif launch.get("mode") == "background":
        how = f"a background supervisor (pid {launch['pid']}, log {launch['log']})"
    else:
        how = "this terminal"
    follow_hint = "" if wait else f"; follow with `bbrctl status {plan.name}`"
    return f"sweep {plan.name}: launching {n} job(s) on {how}{skip}{follow_hint}"


def _launch_local(plan: SweepPlan, manifest: dict, todo: list[JobDecision], cfg, foreground: bool) -> dict:
    lid = next_launch_id(manifest)
    entry = {"id": lid, "time": time.time(), "launcher": "local", "jobs": [d.signature for d in todo],
             "host": socket.gethostname(), "max_parallel": cfg.max_parallel, "gpu_groups": cfg.gpu_groups}
    if foreground:
        entry.update(mode="foreground", pid=os.getpid(), pid_start=proc_start_time(os.getpid()))
    else:
        sweep = SweepDir(plan.sweep_dir)
        safe.ensure_dir(sweep.launches)
        plan_path = sweep.local_plan(lid)
        local.write_plan(plan_path, [d.run_dir for d in todo], cfg, plan.sweep_dir)
        log = sweep.log
        proc = local.spawn_detached(plan_path, log)
        entry.update(mode="background", pid=proc.pid, pid_start=proc_start_time(proc.pid), plan=str(plan_path),
                     log=str(log))
    entry["run_dirs"] = [str(d.run_dir) for d in todo]
    manifest.setdefault("launches", []).append(entry)
    return entry


def _run_foreground(plan: SweepPlan, entry: dict, cfg, sigs: list[str], progress: bool) -> dict:
    log_path = SweepDir(plan.sweep_dir).log

    def log(msg: str) -> None:
        append_lines(log_path, f"{time.strftime('%Y-%m-%d %H:%M:%S')} [{os.getpid()}] {msg}\n")

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
    jobs = jobs or sweep_jobs(plan.sweep_dir, only=sigs, query_scheduler=False)
    return counts(jobs)


@dataclass
class SlurmSubmission:
    """What one SLURM launch submits: the batch script, its task list and the sbatch argv."""

    launch_id: int
    script: Path
    tasks_file: Path
    run_dirs: list[Path]
    text: str
    argv: list[str]

    def to_dict(self) -> dict:
        return {"launch_id": self.launch_id, "script_path": str(self.script), "tasks_file": str(self.tasks_file),
                "tasks": [str(d) for d in self.run_dirs], "sbatch": self.argv, "script": self.text}


def slurm_submission(plan: SweepPlan, manifest: dict, todo: list[JobDecision], settings: dict) -> SlurmSubmission:
    """The exact script and sbatch command line a launch of ``todo`` submits (nothing written)."""
    lid = next_launch_id(manifest)
    sweep = SweepDir(plan.sweep_dir)
    tasks_file = sweep.slurm_tasks(lid)
    script = sweep.slurm_script(lid)
    run_dirs = [d.run_dir.resolve() for d in todo]
    text = slurm.render(settings, sweep_name=plan.name, tasks_file=tasks_file.resolve(), n_tasks=len(todo))
    argv = slurm.sbatch_argv(script.resolve(), len(todo), settings["max_parallel"], sweep.slurm_logs.resolve(),
                             f"bbrctl-{plan.name}")
    return SlurmSubmission(lid, script, tasks_file, run_dirs, text, argv)


def show_script(plan: SweepPlan, decisions: list[JobDecision]) -> SlurmSubmission | None:
    """``--dry-run --show-script``: what ``bbrctl sweep`` would submit now (None: nothing)."""
    if plan.launcher.get("name") != "slurm":
        raise UserError(f"--show-script prints the SLURM batch script; this sweep runs with "
                        f"launcher={plan.launcher.get('name')} (add launcher=slurm)")
    settings = check_launcher(plan)["slurm"]
    todo = [d for d in decisions if d.action == "launch"]
    if not todo:
        return None
    return slurm_submission(plan, load_manifest(plan.sweep_dir), todo, settings)


def _launch_slurm(plan: SweepPlan, manifest: dict, todo: list[JobDecision], settings: dict) -> dict:
    sub = slurm_submission(plan, manifest, todo, settings)
    log_dir = SweepDir(plan.sweep_dir).slurm_logs
    safe.ensure_dir(log_dir, levels=2)     # slurm/ and slurm/logs/: neither may be a link
    slurm.write_tasks(sub.tasks_file, sub.run_dirs)
    # The batch script holds launcher.setup (module loads, maybe a token): its owner's alone.
    atomic_write_text(sub.script, sub.text, mode=PRIVATE)
    array_id = slurm.submit(sub.argv, cwd=Path.cwd())
    entry = {"id": sub.launch_id, "time": time.time(), "launcher": "slurm", "jobs": [d.signature for d in todo],
             "array_job_id": array_id, "tasks": {d.signature: i for i, d in enumerate(todo)},
             "script": str(sub.script), "tasks_file": str(sub.tasks_file), "log_dir": str(log_dir),
             "sbatch": sub.argv, "settings": slurm.describe(settings)}
    manifest.setdefault("launches", []).append(entry)
    return entry
