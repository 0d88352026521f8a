"""What every job of a sweep is doing: `bbrctl status`, and the sweep's duplicate check.

A job's state comes from its run directory (results.json, else status.json) checked
against what could still be running it: its SLURM array task in ``squeue``, the local
supervisor that owns it, or the train process recorded in status.json. A job whose
status says "running" with nothing left to run it died without results: it shows as
failed ("lost") and a re-run of the sweep launches it again.

States: pending / running / done / failed / requeued. Reads JSON only (job.json,
status.json, results.json, sweep.json) and never imports torch or Hydra.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from bbrctl.errors import UserError
from bbrctl.runs import JOB, RESULTS, STATUS, read_json

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


# --------------------------------------------------------------------------- processes

def proc_start_time(pid: int) -> float | None:
    """A process's start time (clock ticks since boot, Linux) to tell it from a reused pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode(errors="replace")
        return float(data.rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def pid_alive(pid: Any, start: Any = None) -> bool:
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                return False         # a zombie has finished
    except (OSError, IndexError):
        pass
    if start is not None:
        now = proc_start_time(pid)
        if now is not None and now != start:
            return False
    return True


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
            from bbrctl.launch import slurm

            self.queue = slurm.squeue(self.arrays)
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
            from bbrctl.launch import slurm

            self._sacct = slurm.sacct(self.arrays)
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
    now = time.time() if now is None else now
    results = read_json(run_dir / RESULTS)
    status = read_json(run_dir / STATUS)
    status = status if isinstance(status, dict) else {}
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
            js.active = js.slurm_state in _active_slurm_states()
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
            js.active = pid_alive(pid)
        else:
            js.active = isinstance(js.updated, (int, float)) and now - js.updated < STALE_S
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


def _active_slurm_states() -> set[str]:
    from bbrctl.launch.slurm import ACTIVE_STATES

    return ACTIVE_STATES


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


# --------------------------------------------------------------------------- sweeps

def default_runs_root() -> Path:
    return Path(os.environ.get("BBRCTL_RUNS_ROOT", "runs"))


def find_sweep_dir(sweep: str, runs_root: Path) -> Path:
    """A sweep by name (under runs_root) or by path."""
    cand = runs_root / sweep
    if "/" not in sweep and sweep not in (".", "..") and cand.is_dir():
        return cand.resolve()
    p = Path(sweep).expanduser()
    if p.is_dir() and ((p / "sweep.json").is_file() or any(_run_dirs(p))):
        return p.resolve()
    known = ", ".join(s.name for s in list_sweep_dirs(runs_root)) or "none"
    raise UserError(f"no sweep {sweep!r} under {str(runs_root)!r} (sweeps there: {known})")


def list_sweep_dirs(runs_root: Path) -> list[Path]:
    out = []
    try:
        with os.scandir(runs_root) as it:
            for e in sorted(it, key=lambda e: e.name):
                if e.is_dir() and not e.name.startswith("."):
                    p = Path(e.path)
                    if (p / "sweep.json").is_file() or next(_run_dirs(p), None) is not None:
                        out.append(p)
    except (FileNotFoundError, NotADirectoryError):
        pass
    return out


def _run_dirs(sweep_dir: Path, skip: set[str] = frozenset()) -> Iterable[Path]:  # type: ignore[assignment]
    try:
        with os.scandir(sweep_dir) as it:
            for e in it:
                if e.name not in skip and e.is_dir(follow_symlinks=False) and os.path.exists(os.path.join(e.path, JOB)):
                    yield Path(e.path)
    except (FileNotFoundError, NotADirectoryError):
        return


def sweep_jobs(sweep_dir: Path, only: Sequence[str] | None = None, query_scheduler: bool = True,
               manifest: dict | None = None) -> list[JobState]:
    """Every job of a sweep (the manifest's and any other run dir in it), in manifest order."""
    from bbrctl.sweep import last_launch_of, load_manifest

    manifest = load_manifest(sweep_dir) if manifest is None else manifest
    sched = Scheduler(manifest, query=query_scheduler)
    entries: list[tuple[str, str, Path]] = []
    seen: set[str] = set()
    listed = sorted((manifest.get("jobs") or {}).items(), key=lambda kv: (kv[1].get("index", 1 << 30), kv[0]))
    if only is not None:
        rank = {sig: i for i, sig in enumerate(only)}
        listed = sorted((kv for kv in listed if kv[0] in rank), key=lambda kv: rank[kv[0]])
    for sig, j in listed:
        entries.append((j.get("name") or j.get("dir") or sig, sig, sweep_dir / j.get("dir", "")))
        seen.add(j.get("dir", ""))
    if only is None:
        for d in sorted(_run_dirs(sweep_dir, seen), key=lambda p: p.name):
            name, _, sig = d.name.rpartition("-")
            job = read_json(d / JOB) or {}
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


# --------------------------------------------------------------------------- rendering

def render_table(name: str, jobs: Sequence[JobState], console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title=summary_line(name, jobs), title_justify="left", show_lines=False)
    for col, kw in (("job", {}), ("state", {}), ("slurm", {}), ("progress", {"justify": "right"}),
                    ("AP", {"justify": "right"}), ("note", {"overflow": "fold"})):
        table.add_column(col, **kw)
    for j in jobs:
        table.add_row(f"{j.name}-{j.signature}", _styled(j.state),
                      j.slurm_id + (f" {j.slurm_state}" if j.slurm_state else "") if j.slurm_id else "-",
                      _progress_text(j), f"{j.ap:.1f}" if j.ap is not None else "-", j.note or "")
    console.print(table)


def _styled(state: str) -> str:
    color = {"done": "green", "failed": "red", "running": "cyan", "requeued": "yellow"}.get(state)
    return f"[{color}]{state}[/{color}]" if color else state


def _progress_text(j: JobState) -> str:
    if j.iteration is None or not j.max_iter:
        return "-" if j.state != "done" else "100%"
    return f"{j.iteration}/{j.max_iter} ({100 * (j.progress or 0):.0f}%)"


def render_overview(runs_root: Path, console=None) -> list[dict]:
    from rich.console import Console
    from rich.table import Table

    rows = []
    for d in list_sweep_dirs(runs_root):
        jobs = sweep_jobs(d)
        rows.append({"sweep": d.name, "dir": str(d), "jobs": len(jobs), **counts(jobs)})
    if console is not False:
        console = console or Console()
        if not rows:
            console.print(f"no sweeps under {runs_root}")
            return rows
        table = Table(title=f"sweeps under {runs_root}", title_justify="left")
        for col in ("sweep", "jobs", "pending", "running", "requeued", "done", "failed"):
            table.add_column(col, justify="left" if col == "sweep" else "right")
        for r in rows:
            table.add_row(r["sweep"], *(str(r[k]) for k in ("jobs", "pending", "running", "requeued", "done", "failed")))
        console.print(table)
    return rows


class ProgressView:
    """Live view of a sweep while it runs: a rich table on a terminal, else a line per change."""

    def __init__(self, name: str, sweep_dir: Path, signatures: Sequence[str], stream=None):
        self.name = name
        self.sweep_dir = sweep_dir
        self.sigs = list(signatures)
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._live = None
        self._last: dict[str, str] = {}
        self._next = 0.0
        self.jobs: list[JobState] = []

    def __enter__(self) -> "ProgressView":
        if self.tty:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(console=Console(file=self.stream), refresh_per_second=2, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.refresh(force=True)
        if self._live is not None:
            self._live.__exit__(None, None, None)

    def refresh(self, force: bool = False, query_scheduler: bool = True) -> list[JobState]:
        now = time.monotonic()
        if not force and now < self._next:
            return self.jobs
        self._next = now + 1.0
        self.jobs = sweep_jobs(self.sweep_dir, only=self.sigs, query_scheduler=query_scheduler)
        if self._live is not None:
            self._live.update(self._renderable())
        else:
            for j in self.jobs:
                line = f"{j.state}" + (f" {j.iteration}/{j.max_iter}" if j.state == "running" and j.iteration else "")
                key = f"{j.name}-{j.signature}"
                if self._last.get(key, "").split(" ")[0] != line.split(" ")[0]:
                    ap = f" AP={j.ap:.1f}" if j.ap is not None else ""
                    print(f"[{time.strftime('%H:%M:%S')}] {key}: {j.state}{ap}{(' — ' + j.note) if j.note else ''}",
                          file=self.stream, flush=True)
                self._last[key] = line
        return self.jobs

    def _renderable(self):
        from rich.progress_bar import ProgressBar
        from rich.table import Table

        c = counts(self.jobs)
        finished = c["done"] + c["failed"]
        table = Table.grid(padding=(0, 1))
        table.add_row(f"[bold]{summary_line(self.name, self.jobs)}[/bold]")
        table.add_row(ProgressBar(total=max(1, len(self.jobs)), completed=finished, width=50))
        for j in self.jobs:
            if j.state == "running":
                table.add_row(f"  [cyan]running[/cyan] {j.name}  {_progress_text(j)}")
        return table
