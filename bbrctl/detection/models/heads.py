"""Loss hooks: torchvision's detection heads with the box-regression term swapped.

Each hook is a subclass of a torchvision module that overrides only the loss method
(or, for the R-CNN box head whose loss is a module-level function, records the tensors
that function received and recomputes its box term). ``install_bbr_loss(model, ...)``
turns the modules of an already built torchvision detector into these subclasses in
place, so parameters, state-dict keys and every forward body stay torchvision's own: a
torchvision upgrade that changes them fails the equivalence tests instead of silently
diverging.

Where the configured loss acts, and on what:

============  ====================================  ==========================================
detector      module                                 inputs of the loss
============  ====================================  ==========================================
RetinaNet     ``RetinaNetRegressionHead``            foreground anchors; deltas from the head's
                                                     BoxCoder (1, 1, 1, 1) or decoded boxes
FCOS          ``FCOSHead``                           foreground points; ``BoxLinearCoder``
                                                     (l, t, r, b) / anchor-size deltas or boxes
Faster/Mask   ``RoIHeads`` (box head)                positive sampled RoIs, class-specific
R-CNN                                                deltas of the gt class, BoxCoder
                                                     (10, 10, 5, 5) deltas or decoded boxes
R-CNN RPN     ``RegionProposalNetwork``              sampled positive anchors (only with
              (``model.loss_in_rpn``)                ``loss_in_rpn``), BoxCoder (1, 1, 1, 1)
============  ====================================  ==========================================

Normalisation (what the summed per-box loss is divided by) keeps each detector's own
rule, so a loss swap changes the loss and nothing else:

* RetinaNet: per image ``sum / max(1, #fg anchors)``, then the mean over images;
* FCOS: ``sum / max(1, #fg points in the batch)``;
* R-CNN box head: ``sum / #sampled RoIs`` (512 per image by default, positives and
  negatives), RPN: ``sum / #sampled anchors``;

except Focal-EIoU (and Focal-EIoU*), which is defined with its own normaliser, Eq. 11::

    L_Focal-EIoU = sum_i W_i * L_EIoU,i / sum_i W_i,   W_i = IoU_i ** gamma  (Eq. 10)

over all positive pairs of the batch (the loss library's "weighted" reduction; ATSS and PAA
pass their centerness / IoU weighting as its per-box weight w: sum W w L / sum W w). Every
regression term is finally multiplied by the configured ``weight`` (Sec. 5.2: 1.0 for
l_n losses, 2.5 for IoU-based ones); with ``loss=baseline`` the stock torchvision term
is kept and only multiplied by ``weight``.

Losses that take the input image's size (MPDIoU's ``image_size``; any loss function with
an ``image_size`` keyword) get each pair's own image size after the detector's
transform: a forward hook on ``model.transform`` records the batch's sizes and every
head passes the image index of each pair. Stateful losses (Wise-IoU's running mean)
keep their state on the :class:`BoxRegressionLoss`; ``loss_states`` /
``load_loss_states`` carry it through checkpoints, and they are called on every step,
zero positives included, so the ranks' all-reduce of the batch mean stays in step.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import torch
from torch import Tensor
from torchvision.models.detection.fcos import FCOSHead
from torchvision.models.detection.retinanet import RetinaNetRegressionHead
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork

from bbrctl.losses._common import takes_keyword


class BoxRegressionLoss:
    """The configured BBR loss, applied to the positives a head selected.

    ``space`` says what the loss consumes: "deltas" (encoded regression targets) or
    "boxes" (decoded xyxy boxes). Half-precision inputs are upcast to float32 because
    IoU terms of nearly coincident boxes underflow in fp16.
    """

    def __init__(self, name: str, params: Optional[Mapping[str, Any]] = None, weight: float = 1.0):
        from bbrctl.losses import get_loss

        self.name = name
        self.params = dict(params or {})
        self.fn = get_loss(name, **self.params)
        self.space = self.fn.space
        self.weight = float(weight)
        # Losses whose definition includes the batch normaliser (Eq. 11) say so by
        # their default reduction; all others take the detector's normaliser.
        self.self_normalised = self.fn.default_reduction == "weighted"
        self.stateful = getattr(self.fn, "state", None) is not None
        self.wants_image_size = takes_keyword(self.fn, "image_size")
        self.image_sizes: Optional[Tensor] = None   # (B, 2) (w, h) of the current batch, set by the hook

    def __repr__(self) -> str:
        return f"BoxRegressionLoss({self.name!r}, {self.params}, weight={self.weight:g})"

    def __call__(self, pred: Tensor, target: Tensor, norm: Tensor | float,
                 box_weight: Optional[Tensor] = None, image_idx: Optional[Tensor] = None) -> Tensor:
        """Weighted regression loss of the positive pairs ``pred``/``target`` (P, 4).

        ``norm``: per-pair factor (P,) or a scalar such that ``sum(norm * L)`` is the
        detector's normalised loss; ignored by self-normalised losses (Eq. 11).
        ``box_weight``: the detector's own per-pair weighting (ATSS: centerness, PAA:
        IoU), detached, which ``norm`` already holds for the other losses; a
        self-normalised loss carries it inside Eq. 11, sum(W w L) / sum(W w).
        ``image_idx`` (P,): the batch image of each pair, for losses taking ``image_size``.
        """
        if pred.shape[0] == 0 and not self.stateful:
            # Keeps the graph connected so DDP sees a gradient for every parameter.
            return pred.sum() * 0.0
        pred, target = pred.float(), target.float()
        kw = {"image_size": self.pair_image_sizes(image_idx, pred.shape[0])} if self.wants_image_size else {}
        if self.self_normalised:
            w = None if box_weight is None else box_weight.detach().float()
            loss = self.fn(pred, target, weight=w, reduction="weighted", **kw)
        else:
            loss = (self.fn(pred, target, reduction="none", **kw) * norm).sum()
        return loss * self.weight

    def pair_image_sizes(self, image_idx: Optional[Tensor], n: int) -> Tensor:
        """(n, 2) input-image (width, height) of each pair of the current batch."""
        sizes = self.image_sizes
        if sizes is None:
            raise RuntimeError(f"loss {self.name!r} needs the input image sizes; install it with install_bbr_loss "
                               "on a detector with a `transform` (its forward hook records them)")
        if image_idx is None:
            if sizes.shape[0] != 1 and not bool((sizes == sizes[:1]).all()):
                raise RuntimeError(f"loss {self.name!r} needs each pair's image, and this head passed none")
            return sizes[:1].expand(n, 2)
        return sizes.to(image_idx.device)[image_idx]

    def state_dict(self) -> Optional[dict]:
        return self.fn.state.state_dict() if self.stateful else None

    def load_state_dict(self, state: dict) -> None:
        self.fn.state.load_state_dict(state)


def _record_image_sizes(bbr: "BoxRegressionLoss"):
    """Forward hook for ``model.transform``: the batch's (w, h) sizes after resizing."""
    def hook(module, inputs, outputs) -> None:
        hw = torch.tensor(outputs[0].image_sizes, dtype=torch.float32, device=outputs[0].tensors.device)
        bbr.image_sizes = hw.flip(1) if hw.numel() else hw.reshape(0, 2)
    return hook


