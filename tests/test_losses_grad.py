"""Gradients: gradcheck in float64 for every loss, and the fused analytic backward of the
IoU family against the plain-autograd implementation (written with torch.minimum/maximum,
an independent formulation of the same geometry)."""

from __future__ import annotations

import math

import pytest
import torch

import bbrctl.losses as L
from bbrctl.losses import boxes as B

F64 = torch.float64


def well_conditioned(n=12, seed=0):
    """Valid, overlapping, non-touching pairs: no ties, no kinks of min/max/relu/|.|."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=F64) * 10
    wh = torch.rand(n, 2, generator=g, dtype=F64) * 4 + 2
    t = torch.cat([xy, xy + wh], 1)
    p = t + (torch.rand(n, 4, generator=g, dtype=F64) - 0.5) * 1.5
    return p, t


def anything(n=300, seed=1):
    """Overlapping, disjoint, nested and inverted boxes at random (no exact ties)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(n, 4, generator=g, dtype=F64) * 5
    p = torch.randn(n, 4, generator=g, dtype=F64) * 5
    k = n // 3
    t[:k] = torch.cat([t[:k, :2], t[:k, :2] + torch.rand(k, 2, generator=g, dtype=F64) * 5 + 0.5], 1)
    p[:k] = t[:k] + torch.randn(k, 4, generator=g, dtype=F64)
    return p, t


def numgrad(fn, x, h=1e-6):
    """Central differences of a scalar function."""
    out = torch.zeros_like(x)
    flat = x.detach().clone().view(-1)
    for i in range(flat.numel()):
        old = flat[i].item()
        flat[i] = old + h
        up = fn(flat.view_as(x)).item()
        flat[i] = old - h
        down = fn(flat.view_as(x)).item()
        flat[i] = old
        out.view(-1)[i] = (up - down) / (2 * h)
    return out


@pytest.mark.parametrize("name", ["iou", "giou", "diou", "eiou", "focal_eiou_v1"])
def test_gradcheck_box_losses(name):
    p, t = well_conditioned()
    fn = L.loss_function(name)
    assert torch.autograd.gradcheck(lambda x: fn(x, t, reduction="none"), (p.requires_grad_(),))


@pytest.mark.parametrize("name,params", [("l1", {}), ("smooth_l1", {"beta": 0.5}), ("balanced_l1", {}),
                                         ("focal_l1", {"beta": 0.8}), ("focal_l1", {"beta": 1 / math.e})])
def test_gradcheck_delta_losses(name, params):
    g = torch.Generator().manual_seed(2)
    # |x| spread over both branches of every piecewise loss, away from the kinks.
    x = torch.tensor([0.05, 0.3, 0.7, 1.3, 2.5, -0.2, -0.9, -1.7], dtype=F64)
    p = (x + torch.rand(8, generator=g, dtype=F64) * 0.01).view(2, 4).requires_grad_()
    fn = L.loss_function(name)
    assert torch.autograd.gradcheck(lambda a: fn(a, torch.zeros_like(a), reduction="none", **params), (p,))


def test_ciou_gradient_treats_alpha_as_a_constant():
    """CIoU's alpha has no gradient (Eq. 5 as the CIoU authors and torchvision use it), so
    compare with finite differences of DIoU + alpha0 * v with alpha frozen at the point."""
    p, t = well_conditioned(5, seed=3)
    iou0 = L.box_iou_aligned(p, t, eps=1e-7)

    def v_of(x):
        w, h = x[:, 2] - x[:, 0], x[:, 3] - x[:, 1]
        wg, hg = t[:, 2] - t[:, 0], t[:, 3] - t[:, 1]
        return 4 / math.pi ** 2 * (torch.atan(wg / hg) - torch.atan(w / h)) ** 2

    alpha0 = v_of(p) / (1 - iou0 + v_of(p) + 1e-7)
    frozen = lambda x: (L.diou_loss(x, t, reduction="none") + alpha0 * v_of(x)).sum()  # noqa: E731
    x = p.clone().requires_grad_()
    L.ciou_loss(x, t, reduction="sum").backward()
    assert torch.allclose(x.grad, numgrad(frozen, p), atol=1e-6)


