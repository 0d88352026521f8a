"""Waiting for a sweep: block until nothing of it is queued or running, with a progress view."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from bbrctl.status import ProgressView, counts, sweep_jobs
from bbrctl.store.manifest import load_manifest


def follow(name: str, sweep_dir: Path, sigs: list[str] | None = None, progress: bool = True,
           poll_s: float = 2.0, timeout_s: float | None = None) -> dict:
    """Block until no job of the sweep is queued or running; show progress meanwhile."""
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