def bbr_losses(model: torch.nn.Module) -> list["BoxRegressionLoss"]:
    """The distinct BoxRegressionLoss objects installed in ``model``, in module order."""
    out: list[BoxRegressionLoss] = []
    for m in model.modules():
        b = getattr(m, "bbr", None)
        if isinstance(b, BoxRegressionLoss) and all(b is not o for o in out):
            out.append(b)
    return out


def loss_states(model: torch.nn.Module) -> list[dict]:
    """The state of each stateful installed loss (checkpoint payload: tensors and dicts only)."""
    return [b.state_dict() for b in bbr_losses(model) if b.stateful]


def load_loss_states(model: torch.nn.Module, states: list[dict]) -> None:
    """Restore what :func:`loss_states` saved (same config, so the same losses)."""
    mine = [b for b in bbr_losses(model) if b.stateful]
    if len(mine) != len(states or []):
        raise RuntimeError(f"the checkpoint holds {len(states or [])} loss states, this model's loss has {len(mine)}")
    for b, st in zip(mine, states or []):
        b.load_state_dict(st)


def _gather_gt(targets: list[dict[str, Tensor]], img_idx: Tensor, gt_idx: Tensor) -> Tensor:
    """gt boxes for (image, matched-gt) index pairs, without a per-image Python loop."""
    counts = [int(t["boxes"].shape[0]) for t in targets]  # shapes: no device sync
    offsets = torch.tensor([0] + counts[:-1], device=img_idx.device).cumsum(0)
    all_boxes = torch.cat([t["boxes"] for t in targets])
    return all_boxes[gt_idx + offsets[img_idx]]


