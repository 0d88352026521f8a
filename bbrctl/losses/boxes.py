r"""IoU-family losses on decoded xyxy boxes (Eq. 2-7, 10, 11), sharing one geometry pass.

Notation, for a predicted box B = (x1, y1, x2, y2) and a target B^gt, per pair:

* w = x2 - x1, h = y2 - y1 (signed); areas use the clamped sizes max(w, 0) * max(h, 0).
* inter = max(0, min(x2, x2^gt) - max(x1, x1^gt)) * (same in y); union = A + A^gt - inter.
* C, the smallest enclosing box, spans the minimum and maximum of all four x (and y)
  coordinates of both boxes: for valid boxes min(x1, x1^gt) .. max(x2, x2^gt), as usual;
  for inverted boxes it still encloses every corner, so it bounds every centre and size
  difference (w_c = 0 only if all corners coincide) and every ratio below stays bounded
  (EIoU <= 10 for any finite input).
* rho^2 = |b - b^gt|^2, the squared distance between the two centres.
* IoU = inter / (union + eps * |C| + TINY), |C| = w_c * h_c. eps is relative to the
  enclosing box, so the losses are invariant to scaling both boxes (an absolute eps,
  as in torchvision, is not); TINY = 1e-20 keeps 0/0 at 0 and the gradients finite for
  any finite input (it matters only for boxes smaller than ~1e-6 units).

The losses (all >= 0, and ~eps for identical boxes of positive area):

* iou  (Eq. 3):  1 - IoU
* giou (Eq. 4):  1 - IoU + (|C| - union) / |C|
* diou (DIoU):   1 - IoU + rho^2 / c^2,           c^2 = w_c^2 + h_c^2
* ciou (Eq. 5):  1 - IoU + rho^2 / c^2 + alpha v, v = 4/pi^2 (atan(w^gt/h^gt) - atan(w/h))^2,
  alpha = v / (1 - IoU + v + eps) computed without gradient (as torchvision and the
  CIoU authors do). If ``alpha_iou_gate`` is set, alpha = 0 unless IoU > gate (the CIoU
  authors' code gates at 0.5); by default it is not gated, as in torchvision. atan(w/h)
  is evaluated as atan2(max(w,0), max(h,0)), so zero-height boxes are defined.
* eiou (Eq. 7):  1 - IoU + rho^2 / c^2 + (w - w^gt)^2 / w_c^2 + (h - h^gt)^2 / h_c^2
* focal_eiou (Eq. 10): W * EIoU with W = IoU^gamma detached, reduced by default as
  Eq. 11: sum(W L) / sum(W) over the batch (0, with zero gradient, if sum(W) = 0).
* focal_eiou_v1 (Sec. 5.4.4): FocalL1 (Eq. 9) of x = EIoU.
* focal_eiou_star (Sec. 5.4.4): -(1 - IoU)^gamma log(IoU) EIoU, the weight detached like
  Eq. 10's and log(IoU) evaluated at max(IoU, eps); reduced by default as Eq. 11.

Inverted boxes (x2 < x1): their area is 0 (IoU 0, no IoU gradient), but w stays signed
in the EIoU size term and in the enclosing box, so EIoU's gradient pushes an inverted
box back to positive size (CIoU's aspect term uses the clamped sizes). A zero-area box
has IoU 0 with any box, itself included (0/0 is taken as 0).

Speed: the five base losses run as one ``torch.autograd.Function``: one elementwise
pass over a (2, 2, 2, N) layout [target, pred] x [corner] x [x, y] that yields the loss,
the IoU and the per-pair Jacobian d loss_i / d pred_i (hand-derived); the backward is one
multiply. No boolean indexing and no reductions, so no host syncs on CUDA.
On the CPU, large batches run in blocks of ``CPU_BLOCK`` pairs that stay in the cache.
At ties (a pred edge on a target edge) the gradient of min/max is split evenly, as
autograd does for torch.minimum/maximum; for identical boxes the gradient is O(eps).
Gradients w.r.t. ``target`` come from the plain-autograd implementation, used
automatically when the target requires grad (and always with ``impl="autograd"``).

dtype: float64 if either input is float64, else float32 (half inputs are upcast); the
gradient reaching ``pred`` has ``pred``'s dtype. Being scale invariant, these losses have
gradients of order 1 / (box size): in float16 (max 65504) boxes smaller than ~1e-4 units
can get an inf gradient, which AMP's GradScaler handles as an overflow (not clipped).
"""

