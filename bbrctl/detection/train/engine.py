"""One training run: set-up, resume, the loop with its hooks, the final checkpoint and evaluation.

One function, :func:`run`, trains the detector described by a resolved config inside a
run directory and returns the final metrics. The loop itself is
bbrctl.detection.train.loop (a step, then the hooks); what a run does around each step
(metrics, stop requests and signals, checkpoints, periodic evaluation) is
bbrctl.detection.train.hooks. What it guarantees:

* **Optimisation** (Sec. 5.2): SGD, momentum 0.9, weight decay 1e-4; the learning rate
  ``base_lr * batch_size / base_batch_size`` (linear scaling to the actual global batch),
  a linear warm-up from ``warmup_factor`` over ``warmup_iters`` and a x``gamma`` decay
  at each of ``steps``, set per iteration as a pure function of the iteration number::

      lr(i) = lr * (warmup_factor + (1 - warmup_factor) * i / warmup_iters  if i < warmup_iters else 1)
                 * gamma ** #{s in steps : s <= i}

* **Determinism**: seeded model init; the data order is the sampler's (seed, position)
  stream (flips included); the only other randomness (R-CNN's fg/bg sampling) uses
  torch's global RNG, which checkpoints save per rank. A run stopped at any
  checkpoint and resumed ends with bitwise the same weights as an uninterrupted run on
  the CPU (tests/test_train_resume.py).
* **Checkpoints** every ``checkpoint_period`` iterations, at the end, and when SIGTERM
  or SIGUSR1 arrives: the handler only sets a flag; the loop finishes the current
  iteration, saves, writes status "requeued" and raises :class:`Requeue` (exit 75).
* **Multi-GPU**: under ``torchrun`` (WORLD_SIZE > 1) a process group is initialised
  from the environment, the model is wrapped in DDP, each rank takes every w-th image
  of the stream (so the global batch is ``schedule.batch_size`` whatever w is), and
  only rank 0 writes files. AMP (fp16 autocast + GradScaler) when on CUDA and
  ``schedule.amp``.
* **No per-iteration host syncs of our own**: loss terms are kept on the device and
  copied to the host once per ``log_period`` iterations, when they are written to
  ``metrics.jsonl`` (one line per iteration), checked for NaN/inf, logged to W&B, and
  shown on the progress bar.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from bbrctl import store
from bbrctl.detection.train import checkpoint as ckpt
from bbrctl.detection.train import hooks as H
from bbrctl.detection.train.distributed import Dist, barrier as _barrier
from bbrctl.detection.train.hooks import StopFlag
from bbrctl.detection.train.loop import Loop, Requeue, train_loop
from bbrctl.detection.train.reporter import Reporter

# --------------------------------------------------------------------------- schedule


def scaled_lr(sched: Mapping[str, Any]) -> float:
    """Linear scaling rule: base_lr at base_batch_size, proportional to the batch."""
    return float(sched["base_lr"]) * int(sched["batch_size"]) / int(sched["base_batch_size"])


def lr_factor(i: int, sched: Mapping[str, Any]) -> float:
    """Multiplier of the scaled lr at 0-based iteration ``i`` (warm-up x step decay)."""
    warm = int(sched.get("warmup_iters", 0))
    f = 1.0
    if i < warm:
        wf = float(sched.get("warmup_factor", 0.001))
        f = wf + (1.0 - wf) * i / warm
    decays = sum(1 for s in sched.get("steps") or [] if i >= int(s))
    return f * float(sched.get("gamma", 0.1)) ** decays


OPTIMIZERS = ("sgd", "adamw")


def build_optimizer(model: torch.nn.Module, sched: Mapping[str, Any]) -> torch.optim.Optimizer:
    """SGD with momentum (the paper's, and the default); AdamW for short CPU schedules,
    where from-scratch SGD has not left the plateau after a few hundred steps, and DETR.

    ``schedule.backbone_lr_factor`` (default 1) trains the ResNet trunk (parameters named
    ``backbone.body.*``) at that multiple of the lr (DETR: 0.1); each param group carries
    its ``lr_scale`` and the loop sets ``lr = scaled lr x lr_scale``.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    factor = float(sched.get("backbone_lr_factor", 1.0) or 1.0)
    if factor != 1.0:
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        trunk = [p for n, p in named if n.startswith("backbone.body.")]
        rest = [p for n, p in named if not n.startswith("backbone.body.")]
        params = [{"params": rest, "lr_scale": 1.0}, {"params": trunk, "lr_scale": factor}]
    kind = sched.get("optimizer", "sgd")
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=scaled_lr(sched), weight_decay=float(sched.get("weight_decay", 1e-4)))
    kw = dict(lr=scaled_lr(sched), momentum=float(sched.get("momentum", 0.9)),
              weight_decay=float(sched.get("weight_decay", 1e-4)))
    flat = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]
    if flat and all(p.device.type == "cpu" for p in flat):
        # One fused kernel instead of a few per parameter: half the optimizer's time on a
        # small CPU model, with the same updates bit for bit (torch >= 2.4 has it).
        try:
            return torch.optim.SGD(params, fused=True, **kw)
        except (RuntimeError, TypeError, ValueError):
            pass
    return torch.optim.SGD(params, **kw)


