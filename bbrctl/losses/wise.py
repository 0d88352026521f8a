r"""Wise-IoU v1, v2, v3 (Tong et al. 2023, arXiv 2301.10051) and the running mean they keep.

* v1: :math:`L = R_{WIoU} L_{IoU}`, :math:`R_{WIoU} = \exp(((x - x_{gt})^2 +
  (y - y_{gt})^2) / (W_g^2 + H_g^2)^*)`, :math:`W_g, H_g` the enclosing box's size; the
  star means detached ("separated from the computational graph"), so the denominator
  gives no gradient. :math:`1 \le R_{WIoU} \le e`.
* v2: :math:`L = (L_{IoU}^* / \overline{L_{IoU}})^\gamma L_{v1}`, gamma 0.5.
* v3: outlier degree :math:`\beta = L_{IoU}^* / \overline{L_{IoU}}`,
  :math:`r = \beta / (\delta \alpha^{\beta - \delta})`, :math:`L = r L_{v1}` (alpha 1.9,
  delta 3: r = 1 where beta = delta).

:math:`\overline{L_{IoU}}` is the running mean of the IoU loss with momentum m. As in the
authors' code (github.com/Instinct323/wiou, ``IouLoss.__call__``) it starts at 1 and is
updated with the batch's mean :math:`L_{IoU}` *before* it is used for that batch:
``mean <- (1 - m) mean + m batch_mean``. The paper sets :math:`m = 1 - 0.05^{1/(tn)}` (t
epochs, n batches each); bbrctl's default m = 0.01 is that rule for tn ~ 300 batches, the
length of its CPU schedules; the authors' code defaults to ``1 - 0.5 ** (1 / 7000)``.

State: the running mean is a :class:`RunningMean`. ``get_loss("wiou_v3")`` binds a fresh
one to the returned loss; a direct call without ``state=`` uses a fresh one (mean 1.0,
so one update from the batch). The mean is updated only by calls made while autograd is
recording (training losses; not assignment or matching costs computed under
``torch.no_grad``, nor evaluation), unless ``update=`` says otherwise; the authors' code
gates the update on a train/eval switch the same way. Under ``torch.distributed`` the
batch mean is that of all ranks' pairs together (an all-reduce of the sum and count),
so it does not depend on how many ranks share the batch: every rank must then make
the same updating calls, as a detector's loss does once per step.
"""

from __future__ import annotations

import math

import torch

from bbrctl.losses.boxes import TINY
from bbrctl.losses.spec import check_params
from bbrctl.losses.successors import Geometry, finish, iou_plus


class RunningMean:
    """The running mean of the IoU loss, :math:`\\overline{L_{IoU}}`, kept in float64."""

    def __init__(self, value: float = 1.0):
        self.value = torch.tensor(float(value), dtype=torch.float64)

    def update(self, iou_loss, momentum: float):
        """Fold this batch's mean IoU loss in (across ranks when distributed); the new mean.

        A batch without pairs (on every rank) leaves the mean unchanged; no host sync.
        """
        x = iou_loss.detach()
        stats = torch.stack([x.sum(dtype=torch.float64),
                             torch.tensor(float(x.numel()), dtype=torch.float64, device=x.device)])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(stats)
        value = self.value.to(x.device)
        batch = stats[0] / stats[1].clamp_min(1.0)
        self.value = torch.where(stats[1] > 0, value * (1.0 - momentum) + batch * momentum, value)
        return self.value

    def state_dict(self) -> dict:
        return {"mean": self.value.detach().to("cpu", torch.float64).clone()}

    def load_state_dict(self, state: dict) -> None:
        mean = state["mean"]
        self.value = (mean.detach().clone() if torch.is_tensor(mean) else torch.tensor(float(mean))).to(torch.float64)

    def __repr__(self) -> str:
        return f"RunningMean({float(self.value):.6g})"


def _v1(name: str, pred, target, eps: float, impl: str):
    """(L_WIoUv1 per pair, L_IoU per pair detached)."""
    def core(p, t, _x=None):
        g = Geometry(p, t, eps)
        l_iou = 1.0 - g.iou
        r = torch.exp((g.d * g.d).sum(0) / ((g.c * g.c).sum(0) + TINY).detach())
        return r * l_iou, l_iou

    return iou_plus(name, pred, target, "wiou", eps, impl, core)


def _mean(state, l_iou, momentum: float, update):
    state = RunningMean() if state is None else state
    if update is None:
        update = torch.is_grad_enabled()
    if update:
        return state.update(l_iou, momentum).to(l_iou.dtype)
    return state.value.to(device=l_iou.device, dtype=l_iou.dtype)


def wiou_v1_loss(pred, target, weight=None, reduction: str = "mean", eps: float = 1e-7, impl: str = "auto"):
    r"""Wise-IoU v1 (arXiv 2301.10051): :math:`L = R_{WIoU} (1 - IoU)`, see the module."""
    loss, _ = _v1("wiou_v1_loss", pred, target, eps, impl)
    return finish("wiou_v1_loss", loss, weight, reduction)


def wiou_v2_loss(pred, target, weight=None, reduction: str = "mean", gamma: float = 0.5, momentum: float = 0.01,
                 eps: float = 1e-7, state: RunningMean | None = None, update: bool | None = None,
                 impl: str = "auto"):
    r"""Wise-IoU v2 (arXiv 2301.10051): :math:`(L_{IoU}^*/\overline{L_{IoU}})^\gamma L_{v1}`."""
    p_ = check_params("wiou_v2", {"gamma": gamma, "momentum": momentum})
    loss, l_iou = _v1("wiou_v2_loss", pred, target, eps, impl)
    mean = _mean(state, l_iou, p_["momentum"], update)
    focus = (l_iou / mean.clamp_min(1e-20)).pow(p_["gamma"])
    return finish("wiou_v2_loss", loss * focus, weight, reduction)


def wiou_v3_loss(pred, target, weight=None, reduction: str = "mean", alpha: float = 1.9, delta: float = 3.0,
                 momentum: float = 0.01, eps: float = 1e-7, state: RunningMean | None = None,
                 update: bool | None = None, impl: str = "auto"):
    r"""Wise-IoU v3 (arXiv 2301.10051): :math:`r L_{v1}`, :math:`r = \beta / (\delta\alpha^{\beta-\delta})`."""
    p_ = check_params("wiou_v3", {"alpha": alpha, "delta": delta, "momentum": momentum})
    loss, l_iou = _v1("wiou_v3_loss", pred, target, eps, impl)
    mean = _mean(state, l_iou, p_["momentum"], update)
    beta = l_iou / mean.clamp_min(1e-20)
    # beta / (delta alpha^(beta - delta)) as one exp: alpha^beta overflows for beta > ~140.
    r = beta * torch.exp((beta - p_["delta"]) * -math.log(p_["alpha"])) / p_["delta"]
    return finish("wiou_v3_loss", loss * r, weight, reduction)
