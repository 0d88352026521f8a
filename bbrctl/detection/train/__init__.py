"""Training: one run (engine.py: set-up, resume, final checkpoint and evaluation), the loop
(loop.py: a step, then the hooks), the hooks (hooks.py: metrics, stop, checkpoints, periodic
evaluation), checkpoints (checkpoint.py), CPU speed settings (speed.py)."""
