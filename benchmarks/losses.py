"""Forward+backward time of the IoU-family losses, as ratios against torchvision's CIoU and EIoU.

For N aligned box pairs (default N = 1e3, 1e5, 1e6) it times, in the same run and
interleaved round by round (so load drifting on a shared machine hits all of them
alike), one forward + backward of every bbrctl IoU-family loss, bbrctl's plain-autograd
EIoU, and torchvision's complete_box_iou_loss / generalized_box_iou_loss /
distance_box_iou_loss, on CPU and on CUDA when a GPU is present. It prints the median
milliseconds per call and each loss's ratio to torchvision CIoU (ratio > 1: faster than
torchvision CIoU); on CPU both wall time and the process's CPU time (steadier on a
shared machine). Target: eiou and focal_eiou >= 2x at N = 1e6 on the same device.
The successors (siou ... focaler_iou) also get their time relative to bbrctl's fused EIoU
measured in the same rounds; target: each within 2x of EIoU (ratio column x eiou >= 0.5).
MPDIoU is given the pairs' 1000 px image.

On a GPU it also prints the achieved bandwidth for the minimal traffic of a fused
forward+backward (read pred and target, write the gradient: 48 bytes per pair in float32)
against the device's peak memory bandwidth.

    python benchmarks/losses.py [--sizes 1000,100000,1000000] [--device cpu|cuda|all]
                                [--threads 1] [--rounds R] [--json out.json]

CPU timings use --threads (default 1): on a machine shared with other jobs, multi-threaded
timings of memory-bound kernels mostly measure the other jobs.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

REFERENCE = "tv_ciou"
TARGETS = ("eiou", "focal_eiou")
SUCCESSORS = ("siou", "alpha_iou", "wiou_v1", "wiou_v2", "wiou_v3", "mpdiou", "inner_iou", "shape_iou", "focaler_iou")
IMAGE_SIZE = (1000.0, 1000.0)     # make_pairs draws targets inside a 1000 px image


def make_pairs(n: int, device, dtype, seed: int = 0):
    """Targets anywhere in a 1000 px image; predictions jittered around them (mostly
    overlapping, some disjoint), all valid boxes (torchvision requires x1 <= x2)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 900
    wh = torch.rand(n, 2, generator=g) * 90 + 10
    target = torch.cat([xy, xy + wh], 1)
    cxy = xy + wh / 2 + torch.randn(n, 2, generator=g) * wh / 3
    pwh = wh * torch.exp(torch.randn(n, 2, generator=g) * 0.3)
    pred = torch.cat([cxy - pwh / 2, cxy + pwh / 2], 1)
    return pred.to(device, dtype), target.to(device, dtype)


def candidates():
    import torchvision.ops as tv

    from bbrctl.losses import get_loss
    from bbrctl.losses.boxes import eiou_loss

    out = {}
    for name in ("iou", "giou", "diou", "ciou", "eiou", "focal_eiou", "focal_eiou_v1", "focal_eiou_star"):
        out[name] = get_loss(name)
    out["eiou_autograd"] = lambda p, t: eiou_loss(p, t, impl="autograd")
    for name in SUCCESSORS:
        fn = get_loss(name)
        out[name] = (lambda p, t, _f=fn: _f(p, t, image_size=IMAGE_SIZE)) if name == "mpdiou" else fn
    out["tv_ciou"] = lambda p, t: tv.complete_box_iou_loss(p, t, reduction="mean")
    out["tv_giou"] = lambda p, t: tv.generalized_box_iou_loss(p, t, reduction="mean")
    out["tv_diou"] = lambda p, t: tv.distance_box_iou_loss(p, t, reduction="mean")
    return out


def time_round(fns: dict, pred, target, device) -> dict[str, tuple[float, float]]:
    """One forward+backward of every candidate: (wall seconds, CPU seconds) each.

    On CUDA both are the CUDA-event time. On CPU the second is this process's CPU time
    (user + system, so page faults count), which a shared machine disturbs far less than
    wall time: other jobs delay us but do not add to it.
    """
    import torch

    out = {}
    for name, fn in fns.items():
        x = pred.detach().requires_grad_(True)
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(x, target).backward()
            end.record()
            end.synchronize()
            t = start.elapsed_time(end) / 1e3
            out[name] = (t, t)
        else:
            c0, t0 = time.process_time(), time.perf_counter()
            fn(x, target).backward()
            out[name] = (time.perf_counter() - t0, time.process_time() - c0)
    return out


def peak_bandwidth(device) -> float | None:
    """Peak DRAM bandwidth in bytes/s from the device properties (None if unknown)."""
    import torch

    props = torch.cuda.get_device_properties(device)
    clock_khz = getattr(props, "memory_clock_rate", None)
    bus_bits = getattr(props, "memory_bus_width", None)
    if not clock_khz or not bus_bits:
        return None
    return 2.0 * clock_khz * 1e3 * bus_bits / 8.0  # double data rate


