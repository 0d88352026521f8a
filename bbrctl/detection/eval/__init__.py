"""Evaluation: COCO metrics with faster-coco-eval (coco.py), a run's detections on a few val
images from its checkpoint (predict.py)."""
