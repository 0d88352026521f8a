"""Loss functions the user-loss tests register (an importable module, as a user's would be)."""

from __future__ import annotations


def corner_l1(pred, target, weight=None, reduction="mean", scale=1.0):
    """Mean absolute corner error over the target's width and height, times ``scale``."""
    wh = (target[:, 2:] - target[:, :2]).clamp_min(1e-6).repeat(1, 2)
    per = ((pred - target).abs() / wh).mean(dim=1) * scale
    if weight is not None:
        per = per * weight
    return per if reduction == "none" else per.sum() if reduction == "sum" else per.mean()


def user_eiou(pred, target, weight=None, reduction="mean"):
    """bbrctl's EIoU under another name: a user loss must act exactly as the built-in does."""
    from bbrctl.losses import eiou_loss

    return eiou_loss(pred, target, weight=weight, reduction=reduction)


def user_l1(pred, target, weight=None, reduction="mean"):
    from bbrctl.losses import l1_loss

    return l1_loss(pred, target, weight=weight, reduction=reduction)


def nan_loss(pred, target, weight=None, reduction="mean"):
    per = (pred - target).sum(dim=1) * float("nan")
    return per if reduction == "none" else per.mean()


NOT_A_FUNCTION = 3
