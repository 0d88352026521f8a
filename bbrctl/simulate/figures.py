"""PNG figures (matplotlib, Agg backend, imported only here and only when plotting).

The one place Figures 7 and 8 are drawn: ``draw_error_panel`` (a) and ``draw_iou_panel``
(b) take plain data (E(t) curves; IoU quantile records per iteration), so a simulation
run (``error_curves``, ``iou_boxplots``) and ``bbrctl report --figure 7|8``
(``figure_7_8``, from the run's CSV files) draw the same figure.
* ``figure1``       (w, h) trajectories of one anchor under each loss.
* ``figure4`` / ``figure5``  FocalL1 loss and gradient curves.
"""

from __future__ import annotations

from pathlib import Path

COLORS = {"iou": "#7f7f7f", "giou": "#1f77b4", "diou": "#9467bd", "ciou": "#d62728", "eiou": "#2ca02c",
          "focal_eiou": "#ff7f0e", "focal_eiou_v1": "#8c564b", "focal_eiou_star": "#e377c2"}
LABELS = {"iou": "IoU", "giou": "GIoU", "diou": "DIoU", "ciou": "CIoU", "eiou": "EIoU",
          "focal_eiou": "Focal-EIoU", "focal_eiou_v1": "Focal-EIoU v1", "focal_eiou_star": "Focal-EIoU*"}


def _plt():
    from bbrctl.plotting import pyplot

    return pyplot()


def _save(fig, path: Path) -> None:
    """Render to memory (the figure is closed), then write atomically."""
    from bbrctl.plotting import png_bytes
    from bbrctl.store import atomic_write_bytes

    atomic_write_bytes(path, png_bytes(fig, dpi=120, bbox_inches="tight"))


def label(name: str) -> str:
    return LABELS.get(name, name)


def draw_error_panel(ax, curves: dict[str, tuple[list, list]], title: str = "(a) regression error") -> None:
    """Figure 7(a)/8(a): E(t) of every loss on one (log) axis. ``curves``: loss -> (t, E)."""
    for name, (ts, es) in curves.items():
        if ts:
            ax.plot(ts, es, label=label(name), color=COLORS.get(name), lw=1.6)
    ax.set_xlabel("iteration t")
    ax.set_ylabel(r"regression error $E(t)=\sum\|B_t-B^{gt}\|_1$")
    ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    if any(ts for ts, _ in curves.values()):
        ax.legend(fontsize=7)


def draw_iou_panel(ax, quantiles: dict[str, dict[int, dict]], iterations: list[int] | None = None,
                   max_boxes: int = 6, title: str = "(b) IoU (box: quartiles; whiskers: 5th/95th percentile)") -> None:
    """Figure 7(b)/8(b): per iteration, one box per loss side by side, drawn from the
    recorded quantiles (q05, q25, q50, q75, q95; mean as a triangle), since the per-pair
    IoUs are not kept. ``quantiles``: loss -> {iteration: record}."""
    losses = list(quantiles)
    its = sorted(set(iterations) if iterations is not None else {t for q in quantiles.values() for t in q})
    its = [t for t in its if any(t in quantiles[l] for l in losses)]
    if len(its) > max_boxes:
        idx = [round(i * (len(its) - 1) / (max_boxes - 1)) for i in range(max_boxes)]
        its = [its[i] for i in sorted(set(idx))]
    width = 0.8 / max(len(losses), 1)
    for j, name in enumerate(losses):
        stats, pos = [], []
        for k, t in enumerate(its):
            q = quantiles[name].get(t)
            if not q or not all(c in q for c in ("q05", "q25", "q50", "q75", "q95")):
                continue
            stats.append({"med": q["q50"], "q1": q["q25"], "q3": q["q75"], "whislo": q["q05"], "whishi": q["q95"],
                          "fliers": [], "mean": q.get("mean"), "label": ""})
            pos.append(k + (j - (len(losses) - 1) / 2) * width)
        if not stats:
            continue
        bp = ax.bxp(stats, positions=pos, widths=width * 0.9, showfliers=False, patch_artist=True,
                    showmeans=all(st["mean"] is not None for st in stats),
                    meanprops={"marker": "^", "markersize": 3, "markerfacecolor": "black", "markeredgecolor": "black"},
                    medianprops={"color": "black", "linewidth": 1})
        for box in bp["boxes"]:
            box.set_facecolor(COLORS.get(name, f"C{j % 10}"))
            box.set_alpha(0.6)
        ax.plot([], [], color=COLORS.get(name, f"C{j % 10}"), linewidth=6, alpha=0.6, label=label(name))
    ax.set_xticks(range(len(its)))
    ax.set_xticklabels([str(t) for t in its])
    ax.set_xlabel("iteration")
    ax.set_ylabel("IoU")
    ax.set_ylim(-0.03, 1.03)
    ax.set_title(title, fontsize=9)
    ax.grid(True, axis="y", alpha=0.3)
    if its:
        ax.legend(fontsize=7)


def figure_7_8(curves, quantiles, title: str, max_boxes: int = 5) -> bytes:
    """Both panels side by side, as PNG bytes (``bbrctl report --figure 7|8``)."""
    from bbrctl.plotting import png_bytes

    fig, (ax1, ax2) = _plt().subplots(1, 2, figsize=(11, 4), dpi=110)
    try:
        draw_error_panel(ax1, curves)
        draw_iou_panel(ax2, quantiles, max_boxes=max_boxes)
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
    except BaseException:
        _plt().close(fig)
        raise
    return png_bytes(fig)