from __future__ import annotations

import math

import torch

from bbrctl.losses import _common
from bbrctl.losses.deltas import focal_l1_elementwise
from bbrctl.losses.spec import WEIGHTED, check_params

# Keeps 0/0 at 0 and caps every gradient at about |coordinate| / TINY, so losses and
# gradients stay finite in float32 for coordinates up to ~1e17 in magnitude (beyond that
# the squared sizes themselves overflow). Only boxes smaller than ~1e-6 units feel it.
TINY = 1e-20
_V_SCALE = 4.0 / math.pi ** 2

KINDS = ("iou", "giou", "diou", "ciou", "eiou")
_DIST = ("diou", "ciou", "eiou")


# --------------------------------------------------------------------------------------
# Fused forward + analytic backward
# --------------------------------------------------------------------------------------
#
# Per axis, with corner offsets dc0 = x1 - x1^gt, dc1 = x2 - x2^gt, D = dc0 + dc1 (twice
# the centre offset) and the identities min(a, b) = (a + b - |a - b|)/2,
# max(a, b) = (a + b + |a - b|)/2:
#   intersection width  iw  = relu((w + w^gt - |dc0| - |dc1|) / 2)   (evaluated with min/max)
#   enclosing width     w_c = (|w| + |w^gt|) / 2 + (|D - s| + |D + s|) / 4,  s = |w| - |w^gt|
#   (the hull of all four corners; for valid boxes (|w| + |w^gt| + |dc0| + |dc1|) / 2)
#   size difference     w - w^gt = dc1 - dc0
# Everything is elementwise on (2, N) / (2, 2, N) tensors (no min/max reductions, no
# index tensors), and |.|'s zero derivative at a tie is exactly the even split that
# autograd gives torch.minimum/maximum.

def _layout(pred, target, dtype):
    """(2, 2, 2, N) tensor [target, pred] x [corner 1, corner 2] x [x, y]; the copy upcasts."""
    n = pred.shape[0]
    if pred.dtype == dtype and target.dtype == dtype:
        return torch.stack((target.t(), pred.t())).view(2, 2, 2, n)   # ~25% faster on CPU
    t = torch.empty((8, n), dtype=dtype, device=pred.device)
    t[:4].copy_(target.t())
    t[4:].copy_(pred.t())
    return t.view(2, 2, 2, n)


