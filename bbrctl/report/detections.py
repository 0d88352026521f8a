"""Pictures of detections: the same val images under several runs, boxes drawn (Figs. 10-11).

    png, info = detections_figure([baseline_dir, focal_eiou_dir], images=4)

One row per val image, one column per run; each panel shows the image, its ground-truth
boxes (dashed white on black) and the run's detections above ``score_threshold`` (solid, one
colour per class, "class score" on top), at most ``max_boxes`` per panel, highest
scores first. The images are picked by :func:`bbrctl.detection.eval.predict.pick_images`
(evenly over the val images with objects), so every run is shown the same pictures.

:func:`bbrctl.detection.tracking.pictures.draw_grid` is the drawing itself; the W&B image panel
of a training run (bbrctl.detection.tracking.wandb_run) calls it too, with one run's images laid
out in a grid. :func:`detections_figure` runs inference (torch, imported only there) from
each run's last checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from bbrctl.detection.tracking.pictures import DEFAULT_SCORE_THRESHOLD, Panel, draw_grid
from bbrctl.errors import UserError

DEFAULT_IMAGES = 4
MAX_IMAGES = 32
MAX_RUNS = 8


def run_label(run_dir: Path) -> str:
    """A short column title: the job's readable name (its swept values), else the loss."""
    from bbrctl.store import read_job

    job = read_job(run_dir) or {}
    name = str(job.get("name") or "")
    cfg = job.get("config") if isinstance(job.get("config"), dict) else {}
    loss = (cfg.get("loss") or {}).get("name") if isinstance(cfg.get("loss"), dict) else None
    if name and name != "job" and not name.startswith(f"{(cfg.get('model') or {}).get('name')}-"):
        return name
    return f"loss={loss}" if loss else run_dir.name


def check_runs(run_dirs: Sequence[str | os.PathLike], images: int, score_threshold: float) -> list[Path]:
    """The runs as paths, or a one-line UserError (no torch imported)."""
    from bbrctl.store import CONFIG

    if len(run_dirs) < 1:
        raise UserError("--figure detections needs --run DIR (repeat it to compare runs side by side)")
    if len(run_dirs) > MAX_RUNS:
        raise UserError(f"--figure detections draws at most {MAX_RUNS} runs side by side, got {len(run_dirs)}")
    if isinstance(images, bool) or not isinstance(images, int) or not 1 <= images <= MAX_IMAGES:
        raise UserError(f"--images must be an integer in [1, {MAX_IMAGES}], got {images!r}")
    if not (isinstance(score_threshold, (int, float)) and 0.0 <= float(score_threshold) <= 1.0):
        raise UserError(f"--score-threshold must be in [0, 1], got {score_threshold!r}")
    out = []
    for d in run_dirs:
        p = Path(d)
        if not (p / CONFIG).is_file():
            raise UserError(f"--run {str(d)!r} is not a run directory (no {CONFIG}); give directories under the "
                            "runs root, e.g. runs/<sweep>/<job>")
        out.append(p)
    return out


def detections_figure(run_dirs: Sequence[str | os.PathLike], *, images: int = DEFAULT_IMAGES,
                      score_threshold: float = DEFAULT_SCORE_THRESHOLD, device: str | None = None,
                      labels: Sequence[str] | None = None) -> tuple[bytes, dict]:
    """PNG of the same ``images`` val images under each run, and what it shows."""
    dirs = check_runs(run_dirs, images, score_threshold)
    if device not in (None, "cpu", "cuda"):
        raise UserError(f"--device {device!r} is not valid; valid: cpu, cuda")
    import torch

    from bbrctl.detection.eval import predict as P
    from bbrctl.detection.data.datasets import split_paths

    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but torch sees no CUDA device")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    columns: list[list[Panel]] = []
    names: dict[int, str] = {}
    val_of: tuple[Path, Path] | None = None
    picked: list[int] = []
    ds = None
    for d in dirs:
        model, cfg = P.load_run_model(d, device)
        val = split_paths(cfg["data"], "val")
        if val_of is None:
            val_of = val
            ds = P.val_dataset(cfg)
            picked = P.pick_images(ds, images)
            names = P.class_names(ds)
        elif val != val_of:
            raise UserError(f"--run {str(d)!r} was evaluated on {val[1]}, the first run on {val_of[1]}: "
                            "runs drawn side by side must share their val images")
        preds = P.predict(model, ds, picked, device)
        del model
        col = []
        for i, pr in zip(picked, preds):
            gt = P.ground_truth(ds, i)
            col.append(Panel(ds.load_image(i), gt["boxes"], gt["labels"], pr["boxes"], pr["scores"], pr["labels"]))
        columns.append(col)
    titles = list(labels) if labels else [run_label(d) for d in dirs]
    if len(set(titles)) < len(titles):  # two runs with the same name: tell them apart
        titles = [f"{t} ({d.name.rsplit('-', 1)[-1]})" for t, d in zip(titles, dirs)]
    assert ds is not None
    image_ids = [int(ds.index.images[i]["id"]) for i in picked]
    rows = [[columns[c][r] for c in range(len(columns))] for r in range(len(picked))]
    png = draw_grid(rows, names, col_titles=titles, row_titles=[f"val image {i}" for i in image_ids],
                    score_threshold=score_threshold)
    shown = {t: [rows[r][c].shown for r in range(len(rows))] for c, t in enumerate(titles)}
    return png, {"runs": [str(d) for d in dirs], "labels": titles, "image_ids": image_ids,
                 "score_threshold": score_threshold, "detections_shown": shown, "device": device}
