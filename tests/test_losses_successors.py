"""The successor losses against plain-Python re-implementations of their papers' equations,
plus what the shared property tests (test_losses_properties.py) do not cover: reductions,
dtypes, the blocked path across block boundaries, limits that reduce to the base losses,
Wise-IoU's running mean, MPDIoU's image size and one-line parameter errors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import bbrctl.losses as L
from bbrctl.losses import LossParamError, check_params, get_loss
from bbrctl.losses.wise import RunningMean

NEW = ("siou", "alpha_iou", "wiou_v1", "wiou_v2", "wiou_v3", "mpdiou", "inner_iou", "shape_iou", "focaler_iou")
IMAGE = (640.0, 480.0)

# Valid boxes of every relation: overlapping, nested, disjoint, same centre, aligned centres.
PRED = [[10, 10, 50, 60], [0, 0, 30, 30], [100, 100, 120, 140], [5, 5, 45, 45], [20, 0, 60, 20], [3, 7, 9, 30]]
TARGET = [[20, 15, 60, 70], [5, 5, 25, 25], [0, 0, 40, 30], [15, 15, 35, 35], [30, 40, 70, 60], [4, 6, 8, 40]]


def _kw(name):
    return {"image_size": IMAGE} if name == "mpdiou" else {}


# ------------------------------------------------------------------ references (paper equations)

def _g(p, t):
    x1, y1, x2, y2 = p
    a1, b1, a2, b2 = t
    w, h, wg, hg = x2 - x1, y2 - y1, a2 - a1, b2 - b1
    iw = max(0.0, min(x2, a2) - max(x1, a1))
    ih = max(0.0, min(y2, b2) - max(y1, b1))
    inter = iw * ih
    union = w * h + wg * hg - inter
    cw, ch = max(x2, a2) - min(x1, a1), max(y2, b2) - min(y1, b1)
    dx, dy = (x1 + x2 - a1 - a2) / 2, (y1 + y2 - b1 - b2) / 2
    return dict(w=w, h=h, wg=wg, hg=hg, iou=inter / union, union=union, cw=cw, ch=ch, dx=dx, dy=dy,
                rho2=dx * dx + dy * dy, c2=cw * cw + ch * ch)


def ref_siou(p, t, theta=4.0):
    g = _g(p, t)
    sigma = math.sqrt(g["rho2"])
    x = abs(g["dy"]) / sigma if sigma > 0 else 0.0          # c_h / sigma = sin(alpha)
    lam = 1 - 2 * math.sin(math.asin(x) - math.pi / 4) ** 2
    if sigma == 0:
        lam = 0.0
    gamma = 2 - lam
    dist = sum(1 - math.exp(-gamma * r) for r in ((g["dx"] / g["cw"]) ** 2, (g["dy"] / g["ch"]) ** 2))
    ow = abs(g["w"] - g["wg"]) / max(g["w"], g["wg"])
    oh = abs(g["h"] - g["hg"]) / max(g["h"], g["hg"])
    shape = (1 - math.exp(-ow)) ** theta + (1 - math.exp(-oh)) ** theta
    return 1 - g["iou"] + (dist + shape) / 2


def ref_alpha(p, t, alpha=3.0, base="iou"):
    g = _g(p, t)
    loss = 1 - g["iou"] ** alpha
    area_c = g["cw"] * g["ch"]
    if base == "giou":
        loss += ((area_c - g["union"]) / area_c) ** alpha
    if base in ("diou", "ciou"):
        loss += g["rho2"] ** alpha / g["c2"] ** alpha
    if base == "ciou":
        v = 4 / math.pi ** 2 * (math.atan(g["wg"] / g["hg"]) - math.atan(g["w"] / g["h"])) ** 2
        beta = v / ((1 - g["iou"]) + v)
        loss += (beta * v) ** alpha
    return loss


def ref_wiou_batches(batches, version, gamma=0.5, alpha=1.9, delta=3.0, momentum=0.01):
    """Per-pair losses of successive batches, with the running mean updated before use."""
    mean, out = 1.0, []
    for ps, ts in batches:
        gs = [_g(p, t) for p, t in zip(ps, ts)]
        liou = [1 - g["iou"] for g in gs]
        v1 = [math.exp(g["rho2"] / g["c2"]) * li for g, li in zip(gs, liou)]
        mean = (1 - momentum) * mean + momentum * sum(liou) / len(liou)
        if version == 1:
            out.append(v1)
        elif version == 2:
            out.append([(li / mean) ** gamma * l for li, l in zip(liou, v1)])
        else:
            rs = [(li / mean) / (delta * alpha ** (li / mean - delta)) for li in liou]
            out.append([r * l for r, l in zip(rs, v1)])
    return out, mean


def ref_mpdiou(p, t, w=IMAGE[0], h=IMAGE[1]):
    g = _g(p, t)
    d1 = (p[0] - t[0]) ** 2 + (p[1] - t[1]) ** 2
    d2 = (p[2] - t[2]) ** 2 + (p[3] - t[3]) ** 2
    return 1 - (g["iou"] - d1 / (w * w + h * h) - d2 / (w * w + h * h))


def _ref_base(p, t, base):
    g = _g(p, t)
    if base == "iou":
        return 1 - g["iou"]
    if base == "giou":
        area_c = g["cw"] * g["ch"]
        return 1 - g["iou"] + (area_c - g["union"]) / area_c
    if base == "diou":
        return 1 - g["iou"] + g["rho2"] / g["c2"]
    if base == "siou":
        return ref_siou(p, t)
    raise AssertionError(base)


def ref_inner(p, t, ratio=0.7, base="iou"):
    def inner(b):
        xc, yc, w, h = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2, b[2] - b[0], b[3] - b[1]
        return xc - w * ratio / 2, yc - h * ratio / 2, xc + w * ratio / 2, yc + h * ratio / 2, w, h

    bl, bt, br, bb, w, h = inner(p)
    gl, gt, gr, gb, wg, hg = inner(t)
    inter = max(0.0, min(gr, br) - max(gl, bl)) * max(0.0, min(gb, bb) - max(gt, bt))
    union = wg * hg * ratio ** 2 + w * h * ratio ** 2 - inter
    iou_inner = inter / union
    if base == "iou":
        return 1 - iou_inner
    return _ref_base(p, t, base) + _g(p, t)["iou"] - iou_inner


def ref_shape(p, t, scale=0.0):
    g = _g(p, t)
    ww = 2 * g["wg"] ** scale / (g["wg"] ** scale + g["hg"] ** scale)
    hh = 2 * g["hg"] ** scale / (g["wg"] ** scale + g["hg"] ** scale)
    dist = hh * g["dx"] ** 2 / g["c2"] + ww * g["dy"] ** 2 / g["c2"]
    ow = hh * abs(g["w"] - g["wg"]) / max(g["w"], g["wg"])
    oh = ww * abs(g["h"] - g["hg"]) / max(g["h"], g["hg"])
    shape = (1 - math.exp(-ow)) ** 4 + (1 - math.exp(-oh)) ** 4
    return 1 - g["iou"] + dist + 0.5 * shape


def ref_focaler(p, t, d=0.0, u=0.95, base="iou"):
    iou = _g(p, t)["iou"]
    f = 0.0 if iou < d else 1.0 if iou > u else (iou - d) / (u - d)
    if base == "iou":
        return 1 - f
    return _ref_base(p, t, base) + iou - f


CASES = [
    ("siou", {}, ref_siou),
    ("siou", {"theta": 2.0}, lambda p, t: ref_siou(p, t, 2.0)),
    *[("alpha_iou", {"base": b}, lambda p, t, b=b: ref_alpha(p, t, 3.0, b)) for b in ("iou", "giou", "diou", "ciou")],
    ("alpha_iou", {"alpha": 0.5, "base": "ciou"}, lambda p, t: ref_alpha(p, t, 0.5, "ciou")),
    ("mpdiou", {}, ref_mpdiou),
    *[("inner_iou", {"base": b}, lambda p, t, b=b: ref_inner(p, t, 0.7, b)) for b in ("iou", "giou", "siou")],
    ("inner_iou", {"ratio": 1.3}, lambda p, t: ref_inner(p, t, 1.3)),
    ("shape_iou", {}, ref_shape),
    ("shape_iou", {"scale": 1.3}, lambda p, t: ref_shape(p, t, 1.3)),
    ("focaler_iou", {}, ref_focaler),
    ("focaler_iou", {"d": 0.2, "u": 0.6, "base": "diou"}, lambda p, t: ref_focaler(p, t, 0.2, 0.6, "diou")),
]


@pytest.mark.parametrize("name,params,ref", CASES, ids=[f"{n}-{p}" for n, p, _ in CASES])
def test_matches_the_papers_equations(name, params, ref):
    p = torch.tensor(PRED, dtype=torch.float64)
    t = torch.tensor(TARGET, dtype=torch.float64)
    got = get_loss(name, **params)(p, t, reduction="none", eps=0.0, **_kw(name))
    want = torch.tensor([ref(a, b) for a, b in zip(PRED, TARGET)], dtype=torch.float64)
    assert torch.allclose(got, want, rtol=1e-9, atol=1e-12), (got, want)


@pytest.mark.parametrize("version", [1, 2, 3])
def test_wise_iou_matches_the_paper_over_successive_batches(version):
    batches = [(PRED, TARGET), (TARGET[:3], PRED[:3]), (PRED[2:], TARGET[2:])]
    want, want_mean = ref_wiou_batches(batches, version, momentum=0.3)
    loss = get_loss(f"wiou_v{version}", **({} if version == 1 else {"momentum": 0.3}))
    for (ps, ts), w in zip(batches, want):
        got = loss(torch.tensor(ps, dtype=torch.float64), torch.tensor(ts, dtype=torch.float64),
                   reduction="none", eps=0.0)
        assert torch.allclose(got, torch.tensor(w, dtype=torch.float64), rtol=1e-9, atol=1e-12)
    if version > 1:
        assert float(loss.state.value) == pytest.approx(want_mean, rel=1e-12)


def test_wise_iou_mean_starts_at_one_and_updates_only_while_training():
    p, t = torch.tensor(PRED, dtype=torch.float64), torch.tensor(TARGET, dtype=torch.float64)
    liou = 1 - L.box_iou_aligned(p, t)
    loss = get_loss("wiou_v3")
    assert float(loss.state.value) == 1.0
    with torch.no_grad():                 # an assignment cost or an evaluation: no update
        loss(p, t)
    assert float(loss.state.value) == 1.0
    loss(p.requires_grad_(), t, eps=0.0)
    assert float(loss.state.value) == pytest.approx(0.99 + 0.01 * float(liou.mean()), rel=1e-12)
    # A direct call without state starts from 1.0: one update from this batch.
    a = L.wiou_v3_loss(p, t, reduction="none")
    b = get_loss("wiou_v3")(p, t, reduction="none")
    assert torch.equal(a, b)
    # An empty batch leaves the mean alone.
    before = loss.state.value.clone()
    loss(p[:0], t[:0])
    assert torch.equal(loss.state.value, before)
    rm = RunningMean()
    rm.load_state_dict(loss.state.state_dict())
    assert torch.equal(rm.value, loss.state.value)


def test_wiou_v1_denominator_gives_no_gradient():
    """R_WIoU's W_g^2 + H_g^2 is detached (the paper marks it with a star): moving a corner that only
    changes the enclosing box changes R's value but not through its gradient."""
    p = torch.tensor([[0.0, 0.0, 10.0, 10.0]], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([[20.0, 0.0, 30.0, 10.0]], dtype=torch.float64)   # disjoint: L_IoU = 1 exactly
    L.wiou_v1_loss(p, t, eps=0.0).backward()
    # L = exp(rho^2 / c2*) with rho^2 = ((x1 + x2)/2 - 25)^2: d/dx1 = L * (xc - 25) / c2.
    xc, c2 = 5.0, 30.0 ** 2 + 10.0 ** 2
    val = math.exp((xc - 25) ** 2 / c2)
    assert p.grad[0, 0].item() == pytest.approx(val * (xc - 25) / c2, rel=1e-9)
    assert p.grad[0, 1].item() == pytest.approx(0.0, abs=1e-12)


# ------------------------------------------------------------------ limits reducing to the base losses

def test_limits_give_the_base_losses():
    p, t = torch.tensor(PRED, dtype=torch.float64), torch.tensor(TARGET, dtype=torch.float64)
    for base in ("iou", "giou", "diou", "ciou"):
        want = get_loss(base)(p, t, reduction="none")
        assert torch.allclose(get_loss("alpha_iou", alpha=1.0, base=base)(p, t, reduction="none"), want, atol=1e-12)
    for base in ("iou", "giou", "diou", "ciou", "eiou"):
        want = get_loss(base)(p, t, reduction="none")
        assert torch.allclose(get_loss("inner_iou", ratio=1.0, base=base)(p, t, reduction="none"), want, atol=1e-12)
        assert torch.allclose(get_loss("focaler_iou", d=0.0, u=1.0, base=base)(p, t, reduction="none"), want,
                              atol=1e-12)
    assert torch.allclose(get_loss("inner_iou", ratio=1.0, base="siou")(p, t, reduction="none"),
                          get_loss("siou")(p, t, reduction="none"), atol=1e-12)


# ------------------------------------------------------------------ reductions, weights, dtypes, paths

def _batch(n, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 500
    t = torch.cat([xy, xy + 5 + torch.rand(n, 2, generator=g) * 80], 1)
    p = t + torch.randn(n, 4, generator=g) * 12
    return p.to(dtype), t.to(dtype)


@pytest.mark.parametrize("name", NEW)
def test_reductions_and_weights_agree(name):
    p, t = _batch(37, dtype=torch.float64)
    w = torch.rand(37, dtype=torch.float64)
    fn = L.loss_function(name)          # unbound: every call starts from the same state
    none = fn(p, t, reduction="none", **_kw(name))
    assert none.shape == (37,)
    assert torch.allclose(fn(p, t, reduction="sum", **_kw(name)), none.sum())
    assert torch.allclose(fn(p, t, reduction="mean", **_kw(name)), none.mean())
    assert torch.allclose(fn(p, t, weight=w, reduction="sum", **_kw(name)), (none * w).sum())
    with pytest.raises(ValueError, match="reduction"):
        fn(p, t, reduction="weighted", **_kw(name))
    empty = fn(p[:0].requires_grad_(), t[:0], reduction="mean", **_kw(name))
    assert float(empty.detach()) == 0.0


@pytest.mark.parametrize("name", NEW)
def test_dtypes_float64_kept_half_upcast(name):
    p, t = _batch(9)
    fn = L.loss_function(name)
    assert fn(p.double(), t.double(), **_kw(name)).dtype == torch.float64
    for half in (torch.float16, torch.bfloat16):
        x = p.to(half).requires_grad_()
        out = fn(x, t.to(half), **_kw(name))
        assert out.dtype == torch.float32
        out.backward()
        assert x.grad.dtype == half and torch.isfinite(x.grad.float()).all()


@pytest.mark.parametrize("name", NEW)
def test_blocked_path_matches_autograd_across_blocks_and_for_target_grads(name):
    from bbrctl.losses.successors import PAIR_BLOCK

    p, t = _batch(PAIR_BLOCK + 7, seed=3, dtype=torch.float64)
    fn = L.loss_function(name)
    a, b = p.clone().requires_grad_(), p.clone().requires_grad_()
    la = fn(a, t, reduction="none", impl="fused", **_kw(name))
    lb = fn(b, t, reduction="none", impl="autograd", **_kw(name))
    assert torch.allclose(la, lb, rtol=1e-10, atol=1e-12)
    g = torch.rand(p.shape[0], dtype=torch.float64)
    (la * g).sum().backward()
    (lb * g).sum().backward()
    assert torch.allclose(a.grad, b.grad, rtol=1e-8, atol=1e-12)
    # A target that requires grad takes the plain-autograd path and gets a gradient.
    tt = t[:5].clone().requires_grad_()
    fn(p[:5], tt, **_kw(name)).backward()
    assert tt.grad is not None and torch.isfinite(tt.grad).all()
    with pytest.raises(ValueError, match="impl='fused'"):
        fn(p[:5], t[:5].clone().requires_grad_(), impl="fused", **_kw(name))


coord = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, allow_subnormal=False)


@given(st.lists(st.tuples(*[coord] * 8), min_size=1, max_size=5), st.sampled_from(NEW),
       st.sampled_from([torch.float32, torch.float64]))
def test_any_finite_input_gives_finite_value_and_gradient(rows, name, dtype):
    """Arbitrary, possibly inverted, zero-size or coincident corners (the shared property
    tests draw structured kinds; these are raw)."""
    p = torch.tensor([r[:4] for r in rows], dtype=dtype, requires_grad=True)
    t = torch.tensor([r[4:] for r in rows], dtype=dtype)
    kw = {"image_size": (1.0, 1.0)} if name == "mpdiou" else {}
    per = get_loss(name)(p, t, reduction="none", **kw)
    assert torch.isfinite(per).all() and (per >= -1e-6).all()
    per.sum().backward()
    assert torch.isfinite(p.grad).all()


@given(st.lists(st.tuples(st.floats(0, 100), st.floats(0, 100), st.floats(0.5, 50), st.floats(0.5, 50)),
                min_size=1, max_size=5), st.sampled_from(NEW))
def test_minimum_at_identical_boxes(rows, name):
    """Identical boxes: loss ~0 and the gradient ~0 (every term is at its minimum)."""
    b = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in rows], dtype=torch.float64)
    x = b.clone().requires_grad_()
    per = get_loss(name)(x, b, reduction="none", eps=0.0, **_kw(name))
    assert (per.abs() <= 1e-9).all()
    per.sum().backward()
    assert x.grad.abs().max() <= 1e-6