def _fused(t, kind: str, eps: float, gate, want_jac: bool, penalty=None):
    """Loss and IoU per pair from the layout ``t`` and, if ``want_jac``, d loss_i / d pred_i.

    The per-pair loss depends only on its own pair, so the backward is the upstream
    gradient times this (2, 2, N) Jacobian; computing it here, while the intermediates
    are at hand, lets every temporary be reused in place (CPU time is mostly memory
    traffic). The sign tensors are taken before the in-place abs that overwrites them.

    ``penalty`` (with ``kind="iou"``) adds a term that depends on the pair only through
    D (twice the centre offset, (2, N)), the enclosing box's (w_c, h_c) (2, N) and the
    clamped sizes (2, 2, N) [target, pred]: ``penalty(D, c, r, want_jac)`` returns the
    term (N,) and, when ``want_jac``, its derivatives (dD, dc, d pred size), each (2, N),
    which join the chain rule here (the successors' SIoU and Shape-IoU use it, so they
    share this pass's hull and its tie handling). It must not change its arguments.
    """
    wh = t[:, 1] - t[:, 0]                            # (2, 2, N): [w_gt, h_gt], [w, h]
    dc = t[1] - t[0]                                  # (2, 2, N): corner offsets dc0, dc1
    d = dc[0] + dc[1]                                 # D, twice the centre offset, (2, N)
    # Intersection size before relu, with min/max rather than the |.| identity so that
    # touching edges give exactly 0 (the identity can leave an ulp, and IoU^gamma of an
    # ulp is not small); its derivative is the same |.| one, taken below via sign(dc).
    iwr = torch.minimum(t[1, 1], t[0, 1]).sub_(torch.maximum(t[1, 0], t[0, 0]))
    r = wh.clamp_min(0)                               # clamped sizes
    if want_jac:
        sign_dc, sign_w, relu_w = torch.sign(dc), torch.sign(wh[1]), torch.sign(r[1])
    dwh = (dc[1] - dc[0]) if kind == "eiou" else None    # w - w_gt, h - h_gt
    awh = wh.abs_()
    s_ = awh[1] - awh[0]
    e = torch.empty_like(dc)                          # D - s, D + s with s = |w| - |w_gt|
    torch.sub(d, s_, out=e[0])
    torch.add(d, s_, out=e[1])
    if want_jac:
        sign_e = torch.sign(e)
    ae = e.abs_()
    c = ae[0].add_(ae[1]).mul_(0.5).add_(awh[0]).add_(awh[1]).mul_(0.5)   # (2, N): w_c, h_c
    iw = iwr.clamp_min_(0)
    inter = iw[0] * iw[1]
    areas = r[:, 0] * r[:, 1]                         # (2, N): A_gt, A
    union = areas[0].add_(areas[1]).sub_(inter)
    area_c = c[0] * c[1]
    den_u = torch.add(union, area_c, alpha=eps).add_(TINY)
    iou = inter.div_(den_u)
    loss = torch.rsub(iou, 1.0)
    if kind == "giou":
        inv_g = (area_c + TINY).reciprocal_()
        rg = area_c.sub_(union).mul_(inv_g)           # (|C| - union) / |C|
        loss.add_(rg)
    if kind in _DIST:
        c2 = c * c
        inv_c = (c2[0] + c2[1]).add_(TINY).reciprocal_()
        dist = (d[0] * d[0]).addcmul_(d[1], d[1]).mul_(0.25).mul_(inv_c)
        loss.add_(dist)
        if kind == "eiou":
            q = dwh / c2.add_(TINY)                   # (w - w_gt) / w_c^2
            asp = dwh.mul_(q)
            loss.add_(asp[0]).add_(asp[1])
        elif kind == "ciou":
            theta = torch.atan2(r[:, 0], r[:, 1])     # (2, N): atan(w/h) of target, pred
            dtheta = theta[0].sub_(theta[1])
            v = (dtheta * dtheta).mul_(_V_SCALE)
            alpha = v / torch.rsub(iou, 1.0 + eps).add_(v)
            if gate is not None:
                alpha.mul_(iou > gate)
            loss.addcmul_(alpha, v)
    p_grads = None
    if penalty is not None:
        p_loss, p_grads = penalty(d, c, r, want_jac)
        loss.add_(p_loss)
    if not want_jac:
        return loss, iou, None

    rp = r[1]
    inv_u = den_u.reciprocal_()
    n_inter = (iou + 1.0).mul_(inv_u)                 # -dL/d inter, from -IoU
    g_ap = iou * inv_u                                # dL/dA (pred's clamped area)
    g_areac = g_ap * eps                              # dL/d|C| via eps |C| in IoU's denominator
    if kind == "giou":
        n_inter.sub_(inv_g)
        g_ap.sub_(inv_g)
        g_areac.add_(inv_g.mul_(torch.rsub(rg, 1.0)))
    g_c = torch.empty_like(c)                         # dL/dc
    torch.mul(g_areac, c[1], out=g_c[0])
    torch.mul(g_areac, c[0], out=g_c[1])
    g_w = torch.empty_like(c)                         # dL/d clamped (w, h), then dL/d(w, h)
    torch.mul(g_ap, rp[1], out=g_w[0])
    torch.mul(g_ap, rp[0], out=g_w[1])
    g_dd = None
    if kind in _DIST:
        g_dd = d.mul_(inv_c).mul_(0.5)                # dL/dD from rho^2 / c^2
        g_c.addcmul_(c, dist.mul_(inv_c), value=-2.0)
        if kind == "eiou":
            g_c.addcmul_(c.mul_(q), q, value=-2.0)    # from (w - w_gt)^2 / w_c^2
            g_dwh = q.mul_(2.0)
        elif kind == "ciou":
            # v = 4/pi^2 (theta_gt - theta)^2, d theta / d(w, h) = (h, -w) / (w^2 + h^2)
            r2 = (rp[0] * rp[0]).addcmul_(rp[1], rp[1]).add_(TINY)
            coef = alpha.mul_(dtheta).mul_(-2.0 * _V_SCALE).div_(r2)
            g_w[0].addcmul_(rp[1], coef)
            g_w[1].addcmul_(rp[0], coef, value=-1.0)
    if p_grads is not None:
        p_dd, p_c, p_w = p_grads
        g_dd = p_dd if g_dd is None else g_dd.add_(p_dd)
        g_c.add_(p_c)
        g_w.add_(p_w)
    g_w.mul_(relu_w)
    g_i = torch.empty_like(c)                         # -dL/d iwr = n_inter * iw_other * relu'
    torch.mul(iw[1], n_inter, out=g_i[0])
    torch.mul(iw[0], n_inter, out=g_i[1])
    g_i.mul_(torch.sign(iw))
    # Enclosing box: w_c = (|w| + |w_gt|)/2 + (|D - s| + |D + s|)/4.
    se = sign_e.mul_(g_c.mul_(0.25))
    g_e = se[0] + se[1]                               # dL/dD via w_c
    g_dd = g_e if g_dd is None else g_dd.add_(g_e)
    g_w.sub_(g_i, alpha=0.5).addcmul_(se[1].sub_(se[0]).add_(g_c, alpha=2.0), sign_w)
    if kind == "eiou":
        g_w.add_(g_dwh)                               # w - w_gt moves with w
    jac = sign_dc.mul_(g_i.mul_(0.5))                 # via -(|dc0| + |dc1|)/2 in iwr
    jac.add_(g_dd)
    jac[1].add_(g_w)                                  # w = dc1 - dc0 + const
    jac[0].sub_(g_w)
    return loss, iou, jac


