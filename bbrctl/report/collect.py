"""Find run directories and read what they say, without ever failing on a partial one.

A run directory is any folder holding ``job.json`` (written by ``bbrctl.store.prepare_run_dir``; found by ``bbrctl.store.discovery``)
under the runs root; the walk does not descend into a run directory (checkpoints/ can be
large). Files are written atomically by the trainer, so a read sees a whole file or none; a
file that does not pass its schema (bbrctl.store's one reader per file, the same status and
train use) makes the run "incomplete" rather than an exception or a number.

Run states as the report sees them:
  done        results.json status "done" with metrics.<metric>
  failed      results.json status "failed" (its error is quoted in a footnote)
  running / requeued / pending   from status.json while there is no results.json
  incomplete  results.json present but unreadable, or "done" without the metric block
  unreadable  results.json or the run directory is another user's and not readable to this one
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bbrctl.store import JOB, RESULTS, DamagedFile, read_job, read_progress, read_results
from bbrctl.store.discovery import find_run_dirs



@dataclass
class Run:
    dir: Path
    job: dict
    signature: str
    sweep: str | None
    created: float
    # Filled by load_outcome():
    state: str = "unknown"
    metrics: dict = field(default_factory=dict)   # metrics block of results.json ({"bbox": {...}})
    detail: str = ""                              # progress or error, for footnotes
    results_signature: str | None = None
    env: dict | None = None                       # results.json's env (bbrctl.provenance.record)

    @property
    def config(self) -> dict:
        cfg = self.job.get("config")
        return cfg if isinstance(cfg, dict) else {}


@dataclass
class Collection:
    root: Path
    runs: list[Run]
    unreadable: list[Path]    # run dirs whose job.json did not parse
    denied: list[Path] = field(default_factory=list)  # directories this user may not read (another user's)


def _checked(read, run_dir: Path) -> tuple[bool, Any]:
    """(exists, schema-checked content or None): the store's one reader of the file
    (bbrctl.store.read_job / read_results / read_progress), so report trusts exactly what
    status and train trust; a damaged file is "incomplete" here, never a number."""
    try:
        got = read(run_dir)
    except DamagedFile:
        return True, None
    return got is not None, got


def _job(d: Path) -> Any:
    return _checked(read_job, d)[1]


def collect(root: str | os.PathLike, sweep: str | None = None) -> Collection:
    """Read job.json of every run under ``root``; only those of ``sweep`` when given.

    A run belongs to a sweep when its job.json says so or it lies under ``root/<sweep>/``.
    """
    root = Path(root)
    base = root / sweep if sweep and (root / sweep).is_dir() else root
    runs: list[Run] = []
    unreadable: list[Path] = []
    denied: list[Path] = []
    for d in find_run_dirs(base, denied=denied):
        if not os.access(d / JOB, os.R_OK):
            denied.append(d)
            continue
        job = _job(d)
        if not isinstance(job, dict):
            unreadable.append(d)
            continue
        if sweep and job.get("sweep") != sweep and base == root:
            continue
        created = job.get("created")
        runs.append(Run(dir=d, job=job, signature=str(job.get("signature") or d.name),
                        sweep=job.get("sweep"), created=float(created) if isinstance(created, (int, float)) else 0.0))
    return Collection(root=root, runs=runs, unreadable=unreadable, denied=denied)


def sweeps_under(root: str | os.PathLike) -> list[str]:
    """Sweep names found under ``root`` (for the error message of an unknown --sweep)."""
    names = set()
    for d in find_run_dirs(Path(root)):
        job = _job(d)
        if isinstance(job, dict) and job.get("sweep"):
            names.add(str(job["sweep"]))
    return sorted(names)


def load_outcome(run: Run, metric: str = "bbox") -> Run:
    """Fill ``run.state``/``metrics``/``detail`` from results.json, else status.json."""
    exists, res = _checked(read_results, run.dir)
    if exists:
        if not isinstance(res, dict) and not os.access(run.dir / RESULTS, os.R_OK):
            run.state, run.detail = "unreadable", "results.json cannot be read (Permission denied): its owner's umask keeps it private"
            return run
        if not isinstance(res, dict):
            run.state, run.detail = "incomplete", "results.json could not be read (damaged: see `bbrctl status`)"
            return run
        run.results_signature = res.get("signature")
        run.env = res.get("env") if isinstance(res.get("env"), dict) else None
        status = res.get("status")
        if status == "failed":
            err = " ".join(str(res.get("error") or "no error message").split())
            run.state, run.detail = "failed", err[:160]
            return run
        if status == "done":
            metrics = res.get("metrics")
            if isinstance(metrics, dict) and isinstance(metrics.get(metric), dict):
                run.state, run.metrics = "done", metrics
                return run
            run.state, run.detail = "incomplete", f"results.json has no metrics.{metric}"
            return run
        run.state, run.detail = "incomplete", f"results.json has status {status!r}"
        return run
    exists, st = _checked(read_progress, run.dir)
    if isinstance(st, dict) and st.get("state") in ("running", "requeued", "pending", "failed", "done"):
        state = st["state"]
        it, mx = st.get("iteration"), st.get("max_iter")
        progress = f"iteration {it}/{mx}" if isinstance(it, int) and isinstance(mx, int) else ""
        if state == "done":  # status says done but results.json is missing: not reportable
            run.state, run.detail = "incomplete", "status done but no results.json"
        elif state == "failed":
            run.state, run.detail = "failed", " ".join(str(st.get("error") or "see train.log").split())[:160]
        else:
            run.state, run.detail = state, progress
        return run
    if exists:
        run.state, run.detail = "incomplete", "status.json could not be read (damaged: see `bbrctl status`)"
        return run
    run.state, run.detail = "pending", ""
    return run


def metric_value(run: Run, metric: str, column: str) -> float | None:
    """A finite, non-negative metric value, or None (COCO writes -1 where a size range is empty)."""
    block = run.metrics.get(metric) if run.metrics else None
    if not isinstance(block, dict):
        return None
    v = block.get(column)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    if v != v or v in (float("inf"), float("-inf")) or v < 0:
        return None
    return v
