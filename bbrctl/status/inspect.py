"""What every job of a sweep is doing.

A job's state comes from its run directory (results.json, else status.json) checked
against what could still be running it: its SLURM array task in ``squeue``, the local
supervisor that owns it, or the train process recorded in status.json (pid and start
time, so a reused pid is not mistaken for it). A job whose status says "running" with
nothing left to run it died without results: it shows as failed ("lost") and a re-run
of the sweep launches it again. A file that is not what bbrctl writes shows that job as
failed ("damaged: ...") and leaves every other job alone.

States: pending / running / done / failed / requeued. Reads JSON only and never imports
torch or Hydra.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from bbrctl.status import slurm_queue
from bbrctl.store import RESULTS, STATUS, DamagedFile, discovery, read_job
from bbrctl.store.manifest import last_launch_of, load_manifest
from bbrctl.store.procs import pid_alive
from bbrctl.store.rundir import read_progress, read_results

# A "running" status.json from another host, with no scheduler to ask, counts as alive
# this long after its last update.
STALE_S = 900.0


@dataclass
class JobState:
    name: str
    signature: str
    dir: str
    state: str                       # pending | running | done | failed | requeued
    active: bool                     # queued or running somewhere: do not launch again
    slurm_id: str | None = None
    slurm_state: str | None = None
    iteration: int | None = None
    max_iter: int | None = None
    ap: float | None = None
    updated: float | None = None
    note: str = ""

    def to_dict(self) -> dict:
        d = dict(self.__dict__)          # flat fields: cheaper than dataclasses.asdict for 1,000 jobs
        d["progress"] = self.progress
        return d

    @property
    def progress(self) -> float | None:
        if self.state == "done":
            return 1.0
        if isinstance(self.iteration, (int, float)) and isinstance(self.max_iter, (int, float)) and self.max_iter > 0:
            return max(0.0, min(1.0, self.iteration / self.max_iter))
        return None


# --------------------------------------------------------------------------- scheduler view

class Scheduler:
    """One squeue call for the whole sweep (and sacct, best effort, for what left the queue)."""

    def __init__(self, manifest: dict, query: bool = True):
        self.host = socket.gethostname()
        self.arrays = sorted({str(l["array_job_id"]) for l in manifest.get("launches") or []
                              if l.get("launcher") == "slurm" and l.get("array_job_id")})
        self.queue: dict[str, str] | None = {}
        self.reachable = True
        self._sacct: dict[str, str] | None = None
        if self.arrays and query:
            self.queue = slurm_queue.squeue(self.arrays)
            self.reachable = self.queue is not None
            if self.queue is None:
                self.queue = {}
        self._supervisors: dict[int, bool] = {}

    def slurm_state(self, task_id: str) -> str | None:
        if task_id in self.queue:
            return self.queue[task_id]
        array = task_id.split("_")[0]
        if array in self.queue:      # a pending array not yet split into tasks
            return self.queue[array]
        return None

    def final_state(self, task_id: str) -> str | None:
        if self._sacct is None:
            self._sacct = slurm_queue.sacct(self.arrays)
        return self._sacct.get(task_id)

    def supervisor_alive(self, launch: dict) -> bool:
        pid = launch.get("pid")
        if launch.get("host") not in (None, self.host):
            return True                  # cannot tell from here: trust it
        key = id(launch)
        if key not in self._supervisors:
            self._supervisors[key] = pid_alive(pid, launch.get("pid_start"))
        return self._supervisors[key]


# --------------------------------------------------------------------------- one job

def inspect_job(run_dir: Path, name: str, signature: str, launch: dict | None, sched: Scheduler,
                now: float | None = None) -> JobState:
    """What the job in ``run_dir`` is doing; a damaged file makes it "failed" with the reason."""
    now = time.time() if now is None else now
    try:
        results = read_results(run_dir)
        status = read_progress(run_dir) or {}
    except DamagedFile as e:
        return JobState(name=name, signature=signature, dir=str(run_dir), state="failed", active=False,
                        note=f"damaged: {e}; a re-run of the sweep relaunches it")
    final = results.get("status") if isinstance(results, dict) else None
    final = final if final in ("done", "failed") else None
    progress_state = status.get("state") if status.get("state") in ("pending", "running", "requeued") else None
    # A relaunched failed job keeps its old results.json until it finishes again.
    rerun = final == "failed" and progress_state in ("running", "requeued") and \
        _mtime(run_dir / STATUS) > _mtime(run_dir / RESULTS)

    js = JobState(name=name, signature=signature, dir=str(run_dir), state="pending", active=False,
                  iteration=status.get("iteration"), max_iter=status.get("max_iter"), updated=status.get("updated"))
    if launch and launch.get("launcher") == "slurm" and launch.get("array_job_id") is not None:
        idx = (launch.get("tasks") or {}).get(signature)
        if idx is not None:
            js.slurm_id = f"{launch['array_job_id']}_{idx}"
    if final and not rerun:
        js.state = final
        js.iteration = results.get("iteration", js.iteration)
        js.max_iter = results.get("max_iter", js.max_iter)
        if final == "done":
            js.ap = _headline_ap(results)
            return js
        js.note = _one_line(results.get("error") or "")[:200]
    else:
        js.state = progress_state or "pending"

    retry_queued = js.state == "failed" and isinstance(launch, dict) and \
        float(launch.get("time") or 0) > _mtime(run_dir / RESULTS)

    # What could still be running it?
    if js.slurm_id and sched.reachable:
        js.slurm_state = sched.slurm_state(js.slurm_id)
        if js.slurm_state:
            js.active = js.slurm_state in slurm_queue.ACTIVE_STATES
            if js.slurm_state == "RUNNING":
                js.state = "running"
            elif js.slurm_state == "PENDING":
                if js.state == "running":
                    js.state = "requeued"      # requeued by SLURM before train could say so
                elif js.state == "failed":
                    js.state, js.note = "pending", "queued again after a failure"
            return js
        # squeue was asked before the run directory was read, so a task that finished
        # in between has its results already; one that left the queue without them is lost.
        if js.state == "running":
            final_slurm = sched.final_state(js.slurm_id)
            js.state = "failed"
            js.note = ("lost: left the SLURM queue without results" + (f" ({final_slurm})" if final_slurm else "")
                       + "; a re-run of the sweep relaunches it")
        elif js.state == "requeued":
            js.note = "checkpointed, not queued: re-run the sweep to resume"
        elif js.state == "pending":
            js.note = "not queued: re-run the sweep to launch it"
        return js
    elif js.slurm_id:
        js.active = js.state in ("pending", "running", "requeued") or retry_queued
        js.note = "SLURM unreachable: state from the run directory"
        return js
    elif launch and launch.get("launcher") == "local" and sched.supervisor_alive(launch):
        # A supervisor runs each job once: it owns what it has not started yet (or is
        # running), not a job that stopped with a checkpoint.
        if js.state in ("pending", "running") or retry_queued:
            js.active = True
            if retry_queued:
                js.state, js.note = "pending", "queued again after a failure"
            return js

    if js.state == "running":
        host, pid = status.get("host"), status.get("pid")
        if host == sched.host:
            js.active = pid_alive(pid, status.get("pid_start"))
        else:
            # |age|: a clock ahead by more than STALE_S (or a crafted future time) is not "live".
            js.active = isinstance(js.updated, (int, float)) and abs(now - js.updated) < STALE_S
            if js.active:
                js.note = f"on {host}; last update {_age(now - js.updated)} ago"
        if not js.active:
            js.state = "failed"
            js.note = "lost: its process is gone without results; a re-run of the sweep relaunches it"
    elif js.state == "requeued":
        js.note = "checkpointed, not queued: re-run the sweep to resume"
    elif js.state == "pending" and launch is not None:
        js.note = "not queued: re-run the sweep to launch it"
    return js


def _mtime(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except OSError:
        return 0.0


def _headline_ap(results: dict) -> float | None:
    m = results.get("metrics") or {}
    for block in ("bbox", "segm"):
        ap = (m.get(block) or {}).get("AP") if isinstance(m.get(block), dict) else None
        if isinstance(ap, (int, float)):
            return float(ap)
    return None


def _age(s: float) -> str:
    s = max(0, int(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def _one_line(s: str) -> str:
    return " ".join(str(s).split())


def sweep_jobs(sweep_dir: Path, only: Sequence[str] | None = None, query_scheduler: bool = True,
               manifest: dict | None = None) -> list[JobState]:
    """Every job of a sweep (the manifest's and any other run dir in it), in manifest order."""
    manifest = load_manifest(sweep_dir) if manifest is None else manifest
    sched = Scheduler(manifest, query=query_scheduler)
    entries: list[tuple[str, str, Path]] = []
    seen: set[str] = set()
    listed = sorted((manifest.get("jobs") or {}).items(),
                    key=lambda kv: (kv[1]["index"] if isinstance(kv[1].get("index"), int) else 1 << 62, kv[0]))
    if only is not None:
        rank = {sig: i for i, sig in enumerate(only)}
        listed = sorted((kv for kv in listed if kv[0] in rank), key=lambda kv: rank[kv[0]])
    for sig, j in listed:
        entries.append((j.get("name") or j.get("dir") or sig, sig, sweep_dir / j.get("dir", "")))
        seen.add(j.get("dir", ""))
    if only is None:
        for d in sorted(discovery.run_dirs(sweep_dir, seen), key=lambda p: p.name):
            name, _, sig = d.name.rpartition("-")
            try:
                job = read_job(d) or {}
            except DamagedFile:
                job = {}
            entries.append((job.get("name") or name or d.name, job.get("signature") or sig, d))
    now = time.time()
    return [inspect_job(d, name, sig, last_launch_of(manifest, sig), sched, now) for name, sig, d in entries]


def counts(jobs: Sequence[JobState]) -> dict[str, int]:
    c = {s: 0 for s in ("pending", "running", "requeued", "done", "failed")}
    for j in jobs:
        c[j.state] = c.get(j.state, 0) + 1
    return c


def summary_line(name: str, jobs: Sequence[JobState]) -> str:
    c = counts(jobs)
    parts = [f"{v} {k}" for k, v in c.items() if v]
    return f"sweep {name}: {len(jobs)} job(s) — " + (", ".join(parts) or "none")


