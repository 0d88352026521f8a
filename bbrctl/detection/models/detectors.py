"""Config checks and builders of the detectors bbrctl implements itself: ATSS, PAA, DETR.

torchvision ships RetinaNet, FCOS and the R-CNNs (``bbrctl.detection.models.build``); the other
three detectors of the paper's Table 3 are assembled here from torchvision parts:

* ``atss`` / ``paa`` (``bbrctl.detection.models.atss`` / ``.paa``): the ResNet-FPN backbone of
  the other one-stage models (P3-P7, ``models.build_backbone``), one square anchor per
  location of side ``anchor_base * octave_base_scale / 4 * 2**level`` (``anchor_base`` is
  the data's hint for RetinaNet's 4 x stride, 32 on COCO: 8 x 8 = 64 px on P3 there), or
  ``anchor_sizes`` as given; the GroupNorm head of ``bbrctl.detection.models.dense``;
* ``detr`` (``bbrctl.detection.models.detr``): a ResNet trunk (C5) and a transformer.

Their config keys and rules are in the schema (bbrctl.config.schema: ``MODEL["atss"]``,
``["paa"]``, ``["detr"]``), checked before a run directory exists; the builders import
torch. ``models.build_model`` dispatches here for these names.
"""

from __future__ import annotations

from typing import Any, Mapping

from bbrctl.config.schema import DENSE_MODELS


# --------------------------------------------------------------------------- builders


def build(cfg: Mapping[str, Any], num_classes: int):
    """The detector for a resolved ``cfg`` (checked), ``num_classes`` foreground classes."""
    name = cfg["model"]["name"]
    if name in DENSE_MODELS:
        return _dense(cfg, num_classes)
    return _detr(cfg, num_classes)


def _dense(cfg, num_classes):
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    from bbrctl.detection.models.dense import DenseHead
    from bbrctl.detection.models.backbones import anchor_sizes, build_backbone, train_min_sizes

    m = cfg["model"]
    backbone = build_backbone(cfg)
    sizes = anchor_sizes(m)
    if m.get("anchor_sizes") is None:  # anchor_base is RetinaNet's 4 x stride; ATSS/PAA's side is 8 x stride
        sizes = [s * float(m.get("octave_base_scale", 8)) / 4 for s in sizes]
    anchors = AnchorGenerator(tuple((int(round(s)),) for s in sizes), ((1.0,),) * len(sizes))
    head = DenseHead(backbone.out_channels, num_classes, len(sizes), num_convs=int(m.get("head_convs", 4)))
    if m.get("head_dcn"):
        from bbrctl.detection.models.dcn import apply_dcn_to_towers

        apply_dcn_to_towers([head.cls_tower, head.reg_tower])
    common = dict(min_size=train_min_sizes(m), max_size=int(m["max_size"]),
                  score_thresh=float(m.get("score_thresh", 0.05)), nms_thresh=float(m.get("nms_thresh", 0.6)),
                  detections_per_img=int(m.get("detections_per_img", 100)),
                  topk_candidates=int(m.get("topk_candidates", 1000)), topk=int(m.get("topk", 9)))
    if m["name"] == "atss":
        from bbrctl.detection.models.atss import ATSS

        return ATSS(backbone, anchors, head, reg_weighting=str(m.get("reg_weighting", "centerness")), **common)
    from bbrctl.detection.models.paa import PAA

    return PAA(backbone, anchors, head, score_voting=bool(m.get("score_voting", True)),
               loss_in_assignment=bool(m.get("loss_in_assignment", False)),
               reg_weighting=str(m.get("reg_weighting", "iou")), **common)


def build_trunk(cfg: Mapping[str, Any]):
    """ResNet trunk as ``models.build_backbone`` prepares it (weights, DCN, frozen layers), no FPN."""
    from bbrctl.detection.models.dcn import apply_dcn
    from bbrctl.detection.models.backbones import build_resnet, freeze_layers, load_backbone_weights

    m, b = cfg["model"], cfg["backbone"]
    net = build_resnet(b, m.get("norm", "group"))
    if m.get("weights_backbone"):
        load_backbone_weights(net, str(m["weights_backbone"]))
    apply_dcn(net, b.get("dcn_stages"))
    freeze_layers(net, int(m.get("trainable_backbone_layers", 5)))
    return net


def _detr(cfg, num_classes):
    from bbrctl.detection.models.backbones import train_min_sizes
    from bbrctl.detection.models.detr import DETR

    m = cfg["model"]
    trunk = build_trunk(cfg)
    return DETR(trunk, trunk.out_widths[-1], num_classes,
                d_model=int(m.get("d_model", 256)), nhead=int(m.get("nhead", 8)),
                enc_layers=int(m.get("enc_layers", 6)), dec_layers=int(m.get("dec_layers", 6)),
                dim_feedforward=int(m.get("dim_feedforward", 2048)), dropout=float(m.get("dropout", 0.1)),
                num_queries=int(m.get("num_queries", 100)), aux_loss=bool(m.get("aux_loss", True)),
                eos_coef=float(m.get("eos_coef", 0.1)),
                costs=(float(m.get("cost_class", 1.0)), float(m.get("cost_bbox", 5.0)), float(m.get("cost_giou", 2.0))),
                weights=(float(m.get("loss_ce", 1.0)), float(m.get("loss_bbox", 5.0)), float(m.get("loss_giou", 2.0))),
                loss_in_matching=bool(m.get("loss_in_matching", False)),
                replaces=str(m.get("bbr_replaces", "giou")),
                min_size=train_min_sizes(m), max_size=int(m["max_size"]))
