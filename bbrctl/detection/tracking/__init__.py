"""Tracking a run: Weights & Biases logging (wandb_run.py), pictures of detections (pictures.py)."""
