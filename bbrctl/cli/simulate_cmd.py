"""`bbrctl simulate`: the paper's simulation experiments (logic in bbrctl.simulate)."""

from __future__ import annotations

from typing import Optional

import typer

from bbrctl.cli.app import app
from bbrctl.cli.common import RunsRootOpt
from bbrctl.errors import UserError
from bbrctl.store.root import runs_root as resolve_runs_root

_DEFAULT_LOSSES = "iou,giou,diou,ciou,eiou,focal_eiou"


@app.command("simulate")
def simulate_command(
    setup: Optional[int] = typer.Option(None, "--setup", help="1: 343,000 mostly disjoint pairs (Fig. 7); 2: 2,700 mostly overlapping pairs (Fig. 8). Default 1."),
    figure: Optional[int] = typer.Option(None, "--figure", help="Render Figure 1 (one anchor, w/h trajectories), 4 (FocalL1 loss/gradient) or 5 instead of a setup."),
    losses: Optional[str] = typer.Option(None, "--losses", help=f"Comma list of IoU-family losses \\[default: {_DEFAULT_LOSSES}; figure 1: giou,ciou,eiou]; also focal_eiou_v1, focal_eiou_star, or a user loss on boxes (docs/own-loss.md)."),
    gamma: float = typer.Option(0.5, "--gamma", help="Focal-EIoU / Focal-EIoU* γ (Eq. 10)."),
    beta: float = typer.Option(0.8, "--beta", help="Focal-EIoU v1 β (Eq. 9), in [1/e, 1]."),
    iterations: int = typer.Option(200, "--iterations", "-T", help="T; µ = 0.1 up to 0.8T, 0.01 up to 0.9T, then 0.001."),
    points: Optional[int] = typer.Option(None, "--points", help="Anchor centres N \\[default: the paper's 1000 (setup 1) / 100 (setup 2)]."),
    seed: int = typer.Option(0, "--seed", help="Seed of the anchor centres; the same seed gives the same numbers on the same device."),
    target_area: float = typer.Option(1.0, "--target-area", help="Area of scale 100 (the target); 1 as in the DIoU simulation, 100 for the other reading."),
    scale_step: bool = typer.Option(True, "--scale-step/--no-scale-step", help="Multiply the step by (2 − IoU), as the DIoU/CIoU reference code (and the paper's Figure 1) do; --no-scale-step is Algorithm 1 as printed."),
    focal_reduction: str = typer.Option("weighted", "--focal-reduction", help="weighted: Eq. 11 over all pairs; none: per-pair IoU^γ·EIoU."),
    dtype: str = typer.Option("float32", "--dtype", help="float32 or float64."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda, cuda:N or auto (CUDA when available)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads \\[default: torch's, less the cores the load average says are busy]."),
    anchor: Optional[str] = typer.Option(None, "--anchor", help="Figure 1 anchor x,y,w,h relative to the 1×1 target at the origin \\[default: 4,2,1,2.4]."),
    quantile_every: int = typer.Option(5, "--quantile-every", help="Record exact IoU quantiles every k iterations (plus the box-plot ones)."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Run directory \\[default: \\<setupN>-\\<signature> or \\<figureN>-\\<signature> in \\<runs root>/simulate/]."),
    force: bool = typer.Option(False, "--force", help="Replace an existing run directory (only one bbrctl simulate wrote)."),
    runs_root: Optional[str] = RunsRootOpt,
    no_plots: bool = typer.Option(False, "--no-plots", help="Write the CSV and JSON only."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Regress anchors to targets by gradient descent on each loss (Sec. 5.1, Algorithm 1).

    Writes error_curves.csv, iou_quantiles.csv, summary.json and PNG figures (Figures 7/8)
    into a run directory and prints a summary table. `--figure 1|4|5` renders those figures.
    Example: bbrctl simulate --setup 2 --losses eiou,focal_eiou --gamma 0.5
    """
    from bbrctl.simulate import run as R

    if setup is not None and figure is not None:
        raise UserError("give --setup N or --figure N, not both")
    if figure is not None:
        if figure not in R.FIGURES:
            raise UserError(f"--figure {figure} is not simulated here; valid: 1, 4, 5 "
                            f"(Figures 7 and 8 are --setup 1 and --setup 2)")
        single = None
        if figure == 1:
            from bbrctl.simulate.single import make_single_config

            single = make_single_config(anchor=anchor, losses=losses, iterations=iterations, scale_step=scale_step)
        elif anchor is not None or losses is not None:
            raise UserError(f"--anchor and --losses do not apply to --figure {figure}")
        run_dir, meta, reused = R.run_figure(figure, single_cfg=single, out=out, force=force, plots=not no_plots,
                                            runs_root=resolve_runs_root(runs_root))
        R.print_figure(run_dir, meta, reused)
        return

    from bbrctl.simulate.protocol import make_config

    if anchor is not None:
        raise UserError("--anchor applies to --figure 1 only")
    cfg = make_config(setup=1 if setup is None else setup, losses=losses, gamma=gamma, beta=beta,
                      iterations=iterations, points=points, seed=seed, target_area=target_area,
                      scale_step=scale_step, focal_reduction=focal_reduction, dtype=dtype,
                      quantile_every=quantile_every)
    R.set_threads(threads)
    run_dir, summary, reused = R.run_setup(cfg, device=device, out=out, force=force, plots=not no_plots,
                                           show_progress=not quiet, runs_root=resolve_runs_root(runs_root))
    R.print_setup(run_dir, summary, reused)
