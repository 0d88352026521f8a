"""One GPU check that fits in minutes: loss kernels against memory bandwidth, AMP training
throughput, the simulation, and peak memory of each. Runs on a CPU too (CUDA parts skipped).

On one H100/H200 (budget: 8 minutes, ``--budget``) it prints:

1. **Loss kernels**: forward + backward of bbrctl's EIoU and Focal-EIoU and torchvision's
   CIoU at N = 1e6 and 1e7 box pairs (float32), median time, and the achieved bandwidth
   for the minimal traffic of a fused forward + backward (read pred and target, write the
   gradient: 48 bytes a pair) against the device's peak memory bandwidth (the name table
   below, else the memory clock and bus width torch reports) and against a copy kernel
   measured in the same run (``dst.copy_(src)`` of 1 GiB: what the device really moves).
   Target: >= 50% of peak at 1e7 pairs.
2. **Training**: AMP (fp16 autocast) training images/s of RetinaNet ResNet-50-FPN at 800x1333
   (the COCO-sized generated set, data=shapes_coco, resized as COCO is), batch 4, stock
   loss against Focal-EIoU, same weights and batches, interleaved. Target: ratio >= 0.97.
3. **Simulation**: setup 1 of Sec. 5.1 (343,000 pairs, 200 iterations) for all six losses,
   seconds each. Target: <= 1 s per loss.
4. **Peak memory** of each part (torch.cuda.max_memory_allocated; on a CPU the process's
   peak RSS).

On a CPU, part 1 runs (the copy kernel is the reference; there is no peak to compare
with) and parts 2-3 print "unmeasured (no CUDA device)"; about a minute on a 2-core
machine (``--quick``: seconds, for CI).

    python benchmarks/gpu_check.py                 # on the GPU machine; --json out.json
    python benchmarks/gpu_check.py --quick         # CPU smoke run (tests/test_benchmarks.py)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Peak DRAM bandwidth, bytes/s, by device name (vendor data sheets), most specific first.
PEAK_BANDWIDTH = (
    ("H200", 4.8e12), ("GH200", 4.0e12), ("H100 NVL", 3.9e12), ("H100 PCIe", 2.0e12), ("H100", 3.35e12),
    ("H800", 3.35e12), ("A100-SXM4-80GB", 2.039e12), ("A100 80GB PCIe", 1.935e12), ("A100", 1.555e12),
    ("L40S", 0.864e12), ("L40", 0.864e12), ("L4", 0.3e12), ("A10G", 0.6e12), ("A10", 0.6e12),
    ("V100", 0.9e12), ("RTX 4090", 1.008e12), ("RTX 3090", 0.936e12),
)
LOSSES = ("eiou", "focal_eiou", "tv_ciou")
BYTES_PER_PAIR = 48      # fp32: read pred (16) and target (16), write the gradient (16)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1e6,1e7", help="box pairs for the loss kernels (default 1e6,1e7)")
    p.add_argument("--budget", type=float, default=480.0, help="seconds; later parts are skipped past it")
    p.add_argument("--train-steps", type=int, default=60, help="timed training steps per variant (CUDA)")
    p.add_argument("--quick", action="store_true", help="CPU smoke run: N = 1e4, 1e5; a few seconds")
    p.add_argument("--cpu", action="store_true", help="ignore CUDA even when present")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads (default 1: on a shared machine, torch's spinning OpenMP threads measure the "
                        "other jobs)")
    p.add_argument("--json", default=None)
    return p.parse_args(argv)


def peak_bandwidth(torch, device) -> tuple[float | None, str]:
    name = torch.cuda.get_device_name(device)
    for key, bw in PEAK_BANDWIDTH:
        if key.lower() in name.lower():
            return bw, f"{name}: data sheet"
    props = torch.cuda.get_device_properties(device)
    clock, bus = getattr(props, "memory_clock_rate", None), getattr(props, "memory_bus_width", None)
    if clock and bus:
        return 2.0 * clock * 1e3 * bus / 8.0, f"{name}: memory clock x bus width"
    return None, f"{name}: unknown"


class Memory:
    """Peak memory of one part: CUDA allocator peak, or the process's peak RSS on a CPU."""

    def __init__(self, torch, cuda: bool):
        self.torch, self.cuda = torch, cuda

    def __enter__(self):
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.empty_cache()
            self.torch.cuda.reset_peak_memory_stats()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            self.torch.cuda.synchronize()
            self.peak = self.torch.cuda.max_memory_allocated()
        else:
            self.peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024    # KiB on Linux
        return False

    @property
    def text(self) -> str:
        return f"{self.peak / 2 ** 30:.2f} GiB" + ("" if self.cuda else " (process peak RSS)")


