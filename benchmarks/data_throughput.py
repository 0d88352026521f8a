"""Does the data loader keep up with the model? Loader images/s per worker count against the
model's training images/s, measured in the same run, on the COCO-sized generated set.

The loader is the training engine's own (bbrctl.detection.train.engine.train_loader: batches
grouped by aspect ratio, JPEG decoding and flips in the workers, persistent workers,
prefetch 4), timed for each worker count in ``--workers`` after its first batches (worker
start-up is reported apart). The model is RetinaNet on ``--backbone`` (resnet_tiny by
default: ResNet-50 at 800x1333 takes several seconds an image on a CPU) training on
batches of the same set, resized by the model's transform to 800/1333 as COCO is; it is
timed before and after the loader runs, and the ratio uses the mean. Target (issue 13):
the loader with the default worker count (data.num_workers) delivers >= 2x the model's
training images/s.

It also prints how many pixels aspect-ratio grouping saves: the padded batch area
(torchvision pads a batch to its largest height and width, rounded up to 32) of the
grouped stream against the ungrouped one, over the same images, computed exactly.

    python benchmarks/data_throughput.py                      # CPU, 1-3 minutes (the model is slow)
    python benchmarks/data_throughput.py --workers 0,1,2,4 --batch 4 --backbone resnet50 --model-iters 2
    python benchmarks/data_throughput.py --device cuda --batch 8 --model-iters 20 --workers 0,2,4,8
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="shapes_coco", help="data config (default: the COCO-sized generated set)")
    p.add_argument("--workers", default=None, help="comma-separated worker counts (default: 0, 1, 2 and data.num_workers)")
    p.add_argument("--batch", type=int, default=2, help="images per batch (default 2)")
    p.add_argument("--batches", type=int, default=40, help="timed loader batches per worker count (default 40)")
    p.add_argument("--backbone", default="resnet_tiny")
    p.add_argument("--model-iters", type=int, default=3, help="timed training steps, before and after the loader")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--threads", type=int, default=None, help="torch threads for the model (default: torch's)")
    p.add_argument("--json", default=None, help="also write the figures here")
    p.add_argument("overrides", nargs="*", help="extra config overrides, e.g. data.num_train=512")
    return p.parse_args(argv)


def padded_pixels(sizes, batches, min_size=800, max_size=1333, divisor=32) -> float:
    """Mean pixels of each image of a batch after torchvision's resize (shorter side
    min_size, longer at most max_size) and padding to the batch's largest height and width
    (rounded up to ``divisor``): the area every image of the batch is computed on."""
    total = 0.0
    for batch in batches:
        hs, ws = [], []
        for i in batch:
            w, h = sizes[i]
            scale = min(min_size / min(w, h), max_size / max(w, h))
            hs.append(round(h * scale))
            ws.append(round(w * scale))
        total += math.ceil(max(hs) / divisor) * divisor * math.ceil(max(ws) / divisor) * divisor
    return total / max(1, len(batches))


def main(argv=None) -> int:
    a = parse(argv)
    import torch

    from bbrctl.config import compose, to_container
    from bbrctl.detection.train import engine
    from bbrctl.detection.data.datasets import build_dataset, ensure_dataset, num_classes
    from bbrctl.detection.models.build import build_model
    from bbrctl.detection.data.sampling import GroupedTrainSampler, aspect_ratio_groups

    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device")
    cfg = to_container(compose([f"data={a.data}", f"backbone={a.backbone}", "model=retinanet", "loss=focal_eiou",
                                f"schedule.batch_size={a.batch}", *a.overrides]))
    data_cfg = cfg["data"]
    default_workers = int(data_cfg.get("num_workers", 0) or 0)
    workers = sorted({0, 1, 2, default_workers} if a.workers is None else {int(x) for x in a.workers.split(",")})
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    manifest = ensure_dataset(data_cfg)
    gen_s = time.perf_counter() - t0
    ds = build_dataset(data_cfg, "train")
    sizes = [(ds.image_info(i)["width"], ds.image_info(i)["height"]) for i in range(len(ds))]
    print(f"data {a.data}: {len(ds)} training images, sizes {sorted(set(sizes))[:4]}... "
          f"({'generated in %.1f s' % gen_s if gen_s > 1 else 'cached'}); batch {a.batch}; model RetinaNet "
          f"{a.backbone} at {cfg['model']['min_size']}/{cfg['model']['max_size']} on {device}; "
          f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, load average {load0[0]:.2f}", flush=True)

    # Padding saved by grouping: the same images, grouped and not, for a few per-GPU batches
    # (torchvision pads each forward call's batch; the paper's setting is 4 per GPU).
    factor = data_cfg.get("aspect_ratio_group_factor")
    factor = 3 if factor is None or factor < 0 else int(factor)
    mm = (cfg["model"]["min_size"], cfg["model"]["max_size"])
    padding = {}
    for bs in sorted({2, 4, 8, a.batch}):
        groups = aspect_ratio_groups(sizes, factor, bs)
        n_b = max(1, (4 * len(ds)) // bs)
        grouped = [[i for i, _ in b] for _, b in zip(range(n_b), GroupedTrainSampler(groups, bs, 0).batches())]
        plain = [[i for i, _ in b] for _, b in zip(range(n_b), GroupedTrainSampler([0] * len(ds), bs, 0).batches())]
        px_g, px_p = padded_pixels(sizes, grouped, *mm), padded_pixels(sizes, plain, *mm)
        padding[bs] = [px_g, px_p]
        print(f"padded pixels per image, batches of {bs}: grouped {px_g / 1e6:.2f} M, ungrouped "
              f"{px_p / 1e6:.2f} M (grouping keeps {100 * px_g / px_p:.0f}%; {len(set(groups))} groups, "
              f"{n_b} batches)", flush=True)

    # The model, trained on batches of this set (prefetched: the model alone is timed).
    torch.manual_seed(0)
    model = build_model(cfg, num_classes(data_cfg)).to(device).train()     # the config's loss: Focal-EIoU
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)
    prefetch = iter(engine.train_loader({**cfg, "data": {**data_cfg, "num_workers": 0}}, ds, engine.Dist(device=device), 0))
    batches = [engine._to_device(*next(prefetch), device) for _ in range(a.model_iters + 1)]

    def model_rate() -> float:
        def step(images, targets):
            with torch.autocast("cuda", dtype=torch.float16, enabled=device.type == "cuda"):
                loss = sum(model(images, targets).values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        step(*batches[0])                               # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for b in batches[1:]:
            step(*b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return a.model_iters * a.batch / (time.perf_counter() - t)

    before = model_rate()
    print(f"model training: {before:.2f} images/s ({a.model_iters} steps)", flush=True)

    rows = []
    for w in workers:
        c = {**cfg, "data": {**data_cfg, "num_workers": w}}
        t = time.perf_counter()
        it = iter(engine.train_loader(c, ds, engine.Dist(), 0))
        for _ in range(2):                              # worker start-up and the first batches
            next(it)
        startup = time.perf_counter() - t
        t = time.perf_counter()
        for _ in range(a.batches):
            next(it)
        rate = a.batches * a.batch / (time.perf_counter() - t)
        del it
        rows.append({"workers": w, "images_per_s": rate, "startup_s": startup})
        print(f"loader, {w} worker(s): {rate:8.1f} images/s (start-up {startup:.1f} s)", flush=True)

    after = model_rate()
    model_img_s = (before + after) / 2
    print(f"model training: {after:.2f} images/s after the loader runs; mean {model_img_s:.2f}", flush=True)
    print(f"\n{'workers':>7} {'loader img/s':>12} {'x model':>8}")
    for r in rows:
        r["ratio"] = r["images_per_s"] / model_img_s
        print(f"{r['workers']:>7} {r['images_per_s']:>12.1f} {r['ratio']:>7.1f}x")
    default = next((r for r in rows if r["workers"] == default_workers), None)
    if default is not None:
        ok = default["ratio"] >= 2.0
        print(f"default data.num_workers={default_workers}: loader {default['ratio']:.1f}x the model's training "
              f"images/s (target >= 2x): {'met' if ok else 'NOT met: raise data.num_workers'}")
    load1 = os.getloadavg()
    print(f"load average {load0[0]:.2f} at start, {load1[0]:.2f} at end")
    if a.json:
        from bbrctl.store import atomic_write_json

        atomic_write_json(a.json, {"data": a.data, "batch": a.batch, "backbone": a.backbone, "device": str(device),
                                   "model_images_per_s": [before, after], "loader": rows,
                                   "default_workers": default_workers, "padded_pixels": padding,
                                   "load_average": [load0[0], load1[0]], "cpus": os.cpu_count(),
                                   "threads": torch.get_num_threads(), "generated": bool(manifest and gen_s > 1)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
