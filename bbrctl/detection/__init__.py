"""Detection experiments: data, models, training loop, COCO evaluation.

Modules (import the one you need; this package imports nothing heavy)::

    synth.py       the synthetic "shapes" dataset: deterministic generator and cache (numpy + PIL)
    data.py        COCO-format data: ensure_dataset, build_dataset, collate, TrainSampler
    sampling.py    batches grouped by aspect ratio (GroupedTrainSampler), the training sampler a config asks for
    evaluate.py    COCO evaluation (faster-coco-eval) and model outputs -> COCO results
    models.py      torchvision detectors on ResNet-FPN backbones
    heads.py       the configured box-regression loss installed into the detection heads
    engine.py      the training loop; checkpoint.py its checkpoints; wandb_run.py W&B logging
    predict.py     a run's model from its checkpoint, and its detections on a few val images
    speed.py       CPU speed settings: channels_last, bf16 autocast, no-op resize skip
"""