def timer(torch, cuda: bool, fn, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        if cuda:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            out.append(a.elapsed_time(b) / 1e3)
        else:
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
    return out


def copy_bandwidth(torch, device, cuda: bool, nbytes: int) -> float:
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    dst.copy_(src)
    ts = timer(torch, cuda, lambda: dst.copy_(src), 5 if cuda else 3)
    del src, dst
    return 2 * nbytes / min(ts)           # read + write


def loss_part(torch, device, cuda: bool, sizes: list[int], peak: float | None, copy_bw: float) -> list[dict]:
    import torchvision.ops as tv

    from losses import make_pairs          # benchmarks/losses.py: the same pairs as its timings
    from bbrctl.losses import get_loss

    fns = {"eiou": get_loss("eiou"), "focal_eiou": get_loss("focal_eiou", gamma=0.5),
           "tv_ciou": lambda p, t: tv.complete_box_iou_loss(p, t, reduction="mean")}
    rows = []
    for n in sizes:
        pred, target = make_pairs(n, device, torch.float32)
        for name, fn in fns.items():
            def step():
                x = pred.detach().requires_grad_(True)
                fn(x, target).backward()
            with Memory(torch, cuda) as mem:
                step()                                              # warm-up
                ts = timer(torch, cuda, step, 10 if cuda else (3 if n >= 10 ** 7 else 5))
            med = statistics.median(ts)
            bw = BYTES_PER_PAIR * n / med
            row = {"loss": name, "n": n, "median_ms": med * 1e3, "bytes_per_s": bw, "vs_copy": bw / copy_bw,
                   "vs_peak": bw / peak if peak else None, "peak_memory_bytes": mem.peak}
            rows.append(row)
            print(f"  {name:<11} N={n:>9,}  {med * 1e3:9.2f} ms  {bw / 1e9:8.1f} GB/s  "
                  f"{100 * row['vs_copy']:5.1f}% of copy" + (f"  {100 * row['vs_peak']:5.1f}% of peak" if peak else "")
                  + f"  peak memory {mem.text}", flush=True)
        del pred, target
        if cuda:
            torch.cuda.empty_cache()
    return rows


def train_part(torch, device, steps: int, budget_end: float) -> dict:
    import copy

    from bbrctl.config import compose, to_container
    from bbrctl.detection.data.datasets import build_dataset, collate, ensure_dataset
    from bbrctl.detection.models.heads import install_bbr_loss
    from bbrctl.detection.models.build import build_model

    ovs = ["data=shapes_coco", "data.num_train=32", "data.num_val=4", "backbone=resnet50", "model=retinanet"]
    cfg = to_container(compose(ovs))
    ensure_dataset(cfg["data"])
    ds = build_dataset(cfg["data"], "train")
    batch = 4
    # Two batches of landscape images (as grouped batching would give), on the device.
    land = [i for i in range(len(ds)) if ds.image_info(i)["width"] > ds.image_info(i)["height"]][:2 * batch]
    batches = []
    for k in range(0, len(land) - batch + 1, batch):
        images, targets = collate([ds[i] for i in land[k:k + batch]])
        batches.append(([im.to(device) for im in images],
                        [{k2: v.to(device) for k2, v in t.items() if torch.is_tensor(v)} for t in targets]))
    torch.manual_seed(0)
    base = build_model(cfg, 5, install_loss=False).to(device)
    variants = {"stock": install_bbr_loss(copy.deepcopy(base), "baseline"),
                "focal_eiou": install_bbr_loss(copy.deepcopy(base), "focal_eiou", {"gamma": 0.5}, 2.5)}
    del base
    opts = {k: torch.optim.SGD(m.parameters(), lr=1e-4, momentum=0.9) for k, m in variants.items()}
    scalers = {k: torch.amp.GradScaler("cuda") for k in variants}
    count = {k: 0 for k in variants}

    def run(k, n):
        m = variants[k].train()
        for _ in range(n):
            images, targets = batches[count[k] % len(batches)]
            count[k] += 1
            with torch.autocast("cuda", dtype=torch.float16):
                loss = sum(m(images, targets).values())
            opts[k].zero_grad(set_to_none=True)
            scalers[k].scale(loss).backward()
            scalers[k].step(opts[k])
            scalers[k].update()

    mems = {}
    for k in variants:                                      # warm-up (cuDNN autotuning, allocator)
        with Memory(torch, True) as mem:
            run(k, 10)
        mems[k] = mem.peak
    chunk = 10
    rates = {k: [] for k in variants}
    order = list(variants)
    r = 0
    while r < max(2, steps // chunk * 2) and time.monotonic() < budget_end:
        for k in (order if r % 2 == 0 else order[::-1]):
            t = timer(torch, True, lambda: run(k, chunk), 1)[0]
            rates[k].append(chunk * batch / t)
        r += 1
    ratio = statistics.median(f / s for f, s in zip(rates["focal_eiou"], rates["stock"]))
    out = {"stock_img_s": statistics.median(rates["stock"]), "focal_eiou_img_s": statistics.median(rates["focal_eiou"]),
           "ratio": ratio, "pairs": len(rates["stock"]), "peak_memory_bytes": mems, "batch": batch,
           "image_sizes": sorted({(ds.image_info(i)["width"], ds.image_info(i)["height"]) for i in land})}
    print(f"  stock {out['stock_img_s']:.1f} images/s, Focal-EIoU {out['focal_eiou_img_s']:.1f} images/s: ratio "
          f"{ratio:.3f} (target >= 0.97: {'met' if ratio >= 0.97 else 'NOT met'}); peak memory "
          f"{mems['stock'] / 2 ** 30:.2f} / {mems['focal_eiou'] / 2 ** 30:.2f} GiB", flush=True)
    return out


def simulate_part(torch, device) -> dict:
    from bbrctl.simulate import descent as E
    from bbrctl.simulate import protocol as P

    cfg = P.make_config(setup=1, losses="iou,giou,diou,ciou,eiou,focal_eiou")
    E.simulate(P.with_overrides(cfg, iterations=2, points=10), device)      # warm-up: context and kernels
    with Memory(torch, True) as mem:
        traces = E.simulate(cfg, device)
    secs = {k: tr.wall_time_s for k, tr in traces.items()}
    worst = max(secs.values())
    print("  " + ", ".join(f"{k} {v:.2f} s" for k, v in secs.items()) + f"; worst {worst:.2f} s "
          f"(target <= 1 s per loss: {'met' if worst <= 1.0 else 'NOT met'}); peak memory {mem.text}", flush=True)
    return {"seconds": secs, "peak_memory_bytes": mem.peak}


def main(argv=None) -> int:
    a = parse(argv)
    t_start = time.monotonic()
    budget_end = t_start + a.budget
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))       # for benchmarks/losses.py

    cuda = torch.cuda.is_available() and not a.cpu
    device = torch.device("cuda" if cuda else "cpu")
    torch.set_num_threads(max(1, a.threads))
    sizes = [10 ** 4, 10 ** 5] if a.quick else [int(float(s)) for s in a.sizes.split(",")]
    report: dict = {"device": str(device), "torch": torch.__version__, "cpus": os.cpu_count(),
                    "load_average": os.getloadavg()[0], "quick": a.quick}
    if cuda:
        peak, source = peak_bandwidth(torch, device)
        print(f"device {torch.cuda.get_device_name(device)}, torch {torch.__version__}, CUDA {torch.version.cuda}; "
              f"peak memory bandwidth {peak / 1e9:.0f} GB/s ({source})" if peak else f"peak bandwidth unknown ({source})")
    else:
        peak, source = None, "no CUDA device"
        print(f"device CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
              f"{torch.get_num_threads()}), torch {torch.__version__}; no CUDA device: the CUDA parts are skipped; "
              f"load average {report['load_average']:.2f}")
    report["peak_bandwidth"] = peak
    copy_bw = copy_bandwidth(torch, device, cuda, (1 << 30) if cuda else (1 << 26 if a.quick else 1 << 28))
    report["copy_bytes_per_s"] = copy_bw
    print(f"\n1. loss forward+backward, fp32 ({BYTES_PER_PAIR} bytes/pair minimal traffic); copy kernel "
          f"{copy_bw / 1e9:.1f} GB/s" + (f" = {100 * copy_bw / peak:.0f}% of peak" if peak else ""), flush=True)
    report["losses"] = loss_part(torch, device, cuda, sizes, peak, copy_bw)
    if peak:
        for r in report["losses"]:
            if r["n"] == max(sizes) and r["loss"] != "tv_ciou":
                print(f"  {r['loss']} at N={r['n']:,}: {100 * r['vs_peak']:.1f}% of peak bandwidth (target >= 50%): "
                      f"{'met' if r['vs_peak'] >= 0.5 else 'NOT met'}")
    else:
        print("  % of peak bandwidth at 1e7 pairs: unmeasured (no CUDA device)")

    print("\n2. AMP training, RetinaNet ResNet-50-FPN 800x1333, batch 4, stock vs Focal-EIoU", flush=True)
    if not cuda:
        print("  unmeasured (no CUDA device)")
        report["train"] = None
    elif time.monotonic() > budget_end:
        print("  skipped: past --budget")
        report["train"] = None
    else:
        report["train"] = train_part(torch, device, a.train_steps, budget_end - 60)

    print("\n3. simulate setup 1, six losses, on the GPU", flush=True)
    if not cuda:
        print("  unmeasured (no CUDA device; benchmarks/simulate.py times the CPU)")
        report["simulate"] = None
    elif time.monotonic() > budget_end:
        print("  skipped: past --budget")
        report["simulate"] = None
    else:
        report["simulate"] = simulate_part(torch, device)
    report["wall_s"] = time.monotonic() - t_start
    print(f"\ntotal {report['wall_s']:.0f} s; load average {os.getloadavg()[0]:.2f}")
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
