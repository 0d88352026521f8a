"""Reading and writing one run directory (see bbrctl.store.paths for its layout).

States: pending (config written, not started), running, done, failed, requeued.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Callable

from bbrctl.errors import UserError
from bbrctl.store import schemas
from bbrctl.store.atomic import atomic_write_json, atomic_write_text
from bbrctl.store.paths import RunDir
from bbrctl.store.procs import proc_start_time


class DamagedFile(UserError):
    """A file of a run or sweep directory that is not what bbrctl writes there."""


def load_checked(path: str | os.PathLike, check: Callable[[Any], Any]) -> Any:
    """The parsed, schema-checked content of ``path``; None if absent; DamagedFile else."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        raise DamagedFile(f"{path}: cannot be read ({e.strerror or e})") from None
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise DamagedFile(f"{path}: not valid JSON ({' '.join(str(e).split())[:120]})") from None
    try:
        return check(obj)
    except schemas.SchemaError as e:
        raise DamagedFile(f"{path}: {e}") from None


def read_results(run_dir: str | os.PathLike) -> dict | None:
    return load_checked(RunDir(run_dir).results, schemas.check_results)


def read_progress(run_dir: str | os.PathLike) -> dict | None:
    return load_checked(RunDir(run_dir).status, schemas.check_status)


def read_job(run_dir: str | os.PathLike) -> dict | None:
    return load_checked(RunDir(run_dir).job, schemas.check_job)


def write_status(run_dir: str | os.PathLike, state: str, **fields: Any) -> dict:
    if state not in schemas.STATES:
        raise ValueError(f"unknown run state {state!r}; valid: {', '.join(schemas.STATES)}")
    pid = os.getpid()
    status = {"state": state, "updated": time.time(), "pid": pid, "pid_start": proc_start_time(pid),
              "host": socket.gethostname(), **fields}
    atomic_write_json(RunDir(run_dir).status, status)
    return status


def write_results(run_dir: str | os.PathLike, status: str, **fields: Any) -> dict:
    rec = schemas.results_record(status, **fields)
    atomic_write_json(RunDir(run_dir).results, rec)
    return rec


def write_eval(run_dir: str | os.PathLike, name: str, record: dict) -> Path:
    """``evals/<name>.json``: one re-evaluation of the run (schema-checked, atomic)."""
    rec = {**record, "name": name}
    rec["metrics"] = schemas.json_safe_metrics(rec.get("metrics") or {})
    schemas.check_eval(rec)
    path = RunDir(run_dir).eval_file(name)
    atomic_write_json(path, rec)
    return path


def read_eval(run_dir: str | os.PathLike, name: str) -> dict | None:
    return load_checked(RunDir(run_dir).eval_file(name), schemas.check_eval)


def read_status(run_dir: str | os.PathLike) -> dict:
    """The run's state, preferring results.json (final) over status.json (progress)."""
    results = read_results(run_dir)
    if results is not None:
        return {"state": results["status"], **{k: v for k, v in results.items() if k != "status"}}
    return read_progress(run_dir) or {"state": "pending"}


def prepare_run_dir(run_dir: str | os.PathLike, cfg_container: dict, *, signature: str, name: str,
                    sweep: str | None = None, overrides: list[str] | None = None,
                    previous_signatures: list[str] | None = None) -> Path:
    """Create a run directory with its config.yaml and job.json, atomically and once.

    job.json carries the resolved config as JSON so status and report can read thousands
    of runs without a YAML parser. An existing directory with a different signature is
    refused rather than overwritten (results would be mixed); one found under a previous
    signature (see bbrctl.config.signature) is adopted: job.json records the new
    signature and keeps the old one in ``previous_signatures``.
    """
    import yaml  # PyYAML; kept out of module import for start-up speed

    rd = RunDir(run_dir)
    existing = read_job(rd.path)
    previous = list(previous_signatures or [])
    if existing is not None and existing.get("signature") != signature:
        if existing.get("signature") not in previous:
            raise UserError(f"{rd.path} holds another job (signature {existing.get('signature')}, not {signature})")
        known = list(dict.fromkeys([*(existing.get("previous_signatures") or []), existing["signature"]]))
        atomic_write_json(rd.job, {**existing, "signature": signature, "previous_signatures": known})
        return rd.path
    rd.path.mkdir(parents=True, exist_ok=True)
    if not rd.config.exists():
        atomic_write_text(rd.config, yaml.safe_dump(cfg_container, sort_keys=False))
    if existing is None:
        atomic_write_json(rd.job, {
            "signature": signature, "name": name, "sweep": sweep, "overrides": list(overrides or []),
            "created": time.time(), "config": cfg_container,
        })
    return rd.path
