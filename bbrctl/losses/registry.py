"""Loss registry: ``get_loss(name, **params)`` binds a loss's parameters once.

Importing this module does not import torch; the loss's module is imported when a loss
is first asked for.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from bbrctl.losses.spec import SPECS, check_params
from bbrctl.losses.user import find
from bbrctl.losses.user import function as user_function

# name -> (module, function); one function per loss, in bbrctl.losses.deltas / .boxes /
# .successors / .wise.
FUNCTIONS: dict[str, tuple[str, str]] = {
    "l1": ("deltas", "l1_loss"),
    "smooth_l1": ("deltas", "smooth_l1_loss"),
    "balanced_l1": ("deltas", "balanced_l1_loss"),
    "focal_l1": ("deltas", "focal_l1_loss"),
    "iou": ("boxes", "iou_loss"),
    "giou": ("boxes", "giou_loss"),
    "diou": ("boxes", "diou_loss"),
    "ciou": ("boxes", "ciou_loss"),
    "eiou": ("boxes", "eiou_loss"),
    "focal_eiou": ("boxes", "focal_eiou_loss"),
    "focal_eiou_v1": ("boxes", "focal_eiou_v1_loss"),
    "focal_eiou_star": ("boxes", "focal_eiou_star_loss"),
    "siou": ("successors", "siou_loss"),
    "alpha_iou": ("successors", "alpha_iou_loss"),
    "wiou_v1": ("wise", "wiou_v1_loss"),
    "wiou_v2": ("wise", "wiou_v2_loss"),
    "wiou_v3": ("wise", "wiou_v3_loss"),
    "mpdiou": ("successors", "mpdiou_loss"),
    "inner_iou": ("successors", "inner_iou_loss"),
    "shape_iou": ("successors", "shape_iou_loss"),
    "focaler_iou": ("successors", "focaler_iou_loss"),
}


def loss_function(name: str) -> Callable:
    """The unbound per-loss function, e.g. ``eiou_loss`` for "eiou"."""
    if name not in SPECS:
        find(name)
    check_params(name)  # one-line error for unknown names
    if name not in FUNCTIONS:
        return user_function(name)
    module, func = FUNCTIONS[name]
    return getattr(importlib.import_module(f"bbrctl.losses.{module}"), func)


class BoundLoss:
    """A loss with its parameters bound: ``fn(pred, target, weight=None, reduction=None)``.

    Attributes: ``name``, ``space`` ("boxes": decoded xyxy; "deltas": encoded deltas),
    ``params`` (the full, validated parameter dict), ``default_reduction`` (used when
    ``reduction`` is None; "weighted" = Eq. 11 for the focal EIoU losses, else "mean"),
    ``reductions`` (the accepted values), ``state`` (a stateful loss's own state, e.g.
    Wise-IoU's running mean ``bbrctl.losses.wise.RunningMean``, passed on every call;
    None for the others).
    """

    __slots__ = ("name", "space", "params", "default_reduction", "reductions", "_fn", "state")

    def __init__(self, name: str, params: dict[str, Any]):
        spec = SPECS[name]
        self.name = name
        self.space = spec.space
        self.params = dict(params)
        self.default_reduction = spec.default_reduction
        self.reductions = spec.reductions
        self._fn = loss_function(name)
        self.state = None
        if spec.stateful:
            from bbrctl.losses.wise import RunningMean

            self.state = RunningMean()

    def __call__(self, pred, target, weight=None, reduction: str | None = None, **kwargs):
        if self.state is not None:
            kwargs.setdefault("state", self.state)
        return self._fn(pred, target, weight=weight, reduction=reduction or self.default_reduction,
                        **self.params, **kwargs)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"get_loss({self.name!r}{', ' if args else ''}{args})"


def get_loss(name: str, **params: Any) -> BoundLoss:
    """Resolve a loss by name (one of ``LOSSES``, or a user's loss) and bind its parameters.

    Unknown names, unknown parameters and out-of-range values raise LossParamError (a
    ValueError and a UserError) naming the valid choices or range.
    """
    if name not in SPECS:
        find(name)      # a user's loss from an installed package's entry point
    return BoundLoss(name, check_params(name, params))