# Pairs per block on the CPU: the ~30 temporaries of one block stay in the cache instead
# of streaming through memory once per elementwise op. At N = 1e6 on the 2-core
# development machine, EIoU forward + backward took 45 ms in one block and 25 ms in
# blocks of 65,536 with 1 thread (41 -> 17 ms with 2); 8,192 was slower again (Python
# overhead per block). GPUs take one block.
CPU_BLOCK = 65536


def _blocks(pred, target, dtype, want_jac: bool, block, extra=None):
    """``block(layout, extra)`` -> (loss, a second per-pair value, Jacobian or None) over the
    whole batch, in cache-sized blocks of pairs on the CPU (one block elsewhere). ``extra``
    is None or a (k, N) tensor of per-pair constants, sliced with the pairs. The fused
    losses here and the successors built on them (bbrctl.losses.successors) share it."""
    n = pred.shape[0]
    if pred.device.type != "cpu" or n <= CPU_BLOCK:
        return block(_layout(pred, target, dtype), None if extra is None else extra.to(dtype))
    loss = torch.empty(n, dtype=dtype)
    second = torch.empty(n, dtype=dtype)
    jac = torch.empty((2, 2, n), dtype=dtype) if want_jac else None
    for s in range(0, n, CPU_BLOCK):
        e = min(s + CPU_BLOCK, n)
        x = None if extra is None else extra[:, s:e].to(dtype)
        lb, sb, jb = block(_layout(pred[s:e], target[s:e], dtype), x)
        loss[s:e] = lb
        second[s:e] = sb
        if want_jac:
            jac[:, :, s:e] = jb
    return loss, second, jac