# ------------------------------------------------------------------ MPDIoU image size

def test_mpdiou_image_size_per_box_or_shared():
    p, t = _batch(6, dtype=torch.float64)
    shared = L.mpdiou_loss(p, t, reduction="none", image_size=(320, 200))
    per_box = L.mpdiou_loss(p, t, reduction="none", image_size=torch.tensor([[320.0, 200.0]] * 6))
    assert torch.equal(shared, per_box)
    bigger = L.mpdiou_loss(p, t, reduction="none", image_size=(640, 400))
    assert (bigger < shared).all()        # the same corner distances weigh less in a bigger image
    for bad, msg in [(None, "image_size is required"), ((320,), "must be"), ((0, 200), "> 0"),
                     (torch.ones(5, 2), "must be")]:
        with pytest.raises(ValueError, match=msg) as e:
            L.mpdiou_loss(p, t, image_size=bad)
        assert "\n" not in str(e.value)


# ------------------------------------------------------------------ parameters

@pytest.mark.parametrize("name,params,msg", [
    ("siou", {"theta": 0.5}, "siou.theta=0.5 is out of range; valid: >= 1"),
    ("alpha_iou", {"alpha": 0}, "alpha_iou.alpha=0 is out of range; valid: > 0"),
    ("alpha_iou", {"base": "eiou"}, "alpha_iou.base='eiou' is not valid; valid: one of iou, giou, diou, ciou"),
    ("inner_iou", {"base": 1.0}, "inner_iou.base=1.0 is not valid; valid: one of iou, giou, diou, ciou, eiou, siou"),
    ("inner_iou", {"ratio": -1}, "inner_iou.ratio=-1 is out of range; valid: > 0"),
    ("wiou_v2", {"momentum": 1.5}, "wiou_v2.momentum=1.5 is out of range; valid: [0, 1]"),
    ("wiou_v3", {"alpha": 1.0}, "wiou_v3.alpha=1 is out of range; valid: > 1"),
    ("wiou_v1", {"gamma": 0.5}, "loss 'wiou_v1' has no parameter 'gamma'; valid parameters: none"),
    ("shape_iou", {"scale": -0.1}, "shape_iou.scale=-0.1 is out of range; valid: >= 0"),
    ("focaler_iou", {"d": 0.5, "u": 0.5}, "focaler_iou: d=0.5 must be < u=0.5"),
    ("focaler_iou", {"u": 1.2}, "focaler_iou.u=1.2 is out of range; valid: [0, 1]"),
])
def test_bad_parameters_are_one_line_errors(name, params, msg):
    with pytest.raises(LossParamError) as e:
        get_loss(name, **params)
    assert str(e.value) == msg
    with pytest.raises(LossParamError):
        check_params(name, params)
    fn = L.loss_function(name)
    if name != "wiou_v1":
        with pytest.raises(LossParamError):
            fn(*_batch(2), **params, **_kw(name))


