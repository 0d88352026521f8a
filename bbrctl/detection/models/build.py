"""Detector builders: torchvision RetinaNet, FCOS, Faster and Mask R-CNN on ResNet-FPN.

The backbones (ResNet trunks, FPNs) and anchor sizes are in bbrctl.detection.models.backbones.

ATSS, PAA and DETR, which torchvision does not ship, are assembled from its parts in
``bbrctl.detection.models.detectors``; ``check_model_config`` and ``build_model`` dispatch there.

The configured BBR loss is installed by :func:`bbrctl.detection.models.heads.install_bbr_loss`.
Config validation lives in the schema (bbrctl.config.schema; :func:`check_model_config`
calls it for builders used directly) and imports no torch.
"""

from __future__ import annotations

from typing import Any, Mapping

from bbrctl.detection.models.backbones import _anchor_generator, build_backbone, norm_layer, train_min_sizes
from bbrctl.errors import UserError


def check_model_config(cfg: Mapping[str, Any]) -> None:
    """Raise UserError (one line) if the model/backbone nodes of ``cfg`` cannot be built."""
    from bbrctl.config.schema import check_model

    check_model(cfg)


# --------------------------------------------------------------------------- the loss weight

# The factor each detector's own box-regression term carries in its reference code.
# torchvision's RetinaNet (L1), FCOS (GIoU) and R-CNN (SmoothL1) terms have none (1.0);
# ATSS's GIoU x 2.0 (sfzhang15/ATSS REG_LOSS_WEIGHT, mmdet atss config loss_weight=2.0),
# PAA's GIoU x 1.3 (kkhoot/PAA REG_LOSS_WEIGHT, mmdet paa config loss_weight=1.3) and DETR's
# GIoU x model.loss_giou (2) live in their modules.
TORCHVISION_STOCK_WEIGHT = 1.0


def stock_box_weight(cfg: Mapping[str, Any]) -> float:
    """The detector's own box-loss weight: what ``weight=stock`` gives a configured loss."""
    name = cfg["model"]["name"]
    if name == "atss":
        from bbrctl.detection.models.atss import STOCK_GIOU_WEIGHT

        return STOCK_GIOU_WEIGHT
    if name == "paa":
        from bbrctl.detection.models.paa import STOCK_GIOU_WEIGHT

        return STOCK_GIOU_WEIGHT
    if name == "detr":
        from bbrctl.detection.models.detr import stock_box_weight as detr_weight

        return detr_weight(cfg["model"])
    return TORCHVISION_STOCK_WEIGHT


def box_loss_weight(cfg: Mapping[str, Any]) -> float:
    """The ``weight`` a run installs: the configured number, or with ``weight=stock`` the
    detector's own (1.0 for ``loss=baseline``, whose stock term already carries it)."""
    from bbrctl.config.schema import STOCK_WEIGHT

    w = cfg.get("weight", 1.0)
    if w != STOCK_WEIGHT:
        return float(w)
    return 1.0 if cfg["loss"]["name"] == "baseline" else float(stock_box_weight(cfg))


# --------------------------------------------------------------------------- detectors


def build_model(cfg: Mapping[str, Any], num_classes: int, install_loss: bool = True):
    """The detector for ``cfg`` with ``num_classes`` foreground classes, loss installed.

    ``cfg`` is a resolved config (plain dict or DictConfig) with model, backbone, loss
    and weight. torchvision's class count includes the background, hence +1.
    """
    check_model_config(cfg)
    m = cfg["model"]
    kind = m["name"]
    if kind in ("atss", "paa", "detr"):
        from bbrctl.detection.models import detectors

        model = detectors.build(cfg, int(num_classes))
        if install_loss:
            from bbrctl.detection.models.heads import install_bbr_loss

            loss = cfg["loss"]
            install_bbr_loss(model, loss["name"], dict(loss.get("params") or {}), box_loss_weight(cfg))
        return model
    backbone = build_backbone(cfg)
    anchors = _anchor_generator(m)
    common = dict(min_size=train_min_sizes(m), max_size=int(m["max_size"]))
    extra_kwargs = dict(m.get("kwargs") or {})
    n_cls = int(num_classes) + 1
    if kind == "retinanet":
        model = _retinanet(m, backbone, anchors, n_cls, common, extra_kwargs)
    elif kind == "fcos":
        model = _fcos(m, backbone, anchors, n_cls, common, extra_kwargs)
    else:
        model = _rcnn(kind, m, cfg["backbone"], backbone, anchors, n_cls, common, extra_kwargs)
    from bbrctl.detection.train.speed import skip_identity_resize

    skip_identity_resize(model)  # exact: a scale-1 resize returns its input
    if install_loss:
        from bbrctl.detection.models.heads import install_bbr_loss

        loss = cfg["loss"]
        install_bbr_loss(model, loss["name"], dict(loss.get("params") or {}), box_loss_weight(cfg),
                         loss_in_rpn=bool(m.get("loss_in_rpn", False)))
    return model