# --------------------------------------------------------------------------- data


def _to_device(images, targets, device: torch.device):
    nb = device.type == "cuda"
    images = [im.to(device, non_blocking=nb) for im in images]
    targets = [{k: (v.to(device, non_blocking=nb) if torch.is_tensor(v) else v) for k, v in t.items()}
               for t in targets]
    return images, targets


def train_loader(cfg: Mapping[str, Any], dataset, dist: Dist, start_iter: int):
    """An endless loader of per-rank batches, positioned at ``start_iter``."""
    from bbrctl.detection.data.datasets import collate
    from bbrctl.detection.data.sampling import train_sampler

    sched, data_cfg = cfg["schedule"], cfg["data"]
    global_bs = int(sched["batch_size"])
    # TrainSampler, or batches grouped by aspect ratio (data.aspect_ratio_group_factor).
    sampler = train_sampler(data_cfg, dataset, batch_size=global_bs, seed=int(cfg.get("seed", 0)),
                            hflip_prob=float(sched.get("hflip_prob", 0.5)), start=start_iter * global_bs,
                            rank=dist.rank, world_size=dist.world_size)
    workers = int(data_cfg.get("num_workers", 0) or 0)
    extra = dict(persistent_workers=True, prefetch_factor=4) if workers > 0 else {}
    # An explicit generator keeps the loader from drawing its base seed from the global
    # RNG, which would shift R-CNN's sampling stream between a resumed and a full run.
    return torch.utils.data.DataLoader(
        dataset, batch_size=global_bs // dist.world_size, sampler=sampler, num_workers=workers,
        collate_fn=collate, pin_memory=dist.device.type == "cuda",
        generator=torch.Generator().manual_seed(int(cfg.get("seed", 0))), **extra)


# --------------------------------------------------------------------------- evaluation


def evaluate(model: torch.nn.Module, cfg: Mapping[str, Any], dist: Dist, val_dataset=None,
             details: dict | None = None) -> dict | None:
    """COCO metrics of ``model`` on the val split: {"bbox": {AP..APl}, ["segm": ...]}.

    Every rank runs its share of the images; rank 0 gathers the detections and computes
    the metrics (other ranks return None). On rank 0, ``details["per_category"]`` gets
    each IoU type's per-category AP (CocoEvaluator.per_category) when a dict is passed.
    """
    evaluator = infer(model, cfg, dist, val_dataset)
    if evaluator is None:
        return None
    metrics = evaluator.compute()
    if details is not None:
        details["per_category"] = evaluator.per_category
    return metrics


@torch.inference_mode()
def infer(model: torch.nn.Module, cfg: Mapping[str, Any], dist: Dist, val_dataset=None):
    """Detections of ``model`` on ``val_dataset`` (default: the val split), sharded over the
    ranks (rank r of w takes images r, r + w, ...) and gathered: rank 0 returns the
    CocoEvaluator holding every image's detections, the other ranks None."""
    from bbrctl.detection.data.datasets import EvalSampler, build_dataset, collate, contiguous_to_cat_id
    from bbrctl.detection.eval.coco import CocoEvaluator

    ds = val_dataset if val_dataset is not None else build_dataset(cfg["data"], "val")
    iou_types = ("bbox", "segm") if cfg["model"]["name"] == "mask_rcnn" else ("bbox",)
    evaluator = CocoEvaluator(ds.ann_file, contiguous_to_cat_id(ds), iou_types=iou_types)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=int(cfg["schedule"].get("eval_batch_size", 8)),
        sampler=EvalSampler(len(ds), dist.rank, dist.world_size), collate_fn=collate,
        num_workers=int(cfg["data"].get("num_workers", 0) or 0), pin_memory=dist.device.type == "cuda")
    was_training = model.training
    model.eval()
    try:
        for images, targets in loader:
            images = [im.to(dist.device, non_blocking=True) for im in images]
            with autocast(cfg, dist):
                outputs = model(images)
            evaluator.update(outputs, [t["image_id"] for t in targets])
    finally:
        model.train(was_training)
    if dist.distributed:
        gathered = [None] * dist.world_size
        torch.distributed.all_gather_object(gathered, (evaluator.results, evaluator.image_ids))
        if not dist.main:
            return None
        evaluator.results, evaluator.image_ids = [], []
        for results, ids in gathered:
            evaluator.extend(results, ids)
    return evaluator


