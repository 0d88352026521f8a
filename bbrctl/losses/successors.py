r"""The IoU-family losses published after Focal-EIoU, on decoded xyxy boxes.

Each function follows its paper's equations (arXiv number in its docstring) and the
conventions of ``bbrctl.losses.boxes``: the same IoU (``inter / (union + eps |C| + TINY)``,
C the hull of all four corners), ``reduction="none" | "mean" | "sum"``, a per-box
``weight``, float64 kept, half upcast, value and gradient finite for any finite input.
Wise-IoU, whose running mean is state, lives in ``bbrctl.losses.wise``.

Where a paper writes a quotient that is 0/0 for degenerate boxes (coincident centres,
zero sizes), TINY is added to its denominator, so the term is 0 there; sizes are the
clamped ones (``max(w, 0)``), centres and the hull use the signed corners, as in boxes.

Speed: every loss is written once as a per-pair function of (pred, target) from torch
ops (``core``); ``impl="autograd"`` runs it with plain autograd, the reference. The
default path is blocked (``boxes.CPU_BLOCK`` pairs at a time on the CPU) with the backward
one multiply by a per-pair Jacobian d loss_i / d pred_i computed in the forward:
hand-derived on top of the fused IoU of ``bbrctl.losses.boxes`` for Wise-IoU and MPDIoU
(``_FusedIoUPlus``), inside that pass for SIoU and Shape-IoU (their costs are a
``penalty`` of ``boxes._fused`` in its D, hull and sizes, so they share its enclosing box
and its tie handling), the chain rule on (N,) for Alpha-IoU with base iou and for
Focaler-IoU, the fused IoU of the scaled boxes for Inner-IoU, and autograd inside the
forward for the rest (``_PerPair``: Alpha-IoU with a penalty base). Gradients
w.r.t. ``target`` come from the plain-autograd path, used when the target requires grad.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from bbrctl.losses import _common
from bbrctl.losses.boxes import CPU_BLOCK, TINY, _atan2_safe, _base, _blocks, _fused
from bbrctl.losses.spec import check_params

_V_SCALE = 4.0 / math.pi ** 2
IMPLS = ("auto", "fused", "autograd")
# Pairs per CPU block of the per-pair path: the fused path's CPU_BLOCK (4096 and 16384
# were no faster on the development machine, under load).
PAIR_BLOCK = CPU_BLOCK


# --------------------------------------------------------------------------------------
# Per-pair evaluation: blocked forward with the per-pair Jacobian, or plain autograd
# --------------------------------------------------------------------------------------

class _PerPair(torch.autograd.Function):
    """(loss (N,), aux (N,) detached) of ``core(pred, target, extra)``; gradient for ``pred`` only.

    ``core`` must be per-pair (loss_i depends on row i alone), so the gradient of the
    block's summed loss w.r.t. its pred rows is exactly the per-pair Jacobian. ``extra``
    is None or a (k, N) tensor of per-pair constants (MPDIoU's image normaliser). ``core``
    sees the boxes transposed, (4, n) with rows x1, y1, x2, y2.
    """

    @staticmethod
    def forward(ctx, pred, target, extra, core, grad_enabled):
        dtype = _common.compute_dtype(pred, target)
        want_jac = bool(grad_enabled and ctx.needs_input_grad[0])
        n = pred.shape[0]
        step = PAIR_BLOCK if pred.device.type == "cpu" else max(n, 1)
        loss = torch.empty(n, dtype=dtype, device=pred.device)
        aux = torch.empty(n, dtype=dtype, device=pred.device)
        jac = torch.empty((4, n), dtype=dtype, device=pred.device) if want_jac else None
        for s in range(0, n, step):
            e = min(s + step, n)
            # (4, n) rows x1, y1, x2, y2: every elementwise op then runs on contiguous rows.
            p = pred[s:e].detach().t().to(dtype, copy=True, memory_format=torch.contiguous_format)
            t = target[s:e].detach().t().to(dtype, copy=True, memory_format=torch.contiguous_format)
            x = None if extra is None else extra[:, s:e]
            if want_jac:
                with torch.enable_grad():
                    p.requires_grad_(True)
                    lb, ab = core(p, t, x)
                    (jac[:, s:e],) = torch.autograd.grad(lb.sum(), p)
            else:
                lb, ab = core(p, t, x)
            loss[s:e] = lb.detach()
            aux[s:e] = ab.detach()
        ctx.jac, ctx.pred_dtype = jac, pred.dtype
        ctx.mark_non_differentiable(aux)
        return loss, aux

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss, grad_aux):
        return (_pred_grad(ctx, grad_loss), None, None, None, None)


def _pred_grad(ctx, grad_loss):
    """d loss / d pred (N, 4) from the (4, N) Jacobian kept on ``ctx`` (None when none was kept)."""
    if ctx.jac is None:
        return None
    jac = ctx.jac.reshape(4, -1)
    out = torch.empty((jac.shape[1], 4), dtype=ctx.pred_dtype, device=jac.device)
    out.t().copy_(jac * grad_loss)
    return out


def per_pair(name: str, pred, target, core: Callable, impl: str = "auto", extra=None):
    """Per-pair loss and detached auxiliary value (N,) of ``core``, by the chosen path."""
    _common.check_pair(name, pred, target)
    if impl not in IMPLS:
        raise ValueError(f"{name}: unknown impl {impl!r}; valid: {', '.join(IMPLS)}")
    target_grad = target.requires_grad and torch.is_grad_enabled()
    if impl == "fused" and target_grad:
        raise ValueError(f"{name}: impl='fused' gives no gradient for target; use impl='autograd'")
    if impl == "autograd" or target_grad:
        dtype = _common.compute_dtype(pred, target)
        loss, aux = core(pred.to(dtype).t(), target.to(dtype).t(), extra)
        return loss, aux.detach()
    return _PerPair.apply(pred, target, extra, core, torch.is_grad_enabled())


class _FusedIoUPlus(torch.autograd.Function):
    """1 - IoU from the fused path of ``bbrctl.losses.boxes`` (with its analytic Jacobian)
    combined with a term whose derivative is one line, for the losses built on the bare IoU
    loss: ``mode="wiou"``, R_WIoU (1 - IoU) with R's denominator detached (Wise-IoU v1);
    ``mode="mpdiou"``, 1 - IoU + (d1^2 + d2^2) / extra[0]. Returns (loss, 1 - IoU detached)."""

    @staticmethod
    def forward(ctx, pred, target, extra, mode, eps, grad_enabled):
        dtype = _common.compute_dtype(pred, target)
        want_jac = bool(grad_enabled and ctx.needs_input_grad[0])
        with torch.no_grad():
            loss, l_iou, jac = _blocks(pred, target, dtype, want_jac,
                                       lambda lay, x: _iou_plus_block(lay, x, mode, eps, want_jac), extra)
        ctx.jac, ctx.pred_dtype = jac, pred.dtype
        aux = l_iou.clone()
        ctx.mark_non_differentiable(aux)
        return loss, aux

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss, grad_aux):
        return (_pred_grad(ctx, grad_loss), None, None, None, None, None)


def _siou_block(lay, theta: float, eps: float, want_jac: bool):
    """SIoU (``_siou_terms``) on one block: its costs as a penalty of the fused IoU pass."""
    loss, iou, jac = _fused(lay, "iou", eps, None, want_jac, penalty=lambda *a: _siou_penalty(*a, theta))
    return loss, torch.rsub(iou, 1.0), jac


def _siou_penalty(D, c, r, want_jac: bool, theta: float):
    """(Delta + Omega) / 2 of ``_siou_terms`` from the fused pass's D = 2 x centre offset, hull
    (w_c, h_c) and clamped sizes, and its derivatives in them. Lambda is scale-free, so it
    reads the same in D; rho_t = (D_t / 2)^2 / c_t^2 = D_t^2 / (2 c_t)^2. Reciprocals are
    taken once and multiplied (a division costs several multiplications on the CPU)."""
    rg, rp = r[0], r[1]
    ad = D.abs()
    d2 = D * D
    inv_s = (d2[0] + d2[1]).add_(TINY).reciprocal_()
    lam = (ad[0] * ad[1]).mul_(inv_s).mul_(2.0)
    gamma = torch.rsub(lam, 2.0)
    inv_c2 = (c * c).mul_(4.0).add_(TINY).reciprocal_()
    rho = d2.mul_(inv_c2)
    ex = torch.exp(rho * gamma).reciprocal_()
    diff = rp - rg
    inv_m = torch.maximum(rp, rg).add_(TINY).reciprocal_()
    om = diff.abs().mul_(inv_m)
    eo = torch.exp(om).reciprocal_()
    q = torch.rsub(eo, 1.0)
    term = torch.rsub(ex, 1.0).add_(_spow(q, theta)).sum(0).mul_(0.5)
    if not want_jac:
        return term, None
    g_rho = ex.mul(gamma).mul_(0.5)                                # dL/d rho_t
    g_lam = (rho * ex).sum(0).mul_(-0.5)                           # dL/d Lambda (gamma = 2 - Lambda)
    sgn = torch.sign(D)
    dlam = torch.stack([sgn[0].mul_(ad[1]), sgn[1].mul_(ad[0])]).sub_(lam * D).mul_(inv_s.mul_(2.0))
    g_r = g_rho.mul_(inv_c2)
    g_d = (D * g_r).mul_(2.0).add_(dlam.mul_(g_lam))
    g_c = g_r.mul_(rho).mul_(c).mul_(-8.0)                         # d rho / d c = -8 rho c / (2c)^2
    g_om = theta * _spow(q, theta - 1.0) * eo * 0.5 if theta != 1.0 else 0.5 * eo
    d_om = torch.sign(diff).sub_(om.mul_(rp > rg)).mul_(inv_m)     # d omega / d w
    return term, (g_d, g_c, d_om.mul_(g_om))


def _shape_block(lay, scale: float, eps: float, want_jac: bool):
    """Shape-IoU (``shape_iou_loss``) on one block: its terms as a penalty of the fused IoU pass."""
    loss, iou, jac = _fused(lay, "iou", eps, None, want_jac, penalty=lambda *a: _shape_penalty(*a, scale))
    return loss, torch.rsub(iou, 1.0), jac


def _shape_penalty(D, c, r, want_jac: bool, scale: float):
    """Shape-IoU's distance and shape terms from the fused pass's D, hull and clamped sizes."""
    rg, rp = r[0], r[1]
    ww = torch.sigmoid(scale * (torch.log(rg[0].clamp_min(TINY)) - torch.log(rg[1].clamp_min(TINY)))).mul_(2.0)
    wts = torch.stack([torch.rsub(ww, 2.0), ww])                  # (hh, ww): x weighted by hh, y by ww
    inv_c2 = (c[0] * c[0]).addcmul_(c[1], c[1]).add_(TINY).reciprocal_()
    dist = (wts * D * D).sum(0).mul_(0.25).mul_(inv_c2)           # sum_t wts_t (D_t / 2)^2 / |c|^2
    diff = rp - rg
    m = torch.maximum(rp, rg).add_(TINY)
    raw = diff.abs().div_(m)
    eo = torch.exp(-(wts * raw))
    q = torch.rsub(eo, 1.0)
    q2 = q * q
    term = (q2 * q2).sum(0).mul_(0.5).add_(dist)
    if not want_jac:
        return term, None
    g_d = (wts * D).mul_(0.5 * inv_c2)
    g_c = c * (dist * inv_c2).mul_(-2.0)
    g_w = (q2.mul_(q).mul_(eo).mul_(2.0)).mul_(wts).mul_(torch.sign(diff).div_(m).sub_(raw.div_(m).mul_(rp > rg)))
    return term, (g_d, g_c, g_w)


def _iou_plus_block(lay, extra, mode: str, eps: float, want_jac: bool):
    """One block of ``_FusedIoUPlus`` from the (2, 2, 2, n) layout [target, pred] x corner x axis."""
    if mode.startswith("siou"):
        return _siou_block(lay, float(mode[4:]), eps, want_jac)
    if mode.startswith("shape"):
        return _shape_block(lay, float(mode[5:]), eps, want_jac)
    tgt, prd = lay[0], lay[1]
    if mode == "wiou":
        d = prd[0] + prd[1] - tgt[0] - tgt[1]                       # twice the centre offset, (2, n)
        c = torch.maximum(torch.maximum(prd[0], prd[1]), torch.maximum(tgt[0], tgt[1])).sub_(
            torch.minimum(torch.minimum(prd[0], prd[1]), torch.minimum(tgt[0], tgt[1])))
        inv_c2 = (c[0] * c[0]).addcmul_(c[1], c[1]).add_(TINY).reciprocal_()
        r = torch.exp((d[0] * d[0]).addcmul_(d[1], d[1]).mul_(0.25).mul_(inv_c2))
    else:
        dc = prd - tgt                                              # corner offsets (2, 2, n)
        inv_n = extra[0].reciprocal()
    l_iou, _, jac = _fused(lay, "iou", eps, None, want_jac)
    if mode == "wiou":
        loss = r * l_iou
        if want_jac:                    # d rho^2 / d corner = D / 2 for both corners (per axis)
            jac.mul_(r).add_(d.mul_(inv_c2.mul_(r).mul_(l_iou).mul_(0.5)))
    else:
        loss = (dc * dc).sum((0, 1)).mul_(inv_n).add_(l_iou)
        if want_jac:
            jac.add_(dc.mul_(inv_n.mul_(2.0)))
    return loss, l_iou, jac


def iou_plus(name: str, pred, target, mode: str, eps: float, impl: str, core: Callable, extra=None):
    """``_FusedIoUPlus`` where it applies (impl auto/fused, no target gradient), else ``core``
    by ``per_pair``'s plain-autograd path (the reference the tests compare it with)."""
    _common.check_pair(name, pred, target)
    if impl not in IMPLS:
        raise ValueError(f"{name}: unknown impl {impl!r}; valid: {', '.join(IMPLS)}")
    if impl == "autograd" or (target.requires_grad and torch.is_grad_enabled()):
        return per_pair(name, pred, target, core, impl, extra)
    return _FusedIoUPlus.apply(pred, target, extra, mode, float(eps), torch.is_grad_enabled())


def finish(name: str, per_box, weight, reduction: str):
    _common.check_reduction(name, reduction)
    w = _common.as_weight(name, weight, per_box.shape[0], per_box)
    return _common.reduce(per_box, w, reduction)


# --------------------------------------------------------------------------------------
# Shared geometry (plain torch ops; conventions of bbrctl.losses.boxes)
# --------------------------------------------------------------------------------------

class Geometry:
    """Per-pair quantities of pred/target given transposed, (4, N): sizes, hull, IoU,
    centre offset (the (2, N) ones have rows x, y)."""

    __slots__ = ("p0", "p1", "g0", "g1", "rp", "rg", "c", "union", "area_c", "iou", "d")

    def __init__(self, pred, target, eps: float):
        self.p0, self.p1, self.g0, self.g1 = pred[:2], pred[2:], target[:2], target[2:]
        self.rp = torch.relu(self.p1 - self.p0)       # clamped (w, h) of pred
        self.rg = torch.relu(self.g1 - self.g0)       # ... of target
        iw = torch.relu(torch.minimum(self.p1, self.g1) - torch.maximum(self.p0, self.g0))
        hi = torch.maximum(torch.maximum(self.p0, self.p1), torch.maximum(self.g0, self.g1))
        lo = torch.minimum(torch.minimum(self.p0, self.p1), torch.minimum(self.g0, self.g1))
        self.c = hi - lo                              # (w_c, h_c): hull of all corners
        inter = iw[0] * iw[1]
        self.area_c = self.c[0] * self.c[1]
        self.union = self.rp[0] * self.rp[1] + self.rg[0] * self.rg[1] - inter
        self.iou = inter / (self.union + eps * self.area_c + TINY)
        self.d = (self.p0 + self.p1 - self.g0 - self.g1) / 2    # centre of pred minus centre of target

    def rho2_over_c2(self):
        """rho^2 / c^2: squared centre distance over the hull's squared diagonal."""
        return (self.d * self.d).sum(0) / ((self.c * self.c).sum(0) + TINY)


def _spow(x, a: float):
    """x ** a for x >= 0 with a finite gradient at 0 for any a > 0 (0 where x = 0)."""
    if a == 1.0:
        return x
    if a == int(a) and a > 1:       # an integer power is exact and smooth at 0 as it is (SIoU's theta 4)
        return x.pow(int(a))
    return torch.where(x > 0, x.clamp_min(TINY).pow(a), torch.zeros_like(x))


def _shape_cost(omega, theta: float):
    """sum over (w, h) of (1 - exp(-omega))^theta: SIoU's and Shape-IoU's shape cost."""
    return _spow(-torch.expm1(-omega), theta).sum(0)


def _siou_terms(g: Geometry, theta: float):
    """SIoU's (distance cost Delta, shape cost Omega), 2205.12740.

    Angle cost Lambda = 1 - 2 sin^2(arcsin(x) - pi/4) with x = c_h / sigma = sin(alpha),
    which equals sin(2 alpha) = 2 |dx| |dy| / (dx^2 + dy^2): written so, it needs no
    arcsin (whose gradient is infinite at x = 1) and is symmetric in alpha and
    beta = pi/2 - alpha, so the paper's switch to beta above pi/4 changes nothing.
    Distance cost Delta = sum_t (1 - exp(-gamma rho_t)), gamma = 2 - Lambda,
    rho_x = (dx / c_w)^2, rho_y = (dy / c_h)^2 with (c_w, c_h) the enclosing box.
    Shape cost Omega = sum_t (1 - exp(-omega_t))^theta, omega_w = |w - w^gt| / max(w, w^gt).
    """
    ad = g.d.abs()
    d2 = g.d * g.d
    lam = 2.0 * ad[0] * ad[1] / (d2.sum(0) + TINY)
    gamma = 2.0 - lam
    rho = d2 / (g.c * g.c + TINY)
    dist = (-torch.expm1(-gamma * rho)).sum(0)
    omega = (g.rp - g.rg).abs() / (torch.maximum(g.rp, g.rg) + TINY)
    return dist, _shape_cost(omega, theta)


def base_loss(name: str, pred, target, base: str, eps: float, impl: str):
    """(per-pair loss of ``base``, its IoU with gradient) for Inner-/Focaler-IoU."""
    if base == "siou":
        def core(p, t, _x=None):
            g = Geometry(p, t, eps)
            dist, shape = _siou_terms(g, 4.0)
            return 1.0 - g.iou + 0.5 * (dist + shape), g.iou
        loss, _ = per_pair(name, pred, target, core, impl)
    else:
        loss, _ = _base(name, pred, target, base, eps, impl=impl)
    return loss


# --------------------------------------------------------------------------------------
# Public per-loss functions
# --------------------------------------------------------------------------------------

def siou_loss(pred, target, weight=None, reduction: str = "mean", theta: float = 4.0, eps: float = 1e-7,
              impl: str = "auto"):
    r"""SIoU (Gevorgyan 2022, arXiv 2205.12740): :math:`L = 1 - IoU + (\Delta + \Omega) / 2`.

    Angle cost :math:`\Lambda = 1 - 2\sin^2(\arcsin(c_h/\sigma) - \pi/4)`, distance cost
    :math:`\Delta = \sum_{t=x,y} 1 - e^{-\gamma\rho_t}` with :math:`\gamma = 2 - \Lambda`,
    shape cost :math:`\Omega = \sum_{t=w,h} (1 - e^{-\omega_t})^\theta` (see ``_siou_terms``).
    """
    theta = check_params("siou", {"theta": theta})["theta"]

    def core(p, t, _x=None):
        g = Geometry(p, t, eps)
        dist, shape = _siou_terms(g, theta)
        return 1.0 - g.iou + 0.5 * (dist + shape), g.iou

    loss, _ = iou_plus("siou_loss", pred, target, f"siou{theta!r}", eps, impl, core)
    return finish("siou_loss", loss, weight, reduction)


def alpha_iou_loss(pred, target, weight=None, reduction: str = "mean", alpha: float = 3.0, base: str = "iou",
                   eps: float = 1e-7, impl: str = "auto"):
    r"""Alpha-IoU (He et al. 2021, arXiv 2110.13675).

    * iou:  :math:`1 - IoU^\alpha`
    * giou: :math:`1 - IoU^\alpha + (|C - B \cup B^{gt}| / |C|)^\alpha`
    * diou: :math:`1 - IoU^\alpha + \rho^{2\alpha}(b, b^{gt}) / c^{2\alpha}`
    * ciou: :math:`1 - IoU^\alpha + \rho^{2\alpha} / c^{2\alpha} + (\beta v)^\alpha`,
      :math:`\beta = v / ((1 - IoU) + v)` computed without gradient, as CIoU's.

    alpha = 1 gives the base loss. Every powered term lies in [0, 1], so the loss is in
    [0, 1 + #penalties]. The authors' code adds eps inside each power; we do not (the
    powers are taken at max(x, TINY), with value 0 at x = 0).
    """
    p_ = check_params("alpha_iou", {"alpha": alpha, "base": base})
    alpha, base = p_["alpha"], p_["base"]
    if base == "iou" and impl != "autograd":
        # 1 - IoU^alpha is a function of the fused path's 1 - IoU: the chain rule acts on (N,).
        l_iou, _ = _base("alpha_iou_loss", pred, target, "iou", eps, impl=impl)
        return finish("alpha_iou_loss", 1.0 - _spow(1.0 - l_iou, alpha), weight, reduction)

    def core(p, t, _x=None):
        g = Geometry(p, t, eps)
        loss = 1.0 - _spow(g.iou, alpha)
        if base == "giou":
            loss = loss + _spow(((g.area_c - g.union) / (g.area_c + TINY)).clamp_min(0), alpha)
        elif base in ("diou", "ciou"):
            loss = loss + _spow(g.rho2_over_c2(), alpha)
        if base == "ciou":
            v = _V_SCALE * (_atan2_safe(g.rg[0], g.rg[1]) - _atan2_safe(g.rp[0], g.rp[1])) ** 2
            with torch.no_grad():
                beta = v / (1.0 - g.iou + v + eps)
            loss = loss + _spow(beta * v, alpha)
        return loss, g.iou

    loss, _ = per_pair("alpha_iou_loss", pred, target, core, impl)
    return finish("alpha_iou_loss", loss, weight, reduction)


def _image_norm(name: str, image_size, n: int, dtype, device):
    """w^2 + h^2 of each pair's input image, (N,) (MPDIoU's normaliser)."""
    if image_size is None:
        raise ValueError(f"{name}: image_size is required: the input image's (width, height), "
                         "one pair for all boxes or an (N, 2) tensor per box")
    wh = torch.as_tensor(image_size, dtype=dtype, device=device)
    if wh.shape == (2,):
        wh = wh.expand(n, 2)
    if wh.shape != (n, 2):
        raise ValueError(f"{name}: image_size must be (width, height) or shape ({n}, 2), got {tuple(wh.shape)}")
    if not bool(torch.isfinite(wh).all()) or bool((wh <= 0).any()):
        raise ValueError(f"{name}: image_size must be finite and > 0")
    return (wh * wh).sum(1)


def mpdiou_loss(pred, target, weight=None, reduction: str = "mean", image_size=None, eps: float = 1e-7,
                impl: str = "auto"):
    r"""MPDIoU (Ma & Xu 2023, arXiv 2307.07662): :math:`L = 1 - MPDIoU`,

    :math:`MPDIoU = IoU - d_1^2 / (w^2 + h^2) - d_2^2 / (w^2 + h^2)`, :math:`d_1, d_2` the
    distances between the top-left and between the bottom-right corners, :math:`w, h`
    the input image's width and height: ``image_size`` is ``(w, h)`` for every pair or an
    (N, 2) tensor of each pair's image size (detectors pass each image's size after their
    transform). Not scale invariant: the normaliser is the image, not the boxes.
    """
    _common.check_pair("mpdiou_loss", pred, target)
    dtype = _common.compute_dtype(pred, target)
    norm = _image_norm("mpdiou_loss", image_size, pred.shape[0], dtype, pred.device)

    def core(p, t, x):
        g = Geometry(p, t, eps)
        d1 = ((g.p0 - g.g0) ** 2).sum(0)
        d2 = ((g.p1 - g.g1) ** 2).sum(0)
        return 1.0 - g.iou + (d1 + d2) / x[0], g.iou

    loss, _ = iou_plus("mpdiou_loss", pred, target, "mpdiou", eps, impl, core, extra=norm[None])
    return finish("mpdiou_loss", loss, weight, reduction)


def _inner_boxes(b, ratio: float):
    """Boxes scaled by ``ratio`` about their centres (Inner-IoU's auxiliary boxes): x_c -+ ratio w / 2,
    i.e. x1' = (1 + ratio)/2 x1 + (1 - ratio)/2 x2 and x2' = (1 - ratio)/2 x1 + (1 + ratio)/2 x2."""
    return torch.add(b * ((1.0 + ratio) / 2), torch.roll(b, 2, 1), alpha=(1.0 - ratio) / 2)


def inner_iou_loss(pred, target, weight=None, reduction: str = "mean", ratio: float = 0.7, base: str = "iou",
                   eps: float = 1e-7, impl: str = "auto"):
    r"""Inner-IoU (Zhang et al. 2023, arXiv 2311.02877).

    Auxiliary boxes keep each box's centre and scale its width and height by ``ratio``;
    :math:`IoU^{inner}` is their IoU. ``base="iou"``: :math:`L = 1 - IoU^{inner}`;
    otherwise :math:`L = L_{base} + IoU - IoU^{inner}` (the paper's Inner-GIoU, -DIoU, -CIoU, -EIoU,
    SIoU). ratio = 1 gives the base loss.
    """
    p_ = check_params("inner_iou", {"ratio": ratio, "base": base})
    ratio, base = p_["ratio"], p_["base"]
    _common.check_pair("inner_iou_loss", pred, target)
    dtype = _common.compute_dtype(pred, target)     # scale the boxes after the upcast
    pred, target = pred.to(dtype), target.to(dtype)
    inner_pred, inner_target = _inner_boxes(pred, ratio), _inner_boxes(target, ratio)
    loss, _ = _base("inner_iou_loss", inner_pred, inner_target, "iou", eps, impl=impl)
    if base != "iou":   # (1 - IoU_inner) + L_base - (1 - IoU)
        iou_loss, _ = _base("inner_iou_loss", pred, target, "iou", eps, impl=impl)
        loss = loss + base_loss("inner_iou_loss", pred, target, base, eps, impl) - iou_loss
    return finish("inner_iou_loss", loss, weight, reduction)


def shape_iou_loss(pred, target, weight=None, reduction: str = "mean", scale: float = 0.0, eps: float = 1e-7,
                   impl: str = "auto"):
    r"""Shape-IoU (Zhang & Zhang 2023, arXiv 2312.17663).

    :math:`ww = 2 (w^{gt})^s / ((w^{gt})^s + (h^{gt})^s)`, :math:`hh = 2 (h^{gt})^s / (\dots)`
    (s = ``scale``; evaluated as :math:`ww = 2\sigma(s \ln(w^{gt}/h^{gt}))`, which cannot
    overflow), :math:`distance^{shape} = hh (x_c - x_c^{gt})^2 / c^2 + ww (y_c - y_c^{gt})^2 / c^2`,
    :math:`\Omega^{shape} = \sum_{t=w,h} (1 - e^{-\omega_t})^4` with
    :math:`\omega_w = hh |w - w^{gt}| / \max(w, w^{gt})`, :math:`\omega_h = ww |h - h^{gt}| / \max(h, h^{gt})`;
    :math:`L = 1 - IoU + distance^{shape} + 0.5\,\Omega^{shape}`.
    """
    scale = check_params("shape_iou", {"scale": scale})["scale"]

    def core(p, t, _x=None):
        g = Geometry(p, t, eps)
        log_ratio = torch.log(g.rg[0].clamp_min(TINY)) - torch.log(g.rg[1].clamp_min(TINY))
        ww = 2.0 * torch.sigmoid(scale * log_ratio)
        hh = 2.0 - ww
        c2 = (g.c * g.c).sum(0) + TINY
        d2 = g.d * g.d
        dist = (hh * d2[0] + ww * d2[1]) / c2
        omega = (g.rp - g.rg).abs() / (torch.maximum(g.rp, g.rg) + TINY)
        omega = omega * torch.stack([hh, ww])
        return 1.0 - g.iou + dist + 0.5 * _shape_cost(omega, 4.0), g.iou

    loss, _ = iou_plus("shape_iou_loss", pred, target, f"shape{scale!r}", eps, impl, core)
    return finish("shape_iou_loss", loss, weight, reduction)


def focaler_iou_loss(pred, target, weight=None, reduction: str = "mean", d: float = 0.0, u: float = 0.95,
                     base: str = "iou", eps: float = 1e-7, impl: str = "auto"):
    r"""Focaler-IoU (Zhang & Zhang 2024, arXiv 2401.10525).

    :math:`IoU^{focaler} = 0` for IoU < d, :math:`(IoU - d)/(u - d)` for d <= IoU <= u, 1
    above u. ``base="iou"``: :math:`L = 1 - IoU^{focaler}`; otherwise
    :math:`L = L_{base} + IoU - IoU^{focaler}` (the paper's Focaler-GIoU ... -SIoU). 0 <= d < u <= 1.
    """
    p_ = check_params("focaler_iou", {"d": d, "u": u, "base": base})
    d, u, base = p_["d"], p_["u"], p_["base"]
    _common.check_pair("focaler_iou_loss", pred, target)
    iou_loss, _ = _base("focaler_iou_loss", pred, target, "iou", eps, impl=impl)
    iou = 1.0 - iou_loss
    focal = ((iou - d) / (u - d)).clamp(0.0, 1.0)
    loss = 1.0 - focal
    if base != "iou":
        loss = loss + base_loss("focaler_iou_loss", pred, target, base, eps, impl) - iou_loss
    return finish("focaler_iou_loss", loss, weight, reduction)
