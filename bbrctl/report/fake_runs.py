"""Synthetic run directories in the real on-disk format (prepare_run_dir + results.json).

Used by the report tests and benchmarks/report.py, never by the commands. The base config
is composed once with the shipped config tree; each run changes only the loss, weight,
seed and what the caller asks for, as a sweep job's resolved config differs from the default.
"""

from __future__ import annotations

import copy
from functools import lru_cache
from pathlib import Path
from typing import Any

from bbrctl.config import signature
from bbrctl.store import AP_KEYS, prepare_run_dir, write_results, write_status

# The paper's Table 1 methods: loss name → (params, weight) as the loss configs set them.
TABLE1 = {
    "baseline": ({}, 1.0),
    "iou": ({}, 2.5),
    "giou": ({}, 2.5),
    "ciou": ({}, 2.5),
    "focal_l1": ({"beta": 0.8}, 1.0),
    "eiou": ({}, 2.5),
    "focal_eiou_v1": ({"beta": 0.8}, 2.5),
    "focal_eiou": ({"gamma": 0.5}, 2.5),
}


@lru_cache(maxsize=1)
def _base_config() -> str:
    import json

    from bbrctl.config import compose, to_container

    return json.dumps(to_container(compose([])))


def base_config() -> dict:
    import json

    return json.loads(_base_config())


def set_key(cfg: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = cfg
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value


def make_config(loss: str, seed: int = 0, sweep: str | None = "table1", base: dict | None = None,
                **overrides: Any) -> dict:
    params, weight = TABLE1.get(loss, ({}, 2.5))
    cfg = copy.deepcopy(base if base is not None else base_config())
    cfg["loss"] = {"name": loss, "params": dict(params)}
    cfg["weight"] = weight
    cfg["seed"] = seed
    cfg["sweep"] = {"name": sweep, "params": {}}
    for k, v in overrides.items():
        set_key(cfg, k.replace("__", "."), v)
    return cfg


def metrics_for(ap: float) -> dict:
    offsets = dict(zip(AP_KEYS, (0.0, 20.0, 3.0, -4.0, 4.0, 12.0)))
    return {"bbox": {k: ap + o for k, o in offsets.items()}}


def make_run(root: Path, cfg: dict, *, state: str = "done", ap: float | None = 30.0,
             metrics: dict | None = None, dirname: str | None = None, error: str = "RuntimeError: boom") -> Path:
    """A run directory as sweep + train leave it in ``state`` (done/failed/running/requeued/pending)."""
    sig = signature(cfg)
    sweep = (cfg.get("sweep") or {}).get("name")
    name = dirname or f"{cfg['loss']['name']}-s{cfg.get('seed', 0)}-{sig}"
    run_dir = Path(root) / (sweep or "train") / name
    prepare_run_dir(run_dir, cfg, signature=sig, name=cfg["loss"]["name"], sweep=sweep)
    if state == "done":
        write_results(run_dir, "done", metrics=metrics if metrics is not None else metrics_for(ap), iteration=300,
                      max_iter=300, wall_time_s=60.0, signature=sig)
    elif state == "failed":
        write_results(run_dir, "failed", iteration=10, max_iter=300, wall_time_s=5.0, signature=sig, error=error)
    elif state in ("running", "requeued"):
        write_status(run_dir, state, iteration=120, max_iter=300)
    elif state != "pending":
        raise ValueError(state)
    return run_dir
