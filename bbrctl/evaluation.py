"""`bbrctl eval`: evaluate a run's checkpoint again, on its own data or other data.

    evaluate_run(run_dir, checkpoint=None, overrides=[], split="val", name=None)

re-evaluates a finished or interrupted run (its ``checkpoints/last.pt`` unless
``checkpoint`` names another file) and writes ``<run>/evals/<name>.json`` (atomic,
schema-checked: bbrctl.store.write_eval). Nothing else of the run directory is touched:
results.json, status.json, metrics.jsonl and the checkpoints stay as training left them.

What can change (``overrides``, Hydra syntax): the data (``data=<option>`` and any
``data.KEY=VALUE``: another split's files, another COCO-format dataset, another generated
set), ``split`` (val or train), and how detections are made and read:
``model.score_thresh``, ``model.nms_thresh``, ``model.detections_per_img``,
``schedule.eval_batch_size``. The model is the run's own (model and backbone groups), so
the evaluated data must have as many categories as the training data, with the same
names where both are known.

Distributed: under torchrun (WORLD_SIZE > 1) every rank runs inference on its shard of the
images (rank r of w: images r, r + w, ...), the detections are gathered on rank 0, which
scores them and writes the file; the metrics equal a single process's on the same
checkpoint (tests/test_eval.py).

Checkpoints are read weights-only (bbrctl.detection.train.checkpoint.model_state: a bbrctl
checkpoint, checksum verified, or a bare state dict of tensors), so a file from elsewhere
cannot run code. Default name: ``<data.name>-<split>``, plus a short hash of the data config when
it differs from the run's own, plus the checkpoint's file name when one is given.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from bbrctl import store
from bbrctl.errors import UserError
from bbrctl.redact import public_overrides, redact
from bbrctl.store import RunDir

SPLITS = ("val", "train")
# Keys outside the data group that an evaluation may change (not what the model is).
EVAL_KEYS = ("model.score_thresh", "model.nms_thresh", "model.detections_per_img", "schedule.eval_batch_size")
# A name is a file name in evals/.
_NAME = r"[A-Za-z0-9][A-Za-z0-9._=+-]{0,119}"


def eval_config(run_cfg: Mapping[str, Any], overrides: Sequence[str] = (),
                config_dirs: Iterable[str | os.PathLike] = ()) -> dict:
    """The run's config with the evaluation's overrides applied, validated by the schema."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from bbrctl.config import compose, to_container, validate

    cfg = copy.deepcopy(dict(run_cfg))
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as e:
        raise UserError(f"bad override: {' '.join(str(e).split())[:200]}") from None
    group, data_raw, values = None, [], []
    for raw, o in zip(overrides, parsed):
        key = o.key_or_group
        if o.is_sweep_override():
            raise UserError(f"{raw!r}: `bbrctl eval` takes one value per key (run it once per value)")
        if key == "data" and not o.is_delete():
            group = o.value()
        elif key.startswith("data."):
            data_raw.append(raw)
            values.append((key, o))
        elif key in EVAL_KEYS and not o.is_delete():
            values.append((key, o))
        else:
            raise UserError(f"`bbrctl eval` changes the data and how detections are read, not {raw!r}; "
                            f"valid: data=<option>, data.KEY=VALUE, {', '.join(k + '=VALUE' for k in EVAL_KEYS)}")
    if group is not None:
        # Another data option: composed by Hydra with the data overrides, as a training job would be.
        cfg["data"] = to_container(compose([f"data={group}", *data_raw], config_dirs))["data"]
        values = [(k, o) for k, o in values if not k.startswith("data.")]
    for key, o in values:
        *parents, leaf = key.split(".")
        node = cfg
        for p in parents:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        if o.is_delete():
            node.pop(leaf, None)
        elif leaf not in node and not o.is_add() and parents == ["data"]:
            raise UserError(f"unknown config key {key!r} in the run's data config; add it with +{key}=... "
                            f"(valid data keys: {', '.join(sorted(node))})")
        else:
            node[leaf] = o.value()
    validate(cfg)
    return cfg


def category_names(data_cfg: Mapping[str, Any]) -> list[str] | None:
    """Category names in label order (1..C), if known without reading images."""
    from bbrctl.config.schema import is_synthetic

    if is_synthetic(data_cfg):
        from bbrctl.detection.data.synth import CLASSES

        return list(CLASSES)
    from bbrctl.detection.data.datasets import read_categories, split_paths

    for split in ("val", "train"):
        try:
            _, ann = split_paths(data_cfg, split)
        except UserError:
            continue
        if ann.is_file():
            cats = sorted((c for c in read_categories(ann) if isinstance(c, dict)), key=lambda c: c.get("id", 0))
            return [str(c.get("name", c.get("id"))) for c in cats]
    return None


