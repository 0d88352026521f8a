"""Detector builders: torchvision RetinaNet, FCOS, Faster and Mask R-CNN on ResNet-FPN.

Everything is built with ``weights=None`` (nothing is ever downloaded). Backbones come
from torchvision's ``ResNet`` class, described by the ``backbone`` config node::

    block: basic | bottleneck     layers: [n1, n2, n3, n4]     widths: [w1, w2, w3, w4]
    groups, width_per_group       (ResNeXt-101 32x4d: bottleneck [3, 4, 23, 3], 32, 4)
    fpn_channels                  width of the FPN and of the heads on top of it

so ResNet-18/50, ResNeXt-101 32x4d (the paper's Table 3 backbone, which torchvision does
not ship as a builder) and reduced-width CPU variants are one code path. A local
ImageNet checkpoint can be loaded with ``model.weights_backbone``.

Normalisation (``model.norm``): without pretrained weights, FrozenBatchNorm is an
identity and trains nothing, and BatchNorm statistics of 2-4 images per GPU are noise,
so from-scratch runs of the standard backbones use GroupNorm (32 groups, fewer for
narrow layers). The CPU backbone (``resnet_tiny``) trains BatchNorm: 8 images per batch
in one process, where it converged faster than GroupNorm in a few hundred steps (under
DDP on CUDA it becomes SyncBatchNorm). ``frozen_bn`` is the usual choice with an
ImageNet checkpoint. The heads keep GroupNorm (``model.head_norm``).

ATSS, PAA and DETR, which torchvision does not ship, are assembled from its parts in
``bbrctl.detection.detectors``; ``check_model_config`` and ``build_model`` dispatch there.

The configured BBR loss is installed by :func:`bbrctl.detection.heads.install_bbr_loss`.
Config validation (:func:`check_model_config`) imports no torch, so ``bbrctl train``
can reject a bad override before it creates a run directory.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from bbrctl.errors import UserError

MODELS = ("retinanet", "fcos", "faster_rcnn", "mask_rcnn", "atss", "paa", "detr")
NORMS = ("group", "batch", "frozen_bn")
BLOCKS = ("basic", "bottleneck")
EXTRA_LEVELS = ("p6p7", "pool", "none")


# --------------------------------------------------------------------------- validation


def check_model_config(cfg: Mapping[str, Any]) -> None:
    """Raise UserError (one line) if the model/backbone nodes of ``cfg`` cannot be built."""
    m, b = cfg.get("model") or {}, cfg.get("backbone") or {}
    name = m.get("name")
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; valid: {', '.join(MODELS)}")
    from bbrctl.detection import detectors  # ATSS, PAA, DETR: bbrctl's own (no torch here)

    if name == "detr":
        return detectors.check_config(cfg)
    detectors.check_dcn(b)
    _one_of("model.norm", m.get("norm", "group"), NORMS)
    _one_of("backbone.block", b.get("block"), BLOCKS)
    layers, widths = b.get("layers"), b.get("widths")
    if not _int_list(layers, 4, 1):
        raise UserError(f"backbone.layers must be 4 integers >= 1, got {layers!r}")
    if not _int_list(widths, 4, 1):
        raise UserError(f"backbone.widths must be 4 integers >= 1, got {widths!r}")
    for key in ("groups", "width_per_group", "fpn_channels"):
        if not _int_list([b.get(key)], 1, 1):
            raise UserError(f"backbone.{key} must be an integer >= 1, got {b.get(key)!r}")
    returned = m.get("returned_layers")
    if not _int_list(returned, None, 1, 4) or list(returned) != sorted(set(returned)):
        raise UserError(f"model.returned_layers must be increasing integers in [1, 4], got {returned!r}")
    extra = _one_of("model.extra_levels", m.get("extra_levels"), EXTRA_LEVELS)
    levels = len(returned) + {"p6p7": 2, "pool": 1, "none": 0}[extra]
    sizes = m.get("anchor_sizes")
    if sizes is None:
        base = m.get("anchor_base")
        if not (_num(base) and base > 0):
            raise UserError(f"model.anchor_base must be a number > 0 (or set model.anchor_sizes), got {base!r}")
    elif not isinstance(sizes, (list, tuple)) or len(sizes) != levels or not all(_num(s) and s > 0 for s in sizes):
        raise UserError(f"model.anchor_sizes must give one positive size per pyramid level ({levels} for "
                        f"returned_layers={list(returned)} and extra_levels={extra}), got {sizes!r}")
    ratios = m.get("aspect_ratios")
    if not isinstance(ratios, (list, tuple)) or not ratios or not all(_num(r) and r > 0 for r in ratios):
        raise UserError(f"model.aspect_ratios must be a non-empty list of positive numbers, got {ratios!r}")
    if name == "fcos" and (len(ratios) != 1 or int(m.get("anchor_scales_per_octave", 1)) != 1):
        raise UserError("FCOS takes one point per location: model.aspect_ratios must have one entry "
                        "and model.anchor_scales_per_octave must be 1")
    if name == "fcos" and int(b["fpn_channels"]) % 32:
        raise UserError(f"FCOS's head uses GroupNorm(32): backbone.fpn_channels must be a multiple of 32, "
                        f"got {b['fpn_channels']}")
    if name in ("faster_rcnn", "mask_rcnn") and extra == "p6p7":
        raise UserError("model.extra_levels=p6p7 is for one-stage models; R-CNN uses pool or none")
    for key in ("min_size", "max_size"):
        if not _int_list([m.get(key)], 1, 16):
            raise UserError(f"model.{key} must be an integer >= 16, got {m.get(key)!r}")
    if m.get("weights_backbone") and m.get("norm", "group") == "group":
        raise UserError("model.weights_backbone holds BatchNorm statistics; use model.norm=frozen_bn or batch with it")
    if name in detectors.OWN_MODELS:
        detectors.check_config(cfg)


def _one_of(key: str, value: Any, valid: tuple[str, ...]) -> str:
    if value not in valid:
        raise UserError(f"{key}={value!r} is not valid; valid: {', '.join(valid)}")
    return value


def _num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _int_list(x: Any, n: int | None, low: int, high: int | None = None) -> bool:
    if not isinstance(x, (list, tuple)) or (n is not None and len(x) != n) or not x:
        return False
    return all(isinstance(v, int) and not isinstance(v, bool) and v >= low and (high is None or v <= high) for v in x)


# --------------------------------------------------------------------------- backbone


def norm_layer(kind: str):
    """The normalisation module factory for ``model.norm``."""
    import torch.nn as nn
    from torchvision.ops import FrozenBatchNorm2d

    if kind == "group":
        return _group_norm
    if kind == "batch":
        return nn.BatchNorm2d
    if kind == "frozen_bn":
        return FrozenBatchNorm2d
    raise UserError(f"model.norm={kind!r} is not valid; valid: {', '.join(NORMS)}")


def _group_norm(channels: int):
    import torch.nn as nn

    # 32 groups (Wu & He) where the width allows; narrow CPU backbones get fewer.
    return nn.GroupNorm(math.gcd(32, channels), channels)


def build_resnet(bcfg: Mapping[str, Any], norm: str):
    """A torchvision ``ResNet`` trunk for the ``backbone`` config node."""
    import torch.nn as nn
    from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

    block = BasicBlock if bcfg["block"] == "basic" else Bottleneck
    layers, widths = list(bcfg["layers"]), list(bcfg["widths"])
    make_norm = norm_layer(norm)
    net = ResNet(block, layers, groups=int(bcfg.get("groups", 1)),
                 width_per_group=int(bcfg.get("width_per_group", 64)), norm_layer=make_norm)
    if widths != [64, 128, 256, 512]:
        # ResNet's constructor fixes the stage widths; rebuild the stem and stages with
        # its own _make_layer so the blocks stay torchvision's.
        net.inplanes = widths[0]
        net.conv1 = nn.Conv2d(3, widths[0], kernel_size=7, stride=2, padding=3, bias=False)
        net.bn1 = make_norm(widths[0])
        for i, (w, n) in enumerate(zip(widths, layers)):
            setattr(net, f"layer{i + 1}", net._make_layer(block, w, n, stride=1 if i == 0 else 2))
        _init_like_resnet(net)
    net.fc = nn.Identity()  # detection never uses the classifier
    net.out_widths = [w * block.expansion for w in widths]
    return net


def _init_like_resnet(net) -> None:
    import torch.nn as nn

    for mod in net.modules():
        if isinstance(mod, nn.Conv2d):
            nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(mod, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.constant_(mod.weight, 1)
            nn.init.constant_(mod.bias, 0)


def load_backbone_weights(net, path: str) -> None:
    """Load a local ImageNet state dict (torchvision key names) into a ResNet trunk."""
    import os

    import torch

    if not os.path.isfile(path):
        raise UserError(f"model.weights_backbone: no such file {path!r}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's input
        raise UserError(f"model.weights_backbone: cannot read {path!r} as a PyTorch state dict ({type(e).__name__})") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.removeprefix("module.").startswith("fc.")}
    fit = f"model.weights_backbone {path!r} does not fit the configured backbone (backbone.layers/widths/groups)"
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        first = next((ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln), "tensor shapes differ")
        raise UserError(f"{fit}: {first}") from None
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        bad = (missing or unexpected)[0]
        raise UserError(f"{fit}: {len(missing)} missing keys, {len(unexpected)} unexpected, e.g. {bad!r}")


def freeze_layers(net, trainable: int) -> None:
    """torchvision's rule: train the last ``trainable`` of (conv1, layer1..layer4)."""
    if not 0 <= trainable <= 5:
        raise UserError(f"model.trainable_backbone_layers must be in [0, 5], got {trainable}")
    train = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable]
    if trainable == 5:
        train.append("bn1")
    for name, p in net.named_parameters():
        if not any(name.startswith(t) for t in train):
            p.requires_grad_(False)