class _FusedBoxLoss(torch.autograd.Function):
    """Per-pair loss (and detached IoU) of one of KINDS; gradient for ``pred`` only."""

    @staticmethod
    def forward(ctx, pred, target, kind, eps, gate, grad_enabled):
        # grad_enabled: the caller's grad mode (forward itself always runs without grad, and
        # needs_input_grad stays True under torch.no_grad), so no Jacobian is built for nothing.
        dtype = _common.compute_dtype(pred, target)
        want_jac = bool(grad_enabled and ctx.needs_input_grad[0])
        with torch.no_grad():
            loss, iou, jac = _blocks(pred, target, dtype, want_jac,
                                     lambda lay, _x: _fused(lay, kind, eps, gate, want_jac))
        # Kept on ctx (not freed after use) so backward can run again under retain_graph.
        ctx.jac, ctx.pred_dtype = jac, pred.dtype
        ctx.mark_non_differentiable(iou)
        return loss, iou

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss, grad_iou):
        if ctx.jac is None:
            return None, None, None, None, None, None
        jac = ctx.jac.view(4, -1)
        # Written straight into a contiguous (N, 4) gradient (no transposed copy later).
        out = torch.empty((jac.shape[1], 4), dtype=ctx.pred_dtype, device=jac.device)
        if out.dtype == jac.dtype:
            torch.mul(jac, grad_loss, out=out.t())
        else:
            out.t().copy_(jac * grad_loss)
        return out, None, None, None, None, None


# --------------------------------------------------------------------------------------
# Plain-autograd implementation (gradients for target too; reference for the fused one)
# --------------------------------------------------------------------------------------

def _atan2_safe(y, x):
    """atan2 with a finite (zero) gradient at the origin, where torch's is 0/0."""
    zero = (y == 0) & (x == 0)
    one = torch.ones_like(y)
    return torch.where(zero, torch.zeros_like(y), torch.atan2(torch.where(zero, one, y), torch.where(zero, one, x)))


def _autograd_forward(pred, target, kind: str, eps: float, gate):
    """The same losses written directly with torch ops and differentiated by autograd."""
    dtype = _common.compute_dtype(pred, target)
    pred, target = pred.to(dtype), target.to(dtype)
    p0, p1, g0, g1 = pred[:, :2], pred[:, 2:], target[:, :2], target[:, 2:]
    wp, wg = p1 - p0, g1 - g0
    rp, rg = torch.relu(wp), torch.relu(wg)
    iw = torch.relu(torch.minimum(p1, g1) - torch.maximum(p0, g0))
    # Enclosing box: the hull of all four corners per axis (valid or inverted boxes).
    hi = torch.maximum(torch.maximum(p0, p1), torch.maximum(g0, g1))
    lo = torch.minimum(torch.minimum(p0, p1), torch.minimum(g0, g1))
    c = hi - lo
    inter = iw[:, 0] * iw[:, 1]
    area_c = c[:, 0] * c[:, 1]
    union = rp[:, 0] * rp[:, 1] + rg[:, 0] * rg[:, 1] - inter
    iou = inter / (union + eps * area_c + TINY)
    loss = 1 - iou
    if kind == "giou":
        loss = loss + (area_c - union) / (area_c + TINY)
    if kind in _DIST:
        d = (p0 + p1 - g0 - g1) / 2
        c2 = c * c
        loss = loss + (d * d).sum(1) / (c2.sum(1) + TINY)
        if kind == "eiou":
            loss = loss + ((wp - wg) ** 2 / (c2 + TINY)).sum(1)
        elif kind == "ciou":
            v = _V_SCALE * (_atan2_safe(rg[:, 0], rg[:, 1]) - _atan2_safe(rp[:, 0], rp[:, 1])) ** 2
            with torch.no_grad():
                alpha = v / (1 - iou + v + eps)
                if gate is not None:
                    alpha = alpha * (iou > gate)
            loss = loss + alpha * v
    return loss, iou.detach()


