"""The schemas of the JSON files a run or sweep directory holds, and their one writer each.

Every reader checks what it reads: a file that is not what its writer writes (hand-edited,
truncated, written by another tool) is reported as damaged in one line naming the file
and what is wrong, never trusted and never a traceback.

results.json  {"status": "done"|"failed", "metrics": {iou_type: {AP..APl: 0-100 | null}},
               "iteration", "max_iter", "wall_time_s", "signature", "error", ...extra}
status.json   {"state": pending|running|done|failed|requeued, "updated", "pid", "pid_start",
               "host", "iteration", "max_iter", ...}
job.json      {"signature", "name", "sweep", "overrides", "created", "config", ["previous_signatures"]}
sweep.json    {"name", "created", "updated", "runs_root", "swept_keys", "experiment", "overrides",
               "jobs": {signature: {"dir", "name", "overrides", "index"}}, "launches": [...]}
evals/<name>.json  {"name", "split", "metrics", "checkpoint", "checkpoint_iteration", "signature",
               "data", "overrides", "images", "detections", "world_size", "device", "wall_time_s", "created"}

AP values are percentages (0-100), as in the paper's tables.
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable

STATES = ("pending", "running", "done", "failed", "requeued")
FINAL = ("done", "failed")
AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


class SchemaError(ValueError):
    """What is wrong with a file's content (the reader adds the file's name)."""


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int(v: Any, low: int = 0, high: int = 1 << 62) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and low <= v <= high


def _need(ok: bool, msg: str) -> None:
    if not ok:
        raise SchemaError(msg)


def _opt(d: dict, key: str, test: Callable[[Any], bool], what: str) -> None:
    v = d.get(key)
    _need(v is None or test(v), f"{key!r} must be {what}, got {_short(v)}")


def _short(v: Any, n: int = 60) -> str:
    """``v`` quoted as JSON (ASCII, control characters escaped) for one-line messages: a
    value from a file someone else wrote can neither break a log line nor pass as code."""
    s = json.dumps(v, ensure_ascii=True, default=lambda o: f"<{type(o).__name__}>")
    return s if len(s) <= n else s[: n - 3] + "..."


def check_metrics(m: Any) -> None:
    _need(isinstance(m, dict), f"'metrics' must be a mapping of IoU type to AP values, got {_short(m)}")
    for iou_type, block in m.items():
        _need(isinstance(block, dict), f"metrics.{iou_type} must be a mapping of AP values, got {_short(block)}")
        for k, v in block.items():
            if v is None:
                continue            # COCO leaves an empty area range undefined
            _need(_num(v), f"metrics.{iou_type}.{k} must be a number, got {_short(v)}")
            if k.startswith("AP") or k.startswith("AR"):
                # -1 is COCO's "no objects of this size": kept as the evaluator wrote it.
                _need(v == -1 or -1e-9 <= v <= 100 + 1e-9, f"metrics.{iou_type}.{k}={v} is not a percentage in [0, 100]")


def check_results(r: Any) -> dict:
    _need(isinstance(r, dict), f"must hold a JSON object, got {_short(r)}")
    _need(r.get("status") in FINAL, f"'status' must be one of {', '.join(FINAL)}, got {_short(r.get('status'))}")
    check_metrics(r.get("metrics") if r.get("metrics") is not None else {})
    # "done" is forever (never re-run): only with a metrics block holding an AP value.
    _need(r["status"] != "done" or any(isinstance(b, dict) and _num(b.get("AP")) for b in (r.get("metrics") or {}).values()),
          "'status' is done but 'metrics' holds no AP value")
    _opt(r, "iteration", _int, "an integer >= 0")
    _opt(r, "max_iter", lambda v: _int(v, 1), "an integer >= 1")
    _opt(r, "wall_time_s", lambda v: _num(v) and v >= 0, "a number of seconds >= 0")
    _opt(r, "signature", lambda v: isinstance(v, str), "a string")
    _opt(r, "error", lambda v: isinstance(v, str), "a string")
    _opt(r, "env", lambda v: isinstance(v, dict), "a mapping (bbrctl.provenance.record)")
    return r


def check_status(s: Any) -> dict:
    _need(isinstance(s, dict), f"must hold a JSON object, got {_short(s)}")
    _need(s.get("state") in STATES, f"'state' must be one of {', '.join(STATES)}, got {_short(s.get('state'))}")
    _opt(s, "pid", lambda v: _int(v, 1, (1 << 22)), "a process id")
    _opt(s, "iteration", _int, "an integer >= 0")
    _opt(s, "max_iter", lambda v: _int(v, 1), "an integer >= 1")
    _opt(s, "updated", _num, "a time stamp")
    _opt(s, "pid_start", _num, "a process start time")
    _opt(s, "host", lambda v: isinstance(v, str), "a host name")
    return s


def check_job(j: Any) -> dict:
    _need(isinstance(j, dict), f"must hold a JSON object, got {_short(j)}")
    _need(isinstance(j.get("signature"), str) and j["signature"], f"'signature' must be a string, got {_short(j.get('signature'))}")
    _opt(j, "name", lambda v: isinstance(v, str), "a string")
    _opt(j, "sweep", lambda v: isinstance(v, str), "a string")
    _opt(j, "overrides", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of strings")
    _opt(j, "config", lambda v: isinstance(v, dict), "a mapping (the resolved config)")
    _opt(j, "previous_signatures", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
         "a list of strings")
    _opt(j, "env", lambda v: isinstance(v, dict), "a mapping (bbrctl.provenance.software)")
    return j


def check_manifest(m: Any) -> dict:
    _need(isinstance(m, dict), f"must hold a JSON object, got {_short(m)}")
    for key in ("created", "updated"):
        _opt(m, key, _num, "a time stamp")
    _opt(m, "name", lambda v: isinstance(v, str), "a string")
    for key in ("overrides", "swept_keys"):
        _opt(m, key, _strs, "a list of strings")
    jobs = m.get("jobs", {})
    _need(isinstance(jobs, dict), f"'jobs' must be a mapping of signature to job, got {_short(jobs)}")
    for sig, j in jobs.items():
        _need(isinstance(j, dict) and isinstance(j.get("dir", ""), str) and "/" not in j.get("dir", "")
              and j.get("dir") not in ("", ".", ".."),
              f"jobs.{sig} must be a mapping with a 'dir' name, got {_short(j)}")
        _need(j.get("index") is None or _int(j.get("index")), f"jobs.{sig}.index must be an integer >= 0")
        _opt(j, "name", lambda v: isinstance(v, str), "a string")
        _opt(j, "overrides", _strs, "a list of strings")
    launches = m.get("launches", [])
    _need(isinstance(launches, list) and all(isinstance(x, dict) for x in launches),
          f"'launches' must be a list of launch records, got {_short(launches)}")
    for x in launches:
        _need(isinstance(x.get("jobs", []), list) and all(isinstance(s, str) for s in x.get("jobs", [])),
              f"a launch's 'jobs' must be a list of signatures, got {_short(x.get('jobs'))}")
        _need(x.get("pid") is None or _int(x.get("pid"), 1, 1 << 22), f"a launch's 'pid' must be a process id, got {_short(x.get('pid'))}")
        _opt(x, "id", _int, "an integer >= 0")
        _opt(x, "time", _num, "a time stamp")
        _opt(x, "pid_start", _num, "a process start time")
        _opt(x, "host", lambda v: isinstance(v, str), "a host name")
        _opt(x, "launcher", lambda v: v in ("local", "slurm"), "local or slurm")
        _opt(x, "array_job_id", lambda v: isinstance(v, str) and v.isdigit() or _int(v), "a SLURM job id")
        _opt(x, "tasks", lambda v: isinstance(v, dict) and all(_int(i) for i in v.values()),
             "a mapping of signature to task index")
    return m


def _strs(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def check_eval(e: Any) -> dict:
    _need(isinstance(e, dict), f"must hold a JSON object, got {_short(e)}")
    _need(isinstance(e.get("name"), str) and e["name"], f"'name' must be a string, got {_short(e.get('name'))}")
    _need(e.get("split") in ("train", "val"), f"'split' must be train or val, got {_short(e.get('split'))}")
    _need(isinstance(e.get("metrics"), dict) and e["metrics"], f"'metrics' must be a non-empty mapping, got {_short(e.get('metrics'))}")
    check_metrics(e["metrics"])
    _need(isinstance(e.get("checkpoint"), str), f"'checkpoint' must be a path, got {_short(e.get('checkpoint'))}")
    _opt(e, "checkpoint_iteration", _int, "an integer >= 0")
    _opt(e, "signature", lambda v: isinstance(v, str), "a string")
    _opt(e, "data", lambda v: isinstance(v, dict), "a mapping (the data config evaluated on)")
    _opt(e, "overrides", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of strings")
    _opt(e, "images", lambda v: _int(v, 1), "an integer >= 1")
    _opt(e, "detections", _int, "an integer >= 0")
    _opt(e, "world_size", lambda v: _int(v, 1), "an integer >= 1")
    _opt(e, "wall_time_s", lambda v: _num(v) and v >= 0, "a number of seconds >= 0")
    return e


def results_record(status: str, *, signature: str | None, metrics: dict | None = None, iteration: int | None = None,
                   max_iter: int | None = None, wall_time_s: float | None = None, error: str | None = None,
                   **extra: Any) -> dict:
    """The results.json content for an outcome: the one constructor every writer uses."""
    if status not in FINAL:
        raise ValueError(f"results status must be one of {FINAL}, got {status!r}")
    rec = {"status": status, "metrics": _json_safe(metrics or {}), "iteration": iteration, "max_iter": max_iter,
           "wall_time_s": wall_time_s, "signature": signature, "error": error, **extra}
    check_results(rec)
    return rec


def json_safe_metrics(metrics: dict) -> dict:
    return _json_safe(metrics)


def _json_safe(metrics: dict) -> dict:
    # COCO leaves a metric undefined (NaN) when an area range has no objects; JSON has
    # no NaN, so it is written as null.
    return {t: {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in m.items()}
            for t, m in metrics.items()}