def _head_norm(m: Mapping[str, Any]):
    kind = m.get("head_norm", "group")
    if kind in (None, "none"):
        return None
    return norm_layer(kind)


def _retinanet(m, backbone, anchors, n_cls, common, extra):
    from torchvision.models.detection import RetinaNet
    from torchvision.models.detection.retinanet import RetinaNetHead

    head = RetinaNetHead(backbone.out_channels, anchors.num_anchors_per_location()[0], n_cls,
                         norm_layer=_head_norm(m))
    convs = int(m.get("head_convs", 4))
    if not 1 <= convs <= 4:
        raise UserError(f"model.head_convs must be in [1, 4] for retinanet, got {convs}")
    # torchvision's head always stacks 4 convs; the CPU presets keep the first few.
    head.classification_head.conv = head.classification_head.conv[:convs]
    head.regression_head.conv = head.regression_head.conv[:convs]
    model = RetinaNet(backbone, n_cls, anchor_generator=anchors, head=head,
                      score_thresh=float(m.get("score_thresh", 0.05)), nms_thresh=float(m.get("nms_thresh", 0.5)),
                      detections_per_img=int(m.get("detections_per_img", 100)),
                      fg_iou_thresh=float(m.get("fg_iou_thresh", 0.5)), bg_iou_thresh=float(m.get("bg_iou_thresh", 0.4)),
                      topk_candidates=int(m.get("topk_candidates", 1000)), **common, **extra)
    weights = m.get("box_coder_weights")
    if weights is not None:
        # One coder for the targets (regression head) and the decoding (postprocess).
        # (10, 10, 5, 5) is the ATSS code's RetinaNet, which the paper followed;
        # torchvision's own is (1, 1, 1, 1).
        from torchvision.models.detection._utils import BoxCoder

        model.box_coder = BoxCoder(weights=tuple(float(w) for w in weights))
        model.head.regression_head.box_coder = BoxCoder(weights=tuple(float(w) for w in weights))
    return model


def _fcos(m, backbone, anchors, n_cls, common, extra):
    from torchvision.models.detection import FCOS
    from torchvision.models.detection.fcos import FCOSHead

    head = FCOSHead(backbone.out_channels, 1, n_cls, num_convs=int(m.get("head_convs", 4)))
    return FCOS(backbone, n_cls, anchor_generator=anchors, head=head,
                center_sampling_radius=float(m.get("center_sampling_radius", 1.5)),
                score_thresh=float(m.get("score_thresh", 0.2)), nms_thresh=float(m.get("nms_thresh", 0.6)),
                detections_per_img=int(m.get("detections_per_img", 100)),
                topk_candidates=int(m.get("topk_candidates", 1000)), **common, **extra)


def _rcnn(kind, m, bcfg, backbone, anchors, n_cls, common, extra):
    from torchvision.models.detection import FasterRCNN, MaskRCNN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
    from torchvision.models.detection.rpn import RPNHead
    from torchvision.ops import MultiScaleRoIAlign

    fpn = backbone.out_channels
    names = [str(i) for i in range(len(m["returned_layers"]))]  # pooled levels: not the extra one
    rep = int(m.get("box_head_dim", 1024))
    kwargs = dict(
        rpn_anchor_generator=anchors,
        rpn_head=RPNHead(fpn, anchors.num_anchors_per_location()[0]),
        box_roi_pool=MultiScaleRoIAlign(featmap_names=names, output_size=7, sampling_ratio=2),
        box_head=TwoMLPHead(fpn * 7 * 7, rep),
        box_predictor=FastRCNNPredictor(rep, n_cls),
        rpn_pre_nms_top_n_train=int(m.get("rpn_pre_nms_top_n_train", 2000)),
        rpn_pre_nms_top_n_test=int(m.get("rpn_pre_nms_top_n_test", 1000)),
        rpn_post_nms_top_n_train=int(m.get("rpn_post_nms_top_n_train", 2000)),
        rpn_post_nms_top_n_test=int(m.get("rpn_post_nms_top_n_test", 1000)),
        rpn_batch_size_per_image=int(m.get("rpn_batch_size_per_image", 256)),
        box_batch_size_per_image=int(m.get("box_batch_size_per_image", 512)),
        box_score_thresh=float(m.get("score_thresh", 0.05)),
        box_nms_thresh=float(m.get("nms_thresh", 0.5)),
        box_detections_per_img=int(m.get("detections_per_img", 100)),
    )
    if kind == "faster_rcnn":
        return FasterRCNN(backbone, None, **kwargs, **common, **extra)
    mask_ch = int(m.get("mask_head_channels") or fpn)
    return MaskRCNN(
        backbone, None,
        mask_roi_pool=MultiScaleRoIAlign(featmap_names=names, output_size=14, sampling_ratio=2),
        mask_head=MaskRCNNHeads(fpn, [mask_ch] * 4, 1),
        mask_predictor=MaskRCNNPredictor(mask_ch, mask_ch, n_cls),
        **kwargs, **common, **extra)
