"""Per job of a sweep: launch it, or skip it because it is done or queued/running somewhere."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from bbrctl.status.inspect import Scheduler, inspect_job
from bbrctl.store import RunDir
from bbrctl.store.manifest import last_launch_of, load_manifest
from bbrctl.sweep import SweepPlan


@dataclass
class JobDecision:
    signature: str
    name: str
    run_dir: Path
    overrides: list[str]       # as shown and recorded (bbrctl.redact.public_overrides: setup withheld)
    state: str                 # current state (bbrctl.status states, "new" for no run dir yet)
    action: str                # "launch" | "skip"
    reason: str = ""
    slurm_id: str | None = None

    def __post_init__(self) -> None:
        from bbrctl.redact import public_overrides

        self.overrides = public_overrides(self.overrides)

    def to_dict(self) -> dict:
        return {"name": self.name, "signature": self.signature, "run_dir": str(self.run_dir),
                "overrides": self.overrides, "state": self.state, "action": self.action, "reason": self.reason,
                "slurm_id": self.slurm_id}


def decide(plan: SweepPlan, manifest: dict | None = None, query_scheduler: bool = True) -> list[JobDecision]:
    """Per job: launch it, or skip it because it is done or queued/running somewhere."""
    manifest = load_manifest(plan.sweep_dir) if manifest is None else manifest
    sched = Scheduler(manifest, query=query_scheduler)
    now = time.time()
    out = []
    for job in plan.jobs:
        assert job.run_dir is not None
        if not RunDir(job.run_dir).job.exists():
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
