"""`bbrctl train`: run one training job in its run directory.

Two entry points, both plain functions (the CLI only parses and prints):

* ``train(run_dir)``: the job a sweep prepared (``run_dir/config.yaml``). A finished
  job (results.json "done") is not re-run; a directory holding a checkpoint resumes.
* ``train_from_overrides(overrides)``: compose the config, reject bad input (the schema,
  then the files it names: bbrctl.preflight) with a one-line UserError before anything is
  created, prepare ``<runs_root>/train/<model>-<backbone>-<loss>-<signature>/`` and run it.

One trainer per run directory: rank 0 holds the directory's lock (``.train.lock``) while it
trains; a second ``bbrctl train`` of the same directory exits 2 naming the holder. A
``config.yaml`` edited after the job was signed no longer matches ``job.json`` and is refused.

Outcomes: the results dict (results.json "done"); :class:`TrainingRequeued` (exit 75)
after SIGTERM/SIGUSR1 and a checkpoint; :class:`TrainingFailed` (exit 1) with
results.json "failed" and the error; UserError (exit 2) for bad input, also recorded
in results.json when the run directory exists. Importing this module imports no torch.
"""

from __future__ import annotations

import math
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from bbrctl import provenance, store
from bbrctl.config import legacy_signature, result_view, signature, validate
from bbrctl.errors import REQUEUE_EXIT, StorageError, UserError
from bbrctl.redact import redact_text
from bbrctl.store import RunDir, locks
from bbrctl.store.names import ensure_inside, sanitize



class TrainingFailed(Exception):
    """Training raised; results.json says "failed" with the message. Exit code 1."""

    exit_code = 1


class TrainingRequeued(Exception):
    """Stopped by SIGTERM/SIGUSR1 after saving a checkpoint; rerun to resume. Exit 75."""

    exit_code = REQUEUE_EXIT


# --------------------------------------------------------------------------- run dirs


def run_name(cfg: Mapping[str, Any]) -> str:
    """``<model>-<backbone>-<loss>`` as one safe directory name (values are sanitised)."""
    return sanitize(f"{cfg['model']['name']}-{cfg['backbone']['name']}-{cfg['loss']['name']}")


def load_run_config(run_dir: str | os.PathLike) -> dict:
    return store.read_config(run_dir)


def check_signature(run_dir: Path, cfg: Mapping[str, Any]) -> str:
    """The job's signature; UserError when config.yaml no longer is the config it signs."""
    job = store.read_job(run_dir)
    sig = signature(dict(cfg))
    if not job:
        return sig
    recorded = str(job["signature"])
    known = {recorded, *(job.get("previous_signatures") or [])}
    if sig != recorded and sig not in known and legacy_signature(dict(cfg)) not in known:
        code = result_view(dict(cfg)).get("loss", {}).get("code")
        if code is not None:        # a user's loss: its source file is part of the signature
            raise UserError(f"the code of loss {cfg['loss']['name']!r} ({code['target']}) or {RunDir(run_dir).config} "
                            f"changed after the job was signed (signature now {sig}, job.json says {recorded}); "
                            "run the sweep again: the edited loss gets new runs")
        raise UserError(f"{RunDir(run_dir).config} was changed after the job was signed (its signature is {sig}, "
                        f"job.json says {recorded}); restore it, or run the changed config as a new job "
                        f"(`bbrctl train OVERRIDES` or a sweep)")
    return recorded


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


# --------------------------------------------------------------------------- train


def train(run_dir: str | os.PathLike, *, device: str | None = None, progress: bool | None = None) -> dict:
    """Run or resume the job in ``run_dir``; return its results dict (see module doc)."""
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    if not _is_main_process():
        # Every rank makes the same decision from the same file; rank 0 owns the directory.
        done = store.read_json(RunDir(run_dir).results)
        if isinstance(done, dict) and done.get("status") == "done":
            return {**done, "skipped": True}
        return _train(run_dir, cfg, device, progress)
    fd = locks.try_lock(RunDir(run_dir).lock, "bbrctl train")
    if fd is None:
        raise locks.Locked(f"{run_dir} is being trained by {locks.holder(RunDir(run_dir).lock)}; "
                           "wait for it, or stop it first")
    try:
        done = _results_or_set_aside(run_dir)
        if done is not None and done.get("status") == "done":
            return {**done, "skipped": True}
        return _train(run_dir, cfg, device, progress)
    finally:
        locks.release(fd)


def _results_or_set_aside(run_dir: Path) -> dict | None:
    """results.json, or None; a damaged one is renamed aside (kept for inspection), so the
    job runs again instead of staying stuck on a file nobody can read."""
    try:
        return store.read_results(run_dir)
    except store.DamagedFile as e:
        rd = RunDir(run_dir)
        aside = rd.results.with_name(f"{rd.results.name}.damaged-{int(time.time())}")
        os.replace(rd.results, aside)
        msg = f"{e}; moved aside to {aside.name}, the job runs again"
        store.append_lines(rd.log, f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}\n")
        print(f"bbrctl: note: {msg}", file=sys.stderr, flush=True)
        return None


