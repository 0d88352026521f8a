"""The loss library: registry, configs, hand-computed values, torchvision agreement,
reductions, Focal-EIoU's Eq. 11 and FocalL1's gradient (Eq. 8-9)."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

import bbrctl.losses as L
from bbrctl import config as C
from bbrctl.errors import UserError
from bbrctl.losses import LOSSES, get_loss

F64 = torch.float64


def boxes(*rows, dtype=F64):
    return torch.tensor(rows, dtype=dtype)


def random_boxes(n, seed=0, dtype=F64, scale=100.0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=dtype) * scale
    wh = (torch.rand(n, 2, generator=g, dtype=dtype) + 0.05) * scale / 2
    return torch.cat([xy, xy + wh], 1)


def jittered(t, seed=1, frac=0.3):
    g = torch.Generator().manual_seed(seed)
    wh = t[:, 2:] - t[:, :2]
    return t + torch.randn(t.shape, generator=g, dtype=t.dtype) * torch.cat([wh, wh], 1) * frac / 4


# --- registry and configs -----------------------------------------------------------

def test_registry_resolves_all_twenty_one_names():
    assert len(LOSSES) == 21 and len(set(LOSSES)) == 21   # the paper's twelve and nine successors
    p, t = jittered(random_boxes(5)), random_boxes(5)
    for name in LOSSES:
        fn = get_loss(name)
        kw = {"image_size": (200.0, 200.0)} if name == "mpdiou" else {}
        assert fn.name == name and fn.space in (L.BOXES, L.DELTAS)
        assert fn.params == L.check_params(name)
        assert fn.default_reduction in fn.reductions
        x = p.clone().requires_grad_()
        value = fn(x, t, **kw)
        assert value.dim() == 0 and torch.isfinite(value)
        value.backward()
        assert torch.isfinite(x.grad).all()
        assert fn(x, t, reduction="none", **kw).shape == (5,)


def test_default_reductions():
    for name in LOSSES:
        want = "weighted" if name in ("focal_eiou", "focal_eiou_star") else "mean"
        assert get_loss(name).default_reduction == want, name


def test_importing_the_package_does_not_import_torch():
    code = ("import sys\nimport bbrctl.losses as L\nfrom bbrctl.losses import LOSSES, get_loss, SPECS\n"
            "L.check_params('focal_eiou', {'gamma': 1})\nassert 'torch' not in sys.modules, 'torch imported'\n"
            "L.eiou_loss\nassert 'torch' in sys.modules\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("name", LOSSES)
def test_config_composes_for_every_loss(name):
    cfg = C.compose([f"loss={name}"])
    assert cfg.loss.name == name
    assert cfg.weight == (1.0 if L.SPECS[name].space == L.DELTAS else 2.5)
    params = dict(cfg.loss.params)
    fn = get_loss(name, **params)
    assert fn.name == name


def test_config_shorthand_binds_swept_parameters():
    assert C.compose(["loss=focal_l1", "beta=0.5"]).loss.params.beta == 0.5
    assert C.compose(["loss=focal_eiou_v1", "beta=1"]).loss.params.beta == 1
    assert C.compose(["loss=focal_eiou_star", "gamma=2"]).loss.params.gamma == 2
    assert C.compose(["loss=focal_eiou", "gamma=0.25"]).loss.params.gamma == 0.25


@pytest.mark.parametrize("overrides,needle", [
    (["loss=focal_l1", "beta=0.2"], "[1/e, 1]"),
    (["loss=focal_eiou_v1", "beta=1.5"], "[1/e, 1]"),
    (["loss=focal_eiou", "gamma=-0.5"], ">= 0"),
    (["loss=focal_eiou_star", "gamma=-1"], ">= 0"),
    (["loss=eiou", "weight=-1"], ">= 0"),
    (["loss=ciou", "loss.params.alpha_iou_gate=2"], "[0, 1]"),
])
def test_config_rejects_out_of_range(overrides, needle):
    with pytest.raises(UserError) as e:
        C.compose(overrides)
    assert needle in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("name,params,needle", [
    ("focal_l1", {"beta": 0.3}, "focal_l1.beta=0.3 is out of range; valid: [1/e, 1]"),
    ("focal_l1", {"beta": 1.01}, "valid: [1/e, 1]"),
    ("focal_eiou", {"gamma": -1}, "focal_eiou.gamma=-1 is out of range; valid: >= 0"),
    ("smooth_l1", {"beta": 0}, "valid: > 0"),
    ("eiou", {"gamma": 1}, "has no parameter 'gamma'"),
    ("nope", {}, "unknown loss 'nope'"),
])
def test_get_loss_rejects_bad_parameters(name, params, needle):
    with pytest.raises(L.LossParamError) as e:
        get_loss(name, **params)
    assert needle in str(e.value)
    # Both a ValueError for library callers and a UserError (exit 2) for the CLI.
    assert isinstance(e.value, ValueError) and isinstance(e.value, UserError)


def test_per_loss_functions_validate_too():
    t = random_boxes(2)
    with pytest.raises(L.LossParamError, match=r"\[1/e, 1\]"):
        L.focal_l1_loss(t, t, beta=0.1)
    with pytest.raises(L.LossParamError, match=">= 0"):
        L.focal_eiou_loss(t, t, gamma=-0.1)
    with pytest.raises(ValueError, match="valid: none, mean, sum, weighted"):
        L.focal_eiou_loss(t, t, reduction="avg")
    with pytest.raises(ValueError, match="valid: none, mean, sum$"):
        L.eiou_loss(t, t, reduction="weighted")
    with pytest.raises(ValueError, match=r"shape \(N, 4\)"):
        L.eiou_loss(t[:, :3], t[:, :3])
    with pytest.raises(ValueError, match=r"weight must have shape \(2,\)"):
        L.eiou_loss(t, t, weight=torch.ones(3))
    with pytest.raises(L.LossParamError, match="loss weight"):
        L.check_weight(-0.5)


def test_beta_at_the_bound_is_snapped_inside():
    assert L.check_params("focal_l1", {"beta": 0.36787944})["beta"] == pytest.approx(1 / math.e, abs=0)
    assert L.check_params("focal_l1", {"beta": 1.0000000001})["beta"] == 1.0


# --- hand-computed values (float64, 1e-6) ---------------------------------------------

# A: pred (0,0,2,2), target (1,1,3,3): inter 1, union 7, C = 3x3, rho^2 = 2, same sizes.
# B: pred (0,0,4,2), target (1,0,2,4): inter 2, union 10, C = 4x4, rho^2 = 1.25,
#    w - w_gt = 3, h - h_gt = -2.
# D: disjoint pred (0,0,1,1), target (2,0,3,1): IoU 0, C = 3x1, rho^2 = 4.
PA, TA = (0, 0, 2, 2), (1, 1, 3, 3)
PB, TB = (0, 0, 4, 2), (1, 0, 2, 4)
PD, TD = (0, 0, 1, 1), (2, 0, 3, 1)
V_B = 4 / math.pi ** 2 * (math.atan(1 / 4) - math.atan(4 / 2)) ** 2
EIOU = {"A": 6 / 7 + 2 / 18, "B": 0.8 + 1.25 / 32 + 9 / 16 + 4 / 16, "D": 1 + 4 / 10}
IOU = {"A": 1 / 7, "B": 0.2, "D": 0.0}
HAND = {
    "iou": {"A": 6 / 7, "B": 0.8, "D": 1.0},
    "giou": {"A": 6 / 7 + 2 / 9, "B": 0.8 + 6 / 16, "D": 1 + 1 / 3},
    "diou": {"A": 6 / 7 + 2 / 18, "B": 0.8 + 1.25 / 32, "D": 1 + 4 / 10},
    "ciou": {"A": 6 / 7 + 2 / 18, "B": 0.8 + 1.25 / 32 + V_B ** 2 / (0.8 + V_B), "D": 1 + 4 / 10},
    "eiou": EIOU,
}


def _focal_l1_ref(x, beta):
    alpha = math.e * beta
    if x <= 1:
        return 0.0 if x == 0 else -alpha * x * x * (2 * math.log(beta * x) - 1) / 4
    return -alpha * math.log(beta) * x + (2 * alpha * math.log(beta) + alpha) / 4


def _cases():
    return {"A": (boxes(PA), boxes(TA)), "B": (boxes(PB), boxes(TB)), "D": (boxes(PD), boxes(TD))}


@pytest.mark.parametrize("name", list(HAND))
@pytest.mark.parametrize("impl", ["fused", "autograd"])
def test_iou_family_hand_values(name, impl):
    fn = L.loss_function(name)
    for case, (p, t) in _cases().items():
        got = fn(p, t, reduction="none", eps=0.0, impl=impl).item()
        assert got == pytest.approx(HAND[name][case], abs=1e-6), case


def test_focal_variants_hand_values():
    cases = _cases()
    for case, (p, t) in cases.items():
        e, i = EIOU[case], IOU[case]
        for beta in (1 / math.e, 0.8, 1.0):
            got = L.focal_eiou_v1_loss(p, t, reduction="none", beta=beta, eps=0.0).item()
            assert got == pytest.approx(_focal_l1_ref(e, beta), abs=1e-6)
        for gamma in (0.0, 0.5, 2.0):
            got = L.focal_eiou_loss(p, t, reduction="none", gamma=gamma, eps=0.0).item()
            assert got == pytest.approx((i ** gamma if i > 0 or gamma == 0 else 0.0) * e, abs=1e-6)
        if i > 0:
            got = L.focal_eiou_star_loss(p, t, reduction="none", gamma=0.5, eps=0.0).item()
            assert got == pytest.approx(-((1 - i) ** 0.5) * math.log(i) * e, abs=1e-6)


def test_eq11_weighted_mean_by_hand():
    p = torch.cat([boxes(PA), boxes(PB), boxes(PD)])
    t = torch.cat([boxes(TA), boxes(TB), boxes(TD)])
    w = {k: IOU[k] ** 0.5 for k in "ABD"}
    want = sum(w[k] * EIOU[k] for k in "ABD") / sum(w.values())
    assert L.focal_eiou_loss(p, t, gamma=0.5, eps=0.0).item() == pytest.approx(want, abs=1e-6)
    # A per-box weight enters both sums: sum(W w L) / sum(W w).
    bw = torch.tensor([1.0, 3.0, 2.0], dtype=F64)
    want_w = sum(w[k] * b * EIOU[k] for k, b in zip("ABD", (1, 3, 2))) / sum(w[k] * b for k, b in zip("ABD", (1, 3, 2)))
    assert L.focal_eiou_loss(p, t, weight=bw, gamma=0.5, eps=0.0).item() == pytest.approx(want_w, abs=1e-6)


def test_focal_eiou_gamma_zero_is_eiou_mean():
    t = random_boxes(64, seed=3)
    p = jittered(t, seed=4, frac=2.0)
    assert torch.allclose(L.focal_eiou_loss(p, t, gamma=0.0), L.eiou_loss(p, t), atol=1e-12, rtol=0)


def test_focal_eiou_all_disjoint_is_zero_with_zero_gradient():
    """sum W = 0: Eq. 11 has nothing to normalise; we return 0, attached, not NaN."""
    t = random_boxes(6, seed=5)
    p = (t + 1000.0).requires_grad_()  # every pair disjoint
    assert (L.box_iou_aligned(p, t) == 0).all()
    for dtype in (torch.float32, F64):
        x = p.detach().to(dtype).requires_grad_()
        value = L.focal_eiou_loss(x, t.to(dtype), gamma=0.5)
        assert value.item() == 0.0 and value.requires_grad
        value.backward()
        assert torch.equal(x.grad, torch.zeros_like(x))
    # ... and also for the all-zero per-box weight, and for Focal-EIoU*, whose weight
    # -(1 - IoU)^g log(IoU) is 0 at IoU = 1 and finite (log at eps) at IoU = 0.
    same = t.clone().requires_grad_()
    v = L.focal_eiou_loss(same, t, weight=torch.zeros(6, dtype=F64))
    v.backward()
    assert v.item() == 0.0 and torch.isfinite(same.grad).all()
    assert abs(L.focal_eiou_star_loss(t, t).item()) < 1e-6
    for eps in (1e-7, 0.0):
        x = p.detach().clone().requires_grad_()
        v = L.focal_eiou_star_loss(x, t, eps=eps)
        v.backward()
        assert torch.isfinite(v) and v.item() > 0 and torch.isfinite(x.grad).all()


def test_inverted_box_is_pulled_back_to_positive_width():
    # pred (1.5,0,0.5,1) has w = -1: its area clamps to 0 (IoU 0), the enclosing box is the
    # hull of all corners, 2 x 1, the centres coincide, EIoU = 1 + (-1 - 2)^2 / 2^2 = 3.25,
    # and the gradient grows the width (x2 up, x1 down).
    p = boxes((1.5, 0, 0.5, 1)).requires_grad_()
    t = boxes((0, 0, 2, 1))
    value = L.eiou_loss(p, t, eps=0.0)
    assert value.item() == pytest.approx(3.25, abs=1e-9)
    value.backward()
    assert p.grad[0, 2] < 0 < p.grad[0, 0]
    # Every ratio stays bounded for inverted boxes: GIoU's term in [0, 1), EIoU <= 10.
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(500, 4, generator=g, dtype=F64), torch.randn(500, 4, generator=g, dtype=F64)
    assert (L.eiou_loss(a, b, reduction="none") <= 10).all()
    assert (L.giou_loss(a, b, reduction="none") <= 2).all()


def test_zero_area_identical_boxes_have_iou_zero():
    z = boxes((1, 1, 1, 3))
    assert L.box_iou_aligned(z, z).item() == 0.0
    assert L.iou_loss(z, z).item() == 1.0
    good = boxes((1, 1, 4, 3))
    assert L.box_iou_aligned(good, good).item() == pytest.approx(1.0, abs=1e-12)


# --- agreement with torchvision -------------------------------------------------------

def test_giou_diou_ciou_match_torchvision():
    """Where the definitions coincide: valid boxes, and an eps too small to matter (our eps
    is relative to the enclosing box, torchvision's absolute; tv's CIoU ignores its eps for
    the IoU term, where its fixed 1e-7 is negligible next to areas of ~1e4..1e6)."""
    import torchvision.ops as tv

    t = random_boxes(400, seed=7, scale=1000.0)
    p = torch.cat([jittered(t[:300], seed=8), random_boxes(100, seed=9, scale=1000.0)])
    assert ((p[:, 2:] > p[:, :2]).all() and (t[:, 2:] > t[:, :2]).all())
    for ours, theirs in [(L.giou_loss, tv.generalized_box_iou_loss), (L.diou_loss, tv.distance_box_iou_loss),
                         (L.ciou_loss, tv.complete_box_iou_loss)]:
        a = p.clone().requires_grad_()
        b = p.clone().requires_grad_()
        va = ours(a, t, reduction="none", eps=1e-12)
        vb = theirs(b, t, reduction="none", eps=1e-12)
        assert torch.allclose(va, vb, atol=1e-9, rtol=0), ours.__name__
        va.sum().backward()
        vb.sum().backward()
        assert torch.allclose(a.grad, b.grad, atol=1e-9, rtol=1e-7), ours.__name__


def test_box_iou_aligned_matches_torchvision_diagonal():
    import torchvision.ops as tv

    t = random_boxes(50, seed=10)
    p = jittered(t, seed=11)
    want = tv.box_iou(p, t).diagonal()
    assert torch.allclose(L.box_iou_aligned(p, t), want, atol=1e-12)


def test_l1_and_smooth_l1_match_torch():
    g = torch.Generator().manual_seed(0)
    p, t = torch.randn(30, 4, generator=g, dtype=F64), torch.randn(30, 4, generator=g, dtype=F64)
    F = torch.nn.functional
    assert torch.allclose(L.l1_loss(p, t, reduction="none"), F.l1_loss(p, t, reduction="none").sum(1))
    for beta in (1.0, 1 / 9, 0.5):
        want = F.smooth_l1_loss(p, t, reduction="none", beta=beta).sum(1)
        assert torch.allclose(L.smooth_l1_loss(p, t, reduction="none", beta=beta), want)


# --- delta-space losses -------------------------------------------------------------

def test_delta_losses_hand_values():
    p = torch.tensor([[0.5, -2.0, 0.0, 0.1]], dtype=F64)
    t = torch.zeros_like(p)
    xs = (0.5, 2.0, 0.0, 0.1)
    assert L.l1_loss(p, t).item() == pytest.approx(2.6, abs=1e-9)
    assert L.smooth_l1_loss(p, t).item() == pytest.approx(0.125 + 1.5 + 0 + 0.005, abs=1e-9)
    for beta in (1 / math.e, 0.8, 1.0):
        want = sum(_focal_l1_ref(x, beta) for x in xs)
        assert L.focal_l1_loss(p, t, beta=beta).item() == pytest.approx(want, abs=1e-6)
    # Balanced L1 with Libra R-CNN's parameters, straight from their Eq. 8-9 (beta = 1).
    a, g = 0.5, 1.5
    b = math.exp(g / a) - 1

    def libra(x):
        return a / b * (b * x + 1) * math.log(b * x + 1) - a * x if x < 1 else g * x + g / b - a

    assert L.balanced_l1_loss(p, t).item() == pytest.approx(sum(libra(x) for x in xs), abs=1e-6)


def test_balanced_l1_is_c1_at_beta():
    for beta in (1.0, 0.5, 2.0):
        x = torch.tensor([beta - 1e-7, beta + 1e-7], dtype=F64, requires_grad=True)
        pad = torch.zeros(2, 3, dtype=F64)
        pred = torch.cat([x[:, None], pad], 1)
        v = L.balanced_l1_loss(pred, torch.zeros_like(pred), reduction="none", beta=beta)
        v.sum().backward()
        assert abs(v[0].item() - v[1].item()) < 1e-6
        assert x.grad[0].item() == pytest.approx(1.5, abs=1e-5) and x.grad[1].item() == pytest.approx(1.5)


def test_per_coordinate_weight_for_deltas():
    p = torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=F64)
    t = torch.zeros_like(p)
    w = torch.tensor([[1.0, 0.0, 0.5, 0.0]], dtype=F64)
    assert L.l1_loss(p, t, weight=w).item() == pytest.approx(2.5)
    assert L.l1_loss(p, t, weight=torch.tensor([2.0], dtype=F64)).item() == pytest.approx(20.0)


# --- FocalL1's gradient (Eq. 8) -------------------------------------------------------

@pytest.mark.parametrize("beta", [1 / math.e, 0.5, 0.8, 1.0])
def test_focal_l1_gradient_shape(beta):
    alpha = math.e * beta
    xs = torch.linspace(1e-4, 3.0, 30001, dtype=F64).requires_grad_()
    L.focal_l1_elementwise(xs, beta).sum().backward()
    g = xs.grad
    # Maximum magnitude exactly 1, at x* = 1/(e beta).
    x_star = 1 / (math.e * beta)
    assert g.max().item() == pytest.approx(1.0, abs=1e-6)
    assert xs[g.argmax()].item() == pytest.approx(x_star, abs=2e-4)
    x = torch.tensor([x_star], dtype=F64, requires_grad=True)
    L.focal_l1_elementwise(x, beta).backward()
    assert x.grad.item() == pytest.approx(1.0, abs=1e-12)
    # Constant -alpha ln(beta) beyond 1, and matching from the left at 1.
    assert torch.allclose(g[xs > 1.0001], torch.full_like(g[xs > 1.0001], -alpha * math.log(beta)))
    left = g[(xs > 0.9999) & (xs <= 1.0)]
    assert torch.allclose(left, torch.full_like(left, -alpha * math.log(beta)), atol=1e-3)
    assert (g >= 0).all()


@pytest.mark.parametrize("beta", [1 / math.e, 0.8, 1.0])
def test_focal_l1_is_continuous_at_one_and_zero_at_zero(beta):
    x = torch.tensor([1 - 1e-12, 1.0, 1 + 1e-12, 0.0], dtype=F64, requires_grad=True)
    v = L.focal_l1_elementwise(x, beta)
    assert abs(v[0] - v[2]).item() < 1e-9 and abs(v[1] - v[2]).item() < 1e-9
    assert v[3].item() == 0.0
    v.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad[3].item() == 0.0


def test_focal_l1_loss_gradient_through_deltas():
    beta = 0.8
    p = torch.tensor([[0.2, -0.2, 3.0, -3.0]], dtype=F64, requires_grad=True)
    L.focal_l1_loss(p, torch.zeros_like(p), beta=beta, reduction="sum").backward()
    a = math.e * beta
    g_small = -a * 0.2 * math.log(beta * 0.2)
    want = [g_small, -g_small, -a * math.log(beta), a * math.log(beta)]
    assert torch.allclose(p.grad[0], torch.tensor(want, dtype=F64))


# --- reductions, weights, dtypes, empty input ------------------------------------------

def _unbound(name):
    """The loss with its default parameters; a stateful one (Wise-IoU) without its bound
    running mean, so every call starts from the same mean; MPDIoU given an image."""
    fn = get_loss(name)
    if fn.state is not None:
        fn.state = None
    if name == "mpdiou":
        return lambda *a, _f=fn, **k: _f(*a, image_size=(200.0, 200.0), **k)
    return fn


@pytest.mark.parametrize("name", LOSSES)
def test_reductions_and_weights(name):
    t = random_boxes(8, seed=12)
    p = jittered(t, seed=13)
    fn = _unbound(name)
    per = fn(p, t, reduction="none")
    w = torch.linspace(0.5, 2.0, 8, dtype=F64)
    if get_loss(name).default_reduction == "weighted":
        assert torch.allclose(fn(p, t, reduction="sum"), per.sum())
        assert torch.allclose(fn(p, t, reduction="mean"), per.mean())
        assert torch.allclose(fn(p, t, weight=w, reduction="none"), per * w)
    else:
        assert torch.allclose(fn(p, t), per.mean())
        assert torch.allclose(fn(p, t, reduction="sum"), per.sum())
        assert torch.allclose(fn(p, t, weight=w, reduction="none"), per * w)
        assert torch.allclose(fn(p, t, weight=w), (per * w).sum() / 8)


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("reduction", ["none", "sum", "mean", None])
def test_zero_boxes_stay_on_the_graph(name, reduction):
    x = torch.zeros(0, 4, requires_grad=True)
    value = _unbound(name)(x, torch.zeros(0, 4), reduction=reduction)
    assert torch.isfinite(value).all() and value.requires_grad
    value.sum().backward()
    assert x.grad is not None and x.grad.shape == (0, 4)


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("dtype,out", [(torch.float16, torch.float32), (torch.bfloat16, torch.float32),
                                       (torch.float32, torch.float32), (torch.float64, torch.float64)])
def test_dtype_rule(name, dtype, out):
    t = random_boxes(16, seed=14, dtype=torch.float32)
    p = jittered(t, seed=15)
    x = p.to(dtype).requires_grad_()
    value = _unbound(name)(x, t.to(dtype))
    assert value.dtype == out and torch.isfinite(value)
    value.backward()
    assert x.grad.dtype == dtype and torch.isfinite(x.grad.float()).all()
    # Half inputs compute in float32: the same value as float32 inputs given the same numbers.
    ref = _unbound(name)(x.detach().float(), t.to(dtype).float())
    assert torch.allclose(value.float(), ref.float(), rtol=1e-5, atol=1e-6)


def test_mixed_dtypes_promote_to_float64():
    t = random_boxes(4)
    assert L.eiou_loss(t.float(), t).dtype == F64
    assert L.eiou_loss(t.half(), t.float()).dtype == torch.float32


def test_target_gradient_uses_autograd_path():
    t = random_boxes(6, seed=16).requires_grad_()
    p = jittered(t.detach(), seed=17).requires_grad_()
    L.eiou_loss(p, t).backward()
    assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="impl='autograd'"):
        L.eiou_loss(p, t, impl="fused")


def test_ciou_alpha_gate():
    # IoU(B) = 0.2: a gate of 0.5 zeroes alpha (CIoU = DIoU); a gate of 0.1 keeps it.
    p, t = boxes(PB), boxes(TB)
    d = L.diou_loss(p, t, eps=0.0).item()
    assert L.ciou_loss(p, t, alpha_iou_gate=0.5, eps=0.0).item() == pytest.approx(d, abs=1e-12)
    assert L.ciou_loss(p, t, alpha_iou_gate=0.1, eps=0.0).item() == pytest.approx(HAND["ciou"]["B"], abs=1e-6)
    assert get_loss("ciou", alpha_iou_gate=0.5)(p, t).item() == pytest.approx(d, abs=1e-6)
