"""Setup 1 of the simulation (343,000 pairs, T = 200): the engine against a plain version.

For each loss this times ``bbrctl.simulate.descent.simulate`` (the library loss with its
fused backward, float32, pairs with an exactly zero gradient dropped, quantiles every 5
iterations) next to a straightforward implementation measured in the same run: the
formulas of ``bbrctl.simulate.reference`` differentiated by autograd with (x, y, w, h) as
the leaf, float64, every pair every iteration, exact IoU quantiles every iteration
(torch.quantile). It prints both, their ratio, and how far the two E(t) curves differ.

The plain version is slow, so by default it runs the first ``--baseline-iterations`` (20)
iterations and its time is scaled to T (marked "x T/k" in the output); pass
``--baseline-iterations 200`` to time it in full. Peak memory is the process's max RSS
after the engine part (before the baseline runs).

    python benchmarks/simulate.py [--losses iou,giou,...] [--device cpu|cuda] [--threads N]

Threads default as in `bbrctl simulate`: torch's count less the cores that the load average
says are busy (torch's spinning OpenMP threads are ~100x slower when a core is taken).

Targets (issue 4): all six losses in <= 30 s on a 2-core CPU, peak memory <= 4 GB;
one loss in <= 1 s on a GPU.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time

SIX = "iou,giou,diou,ciou,eiou,focal_eiou"


def plain_run(name, params, anchors, targets, iterations, scale_step, k, weighted):
    """Algorithm 1 written the obvious way; returns (E(t) for t = 0..k, seconds)."""
    import torch

    from bbrctl.simulate import reference as R
    from bbrctl.simulate.protocol import step_size

    loss = R.get_reference_loss(name, **params)
    b = anchors.double().clone()
    tg = targets.double()
    txyxy = torch.cat([tg[:, :2] - tg[:, 2:] / 2, tg[:, :2] + tg[:, 2:] / 2], 1)
    qs = torch.tensor([0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0], dtype=torch.float64)
    n = b.shape[0]
    errors = [float((b - tg).abs().sum())]
    t0 = time.perf_counter()
    for t in range(1, k + 1):
        leaf = b.clone().requires_grad_(True)
        xyxy = torch.cat([leaf[:, :2] - leaf[:, 2:] / 2, leaf[:, :2] + leaf[:, 2:] / 2], 1)
        if weighted:
            total = loss(xyxy, txyxy, reduction="weighted")
        else:
            total = loss(xyxy, txyxy, reduction="none").sum()
        (g,) = torch.autograd.grad(total, leaf)
        if weighted:
            g = g * n
        mu = step_size(t, iterations)
        if scale_step:
            mu = mu * (2 - R.iou(xyxy.detach(), txyxy))[:, None]
        b = b - mu * g
        b[:, 2:] = b[:, 2:].clamp(min=1e-3)
        errors.append(float((b - tg).abs().sum()))
        iou = R.iou(torch.cat([b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2], 1), txyxy)
        torch.quantile(iou, qs)
        iou.mean(), (iou > 0.5).double().mean(), (iou > 0.75).double().mean(), (iou > 0.9).double().mean()
    return errors, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--losses", default=SIX)
    ap.add_argument("--setup", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--baseline-iterations", type=int, default=20, help="0 skips the plain version")
    ap.add_argument("--no-scale-step", action="store_true")
    args = ap.parse_args()

    import torch

    from bbrctl.simulate import descent as E
    from bbrctl.simulate import protocol as P
    from bbrctl.simulate import reference as R

    from bbrctl.simulate.run import set_threads

    set_threads(args.threads)   # default: torch's count less the cores the load average says are busy
    cfg = P.make_config(setup=args.setup, losses=args.losses, scale_step=not args.no_scale_step)
    dev = E.resolve_device(args.device)
    if dev.type == "cuda":  # warm-up: CUDA context and kernels, not part of the timing
        E.simulate(P.with_overrides(cfg, iterations=2, points=10), dev)
    print(f"setup {cfg.setup}: {cfg.n_pairs:,} pairs, T = {cfg.iterations}, device {dev}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}")
    t0 = time.perf_counter()
    traces = E.simulate(cfg, dev)
    engine_total = time.perf_counter() - t0
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20   # KiB on Linux
    anchors, targets = P.build_pairs(P.with_overrides(cfg, dtype="float64"), "cpu")
    k = min(args.baseline_iterations, cfg.iterations)
    print(f"\n{'loss':<12} {'engine s':>9} {'plain s':>10} {'ratio':>7} {'frozen':>8}  "
          f"{'E(T)':>12}  max |ΔE|/E over t <= {k}")
    plain_total = 0.0
    for name, tr in traces.items():
        line = f"{name:<12} {tr.wall_time_s:9.2f}"
        if k > 0:
            if name not in R.REFERENCE:
                line += f" {'(no plain version)':>19}"
            else:
                weighted = name == "focal_eiou" and cfg.focal_reduction == "weighted"
                errs, secs = plain_run(name, cfg.loss_params(name), anchors, targets, cfg.iterations,
                                       cfg.scale_step, k, weighted)
                full = secs * cfg.iterations / k
                plain_total += full
                tag = "" if k == cfg.iterations else f"x{cfg.iterations}/{k}"
                diff = max(abs(a - b) / b for a, b in zip(tr.error[:k + 1], errs))
                line += f" {full:10.2f} {full / tr.wall_time_s:6.1f}x {tr.frozen_pairs:8d}  {tr.error[-1]:12.1f}  " \
                        f"{diff:.1e} {tag}"
        print(line)
    print(f"\nengine, {len(traces)} losses: {engine_total:.1f} s (target <= 30 s on a 2-core CPU; "
          f"<= 1 s per loss on a GPU); peak RSS {peak_gb:.2f} GB (target <= 4 GB)")
    if k > 0 and plain_total:
        print(f"plain version, same losses: {plain_total:.1f} s ({plain_total / engine_total:.1f}x the engine)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