def _train(run_dir: Path, cfg: dict, device: str | None, progress: bool | None) -> dict:
    from bbrctl import preflight

    main = _is_main_process()
    t0 = time.time()
    job = store.read_job(run_dir)
    sig = str(job["signature"]) if job else signature(cfg)
    try:
        validate(cfg)
        sig = check_signature(run_dir, cfg)
        preflight.check_files(cfg)
    except UserError as e:
        if main:
            _write_results(run_dir, "failed", sig, cfg, error=str(e))
        raise

    from bbrctl.detection.train import distributed, engine
    from bbrctl.detection.tracking.wandb_run import WandbSink

    dist = distributed.setup_distributed(device)
    if progress is None:
        progress = sys.stderr.isatty()
    sink = None
    code = 1
    try:
        if int(cfg["schedule"]["batch_size"]) % dist.world_size:
            raise UserError(f"schedule.batch_size={cfg['schedule']['batch_size']} is not divisible by the "
                            f"world size {dist.world_size}")
        if dist.main:
            store.write_status(run_dir, "running", iteration=0, max_iter=int(cfg["schedule"]["max_iter"]),
                              device=str(dist.device), world_size=dist.world_size)
            sink = WandbSink(cfg, run_dir, name=run_dir.name, job=store.read_job(run_dir))
        out = engine.run(cfg, run_dir, dist, progress=progress and dist.main, wandb=sink, signature=sig)
        code = 0
    except engine.Requeue as e:
        code = REQUEUE_EXIT
        raise TrainingRequeued(f"stopped after iteration {e.args[0]} with a checkpoint; run again to resume") from None
    except UserError as e:
        if dist.main:
            _write_results(run_dir, "failed", sig, cfg, error=str(e), started=t0)
        raise
    except KeyboardInterrupt:
        if dist.main:
            _write_results(run_dir, "failed", sig, cfg, error="interrupted (KeyboardInterrupt); run again to resume "
                           "from the last checkpoint", started=t0)
        raise
    except StorageError as e:
        if dist.main:
            try:    # the disk that refused the checkpoint may refuse this too
                _write_results(run_dir, "failed", sig, cfg, error=str(e), started=t0)
            except StorageError:
                pass
        raise
    except Exception as e:  # noqa: BLE001 - every failure is recorded in the run directory
        msg = redact_text(" ".join(f"{type(e).__name__}: {e}".split()))
        if dist.main:
            store.append_lines(RunDir(run_dir).log, redact_text(traceback.format_exc()))
            _write_results(run_dir, "failed", sig, cfg, error=msg, started=t0)
        raise TrainingFailed(f"training failed: {msg} (traceback in {run_dir / store.LOG})") from e
    finally:
        if sink is not None and code != 0:
            sink.finish(exit_code=0 if code == REQUEUE_EXIT else 1)
        distributed.cleanup_distributed(dist)
    if not dist.main:
        return {"status": "done", "rank": dist.rank}
    results = _write_results(run_dir, "done", sig, cfg, metrics=out["metrics"], iteration=out["iteration"],
                             wall_time_s=out["wall_time_s"], timing=out["timing"], device=str(dist.device),
                             world_size=dist.world_size, per_category=_per_category_safe(out.get("per_category")),
                             **({"wandb": sink.describe()} if sink is not None and sink.enabled else {}))
    if sink is not None:
        # After results.json: the run's artifact holds it.
        try:
            sink.finish_run(results, device=str(dist.device))
        finally:
            sink.finish(exit_code=0)
    return results


def _write_results(run_dir: Path, status: str, sig: str, cfg: Mapping[str, Any], *, metrics=None, iteration=None,
                   wall_time_s=None, error=None, started=None, **extra) -> dict:
    if iteration is None:
        st = store.read_json(RunDir(run_dir).status)
        iteration = st.get("iteration", 0) if isinstance(st, dict) else 0
    if wall_time_s is None and started is not None:
        wall_time_s = time.time() - started
    extra.setdefault("env", provenance.record(extra.get("device")))
    return store.write_results(run_dir, status, signature=sig, metrics=metrics, iteration=iteration,
                               max_iter=(cfg.get("schedule") or {}).get("max_iter"), wall_time_s=wall_time_s,
                               error=redact_text(error) if error is not None else None, **extra)


def _per_category_safe(per_category: Mapping[str, Any] | None) -> dict:
    """Per-category AP rows with NaN (a category without ground truth) written as null."""
    return {t: [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
                for row in rows] for t, rows in (per_category or {}).items()}


def train_from_overrides(overrides: Sequence[str] = (), config_dirs: Iterable[str] = (), *,
                         device: str | None = None, progress: bool | None = None,
                         runs_root: str | os.PathLike | None = None) -> tuple[Path, dict]:
    """Compose, validate, check files, prepare the run directory, and train in the foreground."""
    from bbrctl import preflight
    from bbrctl.config import compose, to_container
    from bbrctl.store.root import runs_root as resolve_runs_root

    cfg = to_container(compose(list(overrides), config_dirs))
    preflight.check_files(cfg)
    from bbrctl.detection.train.distributed import check_device

    check_device(device)  # before the run directory exists
    root = resolve_runs_root(runs_root, cfg.get("runs_root"))
    cfg["runs_root"] = str(root)
    sig = signature(cfg)
    name = run_name(cfg)
    folder = root / store.TRAIN_SWEEP
    run_dir = ensure_inside(folder / f"{name}-{sig}", root)
    previous: list[str] = []
    old = legacy_signature(cfg)
    if not run_dir.exists() and (folder / f"{name}-{old}").is_dir():
        run_dir, previous = folder / f"{name}-{old}", [old]   # made by bbrctl 0.1: adopt it
    if _is_main_process():
        store.prepare_run_dir(run_dir, cfg, signature=sig, name=name, sweep=None, overrides=list(overrides),
                              previous_signatures=previous)
    else:  # torchrun: rank 0 writes the directory; the others wait for it
        deadline = time.monotonic() + 120
        while not RunDir(run_dir).config.is_file():
            if time.monotonic() > deadline:
                raise TrainingFailed(f"rank {os.environ.get('RANK')}: {RunDir(run_dir).config} did not appear")
            time.sleep(0.2)
    return run_dir, train(run_dir, device=device, progress=progress)
