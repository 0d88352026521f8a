"""`bbrctl sweep --cancel`: stop what is queued or running for a sweep (SLURM arrays, local supervisors)."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

from bbrctl.launch import slurm
from bbrctl.status import sweep_jobs
from bbrctl.store import DamagedFile, discovery, read_progress
from bbrctl.store.manifest import load_manifest
from bbrctl.store.procs import parent_pid, pid_alive


def cancel(sweep: str, runs_root: Path, wait_s: float = 180.0) -> dict:
    """Stop what is queued or running for a sweep: its SLURM arrays and local supervisors."""
    sweep_dir = discovery.find_sweep_dir(sweep, runs_root)
    manifest = load_manifest(sweep_dir)
    jobs = sweep_jobs(sweep_dir, manifest=manifest)
    out: dict = {"sweep": sweep_dir.name, "slurm_cancelled": [], "local_stopped": [], "errors": []}
    arrays = sorted({j.slurm_id.split("_")[0] for j in jobs if j.slurm_id and j.active})
    if arrays:
        ok, err = slurm.cancel(arrays)
        if ok:
            out["slurm_cancelled"] = arrays
        else:
            out["errors"].append(f"scancel {' '.join(arrays)}: {err}")
    host = socket.gethostname()
    # Only a pid whose recorded start time matches the live process is signalled
    # (store.procs.pid_alive): a pid in a file proves nothing by itself.
    starts: dict[int, float] = {}
    for l in manifest.get("launches") or []:
        if l.get("launcher") != "local" or l.get("host") != host or not pid_alive(l.get("pid"), l.get("pid_start")):
            continue
        pid = int(l["pid"])
        try:
            # The supervisor (background, or a `--wait` in another terminal) passes SIGTERM
            # on to its jobs, which checkpoint and exit 75.
            os.kill(pid, signal.SIGTERM)
            out["local_stopped"].append(pid)
            starts[pid] = l["pid_start"]
        except (ProcessLookupError, PermissionError) as e:
            out["errors"].append(f"pid {pid}: {e}")
    # Train processes started by hand or orphaned: status.json names them (a supervisor's
    # own jobs already got SIGTERM from it).
    supervisors = set(out["local_stopped"])
    for j in jobs:
        if j.state == "running" and j.active and not j.slurm_id:
            try:
                st = read_progress(j.dir) or {}
            except DamagedFile:
                st = {}                  # a damaged status.json proves nothing: nothing signalled
            if st.get("host") == host and pid_alive(st.get("pid"), st.get("pid_start")) \
                    and st.get("pid") not in out["local_stopped"] \
                    and parent_pid(st["pid"]) not in supervisors:
                try:
                    os.kill(int(st["pid"]), signal.SIGTERM)
                    out["local_stopped"].append(int(st["pid"]))
                    starts[int(st["pid"])] = st["pid_start"]
                except (ProcessLookupError, PermissionError) as e:
                    out["errors"].append(f"pid {st['pid']}: {e}")
    # Return once the jobs have checkpointed and the supervisors are gone, so that a
    # re-run right after the cancel sees them stopped, not still owned.
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and any(pid_alive(p, starts[p]) for p in out["local_stopped"]):
        time.sleep(0.5)
    out["still_running"] = [p for p in out["local_stopped"] if pid_alive(p, starts[p])]
    return out
