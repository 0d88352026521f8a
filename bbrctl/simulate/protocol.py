"""The simulation protocol of Sec. 5.1 / Algorithm 1: anchors, targets, step schedule.

Geometry. A box is (x, y, w, h), centre and size. "Scale" is a percentage of the target
area (scale 100 = ``target_area``, 1 by default, as in the DIoU paper's simulation that
this one extends), and the aspect ratio r = w : h, so an anchor of scale s and ratio r has

    area = target_area · s / 100,   w = sqrt(area · r),   h = sqrt(area / r).

* Setup 1: N = 1000 centres uniform in [0, 20]²; 7 × 7 anchors per centre (ratios 1:4 …
  4:1 × scales 50 … 200); 7 targets at (10, 10), scale 100, the same 7 ratios. Every
  anchor is regressed to every target: N · 49 · 7 = 343,000 pairs.
* Setup 2: N = 100 centres uniform in the square of side 2.5 centred at (10, 10); 3 × 3
  anchors (1:3, 1:1, 3:1 × 50, 100, 150); 3 targets (scale 100): N · 9 · 3 = 2,700 pairs.

Pairs are laid out as (N, S, A) flattened (point, anchor shape, target), the index order
of I ∈ R^{T×N×S×A} in Algorithm 1.

Schedule (Algorithm 1, lines 6-9): µ_t = 0.1 for t ≤ 0.8T, 0.01 for t ≤ 0.9T, else 0.001.

Step rule. By default the step is also multiplied by (2 − IoU(B_{t-1}, Bgt)) per pair, as
in the DIoU/CIoU authors' reference simulation, which this paper's Algorithm 1 follows
(it keeps their "+" sign convention). Evidence: the paper's Figure 1 check (CIoU takes
the 1 × 2.4 anchor to w = 1.64, h = 2.84 in 50 iterations) is reproduced to within 0.02
under this rule, while without it no anchor position on a 0.5 grid in [0, 10]² gets closer
than (1.41, 2.76) (see ``single.py``). ``scale_step=False`` gives Algorithm 1 as printed.

This module imports torch only inside the functions that build tensors.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from bbrctl.errors import UserError

CENTRE = (10.0, 10.0)


@dataclass(frozen=True)
class SetupSpec:
    """The geometry of one of the paper's two setups."""

    number: int
    points: int                      # N, the paper's default
    region: tuple[float, float, float, float]  # x0, y0, x1, y1 where anchor centres are drawn
    ratios: tuple[float, ...]        # anchor aspect ratios w/h
    scales: tuple[float, ...]        # anchor scales, percent of the target area
    target_ratios: tuple[float, ...]

    @property
    def anchors_per_point(self) -> int:  # S
        return len(self.ratios) * len(self.scales)


SETUPS: dict[int, SetupSpec] = {
    1: SetupSpec(1, 1000, (0.0, 0.0, 20.0, 20.0),
                 (1 / 4, 1 / 3, 1 / 2, 1.0, 2.0, 3.0, 4.0),
                 (50.0, 67.0, 75.0, 100.0, 133.0, 150.0, 200.0),
                 (1 / 4, 1 / 3, 1 / 2, 1.0, 2.0, 3.0, 4.0)),
    2: SetupSpec(2, 100, (10 - 1.25, 10 - 1.25, 10 + 1.25, 10 + 1.25),
                 (1 / 3, 1.0, 3.0),
                 (50.0, 100.0, 150.0),
                 (1 / 3, 1.0, 3.0)),
}

# The IoU-family losses the simulation accepts (regression in box space) and its default set.
SIM_LOSSES = ("iou", "giou", "diou", "ciou", "eiou", "focal_eiou", "focal_eiou_v1", "focal_eiou_star",
              # the successors (bbrctl.losses.successors, .wise), run beside the paper's with --losses
              "siou", "alpha_iou", "wiou_v1", "wiou_v2", "wiou_v3", "mpdiou", "inner_iou", "shape_iou",
              "focaler_iou")
DEFAULT_LOSSES = ("iou", "giou", "diou", "ciou", "eiou", "focal_eiou")
DTYPES = ("float32", "float64")
# MPDIoU normalises by the input image's w^2 + h^2; the simulation has no image, so it uses
# its canvas: the square of side CANVAS * sqrt(target_area) (setup 1 draws anchor centres in
# [0, 20]^2; both setups' targets sit at its centre (10, 10), setup 2's anchors inside it).
CANVAS = 20.0
FOCAL_REDUCTIONS = ("weighted", "none")


