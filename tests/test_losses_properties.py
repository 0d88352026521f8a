"""Properties over arbitrary finite boxes (hypothesis): zero-area, inverted, identical,
disjoint, nested and huge (1e8) boxes all give finite losses and gradients, losses are
>= 0 and ~0 for identical boxes, IoU-family losses are scale invariant, and half
precision inputs are upcast."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import bbrctl.losses as L
from bbrctl.losses import LOSSES, get_loss

BOX_LOSSES = [n for n in LOSSES if L.SPECS[n].space == L.BOXES]
# MPDIoU normalises by the input image: these tests give it an image that scales with the boxes.
NEEDS_IMAGE = {"mpdiou"}


def _kw(name, extent):
    return {"image_size": (2.0 * float(extent) + 1e-30, 1.5 * float(extent) + 1e-30)} if name in NEEDS_IMAGE else {}
KINDS = ("random", "valid", "zero_area", "identical", "disjoint", "nested", "point", "touching")

unit = st.floats(-1.0, 1.0, allow_nan=False, allow_infinity=False, allow_subnormal=False)


def _valid(v):
    x1, y1, x2, y2 = v
    return [min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)]


@st.composite
def pair(draw):
    """One (pred, target) pair in unit coordinates, of a drawn kind."""
    kind = draw(st.sampled_from(KINDS))
    p = [draw(unit) for _ in range(4)]
    t = [draw(unit) for _ in range(4)]
    if kind == "random":
        return p, t                                  # may be inverted in x and/or y
    p, t = _valid(p), _valid(t)
    if kind == "zero_area":
        p[2] = p[0]
    elif kind == "identical":
        t = list(p)
    elif kind == "disjoint":
        dx = p[2] - p[0] + draw(st.floats(0.0, 1.0))
        t = [p[0] + dx + 1e-3, t[1], p[0] + dx + 1e-3 + (t[2] - t[0]), t[3]]
    elif kind == "nested":
        t = [p[0] + (p[2] - p[0]) / 4, p[1] + (p[3] - p[1]) / 4, p[2] - (p[2] - p[0]) / 4, p[3] - (p[3] - p[1]) / 4]
    elif kind == "point":
        p = [p[0], p[1], p[0], p[1]]
    elif kind == "touching":
        t = [p[2], p[1], p[2] + abs(t[2] - t[0]), p[3]]
    return p, t


@st.composite
def batches(draw, scales=(1e-3, 1.0, 1e3, 1e6, 1e8)):
    scale = draw(st.sampled_from(scales))
    offset = draw(unit) * 10
    pairs = draw(st.lists(pair(), min_size=1, max_size=6))
    p = torch.tensor([q for q, _ in pairs], dtype=torch.float64)
    t = torch.tensor([q for _, q in pairs], dtype=torch.float64)
    return (p + offset) * scale, (t + offset) * scale


def _check_finite(name, p, t, dtype):
    fn = get_loss(name)
    kw = _kw(name, max(float(p.detach().abs().max()), float(t.abs().max()), 1.0))
    x = p.to(dtype).requires_grad_()
    per = fn(x, t.to(dtype), reduction="none", **kw)
    assert torch.isfinite(per).all(), (name, per)
    assert (per >= -1e-6).all(), (name, per)
    fn(x, t.to(dtype), **kw).backward()
    assert torch.isfinite(x.grad.float()).all(), (name, x.grad)


@given(batches())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_loss_and_gradient_is_finite_and_nonnegative(dtype, batch):
    p, t = batch
    for name in LOSSES:                 # delta losses read the same numbers as deltas
        _check_finite(name, p, t, dtype)


@given(batches())
def test_bfloat16_inputs(batch):
    p, t = batch
    for name in LOSSES:
        _check_finite(name, p, t, torch.bfloat16)


sixty_fourths = st.integers(-1024, 1024).map(lambda k: k / 64)


@given(st.lists(st.tuples(*[sixty_fourths] * 8), min_size=1, max_size=6), st.sampled_from((0.25, 1.0, 4.0, 64.0)))
def test_float16_inputs(rows, scale):
    """float16 holds gradients only up to 65504, and these losses' gradients grow like
    1 / (box size); on coordinates that float16 represents exactly (multiples of 1/64,
    so every nonzero size is >= 1/256) they must be finite. (Smaller boxes overflow to
    inf in the float16 gradient, which AMP's GradScaler treats as an overflow.)"""
    p = torch.tensor([r[:4] for r in rows], dtype=torch.float64) * scale
    t = torch.tensor([r[4:] for r in rows], dtype=torch.float64) * scale
    for name in LOSSES:
        _check_finite(name, p, t, torch.float16)


@given(st.lists(pair(), min_size=1, max_size=6), st.sampled_from((1e-3, 1.0, 1e3, 1e6)))
def test_iou_is_a_fraction(pairs, scale):
    p = torch.tensor([q for q, _ in pairs], dtype=torch.float64) * scale
    t = torch.tensor([q for _, q in pairs], dtype=torch.float64) * scale
    iou = L.box_iou_aligned(p, t)
    assert ((iou >= 0) & (iou <= 1)).all()


@given(st.lists(st.tuples(unit, unit, st.floats(0.01, 1.0), st.floats(0.01, 1.0)), min_size=1, max_size=6),
       st.sampled_from((1e-2, 1.0, 1e3, 1e8)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_identical_boxes_cost_nothing(dtype, rows, scale):
    b = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in rows], dtype=torch.float64)
    b = ((b + 3) * scale).to(dtype)
    for name in BOX_LOSSES:
        per = get_loss(name)(b, b, reduction="none", **_kw(name, scale))
        assert (per.abs() <= 1e-5).all(), (name, per)


grid = st.integers(-1000, 1000).map(lambda i: i / 1000)


@st.composite
def grid_pairs(draw):
    """Valid or inverted boxes whose sides are multiples of 1e-3 (so 0 or >= 1e-3)."""
    rows = draw(st.lists(st.tuples(*[grid] * 8), min_size=1, max_size=6))
    p = torch.tensor([r[:4] for r in rows], dtype=torch.float64)
    t = torch.tensor([r[4:] for r in rows], dtype=torch.float64)
    return p, t


@given(grid_pairs(), st.sampled_from((1e-2, 0.37, 7.3, 1e4)), st.sampled_from((1.0, 1e3)))
def test_iou_family_is_scale_invariant(batch, k, scale):
    p, t = batch
    p, t = p * scale, t * scale
    for name in BOX_LOSSES:
        fn = get_loss(name)
        frozen = {"update": False} if L.SPECS[name].stateful else {}   # the same running mean for both
        a = fn(p, t, reduction="none", **_kw(name, scale), **frozen)
        b = fn(p * k, t * k, reduction="none", **_kw(name, scale * k), **frozen)
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-9), (name, a, b)


@given(grid_pairs())
def test_fused_and_autograd_agree_on_values_everywhere(batch):
    """The fused geometry (|.| identities) and the reference (min/max) agree to rounding,
    also on touching edges, where the intersection must be exactly 0 in both (IoU^gamma
    would turn a stray ulp into ~1e-8)."""
    p, t = batch
    for name in BOX_LOSSES:
        fn = L.loss_function(name)
        a = fn(p, t, reduction="none", impl="fused", **_kw(name, 1.0))
        b = fn(p, t, reduction="none", impl="autograd", **_kw(name, 1.0))
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12), (name, a, b)
    assert torch.equal(L.box_iou_aligned(p, t) == 0, L.iou_loss(p, t, reduction="none", impl="autograd") == 1)