def test_every_new_loss_is_registered_with_a_config_file():
    from pathlib import Path

    conf = Path(__file__).resolve().parents[1] / "conf" / "loss"
    for name in NEW:
        assert name in L.LOSSES and L.SPECS[name].space == L.BOXES
        text = (conf / f"{name}.yaml").read_text()
        assert f"name: {name}" in text and "weight: 2.5" in text
        assert callable(getattr(L, L.registry.FUNCTIONS[name][1]))
    assert {n for n in NEW if L.SPECS[n].stateful} == {"wiou_v2", "wiou_v3"}


@pytest.mark.parametrize("name,params", [("shape_iou", {"scale": 1.3}), ("siou", {"theta": 2.5}),
                                         ("siou", {"theta": 1.0}), ("alpha_iou", {"alpha": 0.5})])
def test_hand_derived_jacobians_match_autograd_off_the_defaults(name, params):
    p, t = _batch(300, seed=5, dtype=torch.float64)
    fn = L.loss_function(name)
    a, b = p.clone().requires_grad_(), p.clone().requires_grad_()
    la = fn(a, t, reduction="none", impl="fused", **params)
    lb = fn(b, t, reduction="none", impl="autograd", **params)
    assert torch.allclose(la, lb, rtol=1e-10, atol=1e-12)
    la.sum().backward()
    lb.sum().backward()
    assert torch.allclose(a.grad, b.grad, rtol=1e-8, atol=1e-12)
