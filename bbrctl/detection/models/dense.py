"""The one-stage anchor detector that ATSS and PAA share, built from torchvision parts.

``DenseDetector`` is torchvision's RetinaNet pipeline without its matcher and loss:
``GeneralizedRCNNTransform`` (normalise, resize, batch), a ResNet-FPN ``BackboneWithFPN``
(P3-P7), torchvision's ``AnchorGenerator`` with **one square anchor per location** whose
side is ``octave_base_scale x stride`` (8 x 8 = 64 px on P3 for COCO; Zhang et al., Sec. 4),
and :class:`DenseHead`. Subclasses supply ``compute_loss`` (their assigner and stock loss)
and the name of the head's third branch.

:class:`DenseHead` follows the ATSS/PAA reference heads: two towers of ``num_convs``
3x3 convolutions with GroupNorm and ReLU; classification logits from the first (bias
initialised to the focal-loss prior 0.01); box deltas and a one-channel quality branch
(ATSS: centerness, PAA: predicted IoU) from the second; box deltas multiplied by a learned
scalar per pyramid level (``Scale``, initialised to 1). Weights ~ N(0, 0.01).

Boxes are encoded by ``BoxCoder(weights=(10, 10, 5, 5))``: deltas divided by the stds
(0.1, 0.1, 0.2, 0.2) of the reference implementations.

Inference (both detectors), as the reference codes (sfzhang15/ATSS and kkhoot/PAA
``inference.py``): per level, the candidates whose classification probability exceeds
``score_thresh``, ranked by the final score sqrt(p_cls x p_quality) and cut to the
``topk_candidates`` best; class-wise NMS at ``nms_thresh``; the best ``detections_per_img``.
mmdet's PAAHead thresholds sqrt(p_cls x p_iou) instead. PAA may vote boxes (``score_voting``).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn
from torchvision.models.detection import _utils as det_utils
from torchvision.ops import boxes as box_ops

from bbrctl.detection.models.assembled import AssembledDetector

DELTA_WEIGHTS = (10.0, 10.0, 5.0, 5.0)  # 1 / stds (0.1, 0.1, 0.2, 0.2)


class DenseHead(nn.Module):
    """Classification, box-delta and quality branches over every pyramid level."""

    def __init__(self, in_channels: int, num_classes: int, num_levels: int, num_convs: int = 4,
                 num_anchors: int = 1, prior_prob: float = 0.01):
        super().__init__()

        def tower() -> nn.Sequential:
            layers = []
            for _ in range(num_convs):
                layers += [nn.Conv2d(in_channels, in_channels, 3, padding=1),
                           nn.GroupNorm(math.gcd(32, in_channels), in_channels), nn.ReLU(inplace=True)]
            return nn.Sequential(*layers)

        self.num_classes = num_classes
        self.num_anchors = num_anchors
        self.cls_tower, self.reg_tower = tower(), tower()
        self.cls_logits = nn.Conv2d(in_channels, num_anchors * num_classes, 3, padding=1)
        self.bbox_reg = nn.Conv2d(in_channels, num_anchors * 4, 3, padding=1)
        self.quality = nn.Conv2d(in_channels, num_anchors, 3, padding=1)
        self.scales = nn.Parameter(torch.ones(num_levels))
        for mod in self.modules():
            if isinstance(mod, nn.Conv2d):
                nn.init.normal_(mod.weight, std=0.01)
                nn.init.zeros_(mod.bias)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))

    @staticmethod
    def _flat(x: Tensor, per_anchor: int) -> Tensor:
        # (B, A*C, H, W) -> (B, H*W*A, C), torchvision's anchor order (location-major).
        b, _, h, w = x.shape
        return x.view(b, -1, per_anchor, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, per_anchor)

    def forward(self, features: list[Tensor]) -> dict[str, Tensor]:
        if len(features) != self.scales.numel():
            raise ValueError(f"the head was built for {self.scales.numel()} levels, got {len(features)}")
        cls, reg, qual = [], [], []
        for i, f in enumerate(features):
            c, r = self.cls_tower(f), self.reg_tower(f)
            cls.append(self._flat(self.cls_logits(c), self.num_classes))
            reg.append(self._flat(self.bbox_reg(r) * self.scales[i], 4))
            qual.append(self._flat(self.quality(r), 1))
        return {"cls_logits": torch.cat(cls, 1), "bbox_regression": torch.cat(reg, 1),
                "quality": torch.cat(qual, 1).squeeze(-1)}


class DenseDetector(AssembledDetector):
    """Transform + backbone + anchors + :class:`DenseHead`; the loss is the subclass's.

    ``forward(images, targets)`` returns the loss dict in training and torchvision-style
    detections (``boxes``, ``scores``, ``labels`` in 1..C) in eval mode. Labels given in
    targets are 1..C (torchvision's convention); the head has C outputs (label - 1).
    """

    def __init__(self, backbone: nn.Module, anchor_generator, head: DenseHead, *, min_size: int, max_size: int,
                 score_thresh: float = 0.05, nms_thresh: float = 0.6, detections_per_img: int = 100,
                 topk_candidates: int = 1000):
        super().__init__(min_size=min_size, max_size=max_size)
        self.backbone = backbone
        self.anchor_generator = anchor_generator
        self.head = head
        self.box_coder = det_utils.BoxCoder(weights=DELTA_WEIGHTS)
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        self.topk_candidates = topk_candidates

    def prediction_heads(self) -> list[nn.Module]:
        return [self.head]

    def forward(self, images: list[Tensor], targets: Optional[list[dict[str, Tensor]]] = None):
        original_sizes, images, targets = self._transform_input(images, targets)
        features = list(self.backbone(images.tensors).values())
        head = self.head(features)
        anchors = self.anchor_generator(images, features)[0]   # the same for every image of the batch
        level_sizes = [int(f.shape[-2] * f.shape[-1]) * self.head.num_anchors for f in features]
        if self.training:
            return self.compute_loss(targets, head, anchors, level_sizes)
        dets = self.postprocess(head, anchors, level_sizes, images.image_sizes)
        return self.transform.postprocess(dets, images.image_sizes, original_sizes)

    def compute_loss(self, targets, head, anchors, level_sizes) -> dict[str, Tensor]:
        raise NotImplementedError

    def decode(self, deltas: Tensor, anchors: Tensor) -> Tensor:
        return self.box_coder.decode_single(deltas.float(), anchors)

    def encode(self, boxes: Tensor, anchors: Tensor) -> Tensor:
        return self.box_coder.encode_single(boxes, anchors)

    # ---------------------------------------------------------------- inference

    def postprocess(self, head, anchors, level_sizes, image_sizes) -> list[dict[str, Tensor]]:
        out = []
        starts = [0]
        for n in level_sizes:
            starts.append(starts[-1] + n)
        for i, shape in enumerate(image_sizes):
            boxes, scores, labels = [], [], []
            for lv in range(len(level_sizes)):
                sl = slice(starts[lv], starts[lv + 1])
                logits = head["cls_logits"][i, sl]
                k = logits.shape[-1]
                prob = torch.sigmoid(logits).flatten()
                keep = prob > self.score_thresh
                idx = torch.where(keep)[0]
                a = torch.div(idx, k, rounding_mode="floor")
                score = torch.sqrt(prob[idx] * torch.sigmoid(head["quality"][i, sl][a]))
                top = det_utils._topk_min(idx, self.topk_candidates, 0)
                score, order = score.topk(top)
                idx, a = idx[order], a[order]
                b = self.decode(head["bbox_regression"][i, sl][a], anchors[sl][a])
                boxes.append(box_ops.clip_boxes_to_image(b, shape))
                scores.append(score)
                labels.append(idx % k)
            boxes, scores, labels = torch.cat(boxes), torch.cat(scores), torch.cat(labels)
            keep = box_ops.batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]
            det = {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep] + 1}
            det = self.refine(det, boxes, scores, labels)
            out.append(det)
        return out

    def refine(self, det, boxes, scores, labels):
        """Post-NMS hook (PAA's score voting); identity here."""
        return det


# --------------------------------------------------------------------------- shared pieces


def pad_targets(targets: list[dict[str, Tensor]], device) -> tuple[Tensor, Tensor, Tensor]:
    """gt boxes (B, G, 4), labels (B, G) and a validity mask (B, G), G = the most in an image.

    Padding boxes are far outside every image, so they overlap no anchor; every consumer
    also masks them explicitly.
    """
    counts = [int(t["boxes"].shape[0]) for t in targets]   # shapes: no device sync
    g = max(counts + [0])
    b = len(targets)
    boxes = torch.full((b, max(g, 1), 4), -1e4, device=device)
    boxes[..., 2:] = -1e4 + 1.0
    labels = torch.zeros((b, max(g, 1)), dtype=torch.int64, device=device)
    valid = torch.zeros((b, max(g, 1)), dtype=torch.bool, device=device)
    for i, t in enumerate(targets):
        n = counts[i]
        if n:
            boxes[i, :n] = t["boxes"].to(boxes.dtype)
            labels[i, :n] = t["labels"]
            valid[i, :n] = True
    return boxes[:, :g], labels[:, :g], valid[:, :g]


def batched_box_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of anchors ``a`` (A, 4) with every image's gt ``b`` (B, G, 4): (B, A, G)."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    lt = torch.maximum(a[None, :, None, :2], b[:, None, :, :2])
    rb = torch.minimum(a[None, :, None, 2:], b[:, None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area_a[None, :, None] + area_b[:, None, :] - inter).clamp(min=1e-12)


def focal_targets(labels_of_anchor: Tensor, num_classes: int, dtype) -> Tensor:
    """One-hot (B, A, C) targets; background (label 0) is all zeros."""
    onehot = torch.zeros((*labels_of_anchor.shape, num_classes + 1), dtype=dtype, device=labels_of_anchor.device)
    onehot.scatter_(-1, labels_of_anchor.unsqueeze(-1), 1.0)
    return onehot[..., 1:]
