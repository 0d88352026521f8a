"""Algorithm 1, vectorised: every anchor-target pair moves at once, one loop over t.

For each iteration t = 1..T (Algorithm 1, lines 6-13):

    µ_t      = 0.1 | 0.01 | 0.001                      (protocol.step_size)
    ∇B       = ∂L(B_{t-1}, Bgt) / ∂B_{t-1}              B = (x, y, w, h), per pair
    B_t      = B_{t-1} − µ_t · s_t · ∇B                 s_t = 2 − IoU(B_{t-1}, Bgt) or 1
    E(t)     = Σ_pairs ‖B_t − Bgt‖₁                      over x, y, w, h
    I(t, ·)  = IoU(B_t, Bgt)

Sign: Algorithm 1 writes ``B_t = B_{t-1} + µ∇B`` because the DIoU authors' reference code
takes ∇ of the IoU *metric*; with ∇ of the loss, as here, the box moves down the gradient.

The loss comes from ``bbrctl.losses.get_loss(name, **params)`` on xyxy boxes: per pair
(``reduction='none'``, the gradient of Σ_i L_i gives each pair its own ∂L_i/∂B_i), except
the focal losses that carry a weight W (Focal-EIoU, Focal-EIoU*), for which Eq. 11 is
applied over the whole set of P pairs being regressed (``reduction='weighted'``):

    L = P · Σ_i W_i L_i / Σ_i W_i,   W_i = IoU_i^γ (detached)             (Eq. 10-11)

The factor P makes a pair whose weight equals the mean weight take the same step as it
would under a per-pair loss, so Eq. 11 changes the *relative* step sizes (a pair moves
W_i / mean(W) times as far as under EIoU), not the overall scale; without it every step
would be divided by ~P and nothing would move. It mirrors a detector, where EIoU is
averaged over the n pairs of a batch (gradient ∂L_i / n) and Eq. 11 gives W_i ∂L_i / Σ W.
``focal_reduction='none'`` instead steps each pair by W_i ∂L_i (Eq. 10 alone).

The gradient w.r.t. (x, y, w, h) is the chain rule through x1 = x − w/2, x2 = x + w/2
(and the same for y): ∂/∂x = g_x1 + g_x2, ∂/∂w = (g_x2 − g_x1)/2, which is what autograd
through the conversion computes, without building the graph for it.

w and h are clamped to >= ``min_size · sqrt(target_area)`` (1e-3 of the target's side by
default) after each step: a large step of a loss whose gradient pushes a side towards
zero must not turn the box inside out.

Memory and speed: the state is a (4, P) tensor (one row per coordinate). Per iteration we
keep E(t) on the device, and IoU statistics (mean, fraction > 0.5 / 0.75 / 0.9, exact
quantiles) every ``quantile_every`` iterations, so memory is O(P), not O(T·P). On CPU,
per-pair losses run a cache-sized chunk of pairs at a time and pairs whose gradient is
exactly zero are dropped (see ``regress``); on a GPU all pairs go at once and nothing
synchronises with the host inside the loop.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from bbrctl.simulate.protocol import SimConfig, build_pairs, quantile_iterations, step_size

QUANTILES = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)
QUANTILE_NAMES = ("q0", "q05", "q25", "q50", "q75", "q95", "q100")
THRESHOLDS = (0.5, 0.75, 0.9)
# One IoU record: mean, fraction above each threshold, then the quantiles.
RECORD_FIELDS = ("mean", *(f"frac_iou_gt_{th:g}" for th in THRESHOLDS), *QUANTILE_NAMES)

Progress = Callable[[int], None]


@dataclass
class Trace:
    """What one loss did in one simulation.

    ``error[t]`` is E(t) for t = 0..T; ``records[k]`` holds the IoU statistics
    (RECORD_FIELDS) at iteration ``record_iterations[k]`` (always including 0 and T).
    """

    loss: str
    error: list[float]
    record_iterations: list[int]
    records: list[dict[str, float]]
    wall_time_s: float
    final_iou: Optional[object] = field(default=None, repr=False)    # (P,) tensor, when kept
    final_boxes: Optional[object] = field(default=None, repr=False)  # (P, 4) xywh tensor, when kept
    frozen_pairs: int = 0            # pairs dropped from the computation (exactly zero gradient)

    def record_at(self, t: int) -> dict[str, float]:
        return self.records[self.record_iterations.index(t)]

    def summary(self) -> dict[str, float]:
        """The per-loss block of summary.json (at t = T)."""
        last = self.records[-1]
        out = {"final_error": self.error[-1], "initial_error": self.error[0],
               "mean_iou": last["mean"], "median_iou": last["q50"]}
        for th in THRESHOLDS:
            key = f"frac_iou_gt_{th:g}"
            out[key] = last[key]
        out["wall_time_s"] = self.wall_time_s
        return out


def xywh_rows_to_xyxy(b):
    """(4, P) rows x, y, w, h -> (P, 4) xyxy, as the transposed view of (4, P) rows.

    Built row-wise (a cat of two (2, P) blocks, ~3x faster on CPU than stacking into an
    interleaved (P, 4)); a loss that works on coordinate rows gets them back with a free
    ``.t()``.
    """
    import torch

    half = 0.5 * b[2:]
    return torch.cat([b[:2] - half, b[:2] + half]).t()


def iou_rows(b, t, t_area):
    """IoU of (4, P) xywh rows ``b`` with targets ``t``; ``t_area`` = w_t · h_t.

    The overlap of [x − w/2, x + w/2] and [x_t − w_t/2, x_t + w_t/2] is
    max(0, min(w, w_t, (w + w_t)/2 − |x − x_t|)), which needs no corners.
    """
    import torch

    iw = torch.minimum(torch.minimum(b[2], t[2]), 0.5 * (b[2] + t[2]) - (b[0] - t[0]).abs()).clamp_(min=0)
    ih = torch.minimum(torch.minimum(b[3], t[3]), 0.5 * (b[3] + t[3]) - (b[1] - t[1]).abs()).clamp_(min=0)
    inter = iw.mul_(ih)
    return inter / (b[2] * b[3] + t_area - inter)


def _l1(b, tg):
    """Σ |b − tg| as a float64 scalar tensor (one fused kernel; its pairwise summation keeps
    float32 inputs accurate to ~1e-7 relative)."""
    import torch

    return torch.nn.functional.l1_loss(b, tg, reduction="sum").to(torch.float64)


def iou_record(iou):
    """RECORD_FIELDS of a 1-d IoU tensor as a float64 tensor (quantiles: linear interpolation,
    torch.quantile's default).

    On CPU numpy's sort is an order of magnitude faster than torch's here and the host has
    the data anyway; on a GPU everything stays on the device (no sync).
    """
    import torch

    n = iou.numel()
    if iou.device.type != "cpu":
        x = iou.to(torch.float64)
        q = torch.quantile(x, torch.tensor(QUANTILES, dtype=torch.float64, device=x.device))
        fr = torch.stack([(x > th).sum(dtype=torch.float64) for th in THRESHOLDS]) / n
        return torch.cat([x.mean().reshape(1), fr, q])
    import numpy as np

    s = np.sort(iou.detach().numpy()).astype(np.float64)
    pos = np.asarray(QUANTILES) * (n - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n - 1)
    w = pos - lo
    q = s[lo] * (1 - w) + s[hi] * w
    fr = [(n - np.searchsorted(s, th, side="right")) / n for th in THRESHOLDS]
    return torch.from_numpy(np.concatenate([[s.mean()], fr, q]))


def descend_(b, g, mu: float, iou, min_wh: float) -> None:
    """One step of Algorithm 1 in place on (4, P) xywh rows ``b``.

    ``g`` is (4, P) d loss / d (x1, y1, x2, y2); the step is −µ·s·∂L/∂(x, y, w, h) with
    s = 2 − IoU(B_{t-1}) per pair when ``iou`` is given (the DIoU reference rule), else 1.
    Then w, h >= ``min_wh``.
    """
    if iou is not None:
        step = (2.0 - iou).mul_(mu)
        b[:2].addcmul_(g[:2] + g[2:], step, value=-1.0)
        b[2:].addcmul_(g[2:] - g[:2], step, value=-0.5)
    else:
        b[:2].sub_(g[:2] + g[2:], alpha=mu)
        b[2:].sub_(g[2:] - g[:2], alpha=0.5 * mu)
    b[2:].clamp_(min=min_wh)


def loss_grad(loss_fn, b, tg_xyxy, *, weighted: bool, n_total: int):
    """d loss / d (x1, y1, x2, y2) as (4, P) for the (4, P) xywh rows ``b``.

    Per-pair losses: the gradient of Σ_i L_i. Eq. 11 (``weighted``): of n_total · Σ W L / Σ W.
    The factor n_total multiplies the gradient, not the loss: when every pair is disjoint
    (Σ W = 0) the library divides by a clamped tiny Σ W, and a scaled loss would overflow
    the backward's n_total / tiny to inf and 0 · inf to NaN.
    """
    import torch

    with torch.enable_grad():
        pred = xywh_rows_to_xyxy(b).requires_grad_(True)
        loss = loss_fn(pred, tg_xyxy, reduction="weighted" if weighted else "none")
        (g,) = torch.autograd.grad(loss if weighted else loss.sum(), pred)
    if weighted:
        g = g * n_total
    return g.t()


# Equal to bbrctl.losses.boxes.CPU_BLOCK (not imported: this module defers torch), so one
# chunk of pairs is one block of the loss.
CPU_CHUNK = 65536


def regress(loss_fn, anchors, targets, cfg: SimConfig, *, weighted: bool = False,
            progress: Optional[Progress] = None, keep_final: bool = False,
            compact: Optional[bool] = None, compact_every: int = 10, chunk: Optional[int] = None) -> Trace:
    """Run Algorithm 1 for one loss over all pairs.

    ``anchors``, ``targets``: (P, 4) xywh tensors on the device (protocol.build_pairs).
    ``loss_fn(pred_xyxy, target_xyxy, reduction=...)``: the library loss.
    ``weighted``: apply the loss with ``reduction='weighted'`` (Eq. 11) and scale by P.

    ``chunk``: per-pair losses are evaluated and stepped on ``chunk`` pairs at a time, so
    that a chunk's intermediates stay in the CPU cache (2-3x faster than whole 343,000-pair
    tensors on the 2-core test machine). Exact: each pair's gradient is its own. Default
    CPU_CHUNK on CPU, no chunking on a GPU. Eq. 11 needs Σ W over all pairs, so weighted
    losses always take the active set at once.

    ``compact``: drop pairs whose gradient is exactly zero from further computation (checked
    at t = 1 and every ``compact_every`` iterations). Exact: such a pair did not move, and
    its gradient depends only on its own box (per-pair losses) or is its own term times a
    scalar shared by all pairs (Eq. 11), so it stays zero. It matters for losses that
    ignore non-overlapping pairs (IoU: gradient 0; Focal-EIoU: weight IoU^γ = 0), which are
    most of setup 1. Needs a host sync per check, so it defaults to on for CPU only.
    """
    import torch

    t0 = time.perf_counter()
    T = cfg.iterations
    dev = anchors.device
    if compact is None:
        compact = dev.type == "cpu"
    if chunk is None:
        chunk = CPU_CHUNK if dev.type == "cpu" else 0
    P = anchors.shape[0]
    f64 = torch.float64
    min_wh = cfg.min_size * math.sqrt(cfg.target_area)

    b_full = anchors.t().contiguous()              # (4, P) state, one row per coordinate
    tg_full = targets.t().contiguous()
    # The active set: views of the full tensors until a compaction makes them copies.
    idx = None                                     # indices of the active pairs (None: all)
    b, tg = b_full, tg_full
    t_area = tg[2] * tg[3]
    tg_xyxy = xywh_rows_to_xyxy(tg).t()            # (4, P) rows x1, y1, x2, y2
    e_frozen = torch.zeros((), dtype=f64, device=dev)   # E(t) contribution of frozen pairs
    iou_full = torch.empty(P, dtype=b.dtype, device=dev)

    error = torch.empty(T + 1, dtype=f64, device=dev)
    rec_its = quantile_iterations(cfg)
    rec_set = set(rec_its)
    rows = []

    def full_iou(iou_active):
        if idx is None:
            return iou_active
        iou_full.index_copy_(0, idx, iou_active)
        return iou_full

    def slices(n):
        if weighted or chunk <= 0 or n <= chunk:
            return [slice(0, n)]
        return [slice(s, min(s + chunk, n)) for s in range(0, n, chunk)]

    iou = iou_rows(b, tg, t_area)
    error[0] = _l1(b, tg)
    rows.append(iou_record(full_iou(iou)))
    frozen = 0
    for t in range(1, T + 1):
        mu = step_size(t, T)
        check = compact and (t == 1 or t % compact_every == 0)
        need_iou = cfg.scale_step or t in rec_set
        if need_iou and not cfg.scale_step:
            iou = torch.empty_like(iou)
        moving_parts = []
        e_t = e_frozen.clone()
        for sl in slices(b.shape[1]):
            bs, ts = b[:, sl], tg[:, sl]
            g = loss_grad(loss_fn, bs, tg_xyxy[:, sl].t(), weighted=weighted, n_total=P)
            if check:
                moving_parts.append((g != 0).any(dim=0))
            # iou[sl] still holds IoU(B_{t-1}) here: it is overwritten only after the step.
            descend_(bs, g, mu, iou[sl] if cfg.scale_step else None, min_wh)
            e_t += _l1(bs, ts)
            if need_iou:
                iou[sl] = iou_rows(bs, ts, t_area[sl])
        error[t] = e_t
        if t in rec_set:
            rows.append(iou_record(full_iou(iou)))
        if check:
            # Pairs with an exactly zero gradient did not move in this step and never will.
            moving = torch.cat(moving_parts)
            n_moving = int(moving.sum())
            if n_moving < b.shape[1]:
                if idx is None:
                    idx = torch.arange(P, device=dev)
                    b = b.clone()                   # b_full keeps the frozen pairs' boxes
                still = ~moving
                b_full[:, idx[still]] = b[:, still]
                iou_full[idx[still]] = iou_rows(b[:, still], tg[:, still], t_area[still])
                e_frozen += _l1(b[:, still], tg[:, still])
                keep = moving.nonzero().squeeze(1)
                idx, b, tg, t_area, tg_xyxy = idx[keep], b[:, keep], tg[:, keep], t_area[keep], tg_xyxy[:, keep]
                iou = iou[keep]      # stale unless need_iou; only read when refreshed
                frozen = P - idx.numel()
        if progress is not None:
            progress(t)

    if idx is not None:
        b_full[:, idx] = b
        iou = full_iou(iou)
    error_l = error.tolist()                        # the one sync per loss on a GPU
    recs = torch.stack(rows).to("cpu", f64).tolist()
    bad = next((t for t, e in enumerate(error_l) if not math.isfinite(e)), None)
    if bad is not None:
        raise FloatingPointError(f"loss {getattr(loss_fn, 'name', '?')}: the regression error became "
                                 f"non-finite at iteration {bad}")
    return Trace(
        loss=getattr(loss_fn, "name", "?"),
        error=error_l,
        record_iterations=rec_its,
        records=[dict(zip(RECORD_FIELDS, r)) for r in recs],
        wall_time_s=time.perf_counter() - t0,
        final_iou=iou.clone() if keep_final else None,
        final_boxes=b_full.t().contiguous() if keep_final else None,
        frozen_pairs=frozen,
    )


class WithImageSize:
    """A loss with its ``image_size`` bound (MPDIoU in the simulation: the canvas)."""

    def __init__(self, fn, image_size):
        self.fn, self.image_size = fn, image_size
        self.name = getattr(fn, "name", "?")
        self.reductions = getattr(fn, "reductions", ())
        self.state = getattr(fn, "state", None)

    def __call__(self, pred, target, **kw):
        return self.fn(pred, target, image_size=self.image_size, **kw)


def bind_image_size(fn, image_size):
    """``fn`` itself, or wrapped to receive ``image_size`` if it takes one."""
    from bbrctl.losses._common import takes_keyword

    return WithImageSize(fn, image_size) if takes_keyword(fn, "image_size") else fn


def default_loss_factory(name: str, **params):
    from bbrctl.losses import get_loss

    return get_loss(name, **params)


def resolve_device(device: str):
    """'cpu' | 'cuda' | 'cuda:N' | 'auto' -> torch.device; UserError when unavailable."""
    import torch

    from bbrctl.errors import UserError

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: CUDA is not available on this machine; valid here: cpu, auto")
        try:
            dev = torch.device(device)
        except RuntimeError:
            raise UserError(f"--device {device!r} is not a device; valid: cpu, cuda, cuda:N, auto") from None
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
        return dev
    raise UserError(f"--device {device!r} is not a device; valid: cpu, cuda, cuda:N, auto")


def simulate(cfg: SimConfig, device: str = "cpu", *, loss_factory=default_loss_factory,
             progress: Optional[Callable[[str, int], None]] = None, keep_final: bool = False) -> dict[str, Trace]:
    """Run every loss of ``cfg`` on the same pairs; returns {loss name: Trace}."""
    dev = resolve_device(device) if isinstance(device, str) else device
    anchors, targets = build_pairs(cfg, dev)
    traces = {}
    for name in cfg.losses:
        fn = bind_image_size(loss_factory(name, **cfg.loss_params(name)), cfg.image_size)
        # Eq. 11 applies to the losses that carry a focal weight (Focal-EIoU, Focal-EIoU*).
        weighted = cfg.focal_reduction == "weighted" and "weighted" in getattr(fn, "reductions", ())
        cb = (lambda t, _n=name: progress(_n, t)) if progress is not None else None
        # A stateful loss (Wise-IoU's running mean of the IoU loss) sees every pair in one
        # call per iteration: the iteration is its batch, updated once, frozen pairs included.
        whole = getattr(fn, "state", None) is not None
        tr = regress(fn, anchors, targets, cfg, weighted=weighted, progress=cb, keep_final=keep_final,
                     **({"compact": False, "chunk": 0} if whole else {}))
        tr.loss = name
        traces[name] = tr
    return traces
