"""Bad input is refused before anything exists: every group, every command that creates.

Each bad value runs through `bbrctl sweep --dry-run`, `bbrctl sweep` (local, and
launcher=slurm), `bbrctl train` and `bbrctl config`, in process, in an empty directory
with the runs root inside it: exit 2, one line on stderr naming the key, and the
directory still empty afterwards (no run directory, no sweep.json, no submitted job:
validation comes before SLURM is asked anything).
"""

from __future__ import annotations

import os

import pytest

from bbrctl.cli import main

# (overrides, what the one-line message must contain)
BAD = [
    # top-level shorthands
    (["gamma=-1"], "gamma=-1 is not valid: must be a number >= 0"),
    (["gamma=abc"], "gamma='abc' is not valid"),
    (["loss=focal_l1", "beta=0.2"], "beta=0.2 is not valid: must be a number in [1/e, 1]"),
    (["weight=-2"], "weight=-2 is not valid"),
    (["seed=abc"], "seed='abc' is not valid: must be an integer"),
    (["seed=-1"], "seed=-1 is not valid"),
    (["runs_root="], "runs_root='' is not valid: must be a path"),
    (["nosuchkey=1"], "unknown config key 'nosuchkey'; valid top-level keys"),
    (["+nosuchkey=1"], "unknown config key 'nosuchkey'; valid top-level keys"),
    # a near miss says what was meant
    (["+gama=1"], "unknown config key 'gama' (did you mean 'gamma'?); valid top-level keys"),
    (["+schedule.base_lrr=1"], "unknown config key 'schedule.base_lrr' (did you mean 'schedule.base_lr'?)"),
    # loss
    (["loss=nope"], "unknown loss option 'nope'; valid loss options"),
    (["loss=focal_eiou", "loss.params.gamma=-1"], "focal_eiou.gamma=-1 is out of range"),
    (["loss=ciou", "loss.params.alpha_iou_gate=2"], "ciou.alpha_iou_gate=2 is out of range"),
    (["loss=eiou", "+loss.params.zeta=1"], "loss 'eiou' has no parameter 'zeta'"),
    (["loss=baseline", "+loss.params.x=1"], "loss=baseline (each detector's stock loss) takes no parameters"),
    (["~loss"], "the config has no 'loss' group: choose one with loss=<option>; valid loss options: alpha_iou, balanced_l1, baseline"),
    # model
    (["model=nope"], "unknown model option 'nope'"),
    (["+model.kwargs.num_classes=3"], "model.kwargs.num_classes is an argument bbrctl already passes to retinanet: "
                                      "bbrctl builds it from the config"),
    (["+model.kwargs.score_thresh=0.1"], "model.kwargs.score_thresh is an argument bbrctl already passes to "
                                         "retinanet: set model.score_thresh instead"),
    (["model=faster_rcnn", "+model.kwargs.box_nms_thresh=0.3"], "set model.nms_thresh instead"),
    (["model=atss", "+model.kwargs.x=1"], "model.kwargs is not used by model=atss"),
    (["model.norm=layer"], "model.norm='layer' is not valid: must be one of group, batch, frozen_bn"),
    (["model.min_size=8"], "model.min_size=8 is not valid: must be an integer in [16, 8192]"),
    (["model.returned_layers=[3,2]"], "model.returned_layers=[3, 2] is not valid"),
    (["model.extra_levels=p9"], "model.extra_levels='p9' is not valid: must be one of p6p7, pool, none"),
    (["model.anchor_sizes=[8,16]"], "one positive size per pyramid level"),
    (["model=fcos", "model.aspect_ratios=[0.5,1.0]"], "FCOS takes one point per location"),
    (["model=faster_rcnn", "model.extra_levels=p6p7"], "R-CNN uses pool or none"),
    (["model.score_thresh=2"], "model.score_thresh=2 is not valid: must be a number in [0, 1]"),
    (["model.trainable_backbone_layers=9"], "model.trainable_backbone_layers=9 is not valid"),
    (["+model.bogus=1"], "unknown config key 'model.bogus'; valid model (retinanet) keys: anchor_base"),
    (["model.nope.x=1"], "unknown config key 'model.nope.x'; valid model (retinanet) keys: anchor_base"),
    # backbone
    (["backbone.layers=[1,1]"], "backbone.layers=[1, 1] is not valid: must be a list of 4 integers"),
    (["backbone.block=dense"], "backbone.block='dense' is not valid: must be one of basic, bottleneck"),
    (["backbone.name=../x"], "backbone.name='../x' is not valid: must be a name"),
    (["backbone.fpn_channels=0"], "backbone.fpn_channels=0 is not valid"),
    (["backbone=resnext101_64x4d_dcn", "backbone.dcn_stages=[c9]"],
     "backbone.dcn_stages=['c9'] is not valid: must be null or a list of 4 true/false values"),
    (["backbone.dcn_stages=[true,true,true,true]"],
     "config key 'backbone.dcn_stages' is valid but not in the chosen backbone file: add it with +backbone.dcn_stages"),
    (["~backbone.dcn_stages"], "is valid but not in the chosen backbone file: there is nothing to delete"),
    (["model=detr", "model.nhead=7"], "model.d_model=128 must be divisible by model.nhead=7"),
    # data
    (["data.image_size=-1"], "data.image_size=-1 is not valid: must be an integer in [32, 2048]"),
    (["data.num_train=0"], "data.num_train=0 is not valid"),
    (["data.size_mix=[1,2]"], "data.size_mix=[1, 2] is not valid: must be a list of 3 numbers >= 0"),
    (["data.min_objects=9", "data.max_objects=3"], "data.min_objects=9 must be <= data.max_objects=3"),
    (["data=coco", "data.num_classes=0"], "data.num_classes=0 is not valid"),
    (["+data.bogus=1"], "unknown config key 'data.bogus'; valid data (generated) keys"),
    (["data=coco", "data.aspect_ratio_group_factor=9"], "data.aspect_ratio_group_factor=9 is not valid: must be an integer in [-1, 8]"),
    (["data=shapes_coco", "data.image_shapes=[[640]]"], "data.image_shapes=[[640]] is not valid"),
    (["data=shapes_coco", "data.image_shapes=[[640,20000]]", "data.image_shape_weights=null"], "data.image_shapes=[[640, 20000]] is not valid"),
    (["data=shapes_coco", "data.image_shape_weights=[1,2]"],
     "data.image_shape_weights=[1, 2] must give one weight per entry of data.image_shapes (8)"),
    # schedule
    (["schedule.max_iter=-1"], "schedule.max_iter=-1 is not valid: must be an integer in [1, 2147483647]"),
    (["schedule.max_iter=abc"], "schedule.max_iter='abc' is not valid: must be an integer in [1, 2147483647]"),
    (["schedule.batch_size=0"], "schedule.batch_size=0 is not valid"),
    (["schedule.optimizer=adam"], "schedule.optimizer='adam' is not valid: must be one of sgd, adamw"),
    (["schedule.steps=[700,100]"], "schedule.steps=[700, 100] is not valid: must be a list of increasing integers"),
    (["schedule.steps=[100,700]"], "schedule.steps=[100, 700] must be increasing iterations below schedule.max_iter=600"),
    (["schedule.base_lr=-1"], "schedule.base_lr=-1 is not valid: must be a number > 0"),
    (["+schedule.max_iters=100"], "unknown config key 'schedule.max_iters' (did you mean 'schedule.max_iter'?); "
                                  "valid schedule keys: amp"),
    (["schedule.max_iters=100"], "unknown config key 'schedule.max_iters' (did you mean 'schedule.max_iter'?); "
                                 "valid schedule keys: amp"),
    (["schedule.amp=maybe"], "schedule.amp='maybe' is not valid: must be true or false"),
    (["schedule.momentum=1.5"], "schedule.momentum=1.5 is not valid"),
    (["~schedule"], "the config has no 'schedule' group"),
    # launcher
    (["launcher.max_parallel=0"], "launcher.max_parallel=0 is not valid"),
    (["launcher.gpus_per_job=-1"], "launcher.gpus_per_job=-1 is not valid"),
    (["launcher=slurm", "launcher.time=forever"], "launcher.time='forever' is not valid"),
    (["launcher=slurm", "launcher.partition='a b'"], "launcher.partition='a b' is not valid"),
    (["launcher=slurm", "launcher.extra_sbatch=['--x=1;rm']"], "launcher.extra_sbatch=['--x=1;rm'] is not valid"),
    # a value bbrctl.redact would replace in config.yaml cannot be what a job trains with
    (["data=coco", "data.root=/data/ghp_abcdefghijklmnopqrstuvwxyz0123456789/coco"],
     "data.root looks like a secret (a token, password or key)"),
    (["wandb.entity=sk-abcdefghijklmnopqrstuvwxyz12345"], "wandb.entity looks like a secret"),
    # a newline would end the #SBATCH line and start a command in the batch script
    (["launcher=slurm", "launcher.extra_sbatch=['--x\n/tmp/pwned']"], "launcher.extra_sbatch="),
    (["launcher=slurm", "launcher.gpus_per_job=3"], "schedule.batch_size=8 is not divisible by the 3 processes"),
    (["+launcher.bogus=1"], "unknown config key 'launcher.bogus'; valid launcher ("),
    (["launcher=slurm", "launcher.nodes=0"], "launcher.nodes=0 is not valid: must be an integer in [1, 1024]"),
    (["launcher=slurm", "launcher.nodes=two"], "launcher.nodes='two' is not valid"),
    (["launcher=slurm", "launcher.max_requeues=-1"], "launcher.max_requeues=-1 is not valid: must be an integer in [0, 10000]"),
    (["launcher=slurm", "launcher.nodes=3", "launcher.gpus_per_job=2"],
     "schedule.batch_size=8 is not divisible by the 6 processes of a job (launcher.nodes=3 x launcher.gpus_per_job=2)"),
    (["launcher=slurm", "launcher.time=1"], "launcher.signal_seconds=120 must be shorter than launcher.time=1 (60 s)"),
    (["launcher=slurm", "launcher.time=0-00:02", "launcher.signal_seconds=120"],
     "launcher.signal_seconds=120 must be shorter than launcher.time=0-00:02 (120 s)"),
    # wandb and sweep
    (["wandb.mode=loud"], "wandb.mode='loud' is not valid: must be one of online, offline, disabled"),
    (["+wandb.bogus=1"], "unknown config key 'wandb.bogus'; valid wandb keys"),
    (["sweep.name=a/b"], "sweep.name='a/b' is not valid"),
]


