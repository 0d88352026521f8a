"""Pictures of detections: the same val images under several runs, boxes drawn (Figs. 10-11).

    png, info = detections_figure([baseline_dir, focal_eiou_dir], images=4)

One row per val image, one column per run; each panel shows the image, its ground-truth
boxes (dashed white on black) and the run's detections above ``score_threshold`` (solid, one
colour per class, "class score" on top), at most ``max_boxes`` per panel, highest
scores first. The images are picked by :func:`bbrctl.detection.predict.pick_images`
(evenly over the val images with objects), so every run is shown the same pictures.

:func:`draw_grid` is the drawing itself (numpy + matplotlib, no torch); the W&B image
panel of a training run (bbrctl.detection.wandb_sink) calls it too, with one run's
images laid out in a grid. :func:`detections_figure` runs inference (torch, imported
only there) from each run's last checkpoint.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from bbrctl.errors import UserError

DEFAULT_IMAGES = 4
DEFAULT_SCORE_THRESHOLD = 0.5
MAX_IMAGES = 32
MAX_RUNS = 8


@dataclass
class Panel:
    image: Any                                   # (H, W, 3) uint8
    gt_boxes: Any                                # (G, 4) xyxy pixels
    gt_labels: Any                               # (G,)
    boxes: Any = None                            # (N, 4) xyxy pixels, or None: ground truth only
    scores: Any = None                           # (N,)
    labels: Any = None                           # (N,)
    title: str = ""
    shown: int = field(default=0, init=False)    # detections drawn (set by draw_grid)


def _visible(p: Panel, score_threshold: float, max_boxes: int) -> list[int]:
    import numpy as np

    if p.boxes is None or len(p.boxes) == 0:
        return []
    scores = np.asarray(p.scores, dtype=np.float64)
    order = [int(i) for i in np.argsort(-scores, kind="stable") if scores[i] >= score_threshold]
    return order[:max_boxes]


def draw_grid(rows: Sequence[Sequence[Panel | None]], class_names: Mapping[int, str], *,
              col_titles: Sequence[str] | None = None, row_titles: Sequence[str] | None = None,
              score_threshold: float = DEFAULT_SCORE_THRESHOLD, max_boxes: int = 30,
              panel_inches: float = 2.6, dpi: int = 120) -> bytes:
    """PNG bytes of a grid of panels (``rows[r][c]``; None leaves a cell empty)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    n_rows = len(rows)
    n_cols = max((len(r) for r in rows), default=0)
    if not n_rows or not n_cols:
        raise ValueError("draw_grid needs at least one panel")
    cmap = plt.get_cmap("tab10")
    height = panel_inches * n_rows + 0.5  # the half inch holds the legend line and column titles
    # "compressed": the fixed-aspect image axes are packed, with no slack between rows.
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(panel_inches * n_cols, height), dpi=dpi, squeeze=False,
                             layout="compressed")
    try:
        for r in range(n_rows):
            for c in range(n_cols):
                ax = axes[r][c]
                ax.set_xticks([])
                ax.set_yticks([])
                p = rows[r][c] if c < len(rows[r]) else None
                if p is None:
                    ax.axis("off")
                    continue
                h, w = p.image.shape[:2]
                ax.imshow(p.image, interpolation="nearest")
                ax.set_xlim(0, w)
                ax.set_ylim(h, 0)
                lw = 1.1
                for (x0, y0, x1, y1) in p.gt_boxes:
                    # White dashes over a black line: visible on light and dark objects alike.
                    for color, style in (("black", "solid"), ("white", (0, (3, 2)))):
                        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=color,
                                               linestyle=style, linewidth=lw))
                shown = _visible(p, score_threshold, max_boxes)
                for i in shown:
                    x0, y0, x1, y1 = (float(v) for v in p.boxes[i])
                    label = int(p.labels[i])
                    color = cmap((label - 1) % 10)
                    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=color, linewidth=lw))
                    ax.text(x0, y0, f"{class_names.get(label, label)} {float(p.scores[i]):.2f}", fontsize=5.5,
                            color="black", va="bottom", ha="left", clip_on=True,
                            bbox=dict(facecolor=color, edgecolor="none", pad=0.6, alpha=0.85))
                p.shown = len(shown)
                if p.title:
                    ax.set_xlabel(p.title, fontsize=7)
                if r == 0 and col_titles and c < len(col_titles):
                    ax.set_title(col_titles[c], fontsize=8)
                if c == 0 and row_titles and r < len(row_titles):
                    ax.set_ylabel(row_titles[r], fontsize=7)
        fig.suptitle(f"dashed: ground truth; solid: detections with score \u2265 {score_threshold:g}", fontsize=7)
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        return buf.getvalue()
    finally:
        plt.close(fig)


def wrap(panels: Sequence[Panel], max_cols: int = 4) -> list[list[Panel | None]]:
    """One run's panels as a near-square grid of at most ``max_cols`` columns."""
    if not panels:
        return []
    cols = min(max_cols, max(1, math.ceil(math.sqrt(len(panels)))))
    out = [list(panels[i:i + cols]) for i in range(0, len(panels), cols)]
    out[-1] += [None] * (cols - len(out[-1]))
    return out


# --------------------------------------------------------------------------- runs


def run_label(run_dir: Path) -> str:
    """A short column title: the job's readable name (its swept values), else the loss."""
    from bbrctl.runs import read_job

    job = read_job(run_dir) or {}
    name = str(job.get("name") or "")
    cfg = job.get("config") if isinstance(job.get("config"), dict) else {}
    loss = (cfg.get("loss") or {}).get("name") if isinstance(cfg.get("loss"), dict) else None
    if name and name != "job" and not name.startswith(f"{(cfg.get('model') or {}).get('name')}-"):
        return name
    return f"loss={loss}" if loss else run_dir.name


def check_runs(run_dirs: Sequence[str | os.PathLike], images: int, score_threshold: float) -> list[Path]:
    """The runs as paths, or a one-line UserError (no torch imported)."""
    from bbrctl.runs import CONFIG

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

    from bbrctl.detection import predict as P
    from bbrctl.detection.data import split_paths

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
