"""Training throughput (images/s) of each detector with its stock loss and with Focal-EIoU.

Both variants of a model start from the same weights and train on the same batches; their
timings are interleaved in short chunks (A B B A ...) so that load on a shared machine and
order effects hit both alike, and the ratio focal_eiou / stock is the median of the
per-pair ratios.
Target: Focal-EIoU costs <= 3% throughput (ratio >= 0.97).

For ATSS, PAA and DETR it also reports the share of a training step spent in the
assigner (ATSS's sample selection, PAA's candidate scoring + mixture fit, DETR's Hungarian
matching), timed inside the same steps (on CUDA with a synchronisation around it).

It also times the data pipeline alone (the training DataLoader with the configured
workers) and prints its images/s next to the fastest model's: the pipeline keeps up when
its rate is above the training rate (on a GPU, raise data.num_workers until it is).

    python benchmarks/train_throughput.py                  # CPU, small: < 3 minutes
    python benchmarks/train_throughput.py --paper          # CUDA + AMP, ResNet-50-FPN, 800x1333
    python benchmarks/train_throughput.py --models retinanet fcos --iters 20 --json out.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODELS = ("retinanet", "fcos", "faster_rcnn", "mask_rcnn", "atss", "paa", "detr")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--paper", action="store_true",
                   help="the paper's setting: ResNet-50-FPN, images resized to 800x1333, AMP (needs CUDA)")
    p.add_argument("--backbone", default=None, help="backbone config (default: resnet_tiny; resnet50 with --paper)")
    p.add_argument("--size", type=int, default=None, help="image side in px (default: 160; 800 with --paper)")
    p.add_argument("--batch", type=int, default=None, help="images per step (default: 4 CPU, 4 --paper)")
    p.add_argument("--iters", type=int, default=None, help="timed steps per variant, at most (default: 40; see --seconds)")
    p.add_argument("--chunk", type=int, default=None, help="steps per interleaved chunk (default: 1 CPU, 10 CUDA)")
    p.add_argument("--seconds", type=float, default=20.0,
                   help="stop timing a model after about this long once 4 chunks per variant are done")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per variant (default: 2 CPU, 10 CUDA)")
    p.add_argument("--workers", type=int, default=None, help="data loader workers for the pipeline check")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--json", default=None, help="also write the results here")
    return p.parse_args()


def main() -> None:
    a = parse()
    import torch

    from bbrctl.config import compose, to_container
    from bbrctl.detection.data.datasets import build_dataset, collate, ensure_dataset
    from bbrctl.detection.models.heads import install_bbr_loss
    from bbrctl.detection.models.build import build_model

    if a.threads:
        torch.set_num_threads(a.threads)
    cuda = a.device == "cuda" or (a.device == "auto" and torch.cuda.is_available())
    if a.paper and not cuda:
        sys.exit("--paper needs a CUDA device (the paper's setting is not meaningful on a CPU)")
    device = torch.device("cuda" if cuda else "cpu")
    amp = cuda
    backbone = a.backbone or ("resnet50" if a.paper else "resnet_tiny")
    size = a.size or (800 if a.paper else 160)
    batch = a.batch or 4
    iters = a.iters or (40 if cuda else 40)
    chunk = a.chunk or (10 if cuda else 1)
    warmup = a.warmup or (10 if cuda else 2)

    overrides = [f"backbone={backbone}", "data=shapes"]
    if a.paper:
        # Synthetic images, upsampled by the detector's transform to the paper's size.
        overrides += ["model.min_size=800", "model.max_size=1333"]
    else:
        overrides += [f"data.image_size={size}"]
    if a.workers is not None:
        overrides.append(f"data.num_workers={a.workers}")
    base = to_container(compose(overrides))
    data_cfg = base["data"]
    ensure_dataset(data_cfg)
    ds = build_dataset(data_cfg, "train", with_masks="mask_rcnn" in a.models)
    n_img = min(len(ds), batch * 4)
    samples = [ds[i] for i in range(n_img)]
    batches = [collate(samples[i:i + batch]) for i in range(0, n_img - batch + 1, batch)]

    def to_dev(b, with_masks):
        images, targets = b
        images = [im.to(device) for im in images]
        targets = [{k: v.to(device) for k, v in t.items() if torch.is_tensor(v) and (with_masks or k != "masks")}
                   for t in targets]
        return images, targets

    print(f"device {device}{' (AMP)' if amp else ''}, backbone {backbone}, "
          f"{'800x1333 (resized)' if a.paper else f'{size}px'}, batch {batch}, up to {iters} timed steps per variant, "
          f"torch threads {torch.get_num_threads()}", flush=True)
    rows = []
    for name in a.models:
        cfg = copy.deepcopy(base)
        cfg["model"] = to_container(compose([f"model={name}", *overrides]))["model"]
        torch.manual_seed(0)
        stock = build_model(cfg, 5, install_loss=False).to(device)
        variants = {"stock": install_bbr_loss(copy.deepcopy(stock), "baseline"),
                    "focal_eiou": install_bbr_loss(copy.deepcopy(stock), "focal_eiou", {"gamma": 0.5}, 2.5,
                                                   loss_in_rpn=False)}
        with_masks = name == "mask_rcnn"
        dev_batches = [to_dev(b, with_masks) for b in batches]
        assigner_s = {k: _time_assigner(name, m, cuda) for k, m in variants.items()}
        opts = {k: torch.optim.SGD(m.parameters(), lr=1e-4, momentum=0.9) for k, m in variants.items()}
        scalers = {k: torch.amp.GradScaler("cuda", enabled=amp) for k in variants}
        step_no = {k: 0 for k in variants}

        def step(k):
            m, opt, sc = variants[k], opts[k], scalers[k]
            images, targets = dev_batches[step_no[k] % len(dev_batches)]
            step_no[k] += 1
            with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
                losses = m(images, targets)
            opt.zero_grad(set_to_none=True)
            sc.scale(sum(losses.values())).backward()
            sc.step(opt)
            sc.update()

        def timed(k, n):
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(n):
                step(k)
            if cuda:
                torch.cuda.synchronize()
            return n * batch / (time.perf_counter() - t0)

        for k in variants:
            variants[k].train()
            timed(k, warmup)
        for k in assigner_s:
            if assigner_s[k] is not None:
                assigner_s[k][0] = 0.0
        rates = {k: [] for k in variants}
        step_s = {k: 0.0 for k in variants}
        order = list(variants)
        t_model = time.perf_counter()
        r = 0
        # Pairs of chunks until both the step count and the time budget are reached.
        while r < 4 or (r * chunk < iters and time.perf_counter() - t_model < a.seconds) or r % 2:
            # A B B A ...: whichever runs second in a pair (warmer caches, or a load
            # change) is alternately stock and Focal-EIoU.
            for k in (order if r % 2 == 0 else order[::-1]):
                rates[k].append(timed(k, chunk))
                step_s[k] += chunk * batch / rates[k][-1]
            r += 1
        pair = sorted(f / s for f, s in zip(rates["focal_eiou"], rates["stock"]))
        ratio = statistics.median(pair)
        q1, q3 = pair[len(pair) // 4], pair[(3 * len(pair)) // 4]
        row = {"model": name, "stock_img_s": statistics.median(rates["stock"]),
               "focal_eiou_img_s": statistics.median(rates["focal_eiou"]), "ratio": ratio,
               "ratio_iqr": [q1, q3], "pairs": len(pair)}
        share = ""
        if assigner_s["stock"] is not None:
            row["assigner_share"] = {k: assigner_s[k][0] / step_s[k] for k in variants}
            share = "   assigner " + " / ".join(f"{row['assigner_share'][k] * 100:.1f}%" for k in variants) + \
                " of a step"
        rows.append(row)
        print(f"{name:12s} stock {row['stock_img_s']:8.2f} img/s   focal_eiou {row['focal_eiou_img_s']:8.2f} img/s   "
              f"ratio {ratio:.3f} ({(1 - ratio) * 100:+.1f}% cost; per-pair IQR {q1:.3f}-{q3:.3f}, "
              f"{len(pair)} pairs){share}", flush=True)
        del variants, opts, stock
        if cuda:
            torch.cuda.empty_cache()

    # The data pipeline alone: the engine's loader over the training set.
    from bbrctl.detection.data.datasets import TrainSampler

    workers = int(data_cfg.get("num_workers", 0) or 0)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, sampler=TrainSampler(len(ds), seed=0),
                                         num_workers=workers, collate_fn=collate, pin_memory=cuda,
                                         **({"persistent_workers": True, "prefetch_factor": 4} if workers else {}))
    it = iter(loader)
    for _ in range(2):
        next(it)
    n = max(8, iters)
    t0 = time.perf_counter()
    for _ in range(n):
        images, targets = next(it)
        if cuda:
            images = [im.to(device, non_blocking=True) for im in images]
    loader_rate = n * batch / (time.perf_counter() - t0)
    fastest = max(r["stock_img_s"] for r in rows)
    print(f"data pipeline {loader_rate:8.1f} img/s with {workers} workers = {loader_rate / fastest:.1f}x the fastest "
          f"model's training rate ({'keeps up' if loader_rate > fastest else 'STARVES the model: raise data.num_workers'})")
    worst = min(r["ratio"] for r in rows)
    print(f"worst focal_eiou/stock ratio {worst:.3f}: target >= 0.97 {'met' if worst >= 0.97 else 'NOT met'}")
    if a.json:
        out = {"device": str(device), "amp": amp, "backbone": backbone, "size": size, "batch": batch,
               "rows": rows, "loader_img_s": loader_rate, "workers": workers, "threads": torch.get_num_threads(),
               "host_cpus": os.cpu_count()}
        Path(a.json).write_text(json.dumps(out, indent=2) + "\n")


def _time_assigner(name: str, model, cuda: bool):
    """Wrap the model's assigner with a timer; returns [seconds] (accumulating) or None."""
    import torch

    def timer(fn, acc):
        def wrapped(*args, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            if cuda:
                torch.cuda.synchronize()
            acc[0] += time.perf_counter() - t0
            return out
        return wrapped

    acc = [0.0]
    if name == "atss":
        import bbrctl.detection.models.atss as atss

        plain = atss.atss_assign

        def compute_loss(*args, _orig=model.compute_loss):
            atss.atss_assign = timer(plain, acc)   # only while this model computes its loss
            try:
                return _orig(*args)
            finally:
                atss.atss_assign = plain
        model.compute_loss = compute_loss
    elif name == "paa":
        model.assign = timer(model.assign, acc)
    elif name == "detr":
        matcher = model.matcher
        model.matcher = timer(matcher.__call__, acc)
    else:
        return None
    return acc


if __name__ == "__main__":
    main()
