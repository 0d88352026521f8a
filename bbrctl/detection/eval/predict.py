"""Inference of a finished (or checkpointed) run on a few val images, for pictures.

    model, cfg = load_run_model(run_dir, device)          # config.yaml + checkpoints/last.pt
    ds = val_dataset(cfg)
    idx = pick_images(ds, 4)                               # the same images for every run
    preds = predict(model, ds, idx, device)                # [{"boxes", "scores", "labels"}] numpy

The model is rebuilt from the run's own config.yaml, exactly as it trained (loss
installed, so the state dict matches key for key), and its weights are the last
checkpoint's. Used by ``bbrctl report --figure detections`` and the training run's W&B
image panel; imports torch (callers import this module only on those paths).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from bbrctl.errors import UserError


def load_run_model(run_dir: str | os.PathLike, device: str = "cpu"):
    """(model in eval mode on ``device``, the run's config) from a run directory."""
    import torch

    from bbrctl.detection.train import checkpoint as ckpt
    from bbrctl.detection.data.datasets import ensure_dataset, num_classes
    from bbrctl.detection.models.build import build_model
    from bbrctl.store import read_config

    run_dir = Path(run_dir)
    cfg = read_config(run_dir)
    path = ckpt.checkpoint_path(run_dir)
    if not path.is_file():
        raise UserError(f"{str(run_dir)!r} has no checkpoint ({path.relative_to(run_dir)}); "
                        "only runs that trained at least to their first checkpoint can be drawn")
    ensure_dataset(cfg["data"])  # synthetic data: regenerated if the cache was cleared
    model = build_model(cfg, num_classes(cfg["data"]))
    state = ckpt.load_checkpoint(path)
    ckpt.check_belongs(path, state.get("signature"), run_dir)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise UserError(f"checkpoint {str(path)!r} does not fit the run's model: {' '.join(str(e).split())[:200]}") from None
    model.eval().to(torch.device(device))
    return model, cfg


def val_dataset(cfg: Mapping[str, Any]):
    from bbrctl.detection.data.datasets import build_dataset

    return build_dataset(cfg["data"], "val")


def pick_images(dataset, n: int) -> list[int]:
    """``n`` dataset indices spread evenly over the val images that have objects.

    Deterministic (the same images for every run of the same data), so panels of
    different runs show the same pictures.
    """
    if n < 1:
        return []
    with_objects = [i for i, im in enumerate(dataset.index.images) if dataset.index.targets.get(im["id"])]
    pool = with_objects or list(range(len(dataset)))
    if len(pool) <= n:
        return pool
    step = len(pool) / n
    return [pool[int(k * step)] for k in range(n)]


def predict(model, dataset, indices: Sequence[int], device: str = "cpu", batch_size: int = 4) -> list[dict]:
    """Detections of ``model`` for ``dataset[i]`` (i in ``indices``), as numpy arrays:
    {"boxes": (N, 4) xyxy pixels, "scores": (N,), "labels": (N,) contiguous 1..C}."""
    import torch

    out: list[dict] = []
    dev = torch.device(device)
    with torch.inference_mode():
        for start in range(0, len(indices), batch_size):
            images = [dataset[i][0].to(dev) for i in indices[start:start + batch_size]]
            for o in model(images):
                out.append({k: o[k].detach().to("cpu").numpy() for k in ("boxes", "scores", "labels")})
    return out


def ground_truth(dataset, i: int) -> dict:
    """{"boxes": (N, 4) xyxy, "labels": (N,) contiguous} of image ``i`` (numpy)."""
    import numpy as np

    objs = dataset.index.targets[dataset.index.images[i]["id"]]
    return {"boxes": np.array([o[0] for o in objs], dtype=np.float64).reshape(-1, 4),
            "labels": np.array([dataset.cat_id_to_label[o[1]] for o in objs], dtype=np.int64)}


def class_names(dataset) -> dict[int, str]:
    """{contiguous label: category name}."""
    return {dataset.cat_id_to_label[c["id"]]: str(c.get("name", c["id"])) for c in dataset.categories}