@pytest.mark.parametrize("name", ["focal_eiou", "focal_eiou_star"])
def test_focal_weight_is_detached(name):
    """W (Eq. 10) carries no gradient: d/dx sum(W L)/sum(W) = sum(W dL/dx)/sum(W), W frozen."""
    p, t = well_conditioned(5, seed=4)
    gamma = 0.7
    iou0 = L.box_iou_aligned(p, t, eps=1e-7)
    w0 = iou0 ** gamma if name == "focal_eiou" else -(1 - iou0) ** gamma * torch.log(iou0)
    frozen = lambda x: (w0 * L.eiou_loss(x, t, reduction="none")).sum() / w0.sum()  # noqa: E731
    x = p.clone().requires_grad_()
    L.loss_function(name)(x, t, gamma=gamma).backward()
    assert torch.allclose(x.grad, numgrad(frozen, p), atol=1e-6)


@pytest.mark.parametrize("kind", B.KINDS)
@pytest.mark.parametrize("eps", [1e-7, 0.0])
def test_fused_backward_matches_autograd(kind, eps):
    p, t = anything()
    up = torch.rand(p.shape[0], dtype=F64, generator=torch.Generator().manual_seed(5))
    a, b = p.clone().requires_grad_(), p.clone().requires_grad_()
    la, ia = B._base("t", a, t, kind, eps, 0.3 if kind == "ciou" else None, impl="fused")
    lb, ib = B._base("t", b, t, kind, eps, 0.3 if kind == "ciou" else None, impl="autograd")
    assert torch.allclose(la, lb, atol=1e-12, rtol=1e-12)
    assert torch.allclose(ia, ib, atol=1e-14)
    (la * up).sum().backward()
    (lb * up).sum().backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-12, rtol=1e-9)


@pytest.mark.parametrize("kind", B.KINDS)
def test_fused_backward_matches_autograd_float32(kind):
    p, t = anything(seed=6)
    a, b = p.float().requires_grad_(), p.float().requires_grad_()
    B._base("t", a, t.float(), kind, 1e-7, impl="fused")[0].sum().backward()
    B._base("t", b, t.float(), kind, 1e-7, impl="autograd")[0].sum().backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-5, rtol=1e-4)


def test_identical_boxes_have_eps_small_gradient():
    _, t = well_conditioned(8, seed=7)
    for kind in B.KINDS:
        x = t.clone().requires_grad_()
        value, _ = B._base("t", x, t, kind, 1e-7)
        assert (value.abs() < 1e-6).all()
        value.sum().backward()
        assert x.grad.abs().max() < 1e-6, kind


def test_backward_runs_twice_with_retain_graph():
    p, t = well_conditioned(4, seed=8)
    x = p.clone().requires_grad_()
    value = L.eiou_loss(x, t)
    value.backward(retain_graph=True)
    first = x.grad.clone()
    value.backward()
    assert torch.allclose(x.grad, 2 * first)


def test_target_gradients_by_symmetry():
    """EIoU is symmetric in (pred, target): the target's gradient (autograd path) at (p, t)
    equals the pred's gradient (fused path) at (t, p)."""
    p, t = well_conditioned(6, seed=9)
    tt = t.clone().requires_grad_()
    L.eiou_loss(p, tt, reduction="sum").backward()
    pp = t.clone().requires_grad_()
    L.eiou_loss(pp, p, reduction="sum").backward()
    assert torch.allclose(tt.grad, pp.grad, atol=1e-12)


def test_no_grad_and_detached_inputs():
    p, t = well_conditioned(3, seed=10)
    with torch.no_grad():
        v = L.focal_eiou_loss(p.clone().requires_grad_(), t)
    assert not v.requires_grad
    assert not L.eiou_loss(p, t).requires_grad


@pytest.mark.parametrize("kind", B.KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_cpu_blocks_give_the_same_values_and_gradients(monkeypatch, kind, dtype):
    # Large CPU batches run in cache-sized blocks; the result must not depend on the split
    # (here 1000-pair blocks with a ragged last block, against one block).
    p, t = anything(n=2500, seed=3)
    p, t = p.to(dtype), t.to(dtype)
    fn = L.loss_function(kind)
    out = {}
    for block in (10 ** 9, 1000):
        monkeypatch.setattr(B, "CPU_BLOCK", block)
        x = p.clone().requires_grad_()
        per_pair = fn(x, t, reduction="none")
        (per_pair * torch.linspace(0.5, 2.0, len(p), dtype=dtype)).sum().backward()
        out[block] = (per_pair.detach(), x.grad)
    # Equal up to the last ulp: vectorised and scalar tails of atan2 (CIoU) may round apart.
    tol = dict(rtol=1e-6, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(out[1000][0], out[10 ** 9][0], **tol)
    torch.testing.assert_close(out[1000][1], out[10 ** 9][1], **tol)