@dataclass(frozen=True)
class SimConfig:
    """Everything that determines a simulation's numbers (the device does not)."""

    setup: int = 1
    losses: tuple[str, ...] = DEFAULT_LOSSES
    iterations: int = 200            # T
    points: int | None = None        # N; None = the paper's (1000 / 100)
    seed: int = 0
    target_area: float = 1.0         # the area of "scale 100"
    scale_step: bool = True          # multiply µ by (2 − IoU), as the DIoU reference code does
    gamma: float = 0.5               # Focal-EIoU / Focal-EIoU* γ
    beta: float = 0.8                # Focal-EIoU v1 β
    focal_reduction: str = "weighted"  # Eq. 11 over all pairs, or per-pair IoU^γ·L_EIoU
    dtype: str = "float32"
    quantile_every: int = 5          # exact IoU quantiles every k iterations (+ box-plot ones)
    min_size: float = 1e-3           # w, h are clamped to >= min_size · sqrt(target_area)

    @property
    def spec(self) -> SetupSpec:
        return SETUPS[self.setup]

    @property
    def n_points(self) -> int:
        return self.points if self.points is not None else self.spec.points

    @property
    def n_pairs(self) -> int:
        s = self.spec
        return self.n_points * s.anchors_per_point * len(s.target_ratios)

    def loss_params(self, name: str) -> dict[str, float]:
        """The library parameters of one loss under this config."""
        if name in ("focal_eiou", "focal_eiou_star"):
            return {"gamma": self.gamma}
        if name == "focal_eiou_v1":
            return {"beta": self.beta}
        return {}

    @property
    def image_size(self) -> tuple[float, float]:
        """(w, h) of the canvas MPDIoU is normalised by (see CANVAS)."""
        side = CANVAS * math.sqrt(self.target_area)
        return (side, side)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["losses"] = list(self.losses)
        d["points"] = self.n_points
        d["pairs"] = self.n_pairs
        from bbrctl.losses import user

        # A user's loss is identified by its import path and code (as in run signatures);
        # the key is absent otherwise, so the paper's simulations keep their signatures.
        codes = {n: user.identity({"name": n}) for n in self.losses if user.is_user_loss(n)}
        if codes:
            d["loss_code"] = codes
        return d

    def signature(self) -> str:
        """A short stable hash of the result-relevant settings (names the run directory)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:10]


def make_config(**kw: Any) -> SimConfig:
    """Build and validate a SimConfig; bad values raise a one-line UserError."""
    losses = kw.pop("losses", None)
    cfg = SimConfig(**{k: v for k, v in kw.items() if v is not None})
    if losses is not None:
        cfg = replace(cfg, losses=parse_losses(losses))
    validate(cfg)
    return cfg


def is_sim_loss(name: str) -> bool:
    """A loss Algorithm 1 can regress with: the IoU family, or a user's loss on xyxy boxes."""
    if name in SIM_LOSSES:
        return True
    from bbrctl.losses import user
    from bbrctl.losses.spec import BOXES, LOSSES

    spec = None if name in LOSSES else user.find(name)
    return spec is not None and user.is_user_loss(name) and spec.space == BOXES


