"""Backbones and anchors of every detector: ResNet trunks, FPNs, anchor sizes.

Everything is built with ``weights=None`` (nothing is ever downloaded). Backbones come
from torchvision's ``ResNet`` class, described by the ``backbone`` config node::

    block: basic | bottleneck     layers: [n1, n2, n3, n4]     widths: [w1, w2, w3, w4]
    groups, width_per_group       (ResNeXt-101 32x4d: bottleneck [3, 4, 23, 3], 32, 4)
    fpn_channels                  width of the FPN and of the heads on top of it
    stem: pool | stride4 | conv3x2   torchvision's 7x7/2 conv + max-pool (default), one
                                  7x7/4 conv, or two 3x3/2 convs (the CPU backbone's)

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
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from bbrctl.errors import UserError
from bbrctl.config.schema import NORMS


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
    stem = bcfg.get("stem", "pool")
    if stem != "pool":
        # The stem's stride-2 activations (7x7 conv, BatchNorm, ReLU, 3x3 max-pool at
        # half the input size) cost a fifth of a CPU training step at 160 px. stride4: one
        # 7x7 conv of stride 4; conv3x2: two 3x3 convs of stride 2 (half width, then full),
        # no max-pool. Both give layer1 the same stride-4 input.
        c = net.conv1.out_channels
        if stem == "stride4":
            net.conv1 = nn.Conv2d(3, c, kernel_size=7, stride=4, padding=3, bias=False)
        else:
            half = max(1, c // 2)
            net.conv1 = nn.Sequential(nn.Conv2d(3, half, 3, stride=2, padding=1, bias=False), make_norm(half),
                                      nn.ReLU(inplace=True), nn.Conv2d(half, c, 3, stride=2, padding=1, bias=False))
        net.maxpool = nn.Identity()
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
    from bbrctl.detection.models.dcn import apply_dcn

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


def train_min_sizes(m: Mapping[str, Any]) -> int | tuple[int, ...]:
    """``min_size`` for torchvision's ``GeneralizedRCNNTransform``: ``model.min_size``, or with
    ``model.min_size_train: [lo, hi]`` every integer in [lo, hi] (hi = min_size, the test
    size: the transform tests at the last entry and draws one per training image), as
    maskrcnn-benchmark's ``INPUT.MIN_SIZE_RANGE_TRAIN`` (the ATSS/PAA 2x recipes: 640-800)."""
    rng = m.get("min_size_train")
    if rng is None:
        return int(m["min_size"])
    return tuple(range(int(rng[0]), int(rng[1]) + 1))