def check_same_model_classes(train_data: Mapping[str, Any], eval_data: Mapping[str, Any]) -> None:
    from bbrctl.detection.data.datasets import num_classes

    n_train, n_eval = num_classes(train_data), num_classes(eval_data)
    if n_train != n_eval:
        raise UserError(f"data {eval_data.get('name')!r} has {n_eval} categories, the run's model was trained on "
                        f"{n_train} ({train_data.get('name')!r}); evaluate on data with the same categories")
    a, b = category_names(train_data), category_names(eval_data)
    if a is not None and b is not None and a != b:
        diff = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
        raise UserError(f"data {eval_data.get('name')!r} names its categories differently from the run's training "
                        f"data (label {diff + 1}: {b[diff]!r}, trained as {a[diff]!r})")


def default_name(run_cfg: Mapping[str, Any], cfg: Mapping[str, Any], split: str, checkpoint: Path | None) -> str:
    from bbrctl.config.signature import result_view
    from bbrctl.store.names import sanitize

    name = f"{cfg['data']['name']}-{split}"
    same = result_view({"data": run_cfg["data"]}) == result_view({"data": cfg["data"]})
    if not same:
        blob = json.dumps(result_view({"data": cfg["data"]}), sort_keys=True, default=str)
        name += "-" + hashlib.sha256(blob.encode()).hexdigest()[:8]
    if checkpoint is not None:
        name += "-" + checkpoint.stem
    return sanitize(name)


def evaluate_run(run_dir: str | os.PathLike, *, checkpoint: str | os.PathLike | None = None,
                 overrides: Sequence[str] = (), config_dirs: Iterable[str | os.PathLike] = (), split: str = "val",
                 name: str | None = None, device: str | None = None) -> tuple[Path | None, dict | None]:
    """Evaluate and write ``evals/<name>.json``; returns (path, record) on rank 0, (None, None) elsewhere."""
    import re

    from bbrctl import preflight

    run_dir = Path(run_dir)
    if split not in SPLITS:
        raise UserError(f"--split {split!r} is not valid; valid: {', '.join(SPLITS)}")
    if name is not None and not re.fullmatch(_NAME, name):
        raise UserError(f"--name {name!r} is not valid: 1-120 letters, digits and . _ = + - (no /)")
    run_cfg = store.read_config(run_dir)
    cfg = eval_config(run_cfg, overrides, config_dirs)
    check_same_model_classes(run_cfg["data"], cfg["data"])
    preflight.check_files(cfg)
    ckpt_path = Path(checkpoint) if checkpoint is not None else RunDir(run_dir).checkpoints / "last.pt"
    if checkpoint is None and not ckpt_path.is_file():
        raise UserError(f"{str(run_dir)!r} has no checkpoint yet ({ckpt_path.name}); train it first, "
                        "or give --checkpoint PATH")
    name = name or default_name(run_cfg, cfg, split, Path(checkpoint) if checkpoint is not None else None)

    from bbrctl.detection.train.checkpoint import check_belongs, model_state

    state, meta = model_state(ckpt_path)
    check_belongs(ckpt_path, meta.get("signature"), run_dir)
    job = store.read_job(run_dir) or {}
    return _evaluate(run_dir, cfg, state, meta, ckpt_path, split, name, list(overrides), job.get("signature"), device)


def _evaluate(run_dir: Path, cfg: dict, state: dict, meta: dict, ckpt_path: Path, split: str, name: str,
              overrides: list[str], signature: str | None, device: str | None) -> tuple[Path | None, dict | None]:
    import torch

    from bbrctl.detection.train import distributed, engine
    from bbrctl.detection.data.datasets import build_dataset, ensure_dataset, num_classes
    from bbrctl.detection.models.build import build_model

    t0 = time.time()
    dist = distributed.setup_distributed(device)
    try:
        if dist.main:
            ensure_dataset(cfg["data"])     # a generated set is made once, before the others read it
        distributed.barrier(dist)
        model = build_model(cfg, num_classes(cfg["data"]))
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            first = " ".join(str(e).split())[:240]
            raise UserError(f"checkpoint {str(ckpt_path)!r} does not fit the run's model "
                            f"({cfg['model']['name']}, {cfg['backbone']['name']}): {first}") from None
        model.to(dist.device)
        ds = build_dataset(cfg["data"], split, drop_empty=False)
        evaluator = engine.infer(model, cfg, dist, ds)
        record = None
        if dist.main:
            metrics = evaluator.compute()
            record = {"split": split, "metrics": metrics, "checkpoint": str(ckpt_path.resolve()),
                      "checkpoint_iteration": meta.get("iteration"), "checkpoint_signature": meta.get("signature"),
                      "signature": signature, "data": redact(cfg["data"]), "overrides": public_overrides(overrides),
                      "images": len(evaluator.image_ids), "detections": len(evaluator.results),
                      "world_size": dist.world_size, "device": str(dist.device), "wall_time_s": time.time() - t0,
                      "created": time.time(), "torch": torch.__version__}
        distributed.barrier(dist)
    finally:
        distributed.cleanup_distributed(dist)
    if record is None:
        return None, None
    path = store.write_eval(run_dir, name, record)
    return path, store.read_eval(run_dir, name)
