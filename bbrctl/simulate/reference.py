"""Straightforward autograd versions of the IoU-family losses, written from the paper.

These are *not* used by the simulation engine (it calls ``bbrctl.losses.get_loss`` so
that the simulation exercises the library). They serve two purposes:

* the baseline of ``benchmarks/simulate.py``: the plain way to run Algorithm 1 (float64,
  autograd through every formula, exact quantiles every iteration), timed in the same
  run as the engine;
* an independent cross-check in the tests: the engine driven by the library must follow
  the same trajectories as the engine driven by these formulas.

All functions take xyxy boxes of shape (N, 4) and return the per-pair loss, shape (N,).
"""

from __future__ import annotations

import math

EPS = 1e-7


def _parts(pred, target):
    import torch

    px1, py1, px2, py2 = pred.unbind(-1)
    tx1, ty1, tx2, ty2 = target.unbind(-1)
    pw, ph = px2 - px1, py2 - py1
    tw, th = tx2 - tx1, ty2 - ty1
    iw = (torch.minimum(px2, tx2) - torch.maximum(px1, tx1)).clamp(min=0)
    ih = (torch.minimum(py2, ty2) - torch.maximum(py1, ty1)).clamp(min=0)
    inter = iw * ih
    union = pw * ph + tw * th - inter
    iou = inter / (union + EPS)
    cw = torch.maximum(px2, tx2) - torch.minimum(px1, tx1)  # enclosing box C
    ch = torch.maximum(py2, ty2) - torch.minimum(py1, ty1)
    rho2 = ((px1 + px2 - tx1 - tx2) ** 2 + (py1 + py2 - ty1 - ty2) ** 2) / 4
    return dict(pw=pw, ph=ph, tw=tw, th=th, union=union, iou=iou, cw=cw, ch=ch, rho2=rho2)


def iou(pred, target):
    """IoU(B, Bgt) = |B ∩ Bgt| / |B ∪ Bgt| (no gradient use intended)."""
    return _parts(pred, target)["iou"]


def iou_loss(pred, target):
    """Eq. 3: 1 − IoU."""
    return 1 - _parts(pred, target)["iou"]


def giou_loss(pred, target):
    """Eq. 4: 1 − IoU + |C − (A ∪ B)| / |C|."""
    p = _parts(pred, target)
    area_c = p["cw"] * p["ch"] + EPS
    return 1 - p["iou"] + (area_c - p["union"]) / area_c


def diou_loss(pred, target):
    """DIoU: 1 − IoU + ρ²(b, bgt) / c²."""
    p = _parts(pred, target)
    return 1 - p["iou"] + p["rho2"] / (p["cw"] ** 2 + p["ch"] ** 2 + EPS)


def ciou_loss(pred, target):
    """Eq. 5: 1 − IoU + ρ²/c² + αv, α = v / ((1 − IoU) + v) held constant (no gradient), as in CIoU."""
    import torch

    p = _parts(pred, target)
    v = (4 / math.pi ** 2) * (torch.atan(p["tw"] / p["th"]) - torch.atan(p["pw"] / p["ph"])) ** 2
    with torch.no_grad():
        alpha = v / (1 - p["iou"] + v + EPS)
    return 1 - p["iou"] + p["rho2"] / (p["cw"] ** 2 + p["ch"] ** 2 + EPS) + alpha * v


def eiou_loss(pred, target):
    """Eq. 7: 1 − IoU + ρ²(b,bgt)/(wc² + hc²) + ρ²(w,wgt)/wc² + ρ²(h,hgt)/hc²."""
    p = _parts(pred, target)
    cw2, ch2 = p["cw"] ** 2 + EPS, p["ch"] ** 2 + EPS
    return (1 - p["iou"] + p["rho2"] / (cw2 + ch2)
            + (p["pw"] - p["tw"]) ** 2 / cw2 + (p["ph"] - p["th"]) ** 2 / ch2)


def focal_eiou_weights(pred, target, gamma=0.5):
    """W = IoU^γ (Eq. 10), detached: a weight, not a path for the gradient."""
    return iou(pred, target).detach().clamp(min=0) ** gamma


def focal_eiou_loss(pred, target, gamma=0.5):
    """Eq. 10 per pair: IoU^γ · L_EIoU."""
    return focal_eiou_weights(pred, target, gamma) * eiou_loss(pred, target)


REFERENCE = {
    "iou": iou_loss,
    "giou": giou_loss,
    "diou": diou_loss,
    "ciou": ciou_loss,
    "eiou": eiou_loss,
    "focal_eiou": focal_eiou_loss,
}


def get_reference_loss(name, **params):
    """A callable with the library's signature, ``fn(pred, target, weight=None, reduction=...)``.

    For focal_eiou, ``reduction='weighted'`` is Eq. 11: Σ W·L / Σ W over the pairs.
    """
    if name not in REFERENCE:
        raise ValueError(f"no reference for {name!r}; have: {', '.join(REFERENCE)}")
    fn = REFERENCE[name]

    def loss(pred, target, weight=None, reduction="none"):
        per_pair = fn(pred, target, **params)
        if weight is not None:
            per_pair = per_pair * weight
        if reduction == "none":
            return per_pair
        if reduction == "sum":
            return per_pair.sum()
        if reduction == "mean":
            return per_pair.mean()
        if reduction == "weighted" and name == "focal_eiou":
            w = focal_eiou_weights(pred, target, **params)
            return per_pair.sum() / w.sum().clamp(min=EPS)
        raise ValueError(f"reduction {reduction!r} not supported by reference {name}")

    loss.name = name
    loss.space = "boxes"
    return loss
