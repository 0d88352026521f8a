"""PNG figures (matplotlib, Agg backend, imported only here and only when plotting).

* ``error_curves``  Figure 7(a)/8(a): E(t) of every loss on one axis.
* ``iou_boxplots``  Figure 7(b)/8(b): per loss, IoU box plots at a few iterations. Boxes
  are drawn from the recorded quantiles (box q25-q75, line median, whiskers q05-q95,
  dots min and max, diamond mean), since the per-pair IoUs are not kept.
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
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    """Render to memory, then write atomically."""
    import io

    from bbrctl.store import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def label(name: str) -> str:
    return LABELS.get(name, name)


def error_curves(traces, path: Path, title: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, tr in traces.items():
        ax.plot(range(len(tr.error)), tr.error, label=label(name), color=COLORS.get(name), lw=1.6)
    ax.set_xlabel("iteration t")
    ax.set_ylabel(r"regression error $E(t)=\sum\|B_t-B^{gt}\|_1$")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)
    plt.close(fig)


def iou_boxplots(traces, iterations: list[int], path: Path, title: str) -> None:
    plt = _plt()
    n = len(traces)
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False, sharey=True)
    for ax, (name, tr) in zip(axes.flat, traces.items()):
        its = [t for t in iterations if t in tr.record_iterations]
        stats = []
        for t in its:
            r = tr.record_at(t)
            stats.append({"med": r["q50"], "q1": r["q25"], "q3": r["q75"], "whislo": r["q05"], "whishi": r["q95"],
                          "fliers": [r["q0"], r["q100"]], "mean": r["mean"], "label": str(t)})
        ax.bxp(stats, showmeans=True, showfliers=True, patch_artist=True,
               boxprops={"facecolor": COLORS.get(name, "#cccccc"), "alpha": 0.55},
               meanprops={"marker": "D", "markerfacecolor": "k", "markersize": 4},
               flierprops={"marker": ".", "markersize": 4})
        ax.set_title(label(name), fontsize=10)
        ax.set_xlabel("iteration")
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3, axis="y")
    for ax in axes[:, 0]:
        ax.set_ylabel("IoU")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


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
    plt.close(fig)


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
    plt.close(fig)


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
    plt.close(fig)
