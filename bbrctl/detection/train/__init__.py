"""Training: one run (engine.py: set-up, resume, final checkpoint and evaluation), the loop
(loop.py: a step, then the hooks), the hooks (hooks.py: metrics, stop and its signal flag,
checkpoints, periodic evaluation), what a run shows (reporter.py: progress, train.log,
metrics.jsonl, W&B, status), torchrun and the device (distributed.py), checkpoints
(checkpoint.py), CPU speed settings (speed.py)."""
