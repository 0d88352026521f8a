"""Every registered loss on a CUDA device agrees with the same loss in float64 on the CPU:
value and gradient, float32 and (upcast) float16 inputs. Skipped without CUDA; run on a GPU
machine with `python -m pytest tests/test_losses_cuda.py`."""

from __future__ import annotations

import pytest
import torch

from bbrctl.losses import LOSSES, get_loss

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def pairs(n=4096, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 900
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * 90 + 10
    target = torch.cat([xy, xy + wh], 1)
    cxy = xy + wh / 2 + torch.randn(n, 2, generator=g, dtype=torch.float64) * wh / 3
    pwh = wh * torch.exp(torch.randn(n, 2, generator=g, dtype=torch.float64) * 0.3)
    return torch.cat([cxy - pwh / 2, cxy + pwh / 2], 1), target


def value_and_grad(fn, pred, target):
    x = pred.clone().requires_grad_()
    v = fn(x, target)
    v.backward()
    return v.detach(), x.grad


@pytest.mark.parametrize("name", LOSSES)
def test_cuda_float32_matches_cpu_float64(name):
    fn = get_loss(name)
    pred, target = pairs()
    if fn.space == "deltas":  # encoded deltas: small numbers around 0
        pred, target = (pred - 450) / 300, (target - 450) / 300
    v64, g64 = value_and_grad(fn, pred, target)
    v32, g32 = value_and_grad(fn, pred.float().cuda(), target.float().cuda())
    assert v32.device.type == "cuda" and v32.dtype == torch.float32
    assert torch.allclose(v32.double().cpu(), v64, rtol=1e-4, atol=1e-6), (float(v32), float(v64))
    scale = g64.abs().max().clamp_min(1e-12)
    assert ((g32.double().cpu() - g64).abs().max() / scale) < 1e-3


@pytest.mark.parametrize("name", LOSSES)
def test_cuda_half_inputs_are_upcast_and_finite(name):
    fn = get_loss(name)
    pred, target = pairs(512, seed=1)
    if fn.space == "deltas":
        pred, target = (pred - 450) / 300, (target - 450) / 300
    v, g = value_and_grad(fn, pred.half().cuda(), target.half().cuda())
    assert torch.isfinite(v) and torch.isfinite(g).all() and v.dtype in (torch.float16, torch.float32)