def parse_losses(value: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    names = [s.strip() for s in value.split(",")] if isinstance(value, str) else [str(s).strip() for s in value]
    names = [n for n in names if n]
    if not names:
        raise UserError(f"--losses is empty; valid: {', '.join(SIM_LOSSES)}")
    for n in names:
        if not is_sim_loss(n):
            raise UserError(f"--losses: {n!r} is not an IoU-family loss the simulation can run; "
                            f"valid: {', '.join(SIM_LOSSES)}, or a user's loss on boxes (entry point or register_loss)")
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise UserError(f"--losses names {dup!r} twice; give each loss once")
    return tuple(names)


MAX_PAIRS = 5_000_000  # ~15x the paper's setup 1 (343,000 pairs): a few GiB of float64 state


def validate(cfg: SimConfig) -> None:
    from bbrctl.losses.spec import check_params

    if cfg.setup not in SETUPS:
        raise UserError(f"--setup {cfg.setup} does not exist; valid: {', '.join(map(str, SETUPS))}")
    parse_losses(cfg.losses)
    if not isinstance(cfg.iterations, int) or cfg.iterations < 1:
        raise UserError(f"--iterations must be an integer >= 1, got {cfg.iterations!r}")
    if cfg.points is not None and (not isinstance(cfg.points, int) or cfg.points < 1):
        raise UserError(f"--points must be an integer >= 1, got {cfg.points!r}")
    if cfg.n_pairs > MAX_PAIRS:
        raise UserError(f"--points {cfg.n_points} gives {cfg.n_pairs:,} box pairs, more than the {MAX_PAIRS:,} a "
                        f"simulation may hold (setup 1 of the paper has {SETUPS[1].points * cfg.n_pairs // cfg.n_points:,})")
    # Checked whichever losses run: both are recorded in summary.json (JSON has no NaN).
    for flag, v, lo in (("--beta", cfg.beta, "> 0"), ("--gamma", cfg.gamma, ">= 0")):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 or \
                (v == 0 and lo == "> 0"):
            raise UserError(f"{flag} must be a finite number {lo}, got {v!r}")
    if not (isinstance(cfg.target_area, (int, float)) and math.isfinite(cfg.target_area) and cfg.target_area > 0):
        raise UserError(f"--target-area must be a finite number > 0, got {cfg.target_area!r}")
    if cfg.dtype not in DTYPES:
        raise UserError(f"--dtype {cfg.dtype!r} is not supported; valid: {', '.join(DTYPES)}")
    if cfg.focal_reduction not in FOCAL_REDUCTIONS:
        raise UserError(f"--focal-reduction {cfg.focal_reduction!r} is not supported; "
                        f"valid: {', '.join(FOCAL_REDUCTIONS)}")
    if not isinstance(cfg.quantile_every, int) or cfg.quantile_every < 1:
        raise UserError(f"--quantile-every must be an integer >= 1, got {cfg.quantile_every!r}")
    if not (math.isfinite(cfg.min_size) and cfg.min_size > 0):
        raise UserError(f"min_size must be > 0, got {cfg.min_size!r}")
    for name in cfg.losses:
        try:
            params = check_params(name, cfg.loss_params(name))
        except ValueError as e:
            flag = "--beta" if name == "focal_eiou_v1" else "--gamma"
            raise UserError(f"{flag}: {e}") from None
        from bbrctl.losses import user

        if user.is_user_loss(name):
            user.probe(name, params)


def step_size(t: int, iterations: int) -> float:
    """µ_t of Algorithm 1 (t counts from 1): 0.1 up to 0.8T, 0.01 up to 0.9T, then 0.001."""
    if t <= 0.8 * iterations:
        return 0.1
    if t <= 0.9 * iterations:
        return 0.01
    return 0.001


def shape_wh(scale: float, ratio: float, target_area: float) -> tuple[float, float]:
    """(w, h) of a box with ``scale`` percent of ``target_area`` and aspect ratio w/h = ``ratio``."""
    area = target_area * scale / 100.0
    return math.sqrt(area * ratio), math.sqrt(area / ratio)


def anchor_shapes(spec: SetupSpec, target_area: float) -> list[tuple[float, float]]:
    """The S anchor (w, h) per point, ratio-major (matches the figure's 7×7 grid)."""
    return [shape_wh(s, r, target_area) for r in spec.ratios for s in spec.scales]


def target_boxes(spec: SetupSpec, target_area: float) -> list[tuple[float, float, float, float]]:
    """The A targets at (10, 10), scale 100, as (x, y, w, h)."""
    return [(*CENTRE, *shape_wh(100.0, r, target_area)) for r in spec.target_ratios]


def sample_points(cfg: SimConfig):
    """N anchor centres, uniform in the setup's region; float64, CPU, from ``cfg.seed`` only.

    Drawn on the CPU with a private generator so that a seed gives the same points on any
    device and regardless of global RNG state.
    """
    import torch

    g = torch.Generator().manual_seed(cfg.seed)
    x0, y0, x1, y1 = cfg.spec.region
    u = torch.rand(cfg.n_points, 2, generator=g, dtype=torch.float64)
    return torch.stack([x0 + (x1 - x0) * u[:, 0], y0 + (y1 - y0) * u[:, 1]], dim=1)


def build_pairs(cfg: SimConfig, device="cpu"):
    """All anchor-target pairs as two (P, 4) xywh tensors (anchors, targets), P = N·S·A."""
    import torch

    dtype = getattr(torch, cfg.dtype)
    spec = cfg.spec
    pts = sample_points(cfg)                                              # (N, 2)
    shapes = torch.tensor(anchor_shapes(spec, cfg.target_area), dtype=torch.float64)  # (S, 2)
    tg = torch.tensor(target_boxes(spec, cfg.target_area), dtype=torch.float64)      # (A, 4)
    n, s, a = pts.shape[0], shapes.shape[0], tg.shape[0]
    anchors = torch.cat([pts[:, None, None, :].expand(n, s, a, 2),
                         shapes[None, :, None, :].expand(n, s, a, 2)], dim=-1).reshape(-1, 4)
    targets = tg[None, None].expand(n, s, a, 4).reshape(-1, 4)
    return (anchors.to(device=device, dtype=dtype).contiguous(),
            targets.to(device=device, dtype=dtype).contiguous())


def boxplot_iterations(iterations: int) -> list[int]:
    """Iterations shown in the IoU box plots: 0, ~T/10, T/4, T/2, 3T/4, T (distinct)."""
    its = {0, iterations}
    for f in (0.1, 0.25, 0.5, 0.75):
        its.add(int(round(f * iterations)))
    return sorted(its)


def quantile_iterations(cfg: SimConfig) -> list[int]:
    """Iterations at which exact IoU quantiles are recorded (a stride, plus box-plot ones)."""
    its = set(range(0, cfg.iterations + 1, cfg.quantile_every)) | set(boxplot_iterations(cfg.iterations))
    return sorted(its)


def with_overrides(cfg: SimConfig, **kw: Any) -> SimConfig:
    out = replace(cfg, **kw)
    validate(out)
    return out


__all__ = ["SETUPS", "SIM_LOSSES", "DEFAULT_LOSSES", "SimConfig", "make_config", "is_sim_loss", "parse_losses", "validate",
           "step_size", "shape_wh", "anchor_shapes", "target_boxes", "sample_points", "build_pairs",
           "boxplot_iterations", "quantile_iterations", "with_overrides"]