def bench_device(device, sizes, rounds_arg, dtype) -> list[dict]:
    import torch

    fns = candidates()
    rows = []
    for n in sizes:
        pred, target = make_pairs(n, device, dtype)
        rounds = rounds_arg or (25 if n <= 10_000 else 9 if n <= 100_000 else 5)
        for _ in range(2 if n > 100_000 else 3):      # warm-up (allocator, lazy init)
            time_round(fns, pred, target, device)
        wall = {k: [] for k in fns}
        cpu = {k: [] for k in fns}
        for _ in range(rounds):
            for k, (w, c) in time_round(fns, pred, target, device).items():
                wall[k].append(w)
                cpu[k].append(c)
        ref = statistics.median(wall[REFERENCE])
        ref_cpu = statistics.median(cpu[REFERENCE])
        eiou, eiou_cpu = statistics.median(wall["eiou"]), statistics.median(cpu["eiou"])
        for k, ts in wall.items():
            med = statistics.median(ts)
            med_cpu = statistics.median(cpu[k])
            row = {"device": str(device), "n": n, "loss": k, "median_ms": med * 1e3, "min_ms": min(ts) * 1e3,
                   "ratio_vs_tv_ciou": ref / med, "ratio_vs_eiou": eiou / med, "rounds": rounds}
            if device.type == "cpu":
                row.update(cpu_median_ms=med_cpu * 1e3, cpu_ratio_vs_tv_ciou=ref_cpu / med_cpu,
                           cpu_ratio_vs_eiou=eiou_cpu / med_cpu)
            if device.type == "cuda":
                bytes_min = n * 4 * pred.element_size() * 3   # read pred, target; write grad
                row["gbytes_per_s"] = bytes_min / med / 1e9
            rows.append(row)
        del pred, target
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def print_rows(rows, device, peak):
    print(f"\n== {device} ==" + (f"  (peak memory bandwidth {peak / 1e9:.0f} GB/s)" if peak else ""))
    cpu = device.type == "cpu"
    head = f"{'N':>9} {'loss':<16} {'wall med ms':>11} {'wall min ms':>11} {'x tv_ciou':>9} {'x eiou':>7}"
    if cpu:
        head += f" {'cpu med ms':>10} {'x tv_ciou':>9} {'x eiou':>7}"
    if peak is not None or any("gbytes_per_s" in r for r in rows):
        head += f" {'GB/s':>8} {'% peak':>7}"
    print(head)
    for r in rows:
        line = (f"{r['n']:>9} {r['loss']:<16} {r['median_ms']:>11.3f} {r['min_ms']:>11.3f} "
                f"{r['ratio_vs_tv_ciou']:>9.2f} {r['ratio_vs_eiou']:>7.2f}")
        if cpu:
            line += f" {r['cpu_median_ms']:>10.3f} {r['cpu_ratio_vs_tv_ciou']:>9.2f} {r['cpu_ratio_vs_eiou']:>7.2f}"
        if "gbytes_per_s" in r:
            line += f" {r['gbytes_per_s']:>8.1f}"
            line += f" {100 * r['gbytes_per_s'] * 1e9 / peak:>6.1f}%" if peak else "       -"
        print(line)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,100000,1000000", help="comma-separated N")
    ap.add_argument("--device", default="all", choices=("all", "cpu", "cuda"))
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (torch.set_num_threads)")
    ap.add_argument("--rounds", type=int, default=0, help="timed rounds per N (default by N: 25/9/5)")
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = ap.parse_args(argv)
    try:
        sizes = [int(float(s)) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        ap.error(f"--sizes must be comma-separated integers, got {args.sizes!r}")
    if not sizes or min(sizes) < 1:
        ap.error("--sizes needs at least one N >= 1")

    import torch

    torch.set_num_threads(max(1, args.threads))
    dtype = getattr(torch, args.dtype)
    devices = []
    if args.device in ("all", "cpu"):
        devices.append(torch.device("cpu"))
    if args.device in ("all", "cuda"):
        if torch.cuda.is_available():
            devices.append(torch.device("cuda"))
        elif args.device == "cuda":
            ap.error("--device cuda: no CUDA device is available")
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"CPU threads {torch.get_num_threads()}, dtype {args.dtype}, load average {load}")
    t_start = time.perf_counter()
    all_rows = []
    for dev in devices:
        rows = bench_device(dev, sizes, args.rounds, dtype)
        peak = peak_bandwidth(dev) if dev.type == "cuda" else None
        print_rows(rows, dev, peak)
        all_rows += rows
        nmax = max(sizes)
        for name in TARGETS:
            r = next(r for r in rows if r["n"] == nmax and r["loss"] == name)
            verdict = "OK" if r["ratio_vs_tv_ciou"] >= 2.0 else "MISSED"
            extra = f", {r['cpu_ratio_vs_tv_ciou']:.2f}x in CPU time" if "cpu_ratio_vs_tv_ciou" in r else ""
            print(f"{dev}: {name} at N={nmax}: {r['ratio_vs_tv_ciou']:.2f}x torchvision CIoU in wall time{extra} "
                  f"(target >= 2x): {verdict}")
        for name in SUCCESSORS:
            r = next(r for r in rows if r["n"] == nmax and r["loss"] == name)
            slower = 1.0 / r["ratio_vs_eiou"]
            verdict = "OK" if slower <= 2.0 else "MISSED"
            extra = f", {1.0 / r['cpu_ratio_vs_eiou']:.2f}x in CPU time" if "cpu_ratio_vs_eiou" in r else ""
            print(f"{dev}: {name} at N={nmax}: {slower:.2f}x EIoU's time in wall time{extra} "
                  f"(target <= 2x): {verdict}")
    print(f"\nwall time {time.perf_counter() - t_start:.1f} s; load average at end "
          f"{os.getloadavg() if hasattr(os, 'getloadavg') else None}")
    if args.json:
        from bbrctl.store import atomic_write_json

        atomic_write_json(args.json, {"torch": torch.__version__, "threads": torch.get_num_threads(),
                                      "dtype": args.dtype, "load_before": load, "rows": all_rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
