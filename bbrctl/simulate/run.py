"""`bbrctl simulate` end to end: validate, simulate (with a progress bar), write, summarise.

The CLI module only parses options and calls ``run_setup`` or ``run_figure``.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any, Optional

from bbrctl.errors import UserError
from bbrctl.simulate import output as O
from bbrctl.simulate.protocol import SimConfig, boxplot_iterations

FIGURES = (1, 4, 5)


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr)


def _progress(console):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("[bold]{task.description:<16}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("iterations"), TimeElapsedColumn(), console=console, transient=False)


def auto_threads(default: int) -> int:
    """torch's thread count, less the cores other processes are keeping busy.

    torch's OpenMP workers spin while they wait for each other; when another process holds
    one of the cores they wait for a descheduled thread. On the 2-core test machine, with
    one busy process beside it, the EIoU forward+backward on 343,000 pairs took 5.6 s with
    2 threads against 0.04-0.09 s with 1. The 1-minute load average is a lagging but cheap
    estimate of the busy cores.
    """
    try:
        busy = int(os.getloadavg()[0] + 0.5)
    except OSError:  # pragma: no cover - no load average on this platform
        return default
    cores = os.cpu_count() or default
    return max(1, min(default, cores - busy))


def set_threads(threads: Optional[int]) -> int:
    """Apply --threads (or auto_threads when not given); returns the count in use."""
    if threads is not None and threads < 1:
        raise UserError(f"--threads must be an integer >= 1, got {threads}")
    import torch

    n = threads if threads is not None else auto_threads(torch.get_num_threads())
    torch.set_num_threads(n)
    return n


# --------------------------------------------------------------------------------------
# Setups 1 and 2 (Figures 7 and 8)
# --------------------------------------------------------------------------------------

def simulate_with_progress(cfg: SimConfig, device, *, show_progress: bool = True, loss_factory=None):
    from bbrctl.simulate.descent import default_loss_factory, simulate

    factory = loss_factory or default_loss_factory
    if not show_progress:
        return simulate(cfg, device, loss_factory=factory)
    with _progress(_console(stderr=True)) as bar:
        tasks = {n: bar.add_task(n, total=cfg.iterations) for n in cfg.losses}

        def tick(name, t):
            # Update the bar every few iterations only: rich's refresh is not free.
            if t % 5 == 0 or t == cfg.iterations:
                bar.update(tasks[name], completed=t)

        return simulate(cfg, device, loss_factory=factory, progress=tick)


def summary_dict(cfg: SimConfig, traces, device, wall: float) -> dict[str, Any]:
    import torch

    return {
        "setup": cfg.setup,
        "config": cfg.to_dict(),
        "signature": cfg.signature(),
        "pairs": cfg.n_pairs,
        "losses": {name: tr.summary() for name, tr in traces.items()},
        "frozen_pairs": {name: tr.frozen_pairs for name, tr in traces.items()},
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "host": platform.node(),
        "wall_time_s": wall,
        "created": time.time(),
    }


def write_setup(run_dir: Path, cfg: SimConfig, traces, summary: dict, *, plots: bool, force: bool) -> Path:
    with O.staged(run_dir, force=force) as tmp:
        O.write_error_csv(tmp / O.ERROR_CSV, traces)
        O.write_quantile_csv(tmp / O.QUANTILE_CSV, traces)
        if plots:
            from bbrctl.simulate import figures

            what = "mostly low-quality anchors" if cfg.setup == 1 else "mostly overlapping anchors"
            figures.error_curves(traces, tmp / "error_curves.png",
                                 f"Setup {cfg.setup} ({cfg.n_pairs:,} pairs, {what})")
            figures.iou_boxplots(traces, boxplot_iterations(cfg.iterations), tmp / "iou_boxplots.png",
                                 f"Setup {cfg.setup}: IoU of all pairs")
        O.write_json(tmp / O.SUMMARY, summary)   # last: its presence marks a complete run
    return run_dir


def run_setup(cfg: SimConfig, *, device: str = "auto", out: Optional[str] = None, force: bool = False,
              plots: bool = True, show_progress: bool = True, runs_root: str = "runs",
              loss_factory=None) -> tuple[Path, dict, bool]:
    """Simulate ``cfg`` and write its run directory; returns (dir, summary, reused)."""
    from bbrctl.simulate.descent import resolve_device

    run_dir = Path(out) if out else O.default_run_dir(f"setup{cfg.setup}", cfg.signature(), runs_root)
    if O.check_destination(run_dir, explicit=bool(out), force=force):
        summary = O.read_json(run_dir / O.SUMMARY)
        if isinstance(summary, dict):
            return run_dir, summary, True
    dev = resolve_device(device)
    if plots:
        _check_matplotlib()
    t0 = time.perf_counter()
    traces = simulate_with_progress(cfg, dev, show_progress=show_progress, loss_factory=loss_factory)
    summary = summary_dict(cfg, traces, dev, time.perf_counter() - t0)
    write_setup(run_dir, cfg, traces, summary, plots=plots, force=force)
    return run_dir, summary, False


def _check_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:  # pragma: no cover - a declared dependency
        raise UserError("plots need matplotlib (pip install matplotlib), or pass --no-plots") from None


def _num(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.2f}"


def summary_table(summary: dict, title: str):
    """One screen: E(T), E(T)/E(0) and the IoU statistics per loss; best values in bold."""
    from rich import box
    from rich.table import Table

    from bbrctl.simulate.figures import label

    t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for col in ("loss", "E(T)", "E(T)/E0", "meanIoU", "median", ">0.5", ">0.75", ">0.9", "s"):
        t.add_column(col, justify="left" if col == "loss" else "right", no_wrap=True)
    blocks = summary["losses"]
    order = [n for n in summary.get("config", {}).get("losses", []) if n in blocks]  # run order, not sorted keys
    order += [n for n in blocks if n not in order]
    best_e = min(b["final_error"] for b in blocks.values())
    best_iou = max(b["mean_iou"] for b in blocks.values())
    for name in order:
        b = blocks[name]
        e, m = _num(b["final_error"]), f"{b['mean_iou']:.3f}"
        t.add_row(label(name),
                  f"[bold green]{e}[/]" if b["final_error"] == best_e else e,
                  f"{b['final_error'] / b['initial_error']:.4f}" if b["initial_error"] else "-",
                  f"[bold green]{m}[/]" if b["mean_iou"] == best_iou else m,
                  f"{b['median_iou']:.3f}", f"{b['frac_iou_gt_0.5']:.3f}", f"{b['frac_iou_gt_0.75']:.3f}",
                  f"{b['frac_iou_gt_0.9']:.3f}", f"{b['wall_time_s']:.1f}")
    return t


def print_setup(run_dir: Path, summary: dict, reused: bool) -> None:
    c = _console()
    cfg = summary["config"]
    rule = "µ·(2 − IoU)" if cfg.get("scale_step") else "µ"
    e0 = next(iter(summary["losses"].values()))["initial_error"]
    title = (f"Setup {summary['setup']}: {summary['pairs']:,} pairs, E(0) = {_num(e0)}, T = {cfg['iterations']}, "
             f"step {rule}, target area {cfg['target_area']:g}, seed {cfg['seed']}, γ = {cfg['gamma']:g}")
    c.print(summary_table(summary, title))
    verb = "already simulated (same settings); reused" if reused else "wrote"
    c.print(f"{verb} {run_dir}  ({summary.get('device', '?')}, {summary.get('wall_time_s', 0):.1f} s)")


# --------------------------------------------------------------------------------------
# Figures 1, 4, 5
# --------------------------------------------------------------------------------------

def run_figure(number: int, *, single_cfg=None, out: Optional[str] = None, force: bool = False,
               plots: bool = True, runs_root: str = "runs") -> tuple[Path, dict, bool]:
    """Render Figure 1, 4 or 5 into a run directory; returns (dir, figure.json, reused)."""
    import hashlib
    import json

    from bbrctl.simulate import curves
    from bbrctl.simulate import single as S

    if number not in FIGURES:
        raise UserError(f"--figure {number} is not simulated here; valid: {', '.join(map(str, FIGURES))} "
                        f"(Figures 7-9 come from `bbrctl simulate --setup 1|2` and `bbrctl report`)")
    if number == 1:
        cfg = single_cfg or S.make_single_config()
        meta_cfg = cfg.to_dict()
    else:
        betas = curves.FIG4_BETAS if number == 4 else curves.FIG5_BETAS
        meta_cfg = {"betas": list(betas)}
    sig = hashlib.sha256(json.dumps({"figure": number, **meta_cfg}, sort_keys=True).encode()).hexdigest()[:10]
    run_dir = Path(out) if out else O.default_run_dir(f"figure{number}", sig, runs_root)
    if O.check_destination(run_dir, explicit=bool(out), force=force):
        meta = O.read_json(run_dir / "figure.json")
        if isinstance(meta, dict):
            return run_dir, meta, True
    if plots:
        _check_matplotlib()
    from bbrctl.simulate import figures

    meta: dict[str, Any] = {"figure": number, "config": meta_cfg, "signature": sig, "created": time.time()}
    if number == 1:
        traj = S.trajectories(cfg)
        meta["boxes"] = S.checkpoints(cfg, traj)
        meta["paper_ciou_at_50"] = S.PAPER_CIOU_AT_50
        rows = [(name, *r) for name, rs in traj.items() for r in rs]
        with O.staged(run_dir, force=force) as tmp:
            O.write_rows_csv(tmp / "figure1.csv", ["loss", "iteration", "x", "y", "w", "h", "iou"], rows)
            if plots:
                figures.figure1(cfg, traj, tmp / "figure1.png")
            O.write_json(tmp / "figure.json", meta)
    elif number == 4:
        data = curves.focal_l1_curves(curves.FIG4_BETAS)
        labels = [curves.beta_label(b) for b in data["loss"]]
        header = ["x", *(f"loss_beta_{lb}" for lb in labels), *(f"grad_beta_{lb}" for lb in labels)]
        rows = [[x, *(data["loss"][b][i] for b in data["loss"]), *(data["grad"][b][i] for b in data["grad"])]
                for i, x in enumerate(data["x"])]
        meta["peak_gradient"] = {curves.beta_label(b): max(g) for b, g in data["grad"].items()}
        with O.staged(run_dir, force=force) as tmp:
            O.write_rows_csv(tmp / "figure4.csv", header, rows)
            if plots:
                figures.figure4(data, tmp / "figure4.png")
            O.write_json(tmp / "figure.json", meta)
    else:
        data = curves.figure5_curves(curves.FIG5_BETAS)
        labels = [curves.beta_label(b) for b in data["family"]]
        header = ["x", "minus_x_ln_x", *(f"minus_x_ln_beta_x_{lb}" for lb in labels)]
        rows = [[x, data["expected"][i], *(data["family"][b][i] for b in data["family"])]
                for i, x in enumerate(data["x"])]
        with O.staged(run_dir, force=force) as tmp:
            O.write_rows_csv(tmp / "figure5.csv", header, rows)
            if plots:
                figures.figure5(data, tmp / "figure5.png")
            O.write_json(tmp / "figure.json", meta)
    return run_dir, meta, False


def print_figure(run_dir: Path, meta: dict, reused: bool) -> None:
    from rich.table import Table

    from bbrctl.simulate.figures import label

    c = _console()
    if meta.get("figure") == 1:
        cfg = meta["config"]
        k = min(cfg["check_iteration"], cfg["iterations"])
        t = Table(title=f"Figure 1: anchor {tuple(cfg['anchor'])} -> target {tuple(cfg['target'])} "
                        f"(x, y, w, h), step {'µ·(2 − IoU)' if cfg['scale_step'] else 'µ'}", title_justify="left")
        for col in ("loss", f"w @ {k}", f"h @ {k}", f"w @ {cfg['iterations']}", f"h @ {cfg['iterations']}",
                    f"IoU @ {cfg['iterations']}"):
            t.add_column(col, justify="left" if col == "loss" else "right")
        for name, b in meta["boxes"].items():
            t.add_row(label(name), f"{b['at_check']['w']:.3f}", f"{b['at_check']['h']:.3f}",
                      f"{b['final']['w']:.3f}", f"{b['final']['h']:.3f}", f"{b['final']['iou']:.3f}")
        c.print(t)
        p = meta["paper_ciou_at_50"]
        c.print(f"paper (Sec. 3.1.3): CIoU reaches w = {p['w']}, h = {p['h']} after 50 iterations")
    elif meta.get("figure") == 4:
        peaks = ", ".join(f"β={k}: {v:.4f}" for k, v in meta["peak_gradient"].items())
        c.print(f"Figure 4: FocalL1 gradient peaks (should all be 1, Eq. 8 with α = eβ): {peaks}")
    verb = "already rendered (same settings); reused" if reused else "wrote"
    c.print(f"{verb} {run_dir}")
