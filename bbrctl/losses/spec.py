"""What each loss is, without importing torch.

The orchestration commands (config, sweep) validate loss parameters before anything is
created or submitted; they must not pay for importing torch, so the registry's metadata
lives here and the tensor code lives beside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from bbrctl.errors import UserError

INV_E = 1.0 / math.e

# Spaces a loss works in: encoded regression deltas (dx, dy, dw, dh) or decoded xyxy boxes.
DELTAS = "deltas"
BOXES = "boxes"

# Reductions every loss accepts; WEIGHTED is Eq. 11 (sum W*L / sum W) and only exists for
# the losses that carry a focal weight W.
REDUCTIONS = ("none", "mean", "sum")
WEIGHTED = "weighted"


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

    def describe(self) -> str:
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
    return out


def check_weight(weight: Any) -> float:
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
        raise LossParamError(f"loss weight must be a finite number >= 0, got {weight!r}")
    return float(weight)
