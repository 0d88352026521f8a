"""Checks of what a job reads from disk, made before its run directory is created.

The schema (bbrctl.config.schema) checks values; this checks the files they name, where
the job will run here (``bbrctl train``, local sweeps): a COCO-format dataset's image
directories and annotation files, that its train and val files list the same categories
(labels would mean different things otherwise), and ``model.weights_backbone``. Generated
datasets need nothing: they are made on first use. Imports no torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping

from bbrctl.config.schema import is_synthetic
from bbrctl.errors import UserError


def check_files(cfg: Mapping[str, Any]) -> None:
    """One-line UserError naming the first missing or inconsistent file and its config key."""
    from bbrctl.detection.data import datasets as D

    data = cfg["data"]
    if not is_synthetic(data):
        D.ensure_dataset(data)       # existence of both splits' images and annotations
        _, train_ann = D.split_paths(data, "train")
        _, val_ann = D.split_paths(data, "val")
        D.check_same_category_files(train_ann, val_ann)
    weights = (cfg.get("model") or {}).get("weights_backbone")
    if weights:
        p = Path(str(weights)).expanduser()
        if not p.is_file():
            raise UserError(f"model.weights_backbone: no such file {str(p)!r}")


def check_files_once(cfgs: Iterable[Mapping[str, Any]]) -> None:
    """check_files for each distinct (data, weights) of a sweep's jobs."""
    seen: set[str] = set()
    for cfg in cfgs:
        key = json.dumps([cfg.get("data"), (cfg.get("model") or {}).get("weights_backbone")], sort_keys=True,
                         default=str)
        if key not in seen:
            seen.add(key)
            check_files(cfg)