def _amp_enabled(cfg: Mapping[str, Any], dist: Dist) -> bool:
    return dist.device.type == "cuda" and bool(cfg["schedule"].get("amp", True))


def cpu_amp_dtype(cfg: Mapping[str, Any], dist: Dist) -> torch.dtype | None:
    """bf16 when training on the CPU with ``schedule.cpu_amp`` on (see detection/train/speed.py)."""
    from bbrctl.detection.train.speed import cpu_autocast_dtype

    if dist.device.type != "cpu":
        return None
    return cpu_autocast_dtype(cfg["schedule"].get("cpu_amp", "off"))


def autocast(cfg: Mapping[str, Any], dist: Dist):
    """fp16 autocast on CUDA (``schedule.amp``), bf16 on the CPU (``schedule.cpu_amp``), else none."""
    cpu_dtype = cpu_amp_dtype(cfg, dist)
    if cpu_dtype is not None:
        return torch.autocast("cpu", dtype=cpu_dtype)
    return torch.autocast("cuda", dtype=torch.float16, enabled=_amp_enabled(cfg, dist))


def prepare_for_cpu(model: torch.nn.Module, cfg: Mapping[str, Any], dist: Dist) -> dict:
    """Apply the CPU speed settings to ``model`` in place; return what was used."""
    from bbrctl.detection.train import speed

    if dist.device.type != "cpu":
        return {}
    threads = cfg["schedule"].get("cpu_threads")
    if threads:
        # The config's thread count wins over OMP_NUM_THREADS: it changes the float
        # arithmetic's order, so it is part of the run's signature (see speed.py).
        torch.set_num_threads(int(threads))
    used = {"threads": torch.get_num_threads(), "channels_last": False, "cpu_amp": "off"}
    if cfg["schedule"].get("channels_last", False):
        speed.use_channels_last(model)
        used["channels_last"] = True
    if cpu_amp_dtype(cfg, dist) is not None:
        speed.fp32_outputs(model)
        used["cpu_amp"] = "bf16"
    return used


# --------------------------------------------------------------------------- logging


# --------------------------------------------------------------------------- the loop


def run(cfg: Mapping[str, Any], run_dir: str | os.PathLike, dist: Dist, *, progress: bool = True,
        wandb=None, signature: str | None = None, on_checkpoint: Callable[[int], None] | None = None) -> dict:
    """Train (or resume) the run in ``run_dir`` and evaluate it; return a results dict.

    Returns ``{"metrics", "iteration", "max_iter", "per_category", "wall_time_s", "timing"}``
    on rank 0 (metrics and per_category None elsewhere). Raises :class:`Requeue` after a signal-triggered
    checkpoint, FloatingPointError when the loss stops being finite.
    """
    from bbrctl.detection.data.datasets import build_dataset, ensure_dataset, num_classes
    from bbrctl.detection.models.build import build_model

    t_start = time.perf_counter()
    run_dir = Path(run_dir)
    sched, data_cfg = cfg["schedule"], cfg["data"]
    max_iter = int(sched["max_iter"])
    seed = int(cfg.get("seed", 0))
    if dist.main:
        ensure_dataset(data_cfg)  # generates synthetic data once, before the others read it
    _barrier(dist)

    torch.manual_seed(seed)
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    with_masks = cfg["model"]["name"] == "mask_rcnn"
    train_ds = build_dataset(data_cfg, "train", with_masks=with_masks)
    model = build_model(cfg, num_classes(data_cfg)).to(dist.device)
    cpu_settings = prepare_for_cpu(model, cfg, dist)
    if dist.distributed and dist.device.type == "cuda" and cfg["model"].get("norm") == "batch":
        # Batch statistics over the global batch; SyncBatchNorm has no CPU kernel, so CPU
        # DDP (tests, debugging) keeps per-process statistics.
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer = build_optimizer(model, sched)
    amp = _amp_enabled(cfg, dist)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    base_lr = scaled_lr(sched)

    notes: list[str] = []
    if dist.main:
        ckpt.remove_stale_temps(run_dir)     # train holds the run's lock: no save is under way
    start, elapsed_before = _resume(run_dir, model, optimizer, scaler if amp else None, dist, signature, seed,
                                    notes)

    if dist.main:
        _truncate_metrics(run_dir, start)

    net = model
    if dist.distributed:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dist.local_rank] if dist.device.type == "cuda" else None)

    reporter = Reporter(run_dir, dist, max_iter, start, progress, wandb)
    for msg in notes:
        reporter.log(msg)
    log_period = max(1, int(sched.get("log_period", 20)))
    global_bs = int(sched["batch_size"])
    loop = Loop(cfg=cfg, dist=dist, run_dir=run_dir, model=model, net=net, optimizer=optimizer, scaler=scaler,
                reporter=reporter, lr_at=lambda i: base_lr * lr_factor(i, sched),
                autocast=lambda: autocast(cfg, dist), to_device=lambda im, tg: _to_device(im, tg, dist.device),
                max_iter=max_iter, start=start, clip=sched.get("clip_grad_norm"),
                params=[p for p in model.parameters() if p.requires_grad],
                timing={"train_s": 0.0, "eval_s": 0.0, "train_images": 0, **cpu_settings})
    metrics_hook = H.Metrics(log_period)
    checkpoints = H.Checkpoints(int(sched.get("checkpoint_period", 1000) or max_iter), metrics_hook, amp=amp,
                                signature=signature, elapsed_before=elapsed_before, t_start=t_start,
                                on_checkpoint=on_checkpoint)

    reporter.log(f"{'resuming at' if start else 'starting'} iteration {start}/{max_iter} on {dist.device} "
                 f"(world size {dist.world_size}, batch {global_bs}, lr {base_lr:g}, amp {amp}"
                 + "".join(f", {k} {v}" for k, v in cpu_settings.items()) + ")")
    reporter.status(start, force=True)
    model.train()
    timing = loop.timing
    try:
        with StopFlag() as stop:
            if start < max_iter:
                hooks = [metrics_hook, H.Stop(stop, metrics_hook, checkpoints, log_period), checkpoints,
                         H.Evaluation(int(sched.get("eval_period", 0) or 0), lambda _: evaluate(model, cfg, dist))]
                train_loop(loop, iter(train_loader(cfg, train_ds, dist, start)), hooks)
                metrics_hook.flush(loop)
                timing["train_s"] += time.perf_counter() - loop.t_loop
                timing["train_images"] = (max_iter - start) * global_bs
                checkpoints.save(loop, max_iter)
            reporter.status(max_iter, force=True, phase="evaluating")
            reporter.log("evaluating on the val split")
            t_eval = time.perf_counter()
            final: dict = {}
            metrics = evaluate(model, cfg, dist, details=final)
            timing["eval_s"] += time.perf_counter() - t_eval
            H.log_eval(reporter, run_dir, max_iter, metrics)
            # Ranks > 0 wait here while rank 0 computes the metrics: one that tore its
            # process group down meanwhile sometimes aborted in gloo's destructor
            # ("terminate called without an active exception", exit -6), failing the run.
            _barrier(dist)
    finally:
        reporter.close()
    if timing["train_s"] > 0:
        timing["images_per_s"] = timing["train_images"] / timing["train_s"]
    return {"metrics": metrics, "iteration": max_iter, "max_iter": max_iter, "per_category": final.get("per_category"),
            "wall_time_s": elapsed_before + (time.perf_counter() - t_start), "timing": timing}