class RetinaNetRegressionHeadBBR(RetinaNetRegressionHead):
    """RetinaNet's regression head with a configurable loss (see the module docstring).

    Stock: L1 on BoxCoder(1, 1, 1, 1) deltas, per image ``sum / max(1, #fg)``, mean over
    images. The replacement reproduces that normaliser as a per-anchor factor
    ``1 / (max(1, #fg of its image) * #images)``, vectorised over the batch.
    """

    bbr: Optional[BoxRegressionLoss] = None
    stock_weight: float = 1.0

    def compute_loss(self, targets, head_outputs, anchors, matched_idxs):
        if self.bbr is None:
            return super().compute_loss(targets, head_outputs, anchors, matched_idxs) * self.stock_weight
        regression = head_outputs["bbox_regression"]          # (B, A, 4)
        matched = torch.stack(matched_idxs)                    # (B, A)
        fg = matched >= 0
        num_fg = fg.sum(dim=1).clamp(min=1)                    # per image, on device
        img_idx, anchor_idx = fg.nonzero(as_tuple=True)
        gt = _gather_gt(targets, img_idx, matched[img_idx, anchor_idx])
        anc = torch.stack(anchors)[img_idx, anchor_idx]
        pred = regression[img_idx, anchor_idx]
        norm = 1.0 / (num_fg[img_idx].float() * max(1, len(targets)))
        pred, target = _to_space(self.bbr.space, self.box_coder, pred, anc, gt)
        return self.bbr(pred, target, norm, image_idx=img_idx)


class FCOSHeadBBR(FCOSHead):
    """FCOS head with a configurable regression loss (classification and centerness stock).

    Stock: GIoU on boxes decoded by ``BoxLinearCoder(normalize_by_size=True)``, summed
    over the batch's foreground points and divided by their number. The stock method
    is called for the other two terms (its GIoU is recomputed and discarded: a few
    thousand boxes, negligible next to the network).
    """

    bbr: Optional[BoxRegressionLoss] = None
    stock_weight: float = 1.0

    def compute_loss(self, targets, head_outputs, anchors, matched_idxs):
        losses = super().compute_loss(targets, head_outputs, anchors, matched_idxs)
        if self.bbr is None:
            losses["bbox_regression"] = losses["bbox_regression"] * self.stock_weight
            return losses
        matched = torch.stack(matched_idxs)
        fg = matched >= 0
        img_idx, point_idx = fg.nonzero(as_tuple=True)
        gt = _gather_gt(targets, img_idx, matched[img_idx, point_idx])
        anc = torch.stack(anchors)[img_idx, point_idx]
        pred = head_outputs["bbox_regression"][img_idx, point_idx]
        norm = 1.0 / max(1, int(img_idx.shape[0]))
        if self.bbr.space == "boxes":
            pred, target = self.box_coder.decode(pred.float(), anc), gt
        else:
            target = self.box_coder.encode(anc, gt)
        losses["bbox_regression"] = self.bbr(pred, target, norm, image_idx=img_idx)
        return losses