def _base(name: str, pred, target, kind: str, eps: float, gate=None, impl: str = "auto"):
    """Per-pair loss (N,) and detached IoU (N,) for one of KINDS."""
    _common.check_pair(name, pred, target)
    if impl not in ("auto", "fused", "autograd"):
        raise ValueError(f"{name}: unknown impl {impl!r}; valid: auto, fused, autograd")
    if impl == "autograd" or (impl == "auto" and target.requires_grad and torch.is_grad_enabled()):
        return _autograd_forward(pred, target, kind, eps, gate)
    if impl == "fused" and target.requires_grad and torch.is_grad_enabled():
        raise ValueError(f"{name}: impl='fused' gives no gradient for target; use impl='autograd'")
    return _FusedBoxLoss.apply(pred, target, kind, float(eps), gate, torch.is_grad_enabled())


def _finish(name, per_box, weight, reduction, allowed=_common.REDUCTIONS):
    _common.check_reduction(name, reduction, allowed)
    w = _common.as_weight(name, weight, per_box.shape[0], per_box)
    return _common.reduce(per_box, w, reduction)


# --------------------------------------------------------------------------------------
# Public per-loss functions (torchvision-style signatures)
# --------------------------------------------------------------------------------------

def box_iou_aligned(pred, target, eps: float = 0.0):
    """IoU of each aligned pair, inter / (union + eps |C|), detached; 0 for empty unions."""
    _common.check_pair("box_iou_aligned", pred, target)
    with torch.no_grad():
        _, iou = _FusedBoxLoss.apply(pred.detach(), target.detach(), "iou", float(eps), None, False)
    return iou


def iou_loss(pred, target, weight=None, reduction: str = "mean", eps: float = 1e-7, impl: str = "auto"):
    r"""IoU loss, Eq. 3: :math:`L = 1 - |B \cap B^{gt}| / |B \cup B^{gt}|` on xyxy boxes."""
    loss, _ = _base("iou_loss", pred, target, "iou", eps, impl=impl)
    return _finish("iou_loss", loss, weight, reduction)


def giou_loss(pred, target, weight=None, reduction: str = "mean", eps: float = 1e-7, impl: str = "auto"):
    r"""GIoU loss, Eq. 4: :math:`L = 1 - IoU + |C - (B \cup B^{gt})| / |C|`."""
    loss, _ = _base("giou_loss", pred, target, "giou", eps, impl=impl)
    return _finish("giou_loss", loss, weight, reduction)


def diou_loss(pred, target, weight=None, reduction: str = "mean", eps: float = 1e-7, impl: str = "auto"):
    r"""DIoU loss (Zheng et al.): :math:`L = 1 - IoU + \rho^2(b, b^{gt}) / c^2`."""
    loss, _ = _base("diou_loss", pred, target, "diou", eps, impl=impl)
    return _finish("diou_loss", loss, weight, reduction)


def ciou_loss(pred, target, weight=None, reduction: str = "mean", eps: float = 1e-7,
              alpha_iou_gate: float | None = None, impl: str = "auto"):
    r"""CIoU loss, Eq. 5: :math:`L = 1 - IoU + \rho^2/c^2 + \alpha v`.

    :math:`v = \frac{4}{\pi^2}(\arctan\frac{w^{gt}}{h^{gt}} - \arctan\frac{w}{h})^2`,
    :math:`\alpha = v / ((1 - IoU) + v)` computed without gradient; with
    ``alpha_iou_gate`` set, :math:`\alpha = 0` unless IoU > gate.
    """
    alpha_iou_gate = check_params("ciou", {"alpha_iou_gate": alpha_iou_gate})["alpha_iou_gate"]
    loss, _ = _base("ciou_loss", pred, target, "ciou", eps, alpha_iou_gate, impl=impl)
    return _finish("ciou_loss", loss, weight, reduction)


