"""Input checks, dtype rule and reductions shared by every loss.

dtype rule: losses compute in float64 when either input is float64 and in float32
otherwise (float16/bfloat16/integer inputs are upcast: the squared and divided terms
overflow or lose all precision in half). The returned loss has the compute dtype; the
gradient reaching ``pred`` has ``pred``'s own dtype (autograd casts it back).
"""

from __future__ import annotations

from bbrctl.losses.spec import REDUCTIONS, WEIGHTED


def takes_keyword(fn, keyword: str) -> bool:
    """Whether the loss ``fn`` (a BoundLoss or a plain function) accepts ``keyword``, e.g.
    MPDIoU's ``image_size``, which callers that know the image (detectors, the simulation)
    then pass."""
    import inspect

    try:
        return keyword in inspect.signature(getattr(fn, "_fn", fn)).parameters
    except (TypeError, ValueError):
        return False


def compute_dtype(*tensors):
    import torch

    if any(t is not None and t.dtype == torch.float64 for t in tensors):
        return torch.float64
    return torch.float32


def check_pair(name: str, pred, target) -> None:
    if pred.dim() != 2 or pred.shape[-1] != 4 or pred.shape != target.shape:
        raise ValueError(f"{name}: pred and target must both have shape (N, 4), got "
                         f"{tuple(pred.shape)} and {tuple(target.shape)}")


def check_reduction(name: str, reduction: str, allowed: tuple[str, ...] = REDUCTIONS) -> None:
    if reduction not in allowed:
        raise ValueError(f"{name}: unknown reduction {reduction!r}; valid: {', '.join(allowed)}")


def as_weight(name: str, weight, n: int, like, allow_per_coord: bool = False):
    """A per-box weight as a (N,) tensor (or (N, 4) per coordinate where allowed), or None;
    moved to ``like``'s device and dtype."""
    if weight is None:
        return None
    import torch

    if not torch.is_tensor(weight):
        weight = torch.as_tensor(weight)
    ok = weight.shape == (n,) or (allow_per_coord and weight.shape == (n, 4))
    if not ok:
        valid = f"({n},)" + (f" or ({n}, 4)" if allow_per_coord else "")
        raise ValueError(f"{name}: weight must have shape {valid}, got {tuple(weight.shape)}")
    return weight.to(device=like.device, dtype=like.dtype)


def reduce(per_box, weight, reduction: str):
    """Reduce per-box losses (N,): 'none' keeps them, 'sum' adds, 'mean' divides by N.

    A per-box weight multiplies each term first ('mean' still divides by the number of
    pairs, not by the weights' sum; Eq. 11's weighted mean is ``reduce_weighted``). With
    zero boxes 'mean' is 0, still attached to the graph, rather than 0/0.
    """
    if weight is not None:
        per_box = per_box * weight
    if reduction == "none":
        return per_box
    total = per_box.sum()
    if reduction == "sum":
        return total
    return total / max(per_box.shape[0], 1)


def reduce_weighted(per_box, focal_w, weight, reduction: str):
    """Reduce a focally re-weighted loss: per-pair W_i*L_i, or Eq. 11's sum(W L) / sum(W).

    ``focal_w`` is detached. With a per-box weight w the weighted mean is
    sum(W w L) / sum(W w). If sum(W w) = 0 (every pair disjoint, so every W = 0 for
    gamma > 0, or all weights 0) the numerator is exactly 0 too; we return that 0,
    attached to the graph with a zero gradient, instead of falling back to the unweighted
    mean, which would hand the batch's outliers the very gradients Eq. 10 suppresses.
    """
    w = focal_w if weight is None else focal_w * weight
    weighted = per_box * w
    if reduction != WEIGHTED:
        return reduce(weighted, None, reduction)
    import torch

    # clamp_min keeps the division finite when sum(W w) == 0; no host sync, no branch.
    den = w.sum().clamp_min(torch.finfo(w.dtype).tiny)
    return weighted.sum() / den