class RoIHeadsBBR(RoIHeads):
    """R-CNN RoI heads with a configurable box-head regression loss.

    torchvision computes the box loss in the module-level ``fastrcnn_loss`` called from
    ``RoIHeads.forward``. Rather than copy that forward, this class records what the
    loss needs while the stock forward runs (the sampled proposals, their labels and
    regression targets from ``select_training_samples``; the class-specific deltas from
    a forward hook on ``box_predictor``) and then replaces ``loss_box_reg``.

    Stock: SmoothL1 (beta = 1/9) on BoxCoder(10, 10, 5, 5) deltas of the gt class,
    summed over positive RoIs and divided by the number of sampled RoIs.
    """

    bbr: Optional[BoxRegressionLoss] = None
    stock_weight: float = 1.0
    _bbr_record: Optional[dict] = None

    def _record_predictions(self, module, inputs, outputs) -> None:
        if self._bbr_record is not None:
            self._bbr_record["box_regression"] = outputs[1]

    def select_training_samples(self, proposals, targets):
        out = super().select_training_samples(proposals, targets)
        if self._bbr_record is not None:
            props, matched_idxs, labels, regression_targets = out
            self._bbr_record.update(proposals=props, matched_idxs=matched_idxs, labels=labels,
                                    regression_targets=regression_targets, targets=targets)
        return out

    def forward(self, features, proposals, image_shapes, targets=None):
        if not self.training:
            return super().forward(features, proposals, image_shapes, targets)
        if self.bbr is None:
            result, losses = super().forward(features, proposals, image_shapes, targets)
            losses["loss_box_reg"] = losses["loss_box_reg"] * self.stock_weight
            return result, losses
        self._bbr_record = {}
        try:
            result, losses = super().forward(features, proposals, image_shapes, targets)
            losses["loss_box_reg"] = self._box_loss(**self._bbr_record)
        finally:
            self._bbr_record = None
        return result, losses

    def _box_loss(self, box_regression, proposals, matched_idxs, labels, regression_targets, targets) -> Tensor:
        labels_all = torch.cat(labels)
        pos = torch.where(labels_all > 0)[0]
        labels_pos = labels_all[pos]
        box_regression = box_regression.reshape(box_regression.shape[0], -1, 4)
        pred = box_regression[pos, labels_pos]
        norm = 1.0 / max(1, labels_all.numel())
        image_idx = _image_of(labels, pos)
        if self.bbr.space == "deltas":
            target = torch.cat(regression_targets)[pos]
            return self.bbr(pred, target, norm, image_idx=image_idx)
        props = torch.cat(proposals)[pos]
        gt = torch.cat([_matched_gt(t["boxes"], m, props.dtype) for t, m in zip(targets, matched_idxs)])[pos]
        pred_boxes = self.box_coder.decode_single(pred.float(), props)
        return self.bbr(pred_boxes, gt, norm, image_idx=image_idx)


def _image_of(per_image: list[Tensor], idx: Tensor) -> Tensor:
    """Batch image of each index ``idx`` into ``torch.cat(per_image)``."""
    counts = torch.tensor([int(t.shape[0]) for t in per_image], device=idx.device)
    return torch.repeat_interleave(torch.arange(len(per_image), device=idx.device), counts)[idx]


def _matched_gt(boxes: Tensor, matched_idxs: Tensor, dtype) -> Tensor:
    # Images without gt have all-background RoIs (matched index 0): any box will do.
    if boxes.numel() == 0:
        boxes = torch.zeros((1, 4), dtype=dtype, device=matched_idxs.device)
    return boxes.to(dtype)[matched_idxs]


class RegionProposalNetworkBBR(RegionProposalNetwork):
    """RPN with a configurable anchor-regression loss (``model.loss_in_rpn``).

    Stock: SmoothL1 (beta = 1/9) on BoxCoder(1, 1, 1, 1) deltas of the sampled positive
    anchors, divided by the number of sampled anchors; objectness BCE over the sample.
    ``compute_loss`` does not receive the anchors, so ``assign_targets_to_anchors``
    records them with the matched gt boxes. The sampler is called exactly once, as in
    the stock method, so the random stream is the same.
    """

    bbr: Optional[BoxRegressionLoss] = None
    stock_weight: float = 1.0
    _bbr_record: Optional[dict] = None

    def assign_targets_to_anchors(self, anchors, targets):
        labels, matched_gt_boxes = super().assign_targets_to_anchors(anchors, targets)
        if self.bbr is not None:
            self._bbr_record = {"anchors": anchors, "matched_gt_boxes": matched_gt_boxes}
        return labels, matched_gt_boxes

    def compute_loss(self, objectness, pred_bbox_deltas, labels, regression_targets):
        if self.bbr is None:
            objectness_loss, box_loss = super().compute_loss(objectness, pred_bbox_deltas, labels, regression_targets)
            return objectness_loss, box_loss * self.stock_weight
        record, self._bbr_record = self._bbr_record or {}, None
        sampled_pos, sampled_neg = self.fg_bg_sampler(labels)
        pos = torch.where(torch.cat(sampled_pos))[0]
        neg = torch.where(torch.cat(sampled_neg))[0]
        sampled = torch.cat([pos, neg])
        objectness_loss = torch.nn.functional.binary_cross_entropy_with_logits(
            objectness.flatten()[sampled], torch.cat(labels)[sampled])
        pred = pred_bbox_deltas[pos]
        norm = 1.0 / max(1, sampled.numel())
        image_idx = _image_of(labels, pos)
        if self.bbr.space == "deltas":
            return objectness_loss, self.bbr(pred, torch.cat(regression_targets)[pos], norm, image_idx=image_idx)
        anchors = torch.cat(record["anchors"])[pos]
        gt = torch.cat(record["matched_gt_boxes"])[pos]
        pred_boxes = self.box_coder.decode_single(pred.float(), anchors)
        return objectness_loss, self.bbr(pred_boxes, gt, norm, image_idx=image_idx)


