"""Config checks and builders of the detectors bbrctl implements itself: ATSS, PAA, DETR.

torchvision ships RetinaNet, FCOS and the R-CNNs (``bbrctl.detection.models``); the other
three detectors of the paper's Table 3 are assembled here from torchvision parts:

* ``atss`` / ``paa`` (``bbrctl.detection.atss`` / ``.paa``): the ResNet-FPN backbone of
  the other one-stage models (P3-P7, ``models.build_backbone``), one square anchor per
  location of side ``anchor_base * octave_base_scale / 4 * 2**level`` (``anchor_base`` is
  the data's hint for RetinaNet's 4 x stride, 32 on COCO: 8 x 8 = 64 px on P3 there), or
  ``anchor_sizes`` as given; the GroupNorm head of ``bbrctl.detection.dense``;
* ``detr`` (``bbrctl.detection.detr``): a ResNet trunk (C5) and a transformer.

``check_config`` runs without torch (``bbrctl train`` validates before it creates a run
directory); the builders import torch. ``models.check_model_config`` and
``models.build_model`` dispatch here for these names.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from bbrctl.errors import UserError

OWN_MODELS = ("atss", "paa", "detr")
DENSE_MODELS = ("atss", "paa")


# --------------------------------------------------------------------------- validation


def _int(m: Mapping[str, Any], key: str, low: int, default: Any = None, prefix: str = "model") -> int:
    v = m.get(key, default)
    if not isinstance(v, int) or isinstance(v, bool) or v < low:
        raise UserError(f"{prefix}.{key} must be an integer >= {low}, got {v!r}")
    return v


def _num(m: Mapping[str, Any], key: str, low: float, high: float | None = None, default: Any = None,
         open_low: bool = False) -> float:
    v = m.get(key, default)
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and \
        (v > low if open_low else v >= low) and (high is None or v <= high)
    if not ok:
        rng = f"{'(' if open_low else '['}{low:g}, {'inf)' if high is None else f'{high:g}]'}"
        raise UserError(f"model.{key} must be a number in {rng}, got {v!r}")
    return float(v)


def _bool(m: Mapping[str, Any], key: str, default: bool) -> bool:
    v = m.get(key, default)
    if not isinstance(v, bool):
        raise UserError(f"model.{key} must be true or false, got {v!r}")
    return v


def check_dcn(b: Mapping[str, Any]) -> None:
    """``backbone.dcn_stages``: absent/null, or four booleans (c2..c5)."""
    stages = b.get("dcn_stages")
    if stages is None:
        return
    if not isinstance(stages, (list, tuple)) or len(stages) != 4 or not all(isinstance(s, bool) for s in stages):
        raise UserError(f"backbone.dcn_stages must be 4 booleans for stages c2-c5 (e.g. [false, true, true, true]) "
                        f"or null, got {stages!r}")


def check_config(cfg: Mapping[str, Any]) -> None:
    """The model-specific part of ``models.check_model_config`` for ATSS, PAA and DETR.

    For ATSS/PAA it runs after the generic checks (backbone, pyramid, anchors, sizes);
    DETR has no pyramid or anchors and is checked here in full.
    """
    m, b = cfg.get("model") or {}, cfg.get("backbone") or {}
    name = m.get("name")
    if name in DENSE_MODELS:
        ratios = m.get("aspect_ratios")
        if list(ratios) != [1.0] or int(m.get("anchor_scales_per_octave", 1)) != 1:
            raise UserError(f"{name.upper()} uses one square anchor per location: model.aspect_ratios must be [1.0] "
                            f"and model.anchor_scales_per_octave 1, got {list(ratios)} and "
                            f"{m.get('anchor_scales_per_octave')}")
        if m.get("extra_levels") == "pool":
            raise UserError(f"model.extra_levels=pool is for R-CNN; {name.upper()} uses p6p7 or none")
        _int(m, "topk", 1, 9)
        _num(m, "octave_base_scale", 0.0, None, 8, open_low=True)
        convs = _int(m, "head_convs", 1, 4)
        if convs > 8:
            raise UserError(f"model.head_convs must be in [1, 8], got {convs}")
        _num(m, "score_thresh", 0.0, 1.0, 0.05)
        _num(m, "nms_thresh", 0.0, 1.0, 0.6)
        _int(m, "detections_per_img", 1, 100)
        _int(m, "topk_candidates", 1, 1000)
        if name == "paa":
            _bool(m, "score_voting", True)
            _bool(m, "loss_in_assignment", False)
        return
    if name != "detr":
        raise UserError(f"unknown model {name!r}; valid: {', '.join(OWN_MODELS)}")
    _check_trunk(m, b)
    d = _int(m, "d_model", 8, 256)
    heads = _int(m, "nhead", 1, 8)
    if d % heads or d % 2:
        raise UserError(f"model.d_model ({d}) must be even and divisible by model.nhead ({heads})")
    _int(m, "enc_layers", 0, 6)
    _int(m, "dec_layers", 1, 6)
    _int(m, "dim_feedforward", 1, 2048)
    _num(m, "dropout", 0.0, 0.99, 0.1)
    _int(m, "num_queries", 1, 100)
    _bool(m, "aux_loss", True)
    _bool(m, "loss_in_matching", False)
    _num(m, "eos_coef", 0.0, 1.0, 0.1, open_low=True)
    for key in ("cost_class", "cost_bbox", "cost_giou", "loss_ce", "loss_bbox", "loss_giou"):
        _num(m, key, 0.0, None, 1.0)
    if all(float(m.get(k, 1.0)) == 0 for k in ("cost_class", "cost_bbox", "cost_giou")):
        raise UserError("model.cost_class, cost_bbox and cost_giou are all 0: the matcher would have nothing to match on")


def _check_trunk(m: Mapping[str, Any], b: Mapping[str, Any]) -> None:
    """The backbone-node checks of ``models.check_model_config``, for DETR's plain trunk."""
    from bbrctl.detection.models import BLOCKS, NORMS, _int_list, _one_of

    _one_of("model.norm", m.get("norm", "group"), NORMS)
    _one_of("backbone.block", b.get("block"), BLOCKS)
    for key in ("layers", "widths"):
        if not _int_list(b.get(key), 4, 1):
            raise UserError(f"backbone.{key} must be 4 integers >= 1, got {b.get(key)!r}")
    for key in ("groups", "width_per_group"):
        if not _int_list([b.get(key)], 1, 1):
            raise UserError(f"backbone.{key} must be an integer >= 1, got {b.get(key)!r}")
    check_dcn(b)
    for key in ("min_size", "max_size"):
        if not _int_list([m.get(key)], 1, 16):
            raise UserError(f"model.{key} must be an integer >= 16, got {m.get(key)!r}")
    if m.get("weights_backbone") and m.get("norm", "group") == "group":
        raise UserError("model.weights_backbone holds BatchNorm statistics; use model.norm=frozen_bn or batch with it")


