"""Drawing detections: val images with ground-truth and predicted boxes (the paper's Figs. 10-11).

:func:`draw_grid` (numpy + matplotlib, no torch) lays panels out in rows; one panel is
an image, its ground-truth boxes (dashed white on black) and a run's detections above
``score_threshold`` (solid, one colour per class, "class score" on top), at most
``max_boxes`` per panel, highest scores first. ``bbrctl report --figure detections``
(bbrctl.report.detections) and the W&B image panel of a training run
(bbrctl.detection.tracking.wandb_run) both draw with it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

DEFAULT_SCORE_THRESHOLD = 0.5


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
    from bbrctl.plotting import png_bytes, pyplot

    plt = pyplot()
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
        return png_bytes(fig)
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
