"""Bounding-box regression losses: one function per loss and a registry by name.

    from bbrctl.losses import LOSSES, get_loss
    loss = get_loss("focal_eiou", gamma=0.5)       # .name .space .params .default_reduction
    value = loss(pred_boxes, target_boxes)          # (N, 4) xyxy; Eq. 11 weighted mean

Importing this package does not import torch (the orchestration commands read the
metadata in ``spec``); ``get_loss`` and the per-loss functions (``eiou_loss``,
``focal_l1_loss``, ..., the successors ``siou_loss`` ... ``focaler_iou_loss``, the
Wise-IoU ``wiou_v*_loss`` with their ``RunningMean``, and ``box_iou_aligned``) are loaded
on first access.

A user's own loss joins the same registry (``bbrctl.losses.user``): a ``loss/<name>.yaml``
with ``loss.target``, an entry point in the group ``bbrctl.losses``, or
``register_loss(name, fn, space=..., params=...)``.
"""

from __future__ import annotations

import importlib

from bbrctl.losses.spec import (BOXES, DELTAS, INV_E, LOSSES, REDUCTIONS, SPECS, WEIGHTED, LossParamError,
                                LossSpec, Param, check_params, check_weight)

_LAZY = {
    "get_loss": "registry",
    "loss_function": "registry",
    "BoundLoss": "registry",
    "register_loss": "user",
    "box_iou_aligned": "boxes",
    "iou_loss": "boxes",
    "giou_loss": "boxes",
    "diou_loss": "boxes",
    "ciou_loss": "boxes",
    "eiou_loss": "boxes",
    "focal_eiou_loss": "boxes",
    "focal_eiou_v1_loss": "boxes",
    "focal_eiou_star_loss": "boxes",
    "siou_loss": "successors",
    "alpha_iou_loss": "successors",
    "mpdiou_loss": "successors",
    "inner_iou_loss": "successors",
    "shape_iou_loss": "successors",
    "focaler_iou_loss": "successors",
    "wiou_v1_loss": "wise",
    "wiou_v2_loss": "wise",
    "wiou_v3_loss": "wise",
    "RunningMean": "wise",
    "l1_loss": "deltas",
    "smooth_l1_loss": "deltas",
    "balanced_l1_loss": "deltas",
    "focal_l1_loss": "deltas",
    "focal_l1_elementwise": "deltas",
}

__all__ = ["BOXES", "DELTAS", "INV_E", "LOSSES", "REDUCTIONS", "SPECS", "WEIGHTED", "LossParamError",
           "LossSpec", "Param", "check_params", "check_weight", *_LAZY]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'bbrctl.losses' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"bbrctl.losses.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