def _run(argv, capsys) -> tuple[int, str]:
    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    return code, capsys.readouterr().err


def _is_slurm(ovs) -> bool:
    return any(o.startswith("launcher=slurm") for o in ovs)


@pytest.mark.parametrize("ovs, needle", BAD, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_bad_value_exits_2_with_one_line_and_creates_nothing(ovs, needle, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BBRCTL_RUNS_ROOT", str(tmp_path / "runs"))
    commands = [["sweep", *ovs, "--dry-run"], ["sweep", *ovs], ["train", *ovs, "--no-progress"]]
    if not _is_slurm(ovs):
        # The same value with the other launcher: also refused before SLURM is asked anything.
        commands.append(["sweep", *ovs, "launcher=slurm"])
    for argv in commands:
        code, err = _run(argv, capsys)
        assert code == 2, (argv, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("bbrctl: error: "), (argv, err)
        assert needle in lines[0], (argv, lines[0])
        assert os.listdir(tmp_path) == [], (argv, os.listdir(tmp_path))


def test_the_table_covers_every_group():
    keys = {o.lstrip("+~").split("=")[0].split(".")[0] for ovs, _ in BAD for o in ovs}
    assert {"gamma", "beta", "weight", "seed", "runs_root", "loss", "model", "backbone", "data", "schedule",
            "launcher", "wandb", "sweep"} <= keys
    assert len(BAD) >= 30


def test_config_command_refuses_the_same(capsys):
    for ovs, needle in BAD[:12]:
        code, err = _run(["config", *ovs], capsys)
        assert code == 2 and needle in err and err.count("\n") == 1, (ovs, err)


def test_a_plain_hydra_group_file_works_and_a_misplaced_key_is_named(tmp_path, capsys):
    """Group files may be written without `# @package _global_` (keys of the group itself)."""
    from bbrctl import config as C

    (tmp_path / "loss").mkdir()
    (tmp_path / "loss" / "plain_eiou.yaml").write_text("name: eiou\nparams: {}\n")
    (tmp_path / "loss" / "with_weight.yaml").write_text("name: eiou\nparams: {}\nweight: 3.0\n")
    (tmp_path / "schedule").mkdir()
    (tmp_path / "schedule" / "quick.yaml").write_text(
        "name: quick\nmax_iter: 50\nbatch_size: 4\nbase_lr: 0.01\nbase_batch_size: 16\nsteps: [40]\n")
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "plain.yaml").write_text("sweep:\n  name: plain\n")
    cfg = C.to_container(C.compose(["loss=plain_eiou", "schedule=quick"], [tmp_path]))
    assert cfg["loss"] == {"name": "eiou", "params": {}} and cfg["schedule"]["max_iter"] == 50
    code, err = _run(["config", "--config-dir", str(tmp_path), "loss=with_weight"], capsys)
    assert code == 2 and "'loss.weight'" in err and "@package _global_" in err and err.count("\n") == 1
    code, err = _run(["config", "--config-dir", str(tmp_path), "+experiment=plain"], capsys)
    assert code == 2 and "@package _global_" in err and err.count("\n") == 1


def test_train_and_val_categories_that_differ_are_refused_before_the_run_dir(tmp_path, monkeypatch, capsys):
    import json

    monkeypatch.chdir(tmp_path)
    data = tmp_path / "coco"
    for split, cats in (("train", [1, 2, 3]), ("val", [1, 2])):
        (data / f"{split}2017").mkdir(parents=True)
        ann = {"images": [], "annotations": [], "categories": [{"id": i, "name": f"c{i}"} for i in cats]}
        (data / "annotations").mkdir(exist_ok=True)
        (data / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(ann))
    runs = tmp_path / "runs"
    for argv in (["train", "data=coco", f"data.root={data}", f"--runs-root={runs}"],
                 ["sweep", "data=coco", f"data.root={data}", "seed=0,1", f"--runs-root={runs}"],
                 ["sweep", "data=coco", f"data.root={data}", f"--runs-root={runs}", "--dry-run"]):
        code, err = _run(argv, capsys)
        assert code == 2 and "list different categories (only in train: 3; only in val: none)" in err, err
        assert not runs.exists()


@pytest.mark.parametrize("train_cats, val_cats, message", [
    ([{"id": 1, "name": "a"}], [{"id": 1, "name": "b"}],
     'name category 1 differently ("a" in train, "b" in val)'),
    ([{"id": 1}], [{"id": 1, "name": "a"}], "categories[0].name must be a string, got null"),
    ([{"name": "a"}], [{"id": 1, "name": "a"}], "categories[0].id must be an integer >= 1, got null"),
    (["person"], [{"id": 1, "name": "a"}], "categories[0] must be an object with 'id' and 'name'"),
    ([{"id": 1, "name": "a"}, {"id": 1, "name": "b"}], [{"id": 1, "name": "a"}], "category id 1 is listed twice"),
    ([{"id": 1.5, "name": "a"}], [{"id": 1, "name": "a"}], "categories[0].id must be an integer >= 1, got 1.5"),
])
def test_malformed_or_renamed_categories_are_one_line_before_the_run_dir(tmp_path, monkeypatch, capsys, train_cats,
                                                                         val_cats, message):
    import json

    monkeypatch.chdir(tmp_path)
    data = tmp_path / "coco"
    for split, cats in (("train", train_cats), ("val", val_cats)):
        (data / f"{split}2017").mkdir(parents=True)
        (data / "annotations").mkdir(exist_ok=True)
        (data / "annotations" / f"instances_{split}2017.json").write_text(
            json.dumps({"images": [], "annotations": [], "categories": cats}))
    runs = tmp_path / "runs"
    code, err = _run(["train", "data=coco", f"data.root={data}", f"--runs-root={runs}"], capsys)
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not runs.exists()


def test_missing_weights_and_data_are_refused_for_local_jobs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, err = _run(["sweep", "model.weights_backbone=/nope/r50.pth", "model.norm=frozen_bn", "--dry-run"], capsys)
    assert code == 2 and "model.weights_backbone: no such file '/nope/r50.pth'" in err
    code, err = _run(["sweep", "data=coco", "data.root=/nope/coco"], capsys)
    assert code == 2 and "'/nope/coco/train2017' does not exist" in err
    assert os.listdir(tmp_path) == []


def test_read_categories_finds_the_array_without_a_full_parse(tmp_path):
    from bbrctl.detection.data.datasets import read_categories

    p = tmp_path / "a.json"
    cats = [{"id": 7, "name": "x", "supercategory": "categories"}]
    body = '{"images": [' + ",".join('{"id": %d, "file_name": "categories.jpg"}' % i for i in range(50)) + \
        '], "annotations": [], "categories": ' + __import__("json").dumps(cats) + "}"
    p.write_text(body)
    assert read_categories(p) == cats
    p.write_text('{"images": [], "annotations": [], "categories": [], "x": {"categories": 1}}')  # ambiguous
    assert read_categories(p) == []
