"""The run directory: the unit of truth for one job.

Layout (every file written atomically: temp file in the same directory, fsync, rename)::

    <run_dir>/
      config.yaml      resolved config, written first (before anything runs)
      job.json         {"signature", "name", "sweep", "overrides", "created", "config"}
      status.json      {"state", "iteration", "max_iter", "updated", "pid", "host", ...}
      metrics.jsonl    one JSON object per logged iteration (append-only)
      train.log        human-readable log
      checkpoints/     last.pt (+ periodic copies)
      results.json     {"status": "done"|"failed", "metrics": {"bbox": {"AP": ..}}, ...}

States: pending (config written, not started), running, done, failed, requeued.
AP values are percentages (0-100), as in the paper's tables.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable

CONFIG = "config.yaml"
JOB = "job.json"
STATUS = "status.json"
RESULTS = "results.json"
METRICS = "metrics.jsonl"
LOG = "train.log"
CHECKPOINTS = "checkpoints"

STATES = ("pending", "running", "done", "failed", "requeued")
AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def atomic_write_with(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(f)`` on a temp file beside ``path``, fsync it, then rename it over ``path``.

    Readers see the old file or the new one, never half of one; a failure (or Ctrl-C)
    inside ``write`` leaves the old file and no temp file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half."""
    atomic_write_with(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | os.PathLike, default: Any = None) -> Any:
    """Read a JSON file written by atomic_write_json; ``default`` if absent or unreadable."""
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError):
        return default


def write_status(run_dir: str | os.PathLike, state: str, **fields: Any) -> dict:
    if state not in STATES:
        raise ValueError(f"unknown run state {state!r}; valid: {', '.join(STATES)}")
    status = {"state": state, "updated": time.time(), "pid": os.getpid(), "host": socket.gethostname(), **fields}
    atomic_write_json(Path(run_dir) / STATUS, status)
    return status


def read_status(run_dir: str | os.PathLike) -> dict:
    """The run's state, preferring results.json (final) over status.json (progress)."""
    run_dir = Path(run_dir)
    results = read_json(run_dir / RESULTS)
    if isinstance(results, dict) and results.get("status") in ("done", "failed"):
        return {"state": results["status"], **{k: v for k, v in results.items() if k != "status"}}
    status = read_json(run_dir / STATUS)
    if isinstance(status, dict) and status.get("state") in STATES:
        return status
    return {"state": "pending"}


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    # One write() of one line: concurrent readers see whole lines or nothing new.
    line = json.dumps(record, sort_keys=True, default=float) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)


def prepare_run_dir(run_dir: str | os.PathLike, cfg_container: dict, *, signature: str, name: str,
                    sweep: str | None = None, overrides: list[str] | None = None) -> Path:
    """Create a run directory with its config.yaml and job.json, atomically and once.

    job.json carries the resolved config as JSON so status and report can read thousands
    of runs without a YAML parser. An existing directory with a different signature is
    refused rather than overwritten (results would be mixed). Both files hold the config
    with secret-looking values redacted (bbrctl.redact).
    """
    import yaml  # PyYAML ships with omegaconf; kept out of module import for start-up speed

    from bbrctl.redact import redact, redact_overrides

    # Secret-looking values (a token in launcher.setup) never reach the run directory.
    cfg_container, overrides = redact(cfg_container), redact_overrides(overrides or [])
    run_dir = Path(run_dir)
    existing = read_json(run_dir / JOB)
    if isinstance(existing, dict) and existing.get("signature") not in (None, signature):
        raise FileExistsError(f"{run_dir} holds another job (signature {existing.get('signature')}, not {signature})")
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / CONFIG).exists():
        atomic_write_text(run_dir / CONFIG, yaml.safe_dump(cfg_container, sort_keys=False))
    if not isinstance(existing, dict):
        atomic_write_json(run_dir / JOB, {
            "signature": signature, "name": name, "sweep": sweep, "overrides": list(overrides or []),
            "created": time.time(), "config": cfg_container,
        })
    return run_dir


def read_job(run_dir: str | os.PathLike) -> dict | None:
    job = read_json(Path(run_dir) / JOB)
    return job if isinstance(job, dict) else None