def _to_space(space: str, coder, pred: Tensor, anchors: Tensor, gt: Tensor) -> tuple[Tensor, Tensor]:
    """(pred, target) in the loss's space for a BoxCoder-parameterised head."""
    if space == "boxes":
        return coder.decode_single(pred.float(), anchors), gt
    return pred, coder.encode_single(gt, anchors)


def _swap(module: torch.nn.Module, cls: type, bbr: Optional[BoxRegressionLoss], stock_weight: float) -> None:
    # Changing __class__ keeps the instance (parameters, buffers, hooks) and only adds
    # the overriding methods; every subclass here adds no __init__ state of its own.
    if not isinstance(module, cls.__mro__[1]):  # the torchvision class it extends
        raise TypeError(f"cannot install {cls.__name__} on {type(module).__name__}")
    module.__class__ = cls
    module.bbr = bbr
    module.stock_weight = float(stock_weight)


def _hook_image_sizes(model: torch.nn.Module, bbr: Optional[BoxRegressionLoss]) -> None:
    old = getattr(model, "_bbr_image_size_hook", None)
    if old is not None:
        old.remove()
        model._bbr_image_size_hook = None
    if bbr is not None and bbr.wants_image_size and hasattr(model, "transform"):
        model._bbr_image_size_hook = model.transform.register_forward_hook(_record_image_sizes(bbr))


def install_bbr_loss(model: torch.nn.Module, loss_name: str, params: Optional[Mapping[str, Any]] = None,
                     weight: float = 1.0, loss_in_rpn: bool = False) -> torch.nn.Module:
    """Make ``model`` (a torchvision RetinaNet, FCOS, Faster or Mask R-CNN) use the loss.

    ``loss_name="baseline"`` keeps each detector's stock regression loss (times
    ``weight``). Returns the same model, modified in place. bbrctl's own detectors (ATSS,
    PAA, DETR: ``bbrctl.detection.models.detectors``) take the :class:`BoxRegressionLoss`
    through their ``install_bbr_loss`` method and apply it by the same rules.
    """
    from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet

    bbr = None if loss_name == "baseline" else BoxRegressionLoss(loss_name, params, weight)
    _hook_image_sizes(model, bbr)
    own = getattr(model, "install_bbr_loss", None)
    if own is not None:  # ATSS, PAA, DETR (bbrctl.detection.models.detectors) apply it themselves
        own(bbr, weight)
        return model
    if isinstance(model, RetinaNet):
        _swap(model.head.regression_head, RetinaNetRegressionHeadBBR, bbr, weight)
    elif isinstance(model, FCOS):
        _swap(model.head, FCOSHeadBBR, bbr, weight)
    elif isinstance(model, FasterRCNN):  # Mask R-CNN is a FasterRCNN
        hooked = isinstance(model.roi_heads, RoIHeadsBBR)
        _swap(model.roi_heads, RoIHeadsBBR, bbr, weight)
        if not hooked:
            model.roi_heads.box_predictor.register_forward_hook(model.roi_heads._record_predictions)
        if loss_in_rpn and bbr is not None:
            _swap(model.rpn, RegionProposalNetworkBBR, bbr, weight)
        elif isinstance(model.rpn, RegionProposalNetworkBBR):
            model.rpn.bbr, model.rpn.stock_weight = None, 1.0
    else:
        raise TypeError(f"no loss hook for {type(model).__name__}; supported: RetinaNet, FCOS, FasterRCNN, MaskRCNN")
    return model