def eiou_loss(pred, target, weight=None, reduction: str = "mean", eps: float = 1e-7, impl: str = "auto"):
    r"""EIoU loss, Eq. 7.

    :math:`L = 1 - IoU + \frac{\rho^2(b, b^{gt})}{w_c^2 + h_c^2} + \frac{(w - w^{gt})^2}{w_c^2}
    + \frac{(h - h^{gt})^2}{h_c^2}` with :math:`w_c, h_c` the enclosing box's size.
    """
    loss, _ = _base("eiou_loss", pred, target, "eiou", eps, impl=impl)
    return _finish("eiou_loss", loss, weight, reduction)


def focal_eiou_loss(pred, target, weight=None, reduction: str = WEIGHTED, gamma: float = 0.5,
                    eps: float = 1e-7, impl: str = "auto"):
    r"""Focal-EIoU, Eq. 10-11: :math:`L_i = IoU_i^\gamma L_{EIoU,i}`, W = IoU^gamma detached.

    ``reduction="weighted"`` (default) is Eq. 11, :math:`\sum_i W_i L_i / \sum_i W_i`
    (with a per-box weight w: :math:`\sum W w L / \sum W w`); if every pair is disjoint
    (:math:`\sum W = 0`) it returns 0 with a zero gradient (see ``_common.reduce_weighted``).
    gamma = 0 gives EIoU's mean. 'none' / 'sum' / 'mean' act on :math:`W_i L_i`.
    """
    _common.check_reduction("focal_eiou_loss", reduction, _common.REDUCTIONS + (WEIGHTED,))
    gamma = check_params("focal_eiou", {"gamma": gamma})["gamma"]
    loss, iou = _base("focal_eiou_loss", pred, target, "eiou", eps, impl=impl)
    w = _common.as_weight("focal_eiou_loss", weight, loss.shape[0], loss)
    return _common.reduce_weighted(loss, iou.pow(gamma), w, reduction)


def focal_eiou_v1_loss(pred, target, weight=None, reduction: str = "mean", beta: float = 0.8,
                       eps: float = 1e-7, impl: str = "auto"):
    r"""Focal-EIoU v1 (Sec. 5.4.4): FocalL1 (Eq. 9) with :math:`x = L_{EIoU}`.

    :math:`L_f(x) = -\alpha x^2 (2\ln(\beta x) - 1)/4` for :math:`x \le 1`, else
    :math:`-\alpha \ln(\beta) x + C`, :math:`\alpha = e\beta`, :math:`C = (2\alpha\ln\beta + \alpha)/4`.
    """
    beta = check_params("focal_eiou_v1", {"beta": beta})["beta"]
    loss, _ = _base("focal_eiou_v1_loss", pred, target, "eiou", eps, impl=impl)
    return _finish("focal_eiou_v1_loss", focal_l1_elementwise(loss, beta), weight, reduction)


def focal_eiou_star_loss(pred, target, weight=None, reduction: str = WEIGHTED, gamma: float = 0.5,
                         eps: float = 1e-7, impl: str = "auto"):
    r"""Focal-EIoU* (Sec. 5.4.4): :math:`L_i = -(1 - IoU_i)^\gamma \log(IoU_i) L_{EIoU,i}`.

    The focal factor :math:`W_i = -(1-IoU_i)^\gamma \log(\max(IoU_i, eps))` is detached,
    like Eq. 10's, and by default normalised as Eq. 11 (:math:`\sum W L / \sum W`) so the
    reweighting forms compare on equal terms.
    """
    _common.check_reduction("focal_eiou_star_loss", reduction, _common.REDUCTIONS + (WEIGHTED,))
    gamma = check_params("focal_eiou_star", {"gamma": gamma})["gamma"]
    loss, iou = _base("focal_eiou_star_loss", pred, target, "eiou", eps, impl=impl)
    floor = eps if eps > 0 else torch.finfo(iou.dtype).tiny    # log(0) would make W infinite
    focal = torch.rsub(iou, 1.0).pow_(gamma).mul_(torch.log(iou.clamp_min(floor)).neg_())
    w = _common.as_weight("focal_eiou_star_loss", weight, loss.shape[0], loss)
    return _common.reduce_weighted(loss, focal, w, reduction)
