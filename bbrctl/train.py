"""`bbrctl train`: run one training job in its run directory.

Two entry points, both plain functions (the CLI only parses and prints):

* ``train(run_dir)``: the job a sweep prepared (``run_dir/config.yaml``). A finished
  job (results.json "done") is not re-run; a directory holding a checkpoint resumes.
* ``train_from_overrides(overrides)``: compose the config, reject bad input with a
  one-line UserError before anything is created, prepare
  ``<runs_root>/train/<model>-<backbone>-<loss>-<signature>/`` and run it there.

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

from bbrctl import runs
from bbrctl.errors import UserError

REQUEUE_EXIT = 75


class TrainingFailed(Exception):
    """Training raised; results.json says "failed" with the message. Exit code 1."""

    exit_code = 1


class TrainingRequeued(Exception):
    """Stopped by SIGTERM/SIGUSR1 after saving a checkpoint; rerun to resume. Exit 75."""

    exit_code = REQUEUE_EXIT


# --------------------------------------------------------------------------- validation


def check_train_config(cfg: Mapping[str, Any]) -> None:
    """One-line UserError for anything `train` cannot run (no torch imported)."""
    from bbrctl.detection.models import check_model_config

    for node in ("model", "backbone", "data", "schedule", "loss"):
        if not isinstance(cfg.get(node), Mapping):
            raise UserError(f"the config has no {node!r} section; compose it with `bbrctl config`")
    data = cfg["data"]
    from bbrctl.detection.data import is_synthetic

    if is_synthetic(data):
        from bbrctl.detection.synth import ShapesSpec

        ShapesSpec.from_cfg(data)  # raises UserError naming the bad data.* key
    else:
        from bbrctl.detection.data import ensure_dataset

        ensure_dataset(data)  # COCO-format: only checks that the files exist
    check_model_config(cfg)  # after data: model sizes default to data.image_size
    check_schedule(cfg["schedule"])


def check_schedule(s: Mapping[str, Any]) -> None:
    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise UserError(f"schedule.{msg}")

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    def is_num(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    for key in ("max_iter", "batch_size", "base_batch_size"):
        need(is_int(s.get(key)) and s[key] >= 1, f"{key} must be an integer >= 1, got {s.get(key)!r}")
    need(is_num(s.get("base_lr")) and s["base_lr"] > 0, f"base_lr must be a number > 0, got {s.get('base_lr')!r}")
    steps = s.get("steps") or []
    need(isinstance(steps, (list, tuple)) and all(is_int(v) and v >= 0 for v in steps),
         f"steps must be a list of iteration numbers >= 0, got {steps!r}")
    need(is_num(s.get("gamma", 0.1)) and 0 < s.get("gamma", 0.1) <= 1, f"gamma must be in (0, 1], got {s.get('gamma')!r}")
    need(is_int(s.get("warmup_iters", 0)) and s.get("warmup_iters", 0) >= 0,
         f"warmup_iters must be an integer >= 0, got {s.get('warmup_iters')!r}")
    wf = s.get("warmup_factor", 0.001)
    need(is_num(wf) and 0 < wf <= 1, f"warmup_factor must be in (0, 1], got {wf!r}")
    need(is_num(s.get("momentum", 0.9)) and 0 <= s.get("momentum", 0.9) < 1,
         f"momentum must be in [0, 1), got {s.get('momentum')!r}")
    need(is_num(s.get("weight_decay", 0)) and s.get("weight_decay", 0) >= 0,
         f"weight_decay must be >= 0, got {s.get('weight_decay')!r}")
    clip = s.get("clip_grad_norm")
    need(clip is None or (is_num(clip) and clip > 0), f"clip_grad_norm must be null or > 0, got {clip!r}")
    for key in ("checkpoint_period", "eval_period"):
        v = s.get(key, 0)
        need(v is None or (is_int(v) and v >= 0), f"{key} must be an integer >= 0 (0: off), got {v!r}")
    for key in ("log_period", "eval_batch_size"):
        v = s.get(key, 1)
        need(is_int(v) and v >= 1, f"{key} must be an integer >= 1, got {v!r}")
    hp = s.get("hflip_prob", 0.5)
    need(is_num(hp) and 0 <= hp <= 1, f"hflip_prob must be in [0, 1], got {hp!r}")
    need(isinstance(s.get("amp", True), bool), f"amp must be true or false, got {s.get('amp')!r}")
    need(s.get("optimizer", "sgd") in ("sgd", "adamw"), f"optimizer must be sgd or adamw, got {s.get('optimizer')!r}")
    blf = s.get("backbone_lr_factor", 1.0)
    need(is_num(blf) and 0 < blf <= 10, f"backbone_lr_factor must be in (0, 10], got {blf!r}")


# --------------------------------------------------------------------------- run dirs


def run_name(cfg: Mapping[str, Any]) -> str:
    return f"{cfg['model']['name']}-{cfg['backbone']['name']}-{cfg['loss']['name']}"


def load_run_config(run_dir: str | os.PathLike) -> dict:
    import yaml  # PyYAML ships with omegaconf

    path = Path(run_dir) / runs.CONFIG
    if not Path(run_dir).is_dir():
        raise UserError(f"run directory {str(run_dir)!r} does not exist")
    if not path.is_file():
        raise UserError(f"{str(path)!r} does not exist; prepare the run with `bbrctl sweep` or run `bbrctl train OVERRIDES`")
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise UserError(f"{str(path)!r} is not valid YAML ({' '.join(str(e).split())[:200]})") from None
    if not isinstance(cfg, dict):
        raise UserError(f"{str(path)!r} does not hold a config mapping")
    return cfg


def _signature_of(run_dir: Path, cfg: Mapping[str, Any]) -> str:
    job = runs.read_job(run_dir)
    if job and job.get("signature"):
        return str(job["signature"])
    from bbrctl.config import signature

    return signature(dict(cfg))


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


# --------------------------------------------------------------------------- train


def train(run_dir: str | os.PathLike, *, device: str | None = None, progress: bool | None = None) -> dict:
    """Run or resume the job in ``run_dir``; return its results dict (see module doc)."""
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    done = runs.read_json(run_dir / runs.RESULTS)
    if isinstance(done, dict) and done.get("status") == "done":
        return {**done, "skipped": True}
    sig = _signature_of(run_dir, cfg)
    main = _is_main_process()
    t0 = time.time()
    try:
        check_train_config(cfg)
    except UserError as e:
        if main:
            _write_results(run_dir, "failed", sig, cfg, error=str(e))
        raise

    from bbrctl.detection import engine
    from bbrctl.detection.wandb_sink import WandbSink

    dist = engine.setup_distributed(device)
    if progress is None:
        progress = sys.stderr.isatty()
    sink = None
    code = 1
    try:
        if int(cfg["schedule"]["batch_size"]) % dist.world_size:
            raise UserError(f"schedule.batch_size={cfg['schedule']['batch_size']} is not divisible by the "
                            f"world size {dist.world_size}")
        if dist.main:
            runs.write_status(run_dir, "running", iteration=0, max_iter=int(cfg["schedule"]["max_iter"]),
                              device=str(dist.device), world_size=dist.world_size)
            sink = WandbSink(cfg, run_dir, name=run_dir.name)
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
    except Exception as e:  # noqa: BLE001 - every failure is recorded in the run directory
        msg = " ".join(f"{type(e).__name__}: {e}".split())
        if dist.main:
            with open(run_dir / runs.LOG, "a", encoding="utf-8") as f:
                f.write(traceback.format_exc())
            _write_results(run_dir, "failed", sig, cfg, error=msg, started=t0)
        raise TrainingFailed(f"training failed: {msg} (traceback in {run_dir / runs.LOG})") from e
    finally:
        if sink is not None:
            if code == 0 and out.get("metrics"):
                sink.summary({f"final/{t}/{k}": v for t, m in out["metrics"].items() for k, v in m.items()})
            sink.finish(exit_code=0 if code in (0, REQUEUE_EXIT) else 1)
        engine.cleanup_distributed(dist)
    if not dist.main:
        return {"status": "done", "rank": dist.rank}
    results = _write_results(run_dir, "done", sig, cfg, metrics=out["metrics"], iteration=out["iteration"],
                             wall_time_s=out["wall_time_s"], timing=out["timing"], device=str(dist.device),
                             world_size=dist.world_size)
    return results


def _write_results(run_dir: Path, status: str, sig: str, cfg: Mapping[str, Any], *, metrics=None, iteration=None,
                   wall_time_s=None, error=None, started=None, **extra) -> dict:
    if iteration is None:
        st = runs.read_json(run_dir / runs.STATUS) or {}
        iteration = st.get("iteration", 0)
    if wall_time_s is None and started is not None:
        wall_time_s = time.time() - started
    results = {
        "status": status,
        "metrics": _json_safe(metrics or {}),
        "iteration": iteration,
        "max_iter": (cfg.get("schedule") or {}).get("max_iter"),
        "wall_time_s": wall_time_s,
        "signature": sig,
        "error": error,
        **extra,
    }
    runs.atomic_write_json(run_dir / runs.RESULTS, results)
    return results


def _json_safe(metrics: Mapping[str, Any]) -> dict:
    # COCO leaves a metric undefined (NaN) when an area range has no objects; JSON has
    # no NaN, so it is written as null.
    return {t: {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in m.items()}
            for t, m in metrics.items()}


def train_from_overrides(overrides: Sequence[str] = (), config_dirs: Iterable[str] = (), *,
                         device: str | None = None, progress: bool | None = None) -> tuple[Path, dict]:
    """Compose, validate, prepare the run directory, and train in the foreground."""
    from bbrctl.config import compose, signature, to_container

    cfg = to_container(compose(list(overrides), config_dirs))
    check_train_config(cfg)
    sig = signature(cfg)
    name = run_name(cfg)
    run_dir = Path(str(cfg.get("runs_root") or "runs")) / "train" / f"{name}-{sig}"
    if _is_main_process():
        runs.prepare_run_dir(run_dir, cfg, signature=sig, name=name, sweep=None, overrides=list(overrides))
    else:  # torchrun: rank 0 writes the directory; the others wait for it
        deadline = time.monotonic() + 120
        while not (run_dir / runs.CONFIG).is_file():
            if time.monotonic() > deadline:
                raise TrainingFailed(f"rank {os.environ.get('RANK')}: {run_dir / runs.CONFIG} did not appear")
            time.sleep(0.2)
    return run_dir, train(run_dir, device=device, progress=progress)
