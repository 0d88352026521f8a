"""What each loss is, without importing torch.

The orchestration commands (config, sweep) validate loss parameters before anything is
created or submitted; they must not pay for importing torch, so the registry's metadata
lives here and the tensor code lives beside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from bbrctl.errors import UserError

INV_E = 1.0 / math.e

# Spaces a loss works in: encoded regression deltas (dx, dy, dw, dh) or decoded xyxy boxes.
DELTAS = "deltas"
BOXES = "boxes"

# Reductions every loss accepts; WEIGHTED is Eq. 11 (sum W*L / sum W) and only exists for
# the losses that carry a focal weight W.
REDUCTIONS = ("none", "mean", "sum")
WEIGHTED = "weighted"

# The IoU losses Alpha-IoU raises to alpha (arXiv 2110.13675), and those Inner-IoU and
# Focaler-IoU modify (arXiv 2311.02877, 2401.10525).
ALPHA_BASES = ("iou", "giou", "diou", "ciou")
AUX_BASES = ("iou", "giou", "diou", "ciou", "eiou", "siou")
# Losses whose call needs the input image's size (MPDIoU, 2307.07662): detectors pass each
# pair's image; an assignment or matching cost, which has no image per pair, cannot use them.
IMAGE_SIZE_LOSSES = ("mpdiou",)


class LossParamError(UserError, ValueError):
    """A bad loss name, parameter or weight.

    A UserError (the CLI prints one line, exit 2) that is also a ValueError, so library
    callers that catch ValueError keep working.
    """


@dataclass(frozen=True)
class Param:
    default: Any
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # True: value must be > low, not >= low
    nullable: bool = False
    doc: str = ""
    choices: tuple[str, ...] | None = None  # set: the value is one of these strings, not a number

    def describe(self) -> str:
        if self.choices is not None:
            return f"one of {', '.join(self.choices)}"
        if self.low is not None and self.high is not None:
            return f"[{_fmt(self.low)}, {_fmt(self.high)}]"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {_fmt(self.low)}"
        return "any number"


@dataclass(frozen=True)
class LossSpec:
    name: str
    space: str
    params: Mapping[str, Param] = field(default_factory=dict)
    doc: str = ""
    default_reduction: str = "mean"
    # Cross-parameter rule on the full parameter dict: the one-line problem, or None if fine.
    check: Callable[[Mapping[str, Any]], str | None] | None = None
    # True: the loss keeps state between calls (WIoU's running mean, bbrctl.losses.wise);
    # get_loss binds a fresh state to each BoundLoss.
    stateful: bool = False

    @property
    def reductions(self) -> tuple[str, ...]:
        return REDUCTIONS + ((WEIGHTED,) if self.default_reduction == WEIGHTED else ())


def _fmt(x: float) -> str:
    if abs(x - INV_E) < 1e-12:
        return "1/e"
    return f"{x:g}"


SPECS: dict[str, LossSpec] = {
    s.name: s
    for s in [
        LossSpec("l1", DELTAS, {}, "L1 on encoded deltas"),
        LossSpec("smooth_l1", DELTAS, {"beta": Param(1.0, 0.0, None, low_open=True, doc="Eq. 1 threshold")},
                 "SmoothL1, Eq. 1"),
        LossSpec("balanced_l1", DELTAS, {
            "alpha": Param(0.5, 0.0, None, low_open=True),
            "gamma": Param(1.5, 0.0, None, low_open=True),
            "beta": Param(1.0, 0.0, None, low_open=True),
        }, "Balanced L1 (Libra R-CNN)"),
        LossSpec("focal_l1", DELTAS, {"beta": Param(0.8, INV_E, 1.0, doc="Eq. 8-9")}, "FocalL1, Eq. 9"),
        LossSpec("iou", BOXES, {}, "IoU loss, Eq. 3"),
        LossSpec("giou", BOXES, {}, "GIoU loss, Eq. 4"),
        LossSpec("diou", BOXES, {}, "DIoU loss"),
        LossSpec("ciou", BOXES, {
            "alpha_iou_gate": Param(None, 0.0, 1.0, nullable=True,
                                    doc="if set, alpha=0 where IoU < gate (DIoU authors' code uses 0.5)"),
        }, "CIoU loss, Eq. 5"),
        LossSpec("eiou", BOXES, {}, "EIoU loss, Eq. 7"),
        LossSpec("focal_eiou", BOXES, {"gamma": Param(0.5, 0.0, None, doc="Eq. 10")},
                 "Focal-EIoU, Eq. 10-11", default_reduction=WEIGHTED),
        LossSpec("focal_eiou_v1", BOXES, {"beta": Param(0.8, INV_E, 1.0, doc="Eq. 9 with x = EIoU")},
                 "Focal-EIoU v1: FocalL1 of the EIoU loss (Sec. 5.4.4)"),
        LossSpec("focal_eiou_star", BOXES, {"gamma": Param(0.5, 0.0, None, doc="focal-loss exponent")},
                 "Focal-EIoU*: -(1-IoU)^gamma log(IoU) EIoU (Sec. 5.4.4)", default_reduction=WEIGHTED),
        # The losses published after Focal-EIoU (bbrctl.losses.successors, .wise).
        LossSpec("siou", BOXES, {"theta": Param(4.0, 1.0, None, doc="shape-cost exponent (paper: 2-6)")},
                 "SIoU: angle, distance and shape costs (arXiv 2205.12740)"),
        LossSpec("alpha_iou", BOXES, {
            "alpha": Param(3.0, 0.0, None, low_open=True, doc="power of IoU and of each penalty term"),
            "base": Param("iou", choices=ALPHA_BASES, doc="the IoU loss raised to alpha"),
        }, "Alpha-IoU: 1 - IoU^alpha + penalty^alpha (arXiv 2110.13675)"),
        LossSpec("wiou_v1", BOXES, {}, "Wise-IoU v1: distance attention times the IoU loss (arXiv 2301.10051)"),
        LossSpec("wiou_v2", BOXES, {
            "gamma": Param(0.5, 0.0, None, low_open=True, doc="monotonic focusing exponent"),
            "momentum": Param(0.01, 0.0, 1.0, low_open=True, doc="running mean of the IoU loss"),
        }, "Wise-IoU v2: monotonic focusing (arXiv 2301.10051)", stateful=True),
        LossSpec("wiou_v3", BOXES, {
            "alpha": Param(1.9, 1.0, None, low_open=True, doc="non-monotonic focusing base"),
            "delta": Param(3.0, 0.0, None, low_open=True, doc="outlier degree where r = 1"),
            "momentum": Param(0.01, 0.0, 1.0, low_open=True, doc="running mean of the IoU loss"),
        }, "Wise-IoU v3: non-monotonic focusing (arXiv 2301.10051)", stateful=True),
        LossSpec("mpdiou", BOXES, {},
                 "MPDIoU: corner distances over the image's w^2 + h^2 (arXiv 2307.07662; needs image_size)"),
        LossSpec("inner_iou", BOXES, {
            "ratio": Param(0.7, 0.0, None, low_open=True, doc="auxiliary box scale (paper: 0.5-1.5)"),
            "base": Param("iou", choices=AUX_BASES, doc="the loss Inner-IoU modifies"),
        }, "Inner-IoU: IoU of auxiliary boxes scaled about the centres (arXiv 2311.02877)"),
        LossSpec("shape_iou", BOXES, {"scale": Param(0.0, 0.0, None, doc="target-size exponent (paper: 0-1.5)")},
                 "Shape-IoU: distance and shape costs weighted by the target's shape (arXiv 2312.17663)"),
        LossSpec("focaler_iou", BOXES, {
            "d": Param(0.0, 0.0, 1.0, doc="IoU mapped to 0 at and below d"),
            "u": Param(0.95, 0.0, 1.0, doc="IoU mapped to 1 at and above u"),
            "base": Param("iou", choices=AUX_BASES, doc="the loss Focaler-IoU modifies"),
        }, "Focaler-IoU: IoU mapped linearly between d and u (arXiv 2401.10525)",
            check=lambda p: None if p["d"] < p["u"] else f"d={p['d']:g} must be < u={p['u']:g}"),
    ]
}

LOSSES: tuple[str, ...] = tuple(SPECS)


def check_params(name: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Validate a loss name and its parameters; return the full parameter dict.

    Raises LossParamError (a ValueError and a UserError) with a one-line message naming
    what was wrong and what is valid.
    """
    if name not in SPECS:
        raise LossParamError(f"unknown loss {name!r}; valid: {', '.join(SPECS)}")
    spec = SPECS[name]
    params = dict(params or {})
    unknown = sorted(set(params) - set(spec.params))
    if unknown:
        valid = ", ".join(spec.params) or "none"
        raise LossParamError(f"loss {name!r} has no parameter {unknown[0]!r}; valid parameters: {valid}")
    out = {k: p.default for k, p in spec.params.items()}
    for key, value in params.items():
        p = spec.params[key]
        if p.choices is not None:
            if value not in p.choices:
                raise LossParamError(f"{name}.{key}={value!r} is not valid; valid: {p.describe()}")
            out[key] = value
            continue
        if value is None:
            if not p.nullable:
                raise LossParamError(f"{name}.{key} must be a number in {p.describe()}, got null")
            out[key] = None
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise LossParamError(f"{name}.{key} must be a number in {p.describe()}, got {value!r}")
        v = float(value)
        bad = not math.isfinite(v)
        if p.low is not None:
            bad |= v <= p.low if p.low_open else v < p.low - 1e-8
        if p.high is not None:
            bad |= v > p.high + 1e-8
        if bad:
            raise LossParamError(f"{name}.{key}={v:.10g} is out of range; valid: {p.describe()}")
        # Values within the rounding tolerance are snapped onto the bound (e.g. beta given as
        # 0.36787944 for 1/e), so the formulas never see a value just outside their domain.
        if p.low is not None and not p.low_open:
            v = max(v, p.low)
        if p.high is not None:
            v = min(v, p.high)
        out[key] = v
    problem = spec.check(out) if spec.check is not None else None
    if problem:
        raise LossParamError(f"{name}: {problem}")
    return out


def check_weight(weight: Any) -> float:
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
        raise LossParamError(f"loss weight must be a finite number >= 0, got {weight!r}")
    return float(weight)
