"""A job's signature: a hash of what determines its results, and nothing about the machine.

Two people running the same experiment on different machines, clusters or mounts get
the same signature, so finished jobs are found and never re-run. Left out (NON_RESULT_KEYS):
where things live (data paths and caches, the runs root), how a job is run (launcher,
data-loader workers), and where it reports (W&B, the sweep's own bookkeeping). A
generated dataset is identified by its generator parameters; a dataset read from disk
by ``data.name`` (two different datasets need two names); backbone weights by their file
name (``model.weights_backbone`` reduced to its basename: two different checkpoints
need two file names).

A user's own loss (bbrctl.losses.user) is identified by its import path and its code:
the view's ``loss.code`` holds ``{"target": "package.module:function", "code": <sha256 of
that module's source file>}``, so editing the file starts new runs. Built-in losses get no
such key: their signatures are what they always were.

``legacy_signature`` is the first version's hash (it also hashed data paths read from the
environment); run directories made under it are found through it and adopted once: their
job.json is rewritten with the new signature and keeps the old one in
``previous_signatures`` (bbrctl.store.rundir.prepare_run_dir).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

NON_RESULT_KEYS = (
    "data.root", "data.train_images", "data.train_ann", "data.val_images", "data.val_ann",
    "data.num_workers", "data.cache_images",
    "launcher",
    "wandb",
    "sweep",
    "runs_root",
    "run_dir",
    "report",
)
# What makes runs comparable: one setting per report table, one W&B group per sweep and setting.
SETTING_KEYS = ("model.name", "backbone.name", "data.name", "schedule.name", "schedule.max_iter")
# Kept, but only in a form that does not depend on where the file lies.
PORTABLE_KEYS = ("model.weights_backbone",)

_LEGACY_NON_RESULT_KEYS = ("data.num_workers", "launcher", "wandb", "sweep", "runs_root", "run_dir", "report")


def portable_value(key: str, value: Any) -> Any:
    if key in PORTABLE_KEYS and isinstance(value, str) and value:
        return os.path.basename(value.rstrip("/"))
    return value


def _drop(view: dict, keys: tuple[str, ...]) -> dict:
    for dotted in keys:
        *parents, leaf = dotted.split(".")
        node = view
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
            if node is None:
                break
        if isinstance(node, dict):
            node.pop(leaf, None)
    return view


def _plain(cfg: Any) -> dict:
    if not isinstance(cfg, dict):
        from bbrctl.config.compose import to_container

        cfg = to_container(cfg)
    return json.loads(json.dumps(cfg, default=str))  # a deep copy of plain data


def result_view(cfg: Any) -> dict:
    """The part of a resolved config that determines a job's results, machine-independent.

    ``loss=baseline weight=stock`` is ``weight=1`` (the stock term at its own weight), so
    both get one signature and a sweep crossing losses with ``+weighting=paper,stock``
    runs the baseline once.
    """
    view = _drop(_plain(cfg), NON_RESULT_KEYS)
    loss = view.get("loss")
    if view.get("weight") == "stock" and isinstance(loss, dict) and loss.get("name") == "baseline":
        view["weight"] = 1.0
    for dotted in PORTABLE_KEYS:
        *parents, leaf = dotted.split(".")
        node: Any = view
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node:
            node[leaf] = portable_value(dotted, node[leaf])
    loss = view.get("loss")
    if isinstance(loss, dict):
        from bbrctl.losses.user import identity

        code = identity(loss)
        if code is not None:
            loss["code"] = code
    return view


def _hash(view: dict, length: int) -> str:
    blob = json.dumps(view, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def signature(cfg: Any, length: int = 10) -> str:
    """Stable hash of what determines a job's results (key order and float spelling-proof)."""
    return _hash(result_view(cfg), length)


def legacy_signature(cfg: Any, length: int = 10) -> str:
    """The signature bbrctl 0.1 gave the same config (paths included)."""
    return _hash(_drop(_plain(cfg), _LEGACY_NON_RESULT_KEYS), length)
