"""Figures 4 and 5: the FocalL1 loss (Eq. 9) and its gradient (Eq. 8) against the error x.

Figure 4 evaluates the library's ``focal_l1`` loss (``get_loss("focal_l1", beta=β)``) on
one coordinate, x = |pred − target|, and takes its gradient with autograd, so the figure
checks the library: the gradient must be −αx ln(βx) for x ≤ 1 and −α ln β beyond, with
α = eβ, peaking at 1 at x* = 1/(eβ).

Figure 5 is the construction before normalisation: (a) the desired gradient shape −x ln x,
(b) the family −x ln(βx) whose peak height depends on β (hence α in Eq. 8).
"""

from __future__ import annotations

import math

INV_E = 1.0 / math.e
FIG4_BETAS = (INV_E, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
FIG5_BETAS = (INV_E, 0.5, 0.75, 1.0)


def beta_label(beta: float) -> str:
    return "1/e" if abs(beta - INV_E) < 1e-12 else f"{beta:g}"


def focal_l1_curves(betas=FIG4_BETAS, x_max: float = 2.0, n: int = 401, loss_factory=None):
    """{"x": [...], "loss": {β: [...]}, "grad": {β: [...]}} from the library's focal_l1."""
    import torch

    from bbrctl.simulate.descent import default_loss_factory

    loss_factory = loss_factory or default_loss_factory
    x = torch.linspace(0.0, x_max, n, dtype=torch.float64)
    out = {"x": x.tolist(), "loss": {}, "grad": {}}
    for beta in betas:
        fn = loss_factory("focal_l1", beta=beta)
        pred = torch.zeros(n, 4, dtype=torch.float64)
        pred[:, 0] = x
        pred.requires_grad_(True)
        with torch.enable_grad():
            loss = fn(pred, torch.zeros_like(pred), reduction="none")   # (n,): summed over coords
            (g,) = torch.autograd.grad(loss.sum(), pred)
        out["loss"][beta] = loss.detach().tolist()
        out["grad"][beta] = g[:, 0].tolist()
    return out


def focal_l1_gradient_formula(x: float, beta: float) -> float:
    """Eq. 8 with α = eβ: −αx ln(βx) for 0 < x ≤ 1, −α ln β for x > 1 (0 at x = 0)."""
    alpha = math.e * beta
    if x <= 0:
        return 0.0
    if x <= 1:
        return -alpha * x * math.log(beta * x)
    return -alpha * math.log(beta)


def figure5_curves(betas=FIG5_BETAS, n: int = 400):
    """{"x": (0, 1], "expected": −x ln x, "family": {β: −x ln(βx)}}."""
    xs = [(i + 1) / n for i in range(n)]
    return {
        "x": xs,
        "expected": [-x * math.log(x) for x in xs],
        "family": {b: [-x * math.log(b * x) for x in xs] for b in betas},
    }
