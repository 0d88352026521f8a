"""Detection experiments: data, models, the training loop, COCO evaluation, tracking.

Subpackages, each one job (import the module you need; none of them imports anything heavy
at package import)::

    data/      COCO-format data (datasets.py), the synthetic "shapes" generator (synth.py),
               the training samplers (sampling.py)
    models/    the builders by name (build.py), backbones and DCN (backbones.py, dcn.py), the
               box-loss hooks in torchvision's heads (heads.py), and the detectors bbrctl
               assembles itself: ATSS, PAA, DETR (detectors.py, assembled.py, dense.py, atss.py,
               paa.py, detr.py)
    train/     one run (engine.py), the loop and its hooks (loop.py, hooks.py), what a run
               shows (reporter.py), torchrun and the device (distributed.py), checkpoints
               (checkpoint.py), the CPU speed settings (speed.py)
    eval/      COCO evaluation (coco.py), a run's detections on a few images (predict.py)
    tracking/  Weights & Biases logging of a run (wandb_run.py), pictures of detections (pictures.py)

Imports point down this list's reverse: models and data know nothing of train, eval or
tracking; train uses data, models and eval; tracking uses eval and train's checkpoints.
The job entry points around them (one run in its directory, a re-evaluation) are
``bbrctl.train`` and ``bbrctl.evaluation``.
"""
