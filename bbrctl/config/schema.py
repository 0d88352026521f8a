"""The typed schema of the whole config, checked before anything is created or submitted.

Every key of every group has a field (type, range or choices; bbrctl.config.fields), keys
the schema does not know are refused, and cross-field rules that no single type can say
are checked after the fields. :func:`validate` takes a resolved config as plain data
(what ``OmegaConf.to_container`` gives, what a sweep's fast path builds) and raises a
one-line UserError naming the key, the bad value and what is valid; for a nested key the
message lists that group's keys, not the top level's.

Why a validation layer rather than Hydra structured configs: the groups are polymorphic
(``model.*`` keys depend on ``model.name``, ``data.*`` on whether the data is generated or
read, ``launcher.*`` on the launcher, ``loss.params`` on the loss), users add options of
their own to every group, and a 1,000-job sweep must validate in well under a second; a
dataclass per option and an OmegaConf object per job cost more in all three.

Groups and their options (conf/<group>/*.yaml): model (by ``model.name``), backbone (one
shape for all ResNet-like trunks), data (``shapes``-style generated data, else any
COCO-format dataset), schedule, launcher (by ``launcher.name``), wandb, sweep, loss
(``loss.params`` by ``loss.name``, via bbrctl.losses.spec), and the top-level shorthands
gamma, beta, weight, seed, runs_root.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from bbrctl.config.fields import (AnyOf, Bool, Choice, Const, Field, Float, Int, Invalid, Keys, ListOf, Mapping_,
                                  Nullable, Str, did_you_mean, is_int, is_num, names, optional)
from bbrctl import extras
from bbrctl.errors import UserError

INV_E = 1.0 / math.e
STOCK_WEIGHT = "stock"    # weight=stock: a loss at the detector's own box-loss weight

# Data sets that bbrctl generates (bbrctl/detection/data/synth.py); every other data.name is a
# COCO-format dataset read from disk, identified by that name in signatures.
SYNTHETIC_DATA = ("shapes", "shapes_tiny", "shapes_coco")

MODELS = ("retinanet", "fcos", "faster_rcnn", "mask_rcnn", "atss", "paa", "detr")
DENSE_MODELS = ("atss", "paa")      # bbrctl's own one-stage detectors (bbrctl.detection.models.detectors)
NORMS = ("group", "batch", "frozen_bn")
EXTRA_LEVELS = ("p6p7", "pool", "none")
LAUNCHERS = ("local", "slurm")
WANDB_MODES = ("online", "offline", "disabled")
OPTIMIZERS = ("sgd", "adamw")

_PATH = Str(what="a path")
_POS_INT = Int(lo=1)
_PROB = Float(lo=0.0, hi=1.0)

# --------------------------------------------------------------------------- groups

TOP: Keys = {
    "gamma": Float(lo=0.0, doc="Focal-EIoU's gamma (Eq. 10)"),
    "beta": Float(lo=INV_E, hi=1.0, doc="FocalL1's beta (Eq. 8-9)"),
    # A number, or "stock": the detector's own box-loss weight (bbrctl.detection.models.build.box_loss_weight).
    "weight": AnyOf(options=(Float(lo=0.0), Choice(values=(STOCK_WEIGHT,))),
                    what="a number >= 0 or 'stock' (the detector's own box-loss weight)"),
    "seed": Int(lo=0, hi=2 ** 31 - 1),
    "runs_root": _PATH,
}
GROUPS = ("loss", "model", "backbone", "data", "schedule", "launcher", "wandb", "sweep")

_W_NAME = Nullable(inner=Str(pattern=r"(?s)(?=.*\S).{1,128}", what="a name of 1-128 characters"), required=False)
WANDB: Keys = {
    "mode": Choice(values=WANDB_MODES),
    "project": _W_NAME,
    "entity": _W_NAME,
    "group": _W_NAME,                      # null: the sweep's name (a single train: the run's)
    "tags": optional(ListOf(item=AnyOf(options=(Str(), Float())))),
    "images": optional(Int(lo=0, hi=32)),  # val images in the end-of-run panel (0: none)
    "log_checkpoint": optional(Nullable(inner=Bool())),  # null: on for runs that go online
}

SWEEP: Keys = {
    "name": Nullable(inner=Str(pattern=r"[A-Za-z0-9][A-Za-z0-9._=-]{0,99}",
                              what="1-100 letters, digits and . _ = - (starting with a letter or digit)")),
    "params": Mapping_(),
    "tune": optional(Mapping_()),          # a `bbrctl tune` preset's search space and budget (bbrctl.tune)
    # Seeds until decided (bbrctl.launch.rounds, bbrctl.report.sequential); defaults in conf/config.yaml.
    "seeds": optional(Nullable(inner=Choice(values=("auto",)))),
    "compare": optional(Nullable(inner=Str(pattern=r"[^:\s]+:[^:\s]+", what="A:B, two values of a swept key "
                                                                       "(row A against baseline row B)"))),
    "metric": optional(Choice(values=("AP", "AP50", "AP75", "APs", "APm", "APl"))),
    "min_seeds": optional(Int(lo=2, hi=64)),
    "max_seeds": optional(Int(lo=2, hi=64)),
    "seeds_per_round": optional(Int(lo=1, hi=64)),
    "alpha": optional(Float(lo=0.0, hi=0.5, lo_open=True, hi_open=True)),
    "boundary": optional(Choice(values=("pocock", "obrien_fleming"))),
}

LOSS: Keys = {
    "name": Str(), "params": optional(Mapping_()),
    # A user's own loss (bbrctl.losses.user): its function, its space, its parameters' ranges.
    "target": optional(Str(pattern=r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*", what="'package.module:function'")),
    "space": optional(Choice(values=("boxes", "deltas"))),
    "param_ranges": optional(Mapping_()),
}

_SIZE = Int(lo=16, hi=8192)
MODEL_COMMON: Keys = {
    "name": Choice(values=MODELS),
    "weights_backbone": Nullable(inner=_PATH, required=False),
    "norm": optional(Choice(values=NORMS)),
    "trainable_backbone_layers": optional(Int(lo=0, hi=5)),
    "min_size": _SIZE,
    "max_size": _SIZE,
    # Multi-scale training: [lo, hi], each training image's shorter side drawn from lo..hi
    # (hi = min_size, the test size); absent: min_size.
    "min_size_train": optional(Nullable(inner=ListOf(item=_SIZE, length=2, increasing=True))),
    "returned_layers": ListOf(item=Int(lo=1, hi=4), min_len=1, increasing=True),
    "extra_levels": Choice(values=EXTRA_LEVELS),
    "anchor_sizes": Nullable(inner=ListOf(item=Float(lo=0.0, lo_open=True), min_len=1), required=False),
    "anchor_scales_per_octave": optional(Int(lo=1, hi=8)),
    "aspect_ratios": ListOf(item=Float(lo=0.0, lo_open=True), min_len=1),
    "score_thresh": optional(_PROB),
    "nms_thresh": optional(_PROB),
    "detections_per_img": optional(Int(lo=1, hi=10000)),
    "kwargs": optional(Mapping_()),
}
_ANCHOR_BASE = {"anchor_base": Nullable(inner=Float(lo=0.0, lo_open=True), required=False)}
_ONE_STAGE = {"topk_candidates": optional(Int(lo=1)), "head_convs": optional(Int(lo=1, hi=4))}
_RCNN: Keys = {
    **_ANCHOR_BASE,
    "loss_in_rpn": optional(Bool()),
    "rpn_pre_nms_top_n_train": optional(_POS_INT), "rpn_pre_nms_top_n_test": optional(_POS_INT),
    "rpn_post_nms_top_n_train": optional(_POS_INT), "rpn_post_nms_top_n_test": optional(_POS_INT),
    "rpn_batch_size_per_image": optional(_POS_INT), "box_batch_size_per_image": optional(_POS_INT),
    "box_head_dim": optional(_POS_INT),
}
_DENSE: Keys = {
    **MODEL_COMMON, **_ANCHOR_BASE,
    "octave_base_scale": optional(Float(lo=0.0, lo_open=True)),   # anchor side = 8 x stride on COCO
    "topk": optional(Int(lo=1, hi=100)),                          # candidates per level and gt
    "head_convs": optional(Int(lo=1, hi=8)),
    "topk_candidates": optional(Int(lo=1)),
    "head_dcn": optional(Bool()),                                 # DCNv2 in the last conv of each tower
}
_DETR: Keys = {
    **{k: MODEL_COMMON[k] for k in ("name", "weights_backbone", "norm", "trainable_backbone_layers", "min_size",
                                    "max_size", "min_size_train", "score_thresh", "detections_per_img", "kwargs")},
    "d_model": optional(Int(lo=8, hi=4096)),
    "nhead": optional(Int(lo=1, hi=64)),
    "enc_layers": optional(Int(lo=0, hi=24)),
    "dec_layers": optional(Int(lo=1, hi=24)),
    "dim_feedforward": optional(Int(lo=1, hi=65536)),
    "dropout": optional(Float(lo=0.0, hi=0.99)),
    "num_queries": optional(Int(lo=1, hi=1000)),
    "aux_loss": optional(Bool()),                 # losses (and matching) at every decoder layer
    "eos_coef": optional(Float(lo=0.0, hi=1.0, lo_open=True)),
    **{k: optional(Float(lo=0.0)) for k in ("cost_class", "cost_bbox", "cost_giou", "loss_ce", "loss_bbox",
                                             "loss_giou")},
    "loss_in_matching": optional(Bool()),         # DETR*: the configured loss in the matching cost too
    # DETR*: the configured loss replaces the GIoU term only (L1 x loss_bbox kept) or both box terms.
    "bbr_replaces": optional(Choice(values=("giou", "giou_l1"))),
}
MODEL: dict[str, Keys] = {
    "retinanet": {**MODEL_COMMON, **_ANCHOR_BASE, **_ONE_STAGE,
                  "fg_iou_thresh": optional(_PROB), "bg_iou_thresh": optional(_PROB),
                  "head_norm": optional(Choice(values=("group", "batch", "none"))),
                  # BoxCoder weights of the deltas (wx, wy, ww, wh); absent: torchvision's (1, 1, 1, 1).
                  "box_coder_weights": optional(Nullable(inner=ListOf(item=Float(lo=0.0, lo_open=True), length=4)))},
    "fcos": {**MODEL_COMMON, **_ONE_STAGE, "center_sampling_radius": optional(Float(lo=0.0, lo_open=True))},
    "faster_rcnn": {**MODEL_COMMON, **_RCNN},
    "mask_rcnn": {**MODEL_COMMON, **_RCNN, "mask_head_channels": Nullable(inner=_POS_INT, required=False)},
    # reg_weighting: the detector's per-positive box-loss weight, kept for every loss (atss.py, paa.py)
    "atss": {**_DENSE, "reg_weighting": optional(Choice(values=("centerness", "none")))},
    "paa": {**_DENSE, "score_voting": optional(Bool()), "loss_in_assignment": optional(Bool()),
            "reg_weighting": optional(Choice(values=("iou", "none")))},
    "detr": _DETR,
}

# Values that become directory names (bbrctl.train.run_name) are names, never paths.
SAFE_NAME = Str(pattern=r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", what="a name of letters, digits and . _ - (no /)")

BACKBONE: Keys = {
    "name": SAFE_NAME,
    "block": Choice(values=("basic", "bottleneck")),
    "layers": ListOf(item=Int(lo=1, hi=64), length=4),
    "widths": ListOf(item=Int(lo=1, hi=4096), length=4),
    "groups": optional(Int(lo=1, hi=256)),
    "width_per_group": optional(Int(lo=1, hi=1024)),
    "fpn_channels": Int(lo=1, hi=4096),
    "head_convs": optional(Int(lo=1, hi=4)),
    "norm": optional(Choice(values=NORMS)),
    # pool: torchvision's 7x7/2 conv + max-pool; stride4: one 7x7/4 conv; conv3x2: two 3x3/2 convs
    "stem": optional(Choice(values=("pool", "stride4", "conv3x2"))),
    # Modulated deformable convolutions (DCNv2) in stages c2..c5 (ResNeXt-101 64x4d DCN: c4-c5).
    "dcn_stages": Nullable(inner=ListOf(item=Bool(), length=4), required=False),
}

_DATA_COMMON: Keys = {
    "name": SAFE_NAME,
    "num_workers": optional(Int(lo=0, hi=256)),
    "anchor_base": Nullable(inner=Float(lo=0.0, lo_open=True), required=False),
    # Batches grouped by aspect ratio (bbrctl.detection.data.sampling): -1 off, 0 two groups,
    # k > 0 torchvision's 2k + 2 bins.
    "aspect_ratio_group_factor": optional(Int(lo=-1, hi=8)),
    # Pyramid levels above P5 that the data's objects need (models read it as model.extra_levels).
    "extra_levels": optional(Choice(values=EXTRA_LEVELS)),
    "cache_images": optional(Bool()),          # decoded images kept in memory (small datasets)
}
DATA_SYNTHETIC: Keys = {
    **_DATA_COMMON,
    "root": _PATH,
    "synthetic": optional(Bool()),
    "synth_seed": Int(lo=0, hi=2 ** 31 - 1),
    "num_train": Int(lo=1, hi=1_000_000),
    "num_val": Int(lo=1, hi=1_000_000),
    "image_size": optional(Int(lo=32, hi=2048)),
    # Non-square images (data=shapes_coco): [width, height] choices and their weights.
    "image_shapes": optional(Nullable(inner=ListOf(item=ListOf(item=Int(lo=32, hi=2048), length=2), min_len=1))),
    "image_shape_weights": optional(Nullable(inner=ListOf(item=Float(lo=0.0), min_len=1))),
    "min_objects": Int(lo=1, hi=50),
    "max_objects": Int(lo=1, hi=50),
    "size_mix": ListOf(item=Float(lo=0.0), length=3),
    "min_size": Float(lo=4.0, hi=32.0, hi_open=True),
    "max_scale_frac": Float(lo=0.2, hi=0.95),
    "clutter": Float(lo=0.0),
    "noise": Float(lo=0.0),
    "min_visible": Float(lo=0.0, hi=1.0, lo_open=True),
    "min_contrast": Float(lo=0.0, hi=200.0),
    "color_cue": _PROB,
    "background_saturation": _PROB,
}
DATA_COCO: Keys = {
    **_DATA_COMMON,
    "root": Nullable(inner=_PATH, required=False),
    "train_images": _PATH, "train_ann": _PATH, "val_images": _PATH, "val_ann": _PATH,
    "num_classes": Nullable(inner=Int(lo=1, hi=100_000), required=False),
    "image_size": optional(Int(lo=16, hi=8192)),
}

SCHEDULE: Keys = {
    "name": optional(Str(pattern=r"[^\n\r]+", what="a one-line label")),
    "max_iter": Int(lo=1),
    "batch_size": Int(lo=1, hi=65536),
    "base_lr": Float(lo=0.0, lo_open=True),
    "base_batch_size": Int(lo=1),
    "steps": optional(ListOf(item=Int(lo=1), increasing=True)),
    "gamma": optional(Float(lo=0.0, hi=1.0, lo_open=True)),
    "warmup_iters": optional(Int(lo=0)),
    "warmup_factor": optional(Float(lo=0.0, hi=1.0, lo_open=True)),
    "optimizer": optional(Choice(values=OPTIMIZERS)),
    "momentum": optional(Float(lo=0.0, hi=1.0, hi_open=True)),
    "weight_decay": optional(Float(lo=0.0)),
    "clip_grad_norm": Nullable(inner=Float(lo=0.0, lo_open=True), required=False),
    "backbone_lr_factor": optional(Float(lo=0.0, hi=10.0, lo_open=True)),   # the trunk's lr multiplier (DETR: 0.1)
    "amp": optional(Bool()),
    "hflip_prob": optional(_PROB),
    "checkpoint_period": optional(Nullable(inner=Int(lo=0))),
    "eval_period": optional(Nullable(inner=Int(lo=0))),
    "eval_batch_size": optional(Int(lo=1, hi=4096)),
    "log_period": optional(Int(lo=1)),
    # CPU speed: bf16 autocast (auto: where the CPU has AMX), channels_last, threads per job.
    # A bare YAML `off` reads as false: accepted as off.
    "cpu_amp": optional(AnyOf(options=(Choice(values=("auto", "bf16", "off")), Const(value=False)),
                              what="one of auto, bf16, off")),
    "channels_last": optional(Bool()),
    "cpu_threads": Nullable(inner=Int(lo=1, hi=1024), required=False),
}

# SLURM directive values reach #SBATCH lines: no spaces, quotes, newlines or shell characters.
DIRECTIVE = r"[A-Za-z0-9_.,:@+%/=\[\]-]+"
SLURM_TIME = r"\d+|\d+:\d{1,2}|\d+:\d{1,2}:\d{1,2}|\d+-\d+(:\d{1,2}(:\d{1,2})?)?|UNLIMITED|INFINITE"
SLURM_MEM = r"(?i)\d+[KMGT]?B?"
# The separators are [ \t]+, not \s+: a newline would end the #SBATCH line and start a command.
SBATCH_OPTION = r"(#SBATCH[ \t]+)?--?[A-Za-z][A-Za-z0-9-]*(=[^\s'\"`$\\;|&<>]+|[ \t]+[^\s'\"`$\\;|&<>]+)?"
_directive = Str(pattern=DIRECTIVE, what="a #SBATCH value (letters, digits and _ . , : @ + % / = [ ] - only)")
LAUNCHER: dict[str, Keys] = {
    "local": {
        "name": Choice(values=LAUNCHERS),
        "max_parallel": AnyOf(options=(Choice(values=("auto",)), Int(lo=1))),
        "gpus_per_job": Int(lo=0, hi=64),
    },
    "slurm": {
        "name": Choice(values=LAUNCHERS),
        "template": Str(what="a template file name or path"),
        "partition": Nullable(inner=_directive), "account": Nullable(inner=_directive),
        "qos": Nullable(inner=_directive),
        "time": Nullable(inner=AnyOf(options=(Int(lo=1), Str(pattern=SLURM_TIME,
                                                              what="a SLURM time (MM, HH:MM:SS, D-HH:MM:SS)")))),
        "gpus_per_job": Int(lo=0, hi=64, doc="GPUs per node"),
        "nodes": optional(Int(lo=1, hi=1024, doc="nodes per job: one torchrun agent each")),
        "max_requeues": optional(Int(lo=0, hi=10000, doc="self-requeues per array task (SLURM_RESTART_COUNT)")),
        "cpus_per_task": Int(lo=1, hi=4096),
        "mem": Nullable(inner=AnyOf(options=(Int(lo=1), Str(pattern=SLURM_MEM, what="a SLURM memory size (16000, 32G)")))),
        "max_parallel": Int(lo=1),
        "signal_seconds": Int(lo=0, hi=86400),
        "extra_sbatch": ListOf(item=Str(pattern=SBATCH_OPTION, what="one #SBATCH option like --constraint=a100")),
        "setup": ListOf(item=Str(nonempty=False, what="a shell line")),
        "python": Nullable(inner=Str(pattern=r"[^\n]+", what="an interpreter path")),
    },
}


# --------------------------------------------------------------------------- checking

def _bad(key: str, value: Any, field: Field) -> UserError:
    if key.startswith("launcher.setup"):        # may hold secrets: never echoed
        return UserError(f"{key} is not valid: must be {field.describe()} (the value is not shown)")
    return UserError(f"{key}={_show(value)} is not valid: must be {field.describe()}")


def _show(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 80 else s[:77] + "..."


def check_group(node: Any, keys: Keys, prefix: str, what: str | None = None) -> dict:
    """Check every key of one group against ``keys``; unknown or missing keys are errors."""
    what = what or prefix
    if not isinstance(node, dict):
        raise UserError(f"{prefix} must be a group of keys ({what} keys: {names(keys)}), got {_show(node)}")
    for k in node:
        if k not in keys:
            raise UserError(f"unknown config key '{prefix}.{k!s}'{did_you_mean(k, keys, prefix + '.')}; "
                            f"valid {what} keys: {names(keys)}")
    for k, f in keys.items():
        if k not in node:
            if f.required:
                raise UserError(f"{prefix}.{k} is missing ({f.describe()}); valid {what} keys: {names(keys)}")
            continue
        try:
            f.check(node[k])
        except Invalid:
            raise _bad(f"{prefix}.{k}", node[k], f) from None
    return node


def _need(ok: bool, msg: str) -> None:
    if not ok:
        raise UserError(msg)


def validate(cfg: Mapping[str, Any]) -> None:
    """Raise a one-line UserError if ``cfg`` (resolved, plain data) is not a valid job config."""
    _need(isinstance(cfg, dict), f"the config must be a mapping, got {_show(cfg)}")
    if "experiment" in cfg:
        raise UserError("an experiment preset must set keys at the top level: begin its file with "
                        "'# @package _global_' (see conf/experiment/table1.yaml)")
    allowed = {**TOP, **{g: Field() for g in GROUPS}}
    for k in cfg:
        if k not in allowed:
            raise UserError(f"unknown config key '{k!s}'{did_you_mean(k, allowed)}; valid top-level keys: "
                            f"{names(allowed)}")
    for g in GROUPS:
        if g not in cfg:
            from bbrctl.config.tree import group_options

            opts = group_options(g)
            options = f": choose one with {g}=<option>; valid {g} options: {', '.join(opts)}" if opts else ""
            raise UserError(f"the config has no {g!r} group{options}")
    for k, f in TOP.items():
        if k not in cfg:
            raise UserError(f"{k} is missing ({f.describe()})")
        try:
            f.check(cfg[k])
        except Invalid:
            raise _bad(k, cfg[k], f) from None
    check_group(cfg["wandb"], WANDB, "wandb")
    _check_sweep(cfg["sweep"])
    _check_loss(cfg)
    _check_data(cfg["data"])        # before the model: model sizes default to data.image_size
    check_group(cfg["backbone"], BACKBONE, "backbone")
    _check_model(cfg)
    _check_schedule(cfg["schedule"])
    _check_launcher(cfg)
    _check_nothing_looks_secret(cfg)
    extras.check_config(cfg)


def _check_nothing_looks_secret(cfg: Mapping[str, Any]) -> None:
    """Refuse a value outside ``launcher`` that bbrctl.redact would replace.

    Run directories hold the config redacted and training reads it back from there, so
    such a value would silently train as '<redacted>'. launcher.setup lines may hold
    secrets: only the submitted batch script runs them, never the trainer.
    """
    from bbrctl.redact import redact

    def first_change(a: Any, b: Any, path: str) -> str | None:
        if isinstance(a, dict):
            return next((c for k in a if (c := first_change(a[k], b[k], f"{path}.{k}")) is not None), None)
        if isinstance(a, list):
            return next((c for i, (x, y) in enumerate(zip(a, b)) if (c := first_change(x, y, f"{path}[{i}]"))
                         is not None), None)
        return None if a == b else path

    for key, value in cfg.items():
        if key == "launcher":
            continue
        where = first_change(value, redact({key: value})[key], key)
        if where is not None:
            raise UserError(f"{where} looks like a secret (a token, password or key); run directories keep configs "
                            "with such values redacted, so a job cannot use it: keep secrets in the environment")


def _check_loss(cfg: Mapping[str, Any]) -> None:
    from bbrctl.losses import user
    from bbrctl.losses.spec import SPECS, check_params

    loss = cfg["loss"]
    if isinstance(loss, dict) and "weight" in loss:
        raise UserError("unknown config key 'loss.weight'; valid loss keys: name, params (the loss weight is the "
                        "top-level `weight`: a loss file that sets it begins with '# @package _global_')")
    check_group(loss, LOSS, "loss")
    name = loss["name"]
    if "target" in loss:        # a user's loss declared in its config: imported here, before anything exists
        user.from_config(loss)
    elif "space" in loss or "param_ranges" in loss:
        raise UserError("loss.space and loss.param_ranges declare a user's loss: they need loss.target "
                        "('package.module:function')")
    if name != "baseline" and name not in SPECS and user.find(name) is None:
        raise UserError(f"loss.name={name!r} is not a loss; valid: baseline, {', '.join(SPECS)}")
    params = loss.get("params") or {}
    if name == "baseline":
        _need(not params, f"loss=baseline (each detector's stock loss) takes no parameters, got loss.params={_show(params)}")
        return
    params = check_params(name, params)
    if user.is_user_loss(name):
        user.probe(name, params)
    from bbrctl.losses.spec import IMAGE_SIZE_LOSSES

    model = cfg.get("model") if isinstance(cfg.get("model"), dict) else {}
    for key in ("loss_in_assignment", "loss_in_matching"):
        _need(not (name in IMAGE_SIZE_LOSSES and model.get(key)),
              f"loss={name} needs each image's size and cannot be the {key.split('_')[-1]} cost; "
              f"set model.{key}=false")


def check_model(cfg: Mapping[str, Any]) -> None:
    """The model and backbone groups of ``cfg`` (what a detector builder needs)."""
    check_group(cfg.get("backbone"), BACKBONE, "backbone")
    _check_model(cfg)


# The constructor arguments bbrctl passes to torchvision's detectors itself (bbrctl.detection.models.build);
# model.kwargs adds others, and one of these given twice would fail the job at build time.
_BUILT_ARGS = ("backbone", "num_classes", "min_size", "max_size", "anchor_generator", "head", "score_thresh",
               "nms_thresh", "detections_per_img", "topk_candidates")
MANAGED_KWARGS = {
    "retinanet": (*_BUILT_ARGS, "fg_iou_thresh", "bg_iou_thresh"),
    "fcos": (*_BUILT_ARGS, "center_sampling_radius"),
    "faster_rcnn": ("backbone", "num_classes", "min_size", "max_size", "rpn_anchor_generator", "rpn_head",
                    "box_roi_pool", "box_head", "box_predictor", "rpn_pre_nms_top_n_train", "rpn_pre_nms_top_n_test",
                    "rpn_post_nms_top_n_train", "rpn_post_nms_top_n_test", "rpn_batch_size_per_image",
                    "box_batch_size_per_image", "box_score_thresh", "box_nms_thresh", "box_detections_per_img"),
}
MANAGED_KWARGS["mask_rcnn"] = (*MANAGED_KWARGS["faster_rcnn"], "mask_roi_pool", "mask_head", "mask_predictor")


def _check_model_kwargs(name: str, kwargs: Mapping[str, Any]) -> None:
    """model.kwargs may add torchvision constructor arguments, never repeat one bbrctl sets."""
    if not isinstance(kwargs, Mapping):
        return
    managed = MANAGED_KWARGS.get(name)
    if managed is None:
        _need(not kwargs, f"model.kwargs is not used by model={name} (bbrctl assembles it); "
                          f"remove {', '.join('model.kwargs.' + str(k) for k in kwargs)}")
        return
    for k in kwargs:
        if k in managed:
            own = {"score_thresh": "score_thresh", "nms_thresh": "nms_thresh", "detections_per_img":
                   "detections_per_img", "box_score_thresh": "score_thresh", "box_nms_thresh": "nms_thresh",
                   "box_detections_per_img": "detections_per_img"}.get(str(k), str(k))
            hint = f"set model.{own} instead" if own in MODEL[name] else "bbrctl builds it from the config"
            raise UserError(f"model.kwargs.{k} is an argument bbrctl already passes to {name}: {hint}")


def _check_model(cfg: Mapping[str, Any]) -> None:
    m = cfg.get("model")
    _need(isinstance(m, dict), f"model must be a group of keys, got {_show(m)}")
    name = m.get("name")
    if name not in MODEL:
        raise UserError(f"model.name={_show(name)} is not a detector; valid: {', '.join(MODEL)}")
    check_group(m, MODEL[name], "model", f"model ({name})")
    _check_model_kwargs(name, m.get("kwargs") or {})
    if m.get("weights_backbone") and m.get("norm", "group") == "group":
        raise UserError("model.weights_backbone holds BatchNorm statistics; use model.norm=frozen_bn or batch with it")
    _need(m["min_size"] <= m["max_size"], f"model.min_size={m['min_size']} must be <= model.max_size={m['max_size']}")
    rng = m.get("min_size_train")
    _need(rng is None or rng[1] == m["min_size"],
          f"model.min_size_train={_show(rng)} must end at model.min_size={m['min_size']} (the test size)")
    if name == "detr":          # no pyramid, no anchors: a trunk and a transformer
        d, heads = m.get("d_model", 256), m.get("nhead", 8)
        _need(d % heads == 0 and d % 2 == 0, f"model.d_model={d} must be divisible by model.nhead={heads} (and even, for the sine positional encoding)")
        _need(any(m.get(k, 1.0) for k in ("cost_class", "cost_bbox", "cost_giou")),
              "model.cost_class, cost_bbox and cost_giou are all 0: the matcher would have nothing to match on")
        return
    returned, extra = list(m["returned_layers"]), m["extra_levels"]
    levels = len(returned) + {"p6p7": 2, "pool": 1, "none": 0}[extra]
    if m.get("anchor_sizes") is None:
        if "anchor_base" in MODEL[name]:
            _need(is_num(m.get("anchor_base")) and m["anchor_base"] > 0,
                  f"model.anchor_base must be a number > 0 (or set model.anchor_sizes), got {_show(m.get('anchor_base'))}")
        else:
            raise UserError(f"model.anchor_sizes must be set for {name}: one size per pyramid level ({levels})")
    elif len(m["anchor_sizes"]) != levels:
        raise UserError(f"model.anchor_sizes must give one positive size per pyramid level ({levels} for "
                        f"returned_layers={returned} and extra_levels={extra}), got {_show(m['anchor_sizes'])}")
    if name in DENSE_MODELS:
        _need(list(m["aspect_ratios"]) == [1.0] and int(m.get("anchor_scales_per_octave", 1)) == 1,
              f"{name.upper()} uses one square anchor per location: model.aspect_ratios must be [1.0] and "
              "model.anchor_scales_per_octave 1")
        _need(extra != "pool", f"model.extra_levels=pool is for R-CNN; {name.upper()} uses p6p7 or none")
    if name == "fcos":
        _need(len(m["aspect_ratios"]) == 1 and int(m.get("anchor_scales_per_octave", 1)) == 1,
              "FCOS takes one point per location: model.aspect_ratios must have one entry and "
              "model.anchor_scales_per_octave must be 1")
        fpn = cfg["backbone"].get("fpn_channels") if isinstance(cfg["backbone"], dict) else None
        _need(not is_int(fpn) or fpn % 32 == 0,
              f"FCOS's head uses GroupNorm(32): backbone.fpn_channels must be a multiple of 32, got {fpn}")
    if name in ("faster_rcnn", "mask_rcnn"):
        _need(extra != "p6p7", "model.extra_levels=p6p7 is for one-stage models; R-CNN uses pool or none")
    if name == "retinanet":
        fg, bg = m.get("fg_iou_thresh", 0.5), m.get("bg_iou_thresh", 0.4)
        _need(bg <= fg, f"model.bg_iou_thresh={bg} must be <= model.fg_iou_thresh={fg}")


def is_synthetic(data: Mapping[str, Any]) -> bool:
    return str(data.get("name")) in SYNTHETIC_DATA or data.get("synthetic") is True


def _check_data(d: Any) -> None:
    _need(isinstance(d, dict), f"data must be a group of keys, got {_show(d)}")
    if is_synthetic(d):
        check_group(d, DATA_SYNTHETIC, "data", "data (generated)")
        shapes, weights = d.get("image_shapes"), d.get("image_shape_weights")
        _need(d.get("image_size") is not None or shapes,
              "data.image_size is missing (an integer in [32, 2048]; or give data.image_shapes)")
        _need(weights is None or (shapes is not None and len(weights) == len(shapes) and sum(weights) > 0),
              f"data.image_shape_weights={_show(weights)} must give one weight per entry of data.image_shapes "
              f"({len(shapes) if shapes else 0}), not all zero")
        _need(d["min_objects"] <= d["max_objects"],
              f"data.min_objects={d['min_objects']} must be <= data.max_objects={d['max_objects']}")
        _need(sum(d["size_mix"]) > 0, f"data.size_mix must not be all zero, got {d['size_mix']}")
    else:
        check_group(d, DATA_COCO, "data", "data (COCO-format)")


def _check_sweep(s: Any) -> None:
    check_group(s, SWEEP, "sweep")
    if s.get("seeds") != "auto":
        return
    _need(bool(s.get("compare")), "sweep.seeds=auto needs sweep.compare=A:B (e.g. focal_eiou:baseline): "
                                  "the comparison that decides when to stop")
    lo, hi = s.get("min_seeds", 3), s.get("max_seeds", 8)
    _need(lo <= hi, f"sweep.min_seeds={lo} must be <= sweep.max_seeds={hi}")


def _check_schedule(s: Any) -> None:
    check_group(s, SCHEDULE, "schedule")
    steps = s.get("steps") or []
    if steps and steps[-1] >= s["max_iter"]:
        raise UserError(f"schedule.steps={_show(list(steps))} must be increasing iterations below "
                        f"schedule.max_iter={s['max_iter']}")


def _check_launcher(cfg: Mapping[str, Any]) -> None:
    lau = cfg["launcher"]
    _need(isinstance(lau, dict), f"launcher must be a group of keys, got {_show(lau)}")
    name = lau.get("name")
    if name not in LAUNCHER:
        raise UserError(f"launcher.name={_show(name)} is not a launcher; valid: {', '.join(LAUNCHER)}")
    check_group(lau, LAUNCHER[name], "launcher", f"launcher ({name})")
    if name != "slurm":
        return      # the local launcher knows its world size only from the GPUs it sees (launch.local)
    world = world_size(lau)
    bs = cfg["schedule"]["batch_size"]
    nodes = int(lau.get("nodes") or 1)
    per = f"launcher.nodes={nodes} x launcher.gpus_per_job={lau['gpus_per_job']}" if nodes > 1 else \
        f"launcher.gpus_per_job={lau['gpus_per_job']}"
    _need(bs % world == 0, f"schedule.batch_size={bs} is not divisible by the {world} processes of a job "
                           f"({per}); choose a multiple of {world}")
    limit = slurm_minutes(lau.get("time"))
    sig = int(lau.get("signal_seconds") or 0)
    _need(limit is None or sig < 60 * limit,
          f"launcher.signal_seconds={sig} must be shorter than launcher.time={lau.get('time')!s} ({60 * (limit or 0)} s): "
          "SLURM would send the checkpoint signal at the start, and every requeue would do the same")


def slurm_minutes(t: Any) -> int | None:
    """A SLURM time limit in whole minutes (rounded up), None for no limit or an unknown form.

    SLURM's forms: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S (an integer is minutes).
    """
    if t is None or (isinstance(t, str) and t.upper() in ("UNLIMITED", "INFINITE")):
        return None
    if is_int(t):
        return int(t)
    s = str(t)
    days = 0
    if "-" in s:
        d, s = s.split("-", 1)
        days = int(d)
        parts = [int(x) for x in s.split(":")]
        h, m, sec = (parts + [0, 0])[:3]
    else:
        parts = [int(x) for x in s.split(":")]
        if len(parts) == 1:
            h, m, sec = 0, parts[0], 0
        elif len(parts) == 2:
            h, m, sec = 0, parts[0], parts[1]
        else:
            h, m, sec = parts[:3]
    total_s = ((days * 24 + h) * 60 + m) * 60 + sec
    return -(-total_s // 60)


def world_size(launcher: Mapping[str, Any]) -> int:
    """Processes per job as the launcher settings declare them: one per GPU on each of
    ``nodes`` nodes (DDP), one per node without GPUs."""
    gpus = launcher.get("gpus_per_job") or 0
    nodes = launcher.get("nodes") or 1
    return max(1, int(gpus)) * int(nodes)


def group_keys(group: str, option: str | None = None) -> list[str]:
    """The keys of ``group`` (of its ``option`` where the group is polymorphic), for messages."""
    table: Any = {"wandb": WANDB, "sweep": SWEEP, "loss": LOSS, "backbone": BACKBONE, "schedule": SCHEDULE,
                  "model": MODEL, "launcher": LAUNCHER, "data": {"synthetic": DATA_SYNTHETIC, "coco": DATA_COCO}}.get(group)
    if table is None:
        return []
    if group in ("model", "launcher", "data"):
        if option in table:
            return sorted(table[option])
        return sorted({k for keys in table.values() for k in keys})
    return sorted(table)


__all__ = ["validate", "check_group", "check_model", "group_keys", "is_synthetic", "world_size", "SYNTHETIC_DATA", "MODELS",
           "GROUPS"]
