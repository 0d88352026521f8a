"""Asking SLURM what became of submitted arrays (squeue, sacct), as argument lists, never a shell."""

from __future__ import annotations

import getpass
import shutil
import subprocess
from typing import Sequence

# States in which a job still has (or will have) a process: it must not be launched again.
ACTIVE_STATES = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED",
                 "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD"}


def squeue(array_ids: Sequence[str] | None = None) -> dict[str, str] | None:
    """{"<array>_<task>": STATE} for this user's queued/running jobs; None if SLURM is unreachable."""
    if not shutil.which("squeue"):
        return None
    argv = ["squeue", "--noheader", "--array", "--format=%i|%T", f"--user={getpass.getuser()}"]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    wanted = {str(a) for a in array_ids} if array_ids is not None else None
    states: dict[str, str] = {}
    for line in out.stdout.splitlines():
        jid, _, state = line.strip().partition("|")
        if not jid:
            continue
        if wanted is not None and jid.split("_")[0] not in wanted:
            continue
        states[jid] = state
    return states


def sacct(array_ids: Sequence[str]) -> dict[str, str]:
    """Final states from accounting, best effort: {} where sacct is missing or disabled."""
    if not array_ids or not shutil.which("sacct"):
        return {}
    try:
        out = subprocess.run(["sacct", "--noheader", "--parsable2", "--allocations", "--format=JobID,State",
                              f"--jobs={','.join(array_ids)}"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    if out.returncode != 0:
        return {}
    states = {}
    for line in out.stdout.splitlines():
        jid, _, state = line.partition("|")
        if jid:
            states[jid.strip()] = state.split()[0] if state.split() else state
    return states