def _resume(run_dir: Path, model, optimizer, scaler, dist: Dist, signature: str | None, seed: int,
            notes: list[str]) -> tuple[int, float]:
    """Load the latest checkpoint of the run, if any, into the model, the optimiser, the AMP
    scaler (None: AMP off) and the RNG; return (start iteration, seconds trained before)."""
    from bbrctl.detection.models.heads import load_loss_states

    state = ckpt.load_latest(run_dir, note=notes.append)
    start, elapsed_before = 0, 0.0
    if state is not None:
        job = store.read_job(run_dir) or {}
        accepted = {None, signature, job.get("signature"), *(job.get("previous_signatures") or [])}
        if signature and state.get("signature") not in accepted:
            raise RuntimeError(f"{ckpt.checkpoint_path(run_dir)} belongs to another config (signature "
                               f"{state.get('signature')}, this run is {signature}); move it away to start over")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler") and scaler is not None:
            scaler.load_state_dict(state["scaler"])
        if "loss_state" in state:   # Wise-IoU's running mean (heads.loss_states)
            load_loss_states(model, state["loss_state"])
        start = int(state["iteration"])
        elapsed_before = float(state.get("elapsed_s", 0.0))
        rng = state.get("rng") or []
        if len(rng) == dist.world_size:
            ckpt.set_rng_state(rng[dist.rank])
    elif dist.rank > 0:
        torch.manual_seed(seed + 1_000_003 * dist.rank)
    del state
    return start, elapsed_before


def _truncate_metrics(run_dir: Path, iteration: int) -> None:
    """Drop metrics.jsonl lines past ``iteration``: after a hard kill, the iterations
    since the last checkpoint are redone and must not be logged twice. Lines that are not
    a record bbrctl writes (torn by a kill, edited, another tool's) are dropped too."""
    import json

    path = run_dir / store.METRICS
    if not path.exists():
        return
    keep = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            it = rec.get("iteration") if isinstance(rec, dict) else None
            if isinstance(it, int) and not isinstance(it, bool) and 0 <= it <= iteration:
                keep.append(line if line.endswith("\n") else line + "\n")
    store.atomic_write_text(path, "".join(keep))
