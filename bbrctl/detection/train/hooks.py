"""The hooks of the training loop (bbrctl.detection.train.loop), in the order a run uses them.

:class:`Metrics`     loss terms kept on the device, copied to the host once per
                     ``log_period`` (metrics.jsonl, train.log, the progress bar, W&B),
                     checked for NaN/inf; the status file
:class:`Stop`        SIGTERM/SIGUSR1 (:class:`StopFlag`, set by the handler) or a ``stop.request`` file
                     (a pruned `bbrctl tune` trial): checkpoint, status "requeued", Requeue
:class:`Checkpoints` a checkpoint every ``checkpoint_period`` iterations (and ``save`` for
                     the others)
:class:`Evaluation`  a COCO evaluation every ``eval_period`` iterations, into metrics.jsonl

Under DDP every rank runs every hook, so the collectives (the metrics' all-reduce, the
stop vote, the RNG gather of a checkpoint) happen in the same order on every rank.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

import torch

from bbrctl import store
from bbrctl.detection.models.heads import loss_states
from bbrctl.detection.train import checkpoint as ckpt
from bbrctl.detection.train.distributed import barrier
from bbrctl.detection.train.loop import Hook, Loop, Requeue


class Metrics(Hook):
    """Per-iteration records, flushed at each log period, at the end and before a checkpoint."""

    def __init__(self, log_period: int):
        self.log_period = log_period
        self.pending: list[tuple] = []
        self.flushed_at = -1

    def after_step(self, loop: Loop, done: int) -> None:
        self.pending.append(loop.last)
        loop.reporter.advance(done)
        if done % self.log_period == 0 or done == loop.max_iter:
            self.flush(loop)
            loop.reporter.status(done)
            self.flushed_at = done

    def flush(self, loop: Loop) -> None:
        if not self.pending:
            return
        dist = loop.dist
        stacked = torch.stack([p[2] for p in self.pending])
        if dist.distributed:
            torch.distributed.all_reduce(stacked)
            stacked /= dist.world_size
        values = stacked.tolist()  # the one host sync per log period
        records = []
        for (it, lr, _, dt, data_t), vals in zip(self.pending, values):
            rec = {"iteration": it, "lr": lr, "time": dt, "data_time": data_t, "loss": sum(vals)}
            rec.update(zip(loop.names, vals))
            records.append(rec)
        self.pending.clear()
        bad = [r for r in records if not math.isfinite(r["loss"])]
        loop.reporter.records(records)
        if bad:
            r = bad[0]
            terms = ", ".join(f"{k}={r[k]}" for k in loop.names)
            raise FloatingPointError(f"the training loss became non-finite at iteration {r['iteration']} ({terms}); "
                                     "lower schedule.base_lr or set schedule.clip_grad_norm")


class Checkpoints(Hook):
    """``save`` writes the resume point (metrics flushed first); every ``period`` iterations too."""

    def __init__(self, period: int, metrics: Metrics, *, amp: bool, signature: str | None, elapsed_before: float,
                 t_start: float, on_checkpoint: Callable[[int], None] | None = None):
        self.period, self.metrics, self.amp, self.signature = period, metrics, amp, signature
        self.elapsed_before, self.t_start, self.on_checkpoint = elapsed_before, t_start, on_checkpoint

    def after_step(self, loop: Loop, done: int) -> None:
        if done % self.period == 0 and done < loop.max_iter:
            self.save(loop, done)

    def save(self, loop: Loop, iteration: int) -> None:
        # Logged iterations reach metrics.jsonl before the checkpoint that covers them: a
        # kill after the save never loses them (the resumed run does not redo them).
        self.metrics.flush(loop)
        dist = loop.dist
        rngs = [ckpt.rng_state()]
        if dist.distributed:
            rngs = [None] * dist.world_size
            torch.distributed.all_gather_object(rngs, ckpt.rng_state())
        if dist.main:
            ckpt.save_checkpoint(ckpt.checkpoint_path(loop.run_dir), {
                "iteration": iteration, "model": loop.model.state_dict(), "optimizer": loop.optimizer.state_dict(),
                "scaler": loop.scaler.state_dict() if self.amp else None, "rng": rngs,
                "elapsed_s": self.elapsed_before + (time.perf_counter() - self.t_start),
                "signature": self.signature, "loss_state": loss_states(loop.model),
            })
            if self.on_checkpoint is not None:
                self.on_checkpoint(iteration)
        barrier(dist)


STOP_SIGNALS = ("SIGTERM", "SIGUSR1")


class StopFlag:
    """Set by SIGTERM/SIGUSR1; the loop checks it between iterations.

    Handlers are installed only in the main thread (Python's rule) and restored on exit.
    """

    def __init__(self):
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for name in STOP_SIGNALS:
                sig = getattr(signal, name, None)
                if sig is not None:
                    self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.signum = signum

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False

    @property
    def set(self) -> bool:
        return self.signum is not None


class Stop(Hook):
    """A stop signal or request: checkpoint, status "requeued", :class:`Requeue`.

    The request file is looked for once per log period. Alone, a run stops after the step
    the signal came in; under DDP the ranks vote at each log period and stop together."""

    def __init__(self, flag, metrics: Metrics, checkpoints: Checkpoints, log_period: int):
        self.flag, self.metrics, self.checkpoints, self.log_period = flag, metrics, checkpoints, log_period
        self.stop_file = None

    def after_step(self, loop: Loop, done: int) -> None:
        if self.stop_file is None:
            self.stop_file = Path(loop.run_dir) / store.STOP_REQUEST
        boundary = done % self.log_period == 0
        want = self.flag.set or (boundary and self.stop_file.exists())
        if loop.dist.distributed:
            if not boundary:
                return
            want = any_rank(want, loop.dist)
        elif want and self.metrics.flushed_at != done:
            self.metrics.flush(loop)
            loop.reporter.status(done)
        if not want:
            return
        self.checkpoints.save(loop, done)
        loop.timing["train_s"] += time.perf_counter() - loop.t_loop
        loop.reporter.status(done, force=True, state="requeued")
        why = f"signal {self.flag.signum}" if self.flag.set else f"{store.STOP_REQUEST}"
        loop.reporter.log(f"stopped by {why} after iteration {done}; checkpoint saved")
        raise Requeue(done)


class Evaluation(Hook):
    """COCO evaluation every ``period`` iterations before the last (the last is the run's own)."""

    def __init__(self, period: int, evaluate: Callable[[Loop], dict | None]):
        self.period, self.evaluate = period, evaluate

    def after_step(self, loop: Loop, done: int) -> None:
        if self.period and done % self.period == 0 and done < loop.max_iter:
            t = time.perf_counter()
            metrics = self.evaluate(loop)
            loop.timing["eval_s"] += time.perf_counter() - t
            log_eval(loop.reporter, Path(loop.run_dir), done, metrics)


def log_eval(reporter: Any, run_dir: Path, iteration: int, metrics: dict | None) -> None:
    """An evaluation's metrics into metrics.jsonl, train.log and W&B (rank 0)."""
    if not reporter.main or metrics is None:
        return
    store.append_jsonl(run_dir / store.METRICS, {"iteration": iteration, "eval": metrics})
    for iou_type, vals in metrics.items():
        reporter.log(f"{iou_type} @ {iteration}: " + " ".join(f"{k} {v:.2f}" for k, v in vals.items()))
    if reporter.wandb is not None:
        reporter.wandb.log({f"eval/{t}/{k}": v for t, vals in metrics.items() for k, v in vals.items()}, step=iteration)


def any_rank(flag: bool, dist) -> bool:
    """True on every rank when it is true on any."""
    t = torch.tensor([1.0 if flag else 0.0], device=dist.device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item() > 0)