def build_backbone(cfg: Mapping[str, Any]):
    """ResNet trunk + FPN (``BackboneWithFPN``) for the model and backbone nodes."""
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

    m, b = cfg["model"], cfg["backbone"]
    net = build_resnet(b, m.get("norm", "group"))
    if m.get("weights_backbone"):
        load_backbone_weights(net, str(m["weights_backbone"]))
    from bbrctl.detection.dcn import apply_dcn

    apply_dcn(net, b.get("dcn_stages"))  # after the weights: DCN keeps the plain convs' weights
    freeze_layers(net, int(m.get("trainable_backbone_layers", 5)))
    returned = list(m["returned_layers"])
    fpn = int(b["fpn_channels"])
    extra = {"p6p7": lambda: LastLevelP6P7(fpn, fpn), "pool": LastLevelMaxPool, "none": lambda: None}[m["extra_levels"]]()
    if extra is None:
        from torchvision.ops.feature_pyramid_network import ExtraFPNBlock

        class _NoExtra(ExtraFPNBlock):  # BackboneWithFPN substitutes max-pool for None
            def forward(self, results, x, names):
                return results, names

        extra = _NoExtra()
    return BackboneWithFPN(net, {f"layer{k}": str(i) for i, k in enumerate(returned)},
                           [net.out_widths[k - 1] for k in returned], fpn, extra_blocks=extra)


