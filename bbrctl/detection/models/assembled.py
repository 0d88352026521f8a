"""The base of the detectors bbrctl assembles itself (ATSS, PAA: ``dense``; DETR: ``detr``).

Contract shared with torchvision's detectors: ``forward(images, targets)`` takes a list
of CHW tensors and, in training, targets with ``boxes`` (xyxy, pixels) and ``labels``;
the input goes through torchvision's ``GeneralizedRCNNTransform`` (ImageNet mean/std,
resize to ``min_size``/``max_size``, batch) and detections are mapped back to the
original sizes.

The loss hook: ``bbrctl.detection.models.heads.install_bbr_loss`` calls
``install_bbr_loss(bbr, weight)``; ``bbr`` is a ``heads.BoxRegressionLoss`` that replaces
the detector's stock regression term, or None to keep the stock term, scaled by
``weight`` (``stock_weight``).

``prediction_heads()`` lists the modules whose outputs the losses read (see
``bbrctl.detection.train.speed.fp32_outputs``).
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn
from torchvision.models.detection.transform import GeneralizedRCNNTransform

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


class AssembledDetector(nn.Module):
    def __init__(self, *, min_size: int | tuple[int, ...], max_size: int):
        super().__init__()
        self.transform = GeneralizedRCNNTransform(min_size, max_size, IMAGENET_MEAN, IMAGENET_STD)
        self.bbr = None            # a heads.BoxRegressionLoss, or None for the stock loss
        self.stock_weight = 1.0

    def install_bbr_loss(self, bbr, weight: float) -> None:
        self.bbr = bbr
        self.stock_weight = float(weight)

    def prediction_heads(self) -> list[nn.Module]:
        """The modules whose outputs the losses and post-processing read: under CPU bf16
        autocast they are made to return float32 (``bbrctl.detection.train.speed.fp32_outputs``)."""
        raise NotImplementedError

    def _transform_input(self, images: list[Tensor], targets: Optional[list[dict[str, Tensor]]]):
        """(original sizes, batched images, transformed targets)."""
        if self.training and targets is None:
            raise ValueError("targets are needed in training mode")
        original_sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        images, targets = self.transform(images, targets)
        return original_sizes, images, targets