# --------------------------------------------------------------------------- builders


def build(cfg: Mapping[str, Any], num_classes: int):
    """The detector for a resolved ``cfg`` (checked), ``num_classes`` foreground classes."""
    name = cfg["model"]["name"]
    if name in DENSE_MODELS:
        return _dense(cfg, num_classes)
    return _detr(cfg, num_classes)


def _dense(cfg, num_classes):
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    from bbrctl.detection.dense import DenseHead
    from bbrctl.detection.models import anchor_sizes, build_backbone

    m = cfg["model"]
    backbone = build_backbone(cfg)
    sizes = anchor_sizes(m)
    if m.get("anchor_sizes") is None:  # anchor_base is RetinaNet's 4 x stride; ATSS/PAA's side is 8 x stride
        sizes = [s * float(m.get("octave_base_scale", 8)) / 4 for s in sizes]
    anchors = AnchorGenerator(tuple((int(round(s)),) for s in sizes), ((1.0,),) * len(sizes))
    head = DenseHead(backbone.out_channels, num_classes, len(sizes), num_convs=int(m.get("head_convs", 4)))
    common = dict(min_size=int(m["min_size"]), max_size=int(m["max_size"]),
                  score_thresh=float(m.get("score_thresh", 0.05)), nms_thresh=float(m.get("nms_thresh", 0.6)),
                  detections_per_img=int(m.get("detections_per_img", 100)),
                  topk_candidates=int(m.get("topk_candidates", 1000)), topk=int(m.get("topk", 9)))
    if m["name"] == "atss":
        from bbrctl.detection.atss import ATSS

        return ATSS(backbone, anchors, head, **common)
    from bbrctl.detection.paa import PAA

    return PAA(backbone, anchors, head, score_voting=bool(m.get("score_voting", True)),
               loss_in_assignment=bool(m.get("loss_in_assignment", False)), **common)


def build_trunk(cfg: Mapping[str, Any]):
    """ResNet trunk as ``models.build_backbone`` prepares it (weights, DCN, frozen layers), no FPN."""
    from bbrctl.detection.dcn import apply_dcn
    from bbrctl.detection.models import build_resnet, freeze_layers, load_backbone_weights

    m, b = cfg["model"], cfg["backbone"]
    net = build_resnet(b, m.get("norm", "group"))
    if m.get("weights_backbone"):
        load_backbone_weights(net, str(m["weights_backbone"]))
    apply_dcn(net, b.get("dcn_stages"))
    freeze_layers(net, int(m.get("trainable_backbone_layers", 5)))
    return net


def _detr(cfg, num_classes):
    from bbrctl.detection.detr import DETR

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
                min_size=int(m["min_size"]), max_size=int(m["max_size"]))
