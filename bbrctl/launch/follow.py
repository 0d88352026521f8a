"""Waiting for a sweep: block until nothing of it is queued or running, with a progress view.

The poll interval backs off while nothing changes (``poll_s`` growing by half each quiet
look, up to ``max_poll_s``) and snaps back when a job changes state: a week-long SLURM
sweep asks squeue a few times a minute, not every two seconds (schedulers rate-limit).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from bbrctl.status import ProgressView, counts, sweep_jobs
from bbrctl.store.manifest import load_manifest


def follow(name: str, sweep_dir: Path, sigs: list[str] | None = None, progress: bool = True,
           poll_s: float = 2.0, timeout_s: float | None = None, max_poll_s: float = 30.0) -> dict:
    """Block until no job of the sweep is queued or running; show progress meanwhile."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    if sigs is None:
        sigs = list((load_manifest(sweep_dir).get("jobs") or {}).keys())
    view_cm = ProgressView(name, sweep_dir, sigs) if progress else contextlib.nullcontext()
    wait, last = poll_s, None
    with view_cm as view:
        while True:
            jobs = view.refresh(force=True) if view else sweep_jobs(sweep_dir, only=sigs)
            if not any(j.active for j in jobs):
                return counts(jobs)
            if deadline is not None and time.monotonic() > deadline:
                return counts(jobs)
            now = [(j.signature, j.state, j.iteration) for j in jobs]
            wait = poll_s if now != last else min(max_poll_s, wait * 1.5)
            last = now
            time.sleep(wait if deadline is None else max(0.0, min(wait, deadline - time.monotonic())))