def _trace_curves(traces) -> dict:
    return {name: (list(range(len(tr.error))), list(tr.error)) for name, tr in traces.items()}


def _trace_quantiles(traces) -> dict:
    return {name: {t: tr.record_at(t) for t in tr.record_iterations} for name, tr in traces.items()}


def error_curves(traces, path: Path, title: str) -> None:
    """error_curves.png of a simulation run: panel (a) alone."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    draw_error_panel(ax, _trace_curves(traces), title)
    _save(fig, path)


def iou_boxplots(traces, iterations: list[int], path: Path, title: str) -> None:
    """iou_boxplots.png of a simulation run: panel (b) alone, at ``iterations``."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.2, 4.2))
    draw_iou_panel(ax, _trace_quantiles(traces), iterations, max_boxes=len(iterations), title=title)
    _save(fig, path)


def figure1(cfg, traj, path: Path) -> None:
    """(a) (w, h) paths with the target's (w, h); (b) the boxes at a few iterations."""
    from matplotlib.patches import Rectangle

    plt = _plt()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.6))
    tw, th = cfg.target[2], cfg.target[3]
    k = min(cfg.check_iteration, cfg.iterations)
    for name, rows in traj.items():
        w = [r[3] for r in rows]
        h = [r[4] for r in rows]
        c = COLORS.get(name)
        ax.plot(w, h, color=c, lw=1.6, label=f"{label(name)}: t={k} (w={w[k]:.2f}, h={h[k]:.2f})")
        ax.plot([w[k]], [h[k]], "o", color=c, ms=5)
        for t in sorted({0, k // 2, k, cfg.iterations}):
            x, y, bw, bh = rows[t][1:5]
            bx.add_patch(Rectangle((x - bw / 2, y - bh / 2), bw, bh, fill=False, ec=c, lw=1.0,
                                   alpha=0.35 + 0.65 * t / max(cfg.iterations, 1)))
    ax.plot([cfg.anchor[2]], [cfg.anchor[3]], "ks", ms=6, label=f"anchor (w={cfg.anchor[2]:g}, h={cfg.anchor[3]:g})")
    ax.plot([tw], [th], "k*", ms=12, label=f"target (w={tw:g}, h={th:g})")
    ax.set_xlabel("w")
    ax.set_ylabel("h")
    ax.set_title(f"(w, h) over {cfg.iterations} iterations ({'with' if cfg.scale_step else 'without'} 2 - IoU)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    tx, ty = cfg.target[0], cfg.target[1]
    bx.add_patch(Rectangle((tx - tw / 2, ty - th / 2), tw, th, fill=True, fc="k", alpha=0.25, label="target"))
    bx.autoscale_view()
    bx.set_aspect("equal")
    bx.relim()
    xs = [r[1] - r[3] / 2 for rows in traj.values() for r in rows] + [r[1] + r[3] / 2 for rows in traj.values() for r in rows]
    ys = [r[2] - r[4] / 2 for rows in traj.values() for r in rows] + [r[2] + r[4] / 2 for rows in traj.values() for r in rows]
    pad = 0.3
    bx.set_xlim(min(xs + [tx - tw / 2]) - pad, max(xs + [tx + tw / 2]) + pad)
    bx.set_ylim(min(ys + [ty - th / 2]) - pad, max(ys + [ty + th / 2]) + pad)
    bx.set_title(f"boxes at t = 0, {k // 2}, {k}, {cfg.iterations} (darker = later)")
    bx.grid(alpha=0.3)
    _save(fig, path)


def figure4(curves, path: Path) -> None:
    from bbrctl.simulate.curves import beta_label

    plt = _plt()
    fig, (ax, gx) = plt.subplots(1, 2, figsize=(11, 4.2))
    cmap = plt.get_cmap("viridis")
    betas = list(curves["loss"])
    for i, b in enumerate(betas):
        c = cmap(i / max(len(betas) - 1, 1))
        ax.plot(curves["x"], curves["loss"][b], color=c, label=f"β = {beta_label(b)}")
        gx.plot(curves["x"], curves["grad"][b], color=c, label=f"β = {beta_label(b)}")
    ax.set_title("(a) FocalL1 loss, Eq. 9")
    gx.set_title("(b) its gradient, Eq. 8 (autograd through the library)")
    for a in (ax, gx):
        a.set_xlabel("regression error x")
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    ax.set_ylabel("loss")
    gx.set_ylabel("gradient magnitude")
    _save(fig, path)


def figure5(curves, path: Path) -> None:
    from bbrctl.simulate.curves import beta_label

    plt = _plt()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax.plot(curves["x"], curves["expected"], color="k")
    ax.set_title(r"(a) the expected gradient curve $-x\ln x$")
    for b, ys in curves["family"].items():
        bx.plot(curves["x"], ys, label=f"β = {beta_label(b)}")
    bx.set_title(r"(b) $-x\ln(\beta x)$: β shapes the curve")
    for a in (ax, bx):
        a.set_xlabel("regression error x")
        a.grid(alpha=0.3)
    bx.legend(fontsize=8)
    _save(fig, path)