def anchor_sizes(m: Mapping[str, Any]) -> list[float]:
    """Base anchor size per pyramid level: ``model.anchor_sizes`` if given, else
    ``anchor_base * 2**level`` from the finest level (torchvision: 32, 64, ..., 512)."""
    if m.get("anchor_sizes") is not None:
        return [float(s) for s in m["anchor_sizes"]]
    levels = len(m["returned_layers"]) + {"p6p7": 2, "pool": 1, "none": 0}[m["extra_levels"]]
    return [float(m["anchor_base"]) * 2 ** i for i in range(levels)]


def _anchor_generator(m: Mapping[str, Any]):
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    n = int(m.get("anchor_scales_per_octave", 1))
    sizes = tuple(tuple(int(round(s * 2 ** (k / n))) for k in range(n)) for s in anchor_sizes(m))
    ratios = (tuple(float(r) for r in m["aspect_ratios"]),) * len(sizes)
    return AnchorGenerator(sizes, ratios)


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
        from bbrctl.detection import detectors

        model = detectors.build(cfg, int(num_classes))
        if install_loss:
            from bbrctl.detection.heads import install_bbr_loss

            loss = cfg["loss"]
            install_bbr_loss(model, loss["name"], dict(loss.get("params") or {}), float(cfg.get("weight", 1.0)))
        return model
    backbone = build_backbone(cfg)
    anchors = _anchor_generator(m)
    common = dict(min_size=int(m["min_size"]), max_size=int(m["max_size"]))
    extra_kwargs = dict(m.get("kwargs") or {})
    n_cls = int(num_classes) + 1
    if kind == "retinanet":
        model = _retinanet(m, backbone, anchors, n_cls, common, extra_kwargs)
    elif kind == "fcos":
        model = _fcos(m, backbone, anchors, n_cls, common, extra_kwargs)
    else:
        model = _rcnn(kind, m, cfg["backbone"], backbone, anchors, n_cls, common, extra_kwargs)
    if install_loss:
        from bbrctl.detection.heads import install_bbr_loss

        loss = cfg["loss"]
        install_bbr_loss(model, loss["name"], dict(loss.get("params") or {}), float(cfg.get("weight", 1.0)),
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
    return RetinaNet(backbone, n_cls, anchor_generator=anchors, head=head,
                     score_thresh=float(m.get("score_thresh", 0.05)), nms_thresh=float(m.get("nms_thresh", 0.5)),
                     detections_per_img=int(m.get("detections_per_img", 100)),
                     fg_iou_thresh=float(m.get("fg_iou_thresh", 0.5)), bg_iou_thresh=float(m.get("bg_iou_thresh", 0.4)),
                     topk_candidates=int(m.get("topk_candidates", 1000)), **common, **extra)


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
