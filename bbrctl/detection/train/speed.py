"""CPU speed settings of a training run: memory format, bf16 autocast, no-op resizes.

What each one buys was measured on the 2-core development machine (Intel Xeon with
AMX, torch 2.14.1); ``benchmarks/main_job.py`` measures the whole effect. Contracts:

* :func:`use_channels_last` (``schedule.channels_last``): the model's 4-d weights in
  NHWC order, so oneDNN's convolutions take and return NHWC activations without a
  reorder per layer. Changes float rounding only (the same maths in another order).
  GroupNorm is the exception: its NHWC kernels on the CPU were 3x (fp32) to 17x (bf16)
  slower than NCHW, so :class:`GroupNormNCHW` runs it on an NCHW copy and hands NHWC
  back. On CUDA the setting does nothing (cuDNN's choices are its own).
* :func:`cpu_autocast_dtype` (``schedule.cpu_amp``: auto | bf16 | off): bfloat16
  autocast for the CPU. ``auto`` turns it on only where the CPU multiplies bf16 in
  hardware (AMX tiles: a 3x3 convolution ran 6x faster than fp32 there); elsewhere bf16
  is emulated and slower, so auto is off. Under autocast only convolutions and matrix
  products run in bf16 (fp32 accumulation); :func:`fp32_outputs` makes the detectors'
  prediction heads return float32, so every loss, the anchor matching and the
  post-processing (scores, NMS) stay in float32.
* :func:`skip_identity_resize`: torchvision's detection transform resizes every image
  even when the scale is exactly 1 (the synthetic data is already at the model's
  size). Bilinear interpolation at scale 1 returns its input bit for bit, so skipping
  it changes no number; the training RNG draw of the stock ``resize`` is kept, so the
  global random stream (R-CNN's sampler) is the same as without the skip.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchvision.models.detection.transform import (GeneralizedRCNNTransform, _resize_image_and_masks,
                                                    resize_boxes, resize_keypoints)

CPU_AMP = ("auto", "bf16", "off")


def cpu_autocast_dtype(setting: Any) -> torch.dtype | None:
    """bfloat16 for ``schedule.cpu_amp`` bf16, or auto on a CPU with AMX; else None."""
    value = "off" if setting is False else ("auto" if setting in (None, True) else str(setting))
    if value not in CPU_AMP:
        from bbrctl.errors import UserError

        raise UserError(f"schedule.cpu_amp={setting!r} is not valid; valid: {', '.join(CPU_AMP)}")
    if value == "bf16" or (value == "auto" and has_bf16_matmul_hardware()):
        return torch.bfloat16
    return None


def has_bf16_matmul_hardware() -> bool:
    """True on a CPU with AMX tiles (Intel Sapphire Rapids and later)."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    try:
        return bool(probe()) if probe is not None else False
    except RuntimeError:
        return False


class GroupNormNCHW(nn.GroupNorm):
    """nn.GroupNorm (same parameters and state-dict keys) that computes on NCHW memory."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4 and not x.is_cuda and x.is_contiguous(memory_format=torch.channels_last) \
                and not x.is_contiguous():
            out = super().forward(x.contiguous())
            return out.contiguous(memory_format=torch.channels_last)
        return super().forward(x)


def use_channels_last(model: nn.Module) -> nn.Module:
    """NHWC weights for a CPU model, GroupNorm on NCHW copies; returns ``model``."""
    for mod in model.modules():
        if type(mod) is nn.GroupNorm:
            mod.__class__ = GroupNormNCHW  # no state of its own: parameters and keys unchanged
    return model.to(memory_format=torch.channels_last)


def _to_float(obj):
    if torch.is_tensor(obj):
        return obj.float() if obj.dtype in (torch.bfloat16, torch.float16) else obj
    if isinstance(obj, dict):
        return {k: _to_float(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_float(v) for v in obj)
    return obj


def _float_hook(module, inputs, output):
    return _to_float(output)


def fp32_outputs(model: nn.Module) -> nn.Module:
    """Make the prediction heads of a detector return float32 tensors.

    torchvision's RetinaNet, FCOS, Faster and Mask R-CNN by their known heads; bbrctl's own
    detectors (ATSS, PAA, DETR) name theirs through ``prediction_heads()``.
    """
    from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet

    own = getattr(model, "prediction_heads", None)
    if own is not None:
        heads = list(own())
    elif isinstance(model, (RetinaNet, FCOS)):
        heads = [model.head]
    elif isinstance(model, FasterRCNN):
        heads = [model.rpn.head, model.roi_heads.box_predictor]
        if getattr(model.roi_heads, "mask_predictor", None) is not None:
            heads.append(model.roi_heads.mask_predictor)
    else:
        raise TypeError(f"no prediction heads known for {type(model).__name__}")
    for head in heads:
        if not getattr(head, "_bbrctl_fp32_outputs", False):
            head.register_forward_hook(_float_hook)
            head._bbrctl_fp32_outputs = True
    return model


def skip_identity_resize(model: nn.Module) -> nn.Module:
    """Swap the detector's transform for :class:`SameSizeTransform` (see the module doc)."""
    if type(model.transform) is GeneralizedRCNNTransform:
        model.transform.__class__ = SameSizeTransform  # adds methods only, no state
    return model


class SameSizeTransform(GeneralizedRCNNTransform):
    """GeneralizedRCNNTransform whose resize returns an image already at scale 1 as is."""

    def resize(self, image, target=None):
        if self.fixed_size is not None or getattr(self, "_skip_resize", False):
            return super().resize(image, target)
        if not self.training:
            size = self.min_size[-1]
        else:
            size = self.torch_choice(self.min_size)  # the stock method's RNG draw, kept
        h, w = image.shape[-2:]
        if min(float(size) / min(h, w), float(self.max_size) / max(h, w)) == 1.0:
            return image, target
        # What the stock method does, at the size drawn above (it would draw again).
        image, target = _resize_image_and_masks(image, size, self.max_size, target, self.fixed_size)
        if target is None:
            return image, target
        target["boxes"] = resize_boxes(target["boxes"], (h, w), image.shape[-2:])
        if "keypoints" in target:
            target["keypoints"] = resize_keypoints(target["keypoints"], (h, w), image.shape[-2:])
        return image, target
