"""Modulated deformable convolution (DCNv2) in ResNet stages, for ``backbone.dcn_stages``.

The paper's strongest ATSS/PAA rows use ResNeXt-101 64x4d "DCN". In the code that produced
them (sfzhang15/ATSS ``configs/atss/atss_dcnv2_X_101_64x4d_FPN_2x.yaml``:
``STAGE_WITH_DCN: (False, False, True, True)``, ``USE_DCN_IN_TOWER: True``; kkhoot/PAA, whose
README says the same), the 3x3 convolution of every bottleneck in stages c4-c5 (ResNeXt;
their ResNets use c3-c5) and the last convolution of each head tower
(:func:`apply_dcn_to_towers`, ``model.head_dcn``) are modulated deformable convolutions
(Zhu et al., DCNv2): a zero-initialised 3x3 convolution predicts, per output location, 2 offsets and
one sigmoid mask per kernel tap (one offset group), and
``torchvision.ops.deform_conv2d`` samples the input there. At initialisation the offsets
are 0 and the masks 0.5, i.e. the layer is its plain convolution scaled by a half, as in
DCNv2's reference code.

Contract of :func:`apply_dcn`: the converted convolution keeps the plain one's weight
(same parameter name, ``...conv2.weight``, same shape), so it is applied *after* a local
ImageNet checkpoint of the plain network is loaded; only ``conv2.conv_offset.*`` are new.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn
from torchvision.ops import DeformConv2d, deform_conv2d


class ModulatedDeformConv2d(DeformConv2d):
    """DCNv2 with its own offset/mask predictor (mmcv's "ModulatedDeformConv2dPack" layout)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: int = 1, dilation: int = 1, groups: int = 1, bias: bool = False):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        kh, kw = self.weight.shape[-2:]
        self.conv_offset = nn.Conv2d(in_channels, 3 * kh * kw, (kh, kw), stride=self.stride, padding=self.padding,
                                     dilation=self.dilation, bias=True)
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> "ModulatedDeformConv2d":
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("only zero-padded convolutions with numeric padding can be made deformable")
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                  conv.groups, bias=conv.bias is not None)
        with torch.no_grad():
            new.weight.copy_(conv.weight)
            if conv.bias is not None:
                new.bias.copy_(conv.bias)
        return new.to(device=conv.weight.device, dtype=conv.weight.dtype)

    def forward(self, x, offset=None, mask=None):  # offset/mask are predicted, not passed
        out = self.conv_offset(x)
        kk = out.shape[1] // 3
        offset, mask = out[:, : 2 * kk], out[:, 2 * kk:].sigmoid()
        return deform_conv2d(x, offset, self.weight, self.bias, stride=self.stride, padding=self.padding,
                             dilation=self.dilation, mask=mask)


def apply_dcn(net: nn.Module, stages: Sequence[Any] | None) -> int:
    """Make the 3x3 conv (``conv2``) of every block in the flagged stages deformable.

    ``stages``: four booleans for ``layer1``..``layer4`` (c2..c5); None or all false is a
    no-op. Returns the number of converted convolutions. A BasicBlock's ``conv2`` is its
    second 3x3 conv (an extension for small test backbones: mmdet has no DCN BasicBlock).
    """
    if not stages or not any(stages):
        return 0
    n = 0
    for i, flag in enumerate(stages):
        if not flag:
            continue
        for block in getattr(net, f"layer{i + 1}"):
            conv = block.conv2
            if isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3):
                block.conv2 = ModulatedDeformConv2d.from_conv(conv)
                n += 1
    return n


def apply_dcn_to_towers(towers: Sequence[nn.Sequential]) -> int:
    """Make the last 3x3 convolution of each head tower deformable (ATSS's and PAA's
    ``USE_DCN_IN_TOWER``), keeping its weight and bias; returns how many were converted.

    Call it after the head's own initialisation, so the offset predictor stays zero."""
    n = 0
    for tower in towers:
        idx = [i for i, mod in enumerate(tower) if isinstance(mod, nn.Conv2d) and mod.kernel_size == (3, 3)]
        if idx:
            tower[idx[-1]] = ModulatedDeformConv2d.from_conv(tower[idx[-1]])
            n += 1
    return n
