r"""l_n-norm losses on encoded regression deltas (dx, dy, dw, dh), Eq. 1 and Eq. 8-9.

Each works elementwise on x = |pred - target| and sums the four coordinates of a box
(the paper's :math:`L_{Loc} = \sum_{i \in \{x,y,w,h\}} L(|B_i - B^{gt}_i|)`), so 'none'
returns one value per box. The per-box weight may also be given per coordinate, (N, 4).
"""

from __future__ import annotations

import math

import torch

from bbrctl.losses import _common
from bbrctl.losses.spec import check_params


def focal_l1_elementwise(x, beta: float):
    r"""FocalL1, Eq. 9, of a non-negative tensor x (elementwise).

    .. math::
        L_f(x) = -\frac{\alpha x^2 (2\ln(\beta x) - 1)}{4} \; (0 < x \le 1), \qquad
        L_f(x) = -\alpha \ln(\beta)\, x + C \; (x > 1),

    with :math:`\alpha = e\beta` (so the gradient magnitude :math:`-\alpha x\ln(\beta x)`,
    Eq. 8, peaks at exactly 1 at :math:`x^* = 1/(e\beta)`) and
    :math:`C = (2\alpha\ln\beta + \alpha)/4` (continuity at x = 1), β in [1/e, 1].
    L_f(0) = 0, the limit; both branches are evaluated on finite arguments so the
    unselected one never feeds a NaN into the gradient.
    """
    alpha = math.e * beta
    ln_beta = math.log(beta)
    const = (2.0 * alpha * ln_beta + alpha) / 4.0
    xi = x.clamp(max=1.0)
    log_term = torch.log(xi.clamp_min(torch.finfo(x.dtype).tiny) * beta)
    inner = xi * xi * (2.0 * log_term - 1.0) * (-alpha / 4.0)
    outer = x * (-alpha * ln_beta) + const
    # x == 1 takes the linear branch: equal value, and clamp(max=1) passes no gradient there.
    return torch.where(x < 1.0, inner, outer)


def _prepare(name, pred, target, weight, reduction):
    _common.check_pair(name, pred, target)
    _common.check_reduction(name, reduction)
    dtype = _common.compute_dtype(pred, target)
    pred, target = pred.to(dtype), target.to(dtype)
    w = _common.as_weight(name, weight, pred.shape[0], pred, allow_per_coord=True)
    return pred, target, w


def _finish(elem, w, reduction):
    if w is not None and w.dim() == 2:
        return _common.reduce((elem * w).sum(1), None, reduction)
    return _common.reduce(elem.sum(1), w, reduction)


def l1_loss(pred, target, weight=None, reduction: str = "mean"):
    r"""L1 on deltas: :math:`\sum_{x,y,w,h} |\Delta|` per box (RetinaNet's stock loss)."""
    pred, target, w = _prepare("l1_loss", pred, target, weight, reduction)
    return _finish((pred - target).abs(), w, reduction)


def smooth_l1_loss(pred, target, weight=None, reduction: str = "mean", beta: float = 1.0):
    r"""SmoothL1, Eq. 1 with :math:`f(x) = 0.5 x^2/\beta` for :math:`|x| < \beta`, else
    :math:`g(x) = |x| - 0.5\beta`; summed over the four deltas."""
    beta = check_params("smooth_l1", {"beta": beta})["beta"]
    pred, target, w = _prepare("smooth_l1_loss", pred, target, weight, reduction)
    elem = torch.nn.functional.smooth_l1_loss(pred, target, reduction="none", beta=beta)
    return _finish(elem, w, reduction)


def balanced_l1_loss(pred, target, weight=None, reduction: str = "mean",
                     alpha: float = 0.5, gamma: float = 1.5, beta: float = 1.0):
    r"""Balanced L1 (Libra R-CNN), with b chosen so that :math:`\alpha\ln(b + 1) = \gamma`.

    .. math::
        L_b(x) = \frac{\alpha}{b}(b|x| + \beta)\ln\!\left(\frac{b|x|}{\beta} + 1\right) - \alpha|x|
        \; (|x| < \beta), \qquad \gamma|x| + \frac{\gamma\beta}{b} - \alpha\beta \; (|x| \ge \beta).

    At β = 1 (the default and Libra R-CNN's setting) this is exactly Libra R-CNN's
    Eq. 8-9. For other β it is :math:`\beta L_b(x/\beta)`, whose gradient
    :math:`\alpha\ln(b|x|/\beta + 1)` stays continuous at |x| = β (mmdetection's β
    variant scales only the logarithm's argument and is not C¹ there).
    """
    p = check_params("balanced_l1", {"alpha": alpha, "gamma": gamma, "beta": beta})
    alpha, gamma, beta = p["alpha"], p["gamma"], p["beta"]
    pred, target, w = _prepare("balanced_l1_loss", pred, target, weight, reduction)
    b = math.exp(gamma / alpha) - 1.0
    x = (pred - target).abs()
    inner = (alpha / b) * (b * x + beta) * torch.log1p(x * (b / beta)) - alpha * x
    outer = gamma * x + (gamma * beta / b - alpha * beta)
    return _finish(torch.where(x < beta, inner, outer), w, reduction)


def focal_l1_loss(pred, target, weight=None, reduction: str = "mean", beta: float = 0.8):
    r"""FocalL1, Eq. 9, of :math:`|\Delta|`, summed over x, y, w, h (Sec. 4.1).

    See :func:`focal_l1_elementwise` for the formula; β in [1/e, 1], α = eβ.
    """
    beta = check_params("focal_l1", {"beta": beta})["beta"]
    pred, target, w = _prepare("focal_l1_loss", pred, target, weight, reduction)
    return _finish(focal_l1_elementwise((pred - target).abs(), beta), w, reduction)
