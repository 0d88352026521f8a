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

from bbrctl.errors import STORAGE_ERRNOS, StorageError, UserError
from bbrctl.provenance import software
from bbrctl.store import safe, schemas
from bbrctl.store.atomic import atomic_write_json, atomic_write_text, default_mode, made_dirs
from bbrctl.store.paths import RunDir
from bbrctl.store.procs import proc_start_time


MAX_JSON_BYTES = 64 << 20   # far above any file bbrctl writes; a bigger one is not ours


class DamagedFile(UserError):
    """A file of a run or sweep directory that is not what bbrctl writes there."""


def load_checked(path: str | os.PathLike, check: Callable[[Any], Any]) -> Any:
    """The parsed, schema-checked content of ``path``; None if absent; DamagedFile else."""
    path = Path(path)
    try:
        data = safe.read_bytes(path, limit=MAX_JSON_BYTES)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except safe.UnsafePath as e:
        raise DamagedFile(str(e)) from None
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


def read_config(run_dir: str | os.PathLike) -> dict:
    """The resolved config a run directory holds (config.yaml); one-line UserError otherwise."""
    from bbrctl.store.yamlcheck import BadYaml, load_file

    rd = RunDir(run_dir)
    if not rd.path.is_dir():
        raise UserError(f"run directory {str(rd.path)!r} does not exist")
    if not rd.config.is_file():
        raise UserError(f"{str(rd.config)!r} does not exist; prepare the run with `bbrctl sweep` or run "
                        "`bbrctl train OVERRIDES`")
    try:
        cfg = load_file(rd.config)     # bounded: a run directory is anyone's to write in
    except (BadYaml, safe.UnsafePath) as e:
        raise DamagedFile(str(e)) from None
    if not isinstance(cfg, dict):
        raise DamagedFile(f"{str(rd.config)!r} does not hold a config mapping")
    return cfg


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
    atomic_write_json(path, rec, levels=2)      # neither the run directory nor evals/ a link
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
    signature and keeps the old one in ``previous_signatures``. Both files hold the config
    with secret-looking values redacted (bbrctl.redact).
    """
    import yaml  # PyYAML; kept out of module import for start-up speed

    from bbrctl.redact import public, public_overrides

    # launcher.setup lines never reach the run directory (a digest line stands for them),
    # nor do secret-looking values elsewhere (bbrctl.redact).
    cfg_container, overrides = public(cfg_container), public_overrides(overrides or [])
    rd = RunDir(run_dir)
    existing = read_job(rd.path)
    previous = list(previous_signatures or [])
    if existing is not None and existing.get("signature") != signature:
        if existing.get("signature") not in previous:
            raise UserError(f"{rd.path} holds another job (signature {existing.get('signature')}, not {signature})")
        known = list(dict.fromkeys([*(existing.get("previous_signatures") or []), existing["signature"]]))
        atomic_write_json(rd.job, {**existing, "signature": signature, "previous_signatures": known})
        return rd.path
    job = {"signature": signature, "name": name, "sweep": sweep, "overrides": list(overrides or []),
           "created": time.time(), "config": cfg_container, "env": software()}
    config_text = yaml.safe_dump(cfg_container, sort_keys=False)
    if rd.path.is_dir():
        # A directory without job.json (a hand-made one, or one an older bbrctl left
        # half-written): complete it, config.yaml first.
        if not rd.config.exists():
            atomic_write_text(rd.config, config_text)
        if existing is None:
            atomic_write_json(rd.job, job)
        return rd.path
    # A new run directory appears whole or not at all: built beside its final name, renamed.
    with made_dirs(rd.path.parent):
        _build_run_dir(rd, signature, config_text, job)
    return rd.path


def _build_run_dir(rd: RunDir, signature: str, config_text: str, job: dict) -> None:
    import shutil
    import tempfile

    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{rd.name}.", suffix=".tmp", dir=rd.path.parent))
    except OSError as e:
        if e.errno in STORAGE_ERRNOS:
            raise StorageError.of(rd.path, e) from None
        raise
    try:
        os.chmod(tmp, default_mode(0o777))  # mkdtemp makes it 0700; the umask decides who reads a run
        atomic_write_text(RunDir(tmp).config, config_text)
        atomic_write_json(RunDir(tmp).job, job)
        try:
            os.rename(tmp, rd.path)
        except OSError as e:
            if e.errno in STORAGE_ERRNOS:
                raise StorageError.of(rd.path, e) from None
            if not rd.path.is_dir():
                raise
            # Another launcher made it meanwhile: theirs stands (job.json decides below).
            shutil.rmtree(tmp, ignore_errors=True)
            other = read_job(rd.path)
            if other is not None and other.get("signature") != signature:
                raise UserError(f"{rd.path} holds another job (signature {other.get('signature')}, not {signature})")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
