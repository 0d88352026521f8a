"""A cheap check that a user loss works before any job exists.

``probe_loss`` calls the function on eight fixed, valid box pairs (boxes space: xyxy with
positive width and height, overlapping, disjoint, nested and identical pairs; deltas
space: their BoxCoder(1, 1, 1, 1) encodings against the targets as anchors) with
``reduction="none"`` and ``"mean"``, and back-propagates the mean. It refuses, in one
line: an exception, a value that is not a tensor of the contract's shape ((8,) for
"none", a scalar for "mean"), a NaN/inf value, and a NaN/inf gradient. Valid boxes only:
a loss may be undefined for degenerate boxes; bbrctl's detectors never hand it those.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from bbrctl.losses.spec import BOXES, LossParamError

# (x1, y1, x2, y2): overlapping, shifted, disjoint, nested, identical, thin, large, small.
_PRED = ((10.0, 10.0, 50.0, 60.0), (0.0, 0.0, 20.0, 20.0), (0.0, 0.0, 10.0, 10.0), (5.0, 5.0, 15.0, 15.0),
         (30.0, 30.0, 70.0, 90.0), (0.0, 0.0, 100.0, 4.0), (0.0, 0.0, 600.0, 400.0), (1.0, 1.0, 3.0, 2.5))
_TARGET = ((12.0, 8.0, 55.0, 58.0), (5.0, 5.0, 25.0, 30.0), (40.0, 40.0, 60.0, 70.0), (0.0, 0.0, 20.0, 20.0),
           (30.0, 30.0, 70.0, 90.0), (10.0, 0.0, 90.0, 8.0), (50.0, 20.0, 640.0, 380.0), (1.5, 1.0, 3.0, 3.0))


def _encode(boxes, anchors):
    import torch

    aw, ah = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    ax, ay = anchors[:, 0] + 0.5 * aw, anchors[:, 1] + 0.5 * ah
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    x, y = boxes[:, 0] + 0.5 * w, boxes[:, 1] + 0.5 * h
    return torch.stack([(x - ax) / aw, (y - ay) / ah, torch.log(w / aw), torch.log(h / ah)], dim=1)


def probe_inputs(space: str):
    """(pred, target) float32 (8, 4) tensors of the loss's space; pred requires grad."""
    import torch

    pred, target = torch.tensor(_PRED), torch.tensor(_TARGET)
    if space != BOXES:
        pred, target = _encode(pred, target), torch.zeros(len(_TARGET), 4)
    return pred.requires_grad_(True), target


def probe_loss(name: str, fn: Callable, space: str, params: Mapping[str, Any]) -> None:
    import torch

    pred, target = probe_inputs(space)
    n = pred.shape[0]
    where = f"loss {name!r} on {n} fixed valid {space} pairs"
    for reduction, shape in (("none", (n,)), ("mean", ())):
        try:
            out = fn(pred, target, weight=None, reduction=reduction, **params)
        except Exception as e:
            msg = " ".join(str(e).split())
            raise LossParamError(f"{where} with reduction={reduction!r} raised {type(e).__name__}"
                                 f"{': ' + msg if msg else ''}") from None
        if not torch.is_tensor(out) or tuple(out.shape) != shape:
            got = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
            raise LossParamError(f"{where} with reduction={reduction!r} returned {got}; must be a tensor of shape "
                                 f"{shape} (the contract: (N,) for 'none', a scalar for 'mean' and 'sum')")
        if not bool(torch.isfinite(out).all()):
            bad = "nan" if bool(torch.isnan(out).any()) else "inf"
            raise LossParamError(f"{where} returned {bad} with reduction={reduction!r}; a loss must be finite on "
                                 "valid boxes")
    if out.requires_grad:
        (grad,) = torch.autograd.grad(out, pred, allow_unused=True)
        if grad is not None and not bool(torch.isfinite(grad).all()):
            raise LossParamError(f"{where}: the gradient of the mean is not finite; a loss must have finite "
                                 "gradients on valid boxes")
