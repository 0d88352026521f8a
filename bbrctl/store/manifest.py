"""A sweep's manifest, ``<sweep>/sweep.json``: every job the sweep ever had, every launch.

::

    {"name", "created", "updated", "runs_root", "swept_keys", "experiment", "overrides",
     "jobs": {signature: {"dir", "name", "overrides", "index"}},
     "launches": [{"id", "time", "launcher": "local", "jobs": [signature...], "pid", "pid_start",
                   "host", "plan", "log", "mode": "background"|"foreground"}
                  | {"id", "time", "launcher": "slurm", "jobs": [...], "array_job_id",
                     "tasks": {signature: task index}, "script", "tasks_file", "log_dir"}]}

"index" keeps the order jobs were first planned in (the file's keys are sorted).
"""

from __future__ import annotations

import os
import time

from bbrctl.store import schemas
from bbrctl.store.atomic import atomic_write_json
from bbrctl.store.paths import SweepDir
from bbrctl.store.rundir import load_checked


def load_manifest(sweep_dir: str | os.PathLike) -> dict:
    """The manifest ({} if the sweep has none yet); DamagedFile if it is not one."""
    m = load_checked(SweepDir(sweep_dir).manifest, schemas.check_manifest)
    return m if m is not None else {}


def save_manifest(sweep_dir: str | os.PathLike, manifest: dict) -> None:
    from bbrctl.redact import public

    manifest["updated"] = time.time()
    schemas.check_manifest(manifest)
    # Overrides and launch records as typed may hold launcher.setup lines or a token; the file does not.
    atomic_write_json(SweepDir(sweep_dir).manifest, public(manifest))


def last_launch_of(manifest: dict, signature: str) -> dict | None:
    for launch in reversed(manifest.get("launches") or []):
        if signature in (launch.get("jobs") or []):
            return launch
    return None


def next_launch_id(manifest: dict) -> int:
    return 1 + max((int(l.get("id", 0)) for l in manifest.get("launches") or []), default=0)
