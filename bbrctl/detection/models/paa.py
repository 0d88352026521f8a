"""PAA (Kim & Lee, ECCV 2020): probabilistic anchor assignment on the shared dense head.

**Assignment**, per training batch (as the reference implementation, mmdet ``PAAHead``):

1. candidates: each anchor goes to the gt it overlaps most if that IoU >= 0.1; each gt
   also takes the anchor(s) of its highest IoU (when > 0; later gts win ties, as
   ``MaxIoUAssigner(pos_iou_thr=0.1, neg_iou_thr=0.1, min_pos_iou=0)``);
2. each candidate is scored by the loss it would get as a positive (without gradient):
   focal loss summed over classes + 1.3 x GIoU of its decoded box;
3. per gt and pyramid level the ``topk`` (9) lowest-scoring candidates are kept; a gt
   with fewer than 2 gets no positive;
4. a two-component 1-D Gaussian mixture is fitted to each gt's kept scores by EM
   (:func:`gmm_fit_1d`, scikit-learn's algorithm with ``covariance_type="diag"``: means
   initialised to the min and max score, variances 1, weights 1/2, ``reg_covar`` 1e-6,
   ``tol`` 1e-3 on the mean log-likelihood, at most 100 iterations);
5. in loss order, the candidates of the low-loss component (component 0) up to the one
   where the mixture's log-density is highest are positive; every other candidate is
   background.

All gts of the batch are fitted at once (rows of a padded matrix, converged rows frozen),
so the assigner's cost does not grow with a Python loop over gts.

**Stock loss**: focal loss (alpha 0.25, gamma 2) over every anchor / max(N_pos, #images);
0.5 x BCE of the IoU-prediction logit against u_i, the IoU of the (detached) decoded box
with its gt, / N_pos; and the **IoU-weighted** regression term of both reference codes
(mmdet ``PAAHead.loss_by_feat``, kkhoot/PAA ``paa_core/modeling/rpn/paa/loss.py``)::

    1.3 x sum_i u_i GIoU_i / sum_i u_i        (u_i detached; weight floor 1e-12, sum + f32 eps)

**Configured loss** replaces the GIoU regression term and keeps PAA's weighting, as
ATSS keeps its centerness (Sec. 5.5 names both reweightings as present in the starred
rows): pair i's loss gets the factor u_i / sum(u); Focal-EIoU (Eq. 11) carries u_i as the
per-box weight, sum(W u L) / sum(W u). The assignment keeps scoring candidates with the
stock, unweighted GIoU unless ``model.loss_in_assignment`` is true, in which case the
configured loss (times ``weight``) takes GIoU's place in step 2 as well.
``model.reg_weighting=none`` drops the IoU weighting for every loss (a plain mean over
the positives, / N_pos: bbrctl's PAA before issue 21; an ablation).

**Inference**: score = sqrt(p_cls x p_iou), NMS 0.6; with ``model.score_voting`` (the
PAA default) each kept box becomes the average of the same-class candidates weighted by
exp(-(1 - IoU)^2 / 0.025) x score (IoU > 0.01), its score unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchvision.ops import box_iou, generalized_box_iou_loss, sigmoid_focal_loss

from bbrctl.detection.models.dense import DenseDetector, batched_box_iou, focal_targets, pad_targets

STOCK_GIOU_WEIGHT = 1.3
IOU_PRED_WEIGHT = 0.5
CANDIDATE_IOU = 0.1
VOTING_SIGMA = 0.025
IOU_WEIGHT_FLOOR = 1e-12   # mmdet paa_head EPS


def aligned_iou(boxes: Tensor, gt: Tensor) -> Tensor:
    """IoU of each pair (P,) (no +1 pixel offset, as mmdet's ``bbox_overlaps``)."""
    lt = torch.maximum(boxes[:, :2], gt[:, :2])
    rb = torch.minimum(boxes[:, 2:], gt[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(1)
    area = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0).prod(1) + (gt[:, 2:] - gt[:, :2]).prod(1)
    return inter / (area - inter).clamp(min=1e-12)


def regression_weights(iou_t: Tensor) -> tuple[Tensor, Tensor]:
    """PAA's per-positive regression weight and normaliser: (IoU clamped to 1e-12, sum(IoU) + eps).

    mmdet ``PAAHead.loss_by_feat`` passes ``iou_target.clamp(min=1e-12)`` as the GIoU
    loss's weight and ``iou_target.sum()`` as its ``avg_factor`` (to which
    ``weight_reduce_loss`` adds float32 eps); ``iou_t`` is the detached IoU of the
    decoded predicted box with its gt, so no gradient flows through the weights.
    """
    iou_t = iou_t.detach()
    return iou_t.clamp(min=IOU_WEIGHT_FLOOR), iou_t.sum() + torch.finfo(torch.float32).eps


# --------------------------------------------------------------------------- the mixture


@torch.no_grad()
def gmm_fit_1d(x: Tensor, valid: Tensor, max_iter: int = 100, tol: float = 1e-3, reg_covar: float = 1e-6,
               check_every: int = 5) -> dict[str, Tensor]:
    """Fit a 2-component Gaussian mixture to each row of ``x`` (N, C) over its ``valid`` entries.

    Returns ``assignment`` (N, C) (most probable component: 0 = initialised at the row's
    minimum), ``log_density`` (N, C) (the mixture's log-density, scikit-learn's
    ``score_samples``), ``means``/``variances``/``weights`` (N, 2) and ``n_iter`` (N,).
    Rows need >= 1 valid entry to be meaningful; invalid entries are ignored.
    """
    dt = x.dtype
    xv = torch.where(valid, x, torch.zeros((), dtype=dt, device=x.device))
    m = valid.to(dt)
    n = m.sum(1).clamp(min=1)
    feats = torch.stack([m, xv * m, xv * xv * m], -1)                     # (N, C, 3): 1, x, x^2
    big = torch.finfo(dt).max
    mu = torch.stack([torch.where(valid, x, big).amin(1), torch.where(valid, x, -big).amax(1)], 1)
    # state (N, 3, 2): means, variances, weights of the two components
    state = torch.stack([mu, torch.ones_like(mu), torch.full_like(mu, 0.5)], 1)
    lower = torch.full_like(n, -math.inf)
    done = torch.zeros_like(n, dtype=torch.bool)
    n_iter = torch.zeros_like(n, dtype=torch.int64)
    eps10 = 10 * torch.finfo(dt).eps
    half_log_2pi = 0.5 * math.log(2 * math.pi)

    def log_prob(state):  # (N, C, 2); few kernels: the loop is launch-bound on small inputs
        mu, var, w = state.unbind(1)
        k = torch.log(w * torch.rsqrt(var)) - half_log_2pi
        d = xv[..., None] - mu[:, None, :]
        return torch.addcmul(k[:, None, :], d * d, (-0.5 / var)[:, None, :])

    for it in range(max_iter):
        lp = log_prob(state)
        norm = torch.logsumexp(lp, -1)                                  # (N, C)
        stats = torch.einsum("ncj,nck->njk", feats, torch.exp(lp - norm[..., None]))   # (N, 3, 2)
        new_lower = torch.einsum("nc,nc->n", norm, m) / n
        nk = stats[:, 0] + eps10
        mu_new = stats[:, 1] / nk
        new = torch.stack([mu_new, stats[:, 2] / nk - mu_new * mu_new + reg_covar, nk / nk.sum(1, keepdim=True)], 1)
        upd = ~done
        state = torch.where(upd[:, None, None], new, state)
        n_iter = n_iter + upd.long()
        # scikit-learn stops after the M-step of the iteration whose E-step moved the
        # mean log-likelihood by less than tol.
        done = done | ((new_lower - lower).abs() < tol)
        lower = torch.where(upd, new_lower, lower)
        if (it + 1) % check_every == 0 and bool(done.all()):
            break
    lp = log_prob(state)
    mu, var, w = state.unbind(1)
    return {"assignment": lp.argmax(-1), "log_density": torch.logsumexp(lp, -1), "means": mu,
            "variances": var, "weights": w, "n_iter": n_iter}


def separate(scores: Tensor, valid: Tensor, fit: dict[str, Tensor]) -> Tensor:
    """Positives among loss-sorted candidates (N, C): component-0 members up to the one of
    highest mixture log-density (mmdet's ``gmm_separation_scheme``); rows with < 2 valid
    candidates get none."""
    fg = (fit["assignment"] == 0) & valid
    dens = torch.where(fg, fit["log_density"], torch.full_like(fit["log_density"], -math.inf))
    peak = dens.argmax(1, keepdim=True)
    pos = torch.arange(scores.shape[1], device=scores.device)[None, :]
    enough = valid.sum(1, keepdim=True) >= 2
    return fg & (pos <= peak) & enough & fg.any(1, keepdim=True)


# --------------------------------------------------------------------------- assignment


@torch.no_grad()
def candidate_assign(anchors: Tensor, gt_boxes: Tensor, gt_valid: Tensor) -> Tensor:
    """Step 1: the max-IoU candidate gt of each anchor, (B, A), -1 for none."""
    b, g = gt_valid.shape
    if g == 0:
        return torch.full((b, anchors.shape[0]), -1, dtype=torch.int64, device=anchors.device)
    ious = batched_box_iou(anchors.to(gt_boxes.dtype), gt_boxes)
    ious = torch.where(gt_valid[:, None, :], ious, torch.full_like(ious, -1.0))
    best, arg = ious.max(2)
    cand = torch.where(best >= CANDIDATE_IOU, arg, -1)
    gt_max = ious.amax(1, keepdim=True)                                  # (B, 1, G)
    low = (ious == gt_max) & (gt_max > 0)
    ids = torch.arange(g, device=anchors.device)
    low_gt = torch.where(low, ids, -1).amax(2)
    return torch.where(low_gt >= 0, low_gt, cand)


@torch.no_grad()
def paa_select(cand_gt: Tensor, cost: Tensor, level_sizes: list[int], num_gt: int, topk: int = 9,
               **gmm_kwargs) -> tuple[Tensor, dict[str, Tensor]]:
    """Steps 3-5: the final matched gt per anchor (B, A), -1 background.

    ``cand_gt`` (B, A) from :func:`candidate_assign`; ``cost`` (B, A) the candidate's
    score (anything where cand_gt < 0). Returns the matching and the mixture fit.
    """
    b, a = cand_gt.shape
    dev = cand_gt.device
    if num_gt == 0:
        return torch.full_like(cand_gt, -1), {}
    dense = torch.full((b, a, num_gt), math.inf, dtype=cost.dtype, device=dev)
    is_cand = cand_gt >= 0
    dense.scatter_(2, cand_gt.clamp(min=0)[..., None],
                   torch.where(is_cand, cost, torch.full_like(cost, math.inf))[..., None])
    vals, idxs, start = [], [], 0
    for n in level_sizes:
        v, i = dense[:, start:start + n].topk(min(topk, n), dim=1, largest=False)
        vals.append(v)
        idxs.append(i + start)
        start += n
    vals = torch.cat(vals, 1).transpose(1, 2).reshape(b * num_gt, -1)   # (B*G, C)
    idxs = torch.cat(idxs, 1).transpose(1, 2).reshape(b * num_gt, -1)
    vals, order = vals.sort(1)
    idxs = idxs.gather(1, order)
    valid = torch.isfinite(vals)
    fit = gmm_fit_1d(vals, valid, **gmm_kwargs)
    pos = separate(vals, valid, fit)
    gt_ids = torch.arange(num_gt, device=dev).repeat(b)[:, None].expand_as(idxs)
    out = torch.full((b, a + 1), -1, dtype=torch.int64, device=dev)       # column a: the discard slot
    target_col = torch.where(pos, idxs, a).view(b, -1)
    out.scatter_(1, target_col, torch.where(pos, gt_ids, -1).view(b, -1))
    return out[:, :a], fit


# --------------------------------------------------------------------------- the detector


class PAA(DenseDetector):
    """PAA on the shared dense detector (see the module docstring)."""

    def __init__(self, *args, topk: int = 9, score_voting: bool = True, loss_in_assignment: bool = False,
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0, reg_weighting: str = "iou", **kwargs):
        super().__init__(*args, **kwargs)
        if reg_weighting not in ("iou", "none"):
            raise ValueError(f"reg_weighting={reg_weighting!r}; valid: iou, none")
        self.reg_weighting = reg_weighting
        self.topk = topk
        self.score_voting = score_voting
        self.loss_in_assignment = loss_in_assignment
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.last_assignment: dict | None = None   # for inspection: the last batch's fit

    def _focal(self, logits: Tensor, targets: Tensor, reduction: str) -> Tensor:
        return sigmoid_focal_loss(logits, targets, alpha=self.focal_alpha, gamma=self.focal_gamma, reduction=reduction)

    def _pair_box_loss(self, deltas, anchors, gt) -> Tensor:
        """Per-pair regression loss used to score candidates (step 2), (P,)."""
        if self.bbr is None or not self.loss_in_assignment:
            return STOCK_GIOU_WEIGHT * generalized_box_iou_loss(self.decode(deltas, anchors), gt, reduction="none")
        if self.bbr.space == "boxes":
            pred, target = self.decode(deltas, anchors), gt
        else:
            pred, target = deltas.float(), self.encode(gt, anchors)
        return self.bbr.weight * self.bbr.fn(pred, target, reduction="none")

    def assign(self, targets, head, anchors, level_sizes):
        """(matched (B, A), padded gt boxes, labels, validity)."""
        gt, gt_labels, gt_valid = pad_targets(targets, anchors.device)
        cand = candidate_assign(anchors, gt, gt_valid)
        with torch.no_grad():
            bi, ai = (cand >= 0).nonzero(as_tuple=True)
            g = cand[bi, ai]
            logits = head["cls_logits"][bi, ai].float()
            onehot = focal_targets(gt_labels[bi, g], logits.shape[-1], logits.dtype)
            pair_cost = self._focal(logits, onehot, "none").sum(-1) + \
                self._pair_box_loss(head["bbox_regression"][bi, ai], anchors[ai], gt[bi, g])
            cost = torch.zeros(cand.shape, dtype=pair_cost.dtype, device=cand.device)
            cost[bi, ai] = pair_cost
        matched, fit = paa_select(cand, cost, level_sizes, gt.shape[1], self.topk)
        self.last_assignment = {"candidates": cand, "fit": fit}
        return matched, gt, gt_labels, gt_valid

    def compute_loss(self, targets, head, anchors, level_sizes):
        matched, gt, gt_labels, _ = self.assign(targets, head, anchors, level_sizes)
        fg = matched >= 0
        labels = torch.where(fg, gt_labels.gather(1, matched.clamp(min=0)), 0) if gt.shape[1] else \
            torch.zeros_like(matched)
        logits = head["cls_logits"].float()
        num_pos = fg.sum().to(logits.dtype)
        cls = self._focal(logits, focal_targets(labels, logits.shape[-1], logits.dtype), "sum") / \
            num_pos.clamp(min=len(targets))
        bi, ai = fg.nonzero(as_tuple=True)
        gt_pos, anc = gt[bi, matched[bi, ai]], anchors[ai]
        deltas = head["bbox_regression"][bi, ai]
        boxes = self.decode(deltas, anc)
        iou_t = aligned_iou(boxes.detach(), gt_pos)
        norm = num_pos.clamp(min=1)
        iou = IOU_PRED_WEIGHT * torch.nn.functional.binary_cross_entropy_with_logits(
            head["quality"][bi, ai].float(), iou_t, reduction="sum") / norm
        if self.reg_weighting == "iou":
            w, den = regression_weights(iou_t)
            box_w = w
        else:
            w, den, box_w = torch.ones_like(iou_t), norm, None
        if self.bbr is None:
            reg = (generalized_box_iou_loss(boxes, gt_pos, reduction="none") * w).sum() / den * \
                (STOCK_GIOU_WEIGHT * self.stock_weight)
        elif self.bbr.space == "boxes":
            reg = self.bbr(boxes, gt_pos, w / den, box_weight=box_w, image_idx=bi)
        else:
            reg = self.bbr(deltas, self.encode(gt_pos, anc), w / den, box_weight=box_w, image_idx=bi)
        return {"classification": cls, "bbox_regression": reg, "bbox_iou": iou}

    # ---------------------------------------------------------------- inference

    def refine(self, det, boxes, scores, labels):
        if not self.score_voting or det["boxes"].shape[0] == 0:
            return det
        return {**det, "boxes": score_vote(det["boxes"], det["labels"] - 1, boxes, scores, labels)}


def score_vote(det_boxes: Tensor, det_labels: Tensor, cand_boxes: Tensor, cand_scores: Tensor,
               cand_labels: Tensor, sigma: float = VOTING_SIGMA) -> Tensor:
    """PAA's score voting: each detection's box from its same-class candidates (D, 4)."""
    iou = box_iou(det_boxes, cand_boxes)                                   # (D, N)
    same = det_labels[:, None] == cand_labels[None, :]
    w = torch.exp(-(1 - iou) ** 2 / sigma) * cand_scores[None, :] * (same & (iou > 0.01))
    return (w @ cand_boxes) / w.sum(1, keepdim=True).clamp(min=1e-12)
