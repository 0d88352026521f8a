"""What the driver reads from and writes to one trial's run directory.

A trial is an ordinary run directory of the study's sweep: the metric it is told with is
read from results.json (``metrics.<iou_type>.<key>``), its intermediate values from the
periodic evaluations the training loop appends to metrics.jsonl every
``schedule.eval_period`` iterations (``{"iteration": i, "eval": {...}}``). Pruning writes
``stop.request`` into the run directory; the training loop checks for it where it checks
for SLURM's preemption signal and stops the same way: checkpoint, state "requeued", exit
75. A pruned trial is therefore a stopped run with its checkpoint; deleting stop.request
and launching it again resumes it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from bbrctl.errors import UserError
from bbrctl.store import AP_KEYS, RunDir, atomic_write_json, read_results


def parse_metric(metric: str) -> tuple[str, str]:
    """``AP`` -> ("bbox", "AP"); ``segm.AP50`` -> ("segm", "AP50"); UserError otherwise."""
    iou_type, _, key = metric.rpartition(".")
    iou_type = iou_type or "bbox"
    if iou_type not in ("bbox", "segm") or not (key in AP_KEYS or key.startswith("AR")):
        raise UserError(f"unknown --metric {metric!r}; valid: one of {', '.join(AP_KEYS)} (bbox), or "
                        "segm.<key> for Mask R-CNN's masks")
    return iou_type, key


def _pick(metrics: dict | None, metric: str) -> float | None:
    iou_type, key = parse_metric(metric)
    block = (metrics or {}).get(iou_type)
    v = block.get(key) if isinstance(block, dict) else None
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def final_value(run_dir: Path, metric: str) -> float | None:
    """The metric in results.json of a done run (None when it is absent or not done)."""
    res = read_results(run_dir)
    if not res or res.get("status") != "done":
        return None
    return _pick(res.get("metrics"), metric)


def intermediate_values(run_dir: Path, metric: str) -> dict[int, float]:
    """{iteration: metric} of the periodic evaluations so far (a torn last line is skipped)."""
    out: dict[int, float] = {}
    try:
        text = RunDir(run_dir).metrics.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        if '"eval"' not in line:
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        it, v = rec.get("iteration"), _pick(rec.get("eval"), metric) if isinstance(rec, dict) else None
        if isinstance(it, int) and v is not None:
            out[it] = v
    return out


def request_stop(run_dir: Path, trial: int, step: int) -> None:
    atomic_write_json(RunDir(run_dir).stop_request,
                      {"reason": "pruned", "trial": trial, "step": step, "time": time.time()})


def stop_requested(run_dir: Path) -> bool:
    return RunDir(run_dir).stop_request.is_file()
