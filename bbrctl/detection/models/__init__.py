"""Detectors: the builders by name (build.py), backbones and anchors (backbones.py), DCNv2
(dcn.py), the box-loss hooks in torchvision's heads (heads.py), and the detectors bbrctl
assembles from torchvision parts: the checks and builders (detectors.py), their base
(assembled.py), the one-stage dense head ATSS and PAA share (dense.py), ATSS (atss.py), PAA
(paa.py), DETR (detr.py)."""
