"""The training loop itself: one optimisation step per iteration, then the hooks.

Everything a run does besides the step (metrics and status, stop requests and signals,
checkpoints, periodic evaluation; bbrctl.detection.train.hooks) is a :class:`Hook`
whose ``after_step`` runs after each step, in the order given. A hook may end the loop
by raising (:class:`Requeue` for a stop with a checkpoint). Set-up, resume, the final
checkpoint and the final evaluation stay in bbrctl.detection.train.engine.run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch


class Requeue(Exception):
    """Raised after a signal-triggered checkpoint (args[0]: the iteration): the job should be
    requeued (exit 75)."""


@dataclass
class Loop:
    """What the step and the hooks share: the model, the optimiser, where the loop is."""

    cfg: Mapping[str, Any]
    dist: Any                                   # distributed.Dist
    run_dir: Any                                # pathlib.Path
    model: torch.nn.Module                      # the module (its state is saved)
    net: torch.nn.Module                        # what the step calls (DDP-wrapped when distributed)
    optimizer: torch.optim.Optimizer
    scaler: Any                                 # torch.amp.GradScaler (a no-op when AMP is off)
    reporter: Any                               # reporter.Reporter
    lr_at: Callable[[int], float]               # the learning rate of an iteration
    autocast: Callable[[], Any]                 # the context a forward pass runs in
    to_device: Callable[[Any, Any], tuple]
    max_iter: int
    start: int
    clip: float | None = None
    params: list = field(default_factory=list)   # the trained parameters (clipped together)
    timing: dict = field(default_factory=dict)
    names: list[str] = field(default_factory=list)   # the loss terms, in the model's order
    t_loop: float = 0.0                          # when the loop started (perf_counter)
    last: tuple | None = None                    # (done, lr, loss terms on the device, step s, data s)


def step(loop: Loop, it: int, batches: Iterator) -> None:
    """One SGD step at iteration ``it``; its record is left in ``loop.last``."""
    t0 = time.perf_counter()
    images, targets = loop.to_device(*next(batches))
    t1 = time.perf_counter()
    lr = loop.lr_at(it)
    for g in loop.optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)
    with loop.autocast():
        loss_dict = loop.net(images, targets)
    if not loop.names:
        loop.names = list(loss_dict)
    losses = sum(loss_dict[k].float() for k in loop.names)
    loop.optimizer.zero_grad(set_to_none=True)
    loop.scaler.scale(losses).backward()
    if loop.clip:
        loop.scaler.unscale_(loop.optimizer)
        torch.nn.utils.clip_grad_norm_(loop.params, float(loop.clip))
    loop.scaler.step(loop.optimizer)
    loop.scaler.update()
    terms = torch.stack([loss_dict[k].detach().float() for k in loop.names])
    loop.last = (it + 1, lr, terms, time.perf_counter() - t0, t1 - t0)


class Hook:
    """A part of the loop that is not the step (detectron2's hooks, in miniature)."""

    def after_step(self, loop: Loop, done: int) -> None:
        """Called after each step; ``done`` iterations are complete."""


def train_loop(loop: Loop, batches: Iterator, hooks: Sequence[Hook]) -> None:
    """Iterations ``loop.start .. loop.max_iter - 1``, each a step and then every hook."""
    loop.t_loop = time.perf_counter()
    for it in range(loop.start, loop.max_iter):
        step(loop, it, batches)
        for hook in hooks:
            hook.after_step(loop, it + 1)
