"""ATSS (Zhang et al., CVPR 2020): adaptive training sample selection on a one-anchor head.

**Assigner** (:func:`atss_assign`, Alg. 1 of the ATSS paper), per image and gt box g:

1. on every pyramid level, the ``k`` anchors (k = 9) whose centres are closest (L2) to
   g's centre are candidates;
2. t_g = mean + std (unbiased, as the reference code's ``torch.std``) of the candidates'
   IoUs with g;
3. a candidate is positive for g if its IoU >= t_g and its centre lies inside g (at
   least 0.01 px from every side, the reference's test);
4. an anchor positive for several gts goes to the one it overlaps most (highest IoU).

It runs for the whole batch at once on gt boxes padded to the image with the most, with
no host synchronisation.

**Stock loss** (the reference ATSS / mmdet ``ATSSHead``), N_pos = number of positives
in the batch (at least 1):

* classification: sigmoid focal loss (alpha 0.25, gamma 2) summed over every anchor and
  class, / N_pos;
* regression: GIoU loss of the decoded boxes (``BoxCoder`` stds 0.1, 0.1, 0.2, 0.2),
  weighted by the centerness targets and divided by their sum, times 2.0;
* centerness: BCE of the centerness logit against
  sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)) (l, t, r, b from the anchor centre
  to the gt's sides), / N_pos.

**Configured loss** (``loss=<name>``) replaces the regression term only, in the space the
loss declares (decoded xyxy boxes or encoded deltas) and with ATSS's own normaliser:
pair i gets the factor ctr_i / sum(ctr) (the stock weighting). Focal-EIoU and
Focal-EIoU* keep that weighting inside their own Eq. 11 normaliser: the centerness
target is the per-box weight w_i of the loss library's "weighted" reduction, so the term
is sum_i W_i ctr_i L_i / sum_i W_i ctr_i over the batch's positives (W_i = IoU_i^gamma,
detached), which is the stock rule with W_i = 1. The reference code (sfzhang15/ATSS
``atss_core/modeling/rpn/atss/loss.py``) divides by the batch's centerness sum without
a floor; mmdet's ``ATSSHead`` clamps it to >= 1; bbrctl floors it at 1e-6 (the
reference's rule wherever the sum is not tiny).
Every regression term is multiplied by the configured ``weight``; the stock one keeps its
2.0 on top (``loss=baseline weight=1`` is the stock loss).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from bbrctl.detection.models.dense import DenseDetector, batched_box_iou, focal_targets, pad_targets

STOCK_GIOU_WEIGHT = 2.0


def centers(boxes: Tensor) -> Tensor:
    return (boxes[..., :2] + boxes[..., 2:]) / 2


@torch.no_grad()
def atss_assign(anchors: Tensor, level_sizes: list[int], gt_boxes: Tensor, gt_valid: Tensor, k: int = 9) -> Tensor:
    """Matched gt index per anchor, (B, A) int64, -1 for background.

    ``anchors`` (A, 4) shared by the batch, ordered by level with ``level_sizes`` anchors
    each; ``gt_boxes`` (B, G, 4) padded, ``gt_valid`` (B, G).
    """
    b, g = gt_valid.shape
    a = anchors.shape[0]
    if g == 0:
        return torch.full((b, a), -1, dtype=torch.int64, device=anchors.device)
    anchors = anchors.to(gt_boxes.dtype)
    ious = batched_box_iou(anchors, gt_boxes)                                   # (B, A, G)
    ac, gc = centers(anchors), centers(gt_boxes)
    dist = (ac[None, :, None, :] - gc[:, None, :, :]).pow(2).sum(-1)            # squared: same order
    cand, start = [], 0
    for n in level_sizes:
        cand.append(dist[:, start:start + n].topk(min(k, n), dim=1, largest=False).indices + start)
        start += n
    cand = torch.cat(cand, 1)                                                   # (B, C, G)
    cand_iou = ious.gather(1, cand)
    thr = cand_iou.mean(1, keepdim=True) + cand_iou.std(1, keepdim=True)
    cx, cy = ac[:, 0][cand], ac[:, 1][cand]
    gt = gt_boxes[:, None, :, :]                                                # (B, 1, G, 4)
    inside = torch.stack([cx - gt[..., 0], cy - gt[..., 1], gt[..., 2] - cx, gt[..., 3] - cy], -1).amin(-1) > 0.01
    pos = (cand_iou >= thr) & inside & gt_valid[:, None, :]
    score = torch.full_like(ious, -1.0).scatter_(1, cand, torch.where(pos, cand_iou, -1.0))
    best, arg = score.max(2)
    # IoU >= 0 for every candidate, so -1 marks "positive for no gt".
    return torch.where(best >= 0, arg, -1)


def centerness_targets(anchors: Tensor, gt: Tensor) -> Tensor:
    """sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b)) from anchor centres to gt sides, (P,)."""
    c = centers(anchors)
    l, t = c[:, 0] - gt[:, 0], c[:, 1] - gt[:, 1]
    r, b = gt[:, 2] - c[:, 0], gt[:, 3] - c[:, 1]
    lr = torch.minimum(l, r) / torch.maximum(l, r)
    tb = torch.minimum(t, b) / torch.maximum(t, b)
    return torch.sqrt((lr * tb).clamp(min=0))


class ATSS(DenseDetector):
    """ATSS on the shared dense detector (see the module docstring for the loss)."""

    def __init__(self, *args, topk: int = 9, focal_alpha: float = 0.25, focal_gamma: float = 2.0,
                 reg_weighting: str = "centerness", **kwargs):
        super().__init__(*args, **kwargs)
        if reg_weighting not in ("centerness", "none"):
            raise ValueError(f"reg_weighting={reg_weighting!r}; valid: centerness, none")
        self.reg_weighting = reg_weighting
        self.topk = topk
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    def compute_loss(self, targets, head, anchors, level_sizes):
        gt, gt_labels, gt_valid = pad_targets(targets, anchors.device)
        matched = atss_assign(anchors, level_sizes, gt, gt_valid, self.topk)
        fg = matched >= 0
        labels = torch.where(fg, gt_labels.gather(1, matched.clamp(min=0)), 0) if gt.shape[1] else \
            torch.zeros_like(matched)
        logits = head["cls_logits"].float()
        num_pos = fg.sum().clamp(min=1).to(logits.dtype)
        cls = sigmoid_focal_loss(logits, focal_targets(labels, logits.shape[-1], logits.dtype),
                                 alpha=self.focal_alpha, gamma=self.focal_gamma, reduction="sum") / num_pos
        bi, ai = fg.nonzero(as_tuple=True)
        gt_pos = gt[bi, matched[bi, ai]]
        anc = anchors[ai]
        ctr_t = centerness_targets(anc, gt_pos)
        ctr = torch.nn.functional.binary_cross_entropy_with_logits(
            head["quality"][bi, ai].float(), ctr_t, reduction="sum") / num_pos
        reg = self.box_loss(head["bbox_regression"][bi, ai], anc, gt_pos, ctr_t, image_idx=bi)
        return {"classification": cls, "bbox_regression": reg, "bbox_ctrness": ctr}

    def box_loss(self, deltas: Tensor, anchors: Tensor, gt: Tensor, ctr_t: Tensor, image_idx=None) -> Tensor:
        if self.reg_weighting == "none":
            ctr_t = torch.ones_like(ctr_t)
        denom = ctr_t.sum().clamp(min=1e-6)
        if self.bbr is None:
            giou = generalized_box_iou_loss(self.decode(deltas, anchors), gt, reduction="none")
            return (giou * ctr_t).sum() / denom * (STOCK_GIOU_WEIGHT * self.stock_weight)
        if self.bbr.space == "boxes":
            pred, target = self.decode(deltas, anchors), gt
        else:
            pred, target = deltas, self.encode(gt, anchors)
        return self.bbr(pred, target, ctr_t / denom, box_weight=ctr_t, image_idx=image_idx)
