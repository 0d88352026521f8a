"""`bbrctl sweep`: expansion (Hydra grammar, presets), signatures, naming, dedupe, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bbrctl import config as C
from bbrctl import launch as L
from bbrctl import sweep as S
from bbrctl.errors import UserError
from bbrctl.store import atomic_write_json, prepare_run_dir, write_status
from bbrctl.store.manifest import load_manifest, save_manifest
from bbrctl.store.names import ensure_inside, sanitize
from bbrctl.sweep.fast import Composer


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def cli(args, cwd, env=None):
    return subprocess.run([sys.executable, "-m", "bbrctl", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def values(plan, dotted):
    out = []
    for j in plan.jobs:
        node = j.config
        for p in dotted.split("."):
            node = node[p]
        out.append(node)
    return out


# --------------------------------------------------------------------------- the example

def test_dry_run_lists_the_four_gamma_jobs_creates_nothing_and_imports_no_torch(tmp_path):
    code = ("import sys\nfrom bbrctl.cli import main\n"
            "try:\n    main(['sweep', 'loss=focal_eiou', 'gamma=0.25,0.5,1,2', '--dry-run', '--json'])\n"
            "except SystemExit as e:\n    assert not e.code, e.code\n"
            "print('HEAVY=' + ','.join(m for m in ('torch', 'torchvision', 'wandb', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    body, heavy = out.stdout.rsplit("HEAVY=", 1)
    assert heavy.strip() == ""
    data = json.loads(body)
    assert data["n_jobs"] == 4 and data["sweep"] == "gamma"
    gammas = [float(next(o for o in j["overrides"] if o.startswith("gamma=")).split("=")[1]) for j in data["jobs"]]
    assert gammas == [0.25, 0.5, 1.0, 2.0]
    assert all(j["action"] == "launch" and j["state"] == "new" for j in data["jobs"])
    assert len({j["signature"] for j in data["jobs"]}) == 4
    assert list(tmp_path.iterdir()) == []          # nothing created


def test_human_dry_run_output(tmp_path):
    out = cli(["sweep", "loss=focal_eiou", "gamma=0.25,0.5,1,2", "--dry-run"], tmp_path)
    assert out.returncode == 0, out.stderr
    for g in ("gamma=0.25", "gamma=0.5", "gamma=1", "gamma=2"):
        assert g in out.stdout
    assert "nothing created" in out.stdout
    assert not (tmp_path / "runs").exists()


# --------------------------------------------------------------------------- grammar

def test_cartesian_product_in_hydra_order(in_tmp):
    plan = S.expand(["loss=eiou,focal_eiou", "seed=range(0,3)", "weight=2.5"])
    assert [(j.config["loss"]["name"], j.config["seed"]) for j in plan.jobs] == [
        ("eiou", 0), ("eiou", 1), ("eiou", 2), ("focal_eiou", 0), ("focal_eiou", 1), ("focal_eiou", 2)]
    assert set(values(plan, "weight")) == {2.5}
    assert plan.swept_keys == ["loss", "seed"]
    assert plan.name == "loss-seed"
    assert plan.jobs[0].name == "loss=eiou-seed=0"


def test_choice_range_and_glob(in_tmp):
    assert values(S.expand(["loss=focal_eiou", "gamma=choice(0.25,2)"]), "loss.params.gamma") == [0.25, 2]
    assert values(S.expand(["loss=focal_eiou", "gamma=range(0.5,2,0.5)"]), "loss.params.gamma") == [0.5, 1.0, 1.5]
    plan = S.expand(["loss=glob(focal_*)"])
    assert values(plan, "loss.name") == ["focal_eiou", "focal_eiou_star", "focal_eiou_v1", "focal_l1"]


def test_glob_sees_options_from_a_user_config_dir(in_tmp, tmp_path):
    d = tmp_path / "myconf"
    (d / "loss").mkdir(parents=True)
    (d / "loss" / "focal_mine.yaml").write_text("# @package _global_\nloss:\n  name: eiou\n  params: {}\nweight: 3.0\n")
    plan = S.expand(["loss=glob(focal_m*)"], [d])
    assert values(plan, "weight") == [3.0]


def test_non_result_keys_do_not_make_new_jobs(in_tmp):
    plan = S.expand(["loss=eiou", "data.num_workers=0,2,4"])
    assert len(plan.jobs) == 1 and plan.duplicates == 2


def test_signatures_and_dirs_are_stable(in_tmp):
    a = S.expand(["loss=focal_eiou", "gamma=0.25,0.5"])
    b = S.expand(["gamma=0.25,0.5", "loss=focal_eiou"])
    assert [j.signature for j in a.jobs] == [j.signature for j in b.jobs]
    assert [j.signature for j in a.jobs] == [C.signature(C.compose(j.overrides)) for j in a.jobs]
    for j in a.jobs:
        assert j.run_dir == in_tmp / "runs" / "gamma" / f"{j.name}-{j.signature}"


def test_name_option_and_preset_name(in_tmp):
    assert S.expand(["gamma=0.5,1", "loss=focal_eiou"], name="my-sweep_1").sweep_dir == in_tmp / "runs" / "my-sweep_1"
    assert S.expand(["+experiment=table2"]).name == "table2"
    assert S.expand(["+experiment=table2", "sweep.name=t2b"]).name == "t2b"
    assert S.expand(["loss=eiou"]).name == "single"


def test_runs_root_override(in_tmp):
    plan = S.expand(["loss=eiou", "runs_root=elsewhere/r"])
    assert plan.sweep_dir == in_tmp / "elsewhere" / "r" / "single"


# --------------------------------------------------------------------------- presets

@pytest.mark.parametrize("preset, n, key, expected", [
    ("table1", 8, "loss.name", ["baseline", "iou", "giou", "ciou", "focal_l1", "eiou", "focal_eiou_v1", "focal_eiou"]),
    ("table2", 3, "loss.name", ["baseline", "balanced_l1", "focal_l1"]),
    ("fig9a", 7, "weight", [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5]),
])
def test_presets_expand_to_the_papers_ablations(in_tmp, preset, n, key, expected):
    plan = S.expand([f"+experiment={preset}"])
    assert plan.name == preset and len(plan.jobs) == n
    assert values(plan, key) == expected
    assert set(values(plan, "model.name")) == {"retinanet"}
    # As typed they run on the embedded default: synthetic data, the small schedule.
    assert set(values(plan, "data.name")) == {"shapes"} and set(values(plan, "schedule.name")) == {"cpu_small"}


def test_table1_uses_the_papers_weights_and_defaults(in_tmp):
    plan = S.expand(["+experiment=table1"])
    by_loss = {j.config["loss"]["name"]: j.config for j in plan.jobs}
    assert by_loss["baseline"]["weight"] == 1.0 and by_loss["focal_l1"]["weight"] == 1.0
    for name in ("iou", "giou", "ciou", "eiou", "focal_eiou", "focal_eiou_v1"):
        assert by_loss[name]["weight"] == 2.5
    assert by_loss["focal_eiou"]["loss"]["params"]["gamma"] == 0.5
    assert by_loss["focal_l1"]["loss"]["params"]["beta"] == 0.8


def test_table3_runs_the_six_detectors_on_their_paper_backbones(in_tmp):
    plan = S.expand(["+experiment=table3"])
    combos = {(c["model"]["name"], c["backbone"]["name"], c["loss"]["name"]) for c in (j.config for j in plan.jobs)}
    # baseline, Focal-EIoU at 2.5 and at the detector's stock weight (baseline x stock merged)
    assert len(plan.jobs) == 33 and len(combos) == 22 and plan.duplicates == 11
    weights = {(c["model"]["name"], c["backbone"]["name"], c["loss"]["name"], c["weight"]) for c in (j.config for j in plan.jobs)}
    assert {(m, b, w) for m, b, loss, w in weights if loss == "focal_eiou"} == {(m, b, w) for m, b, _ in combos
                                                                                for w in (2.5, "stock")}
    pairs = {(m, b) for m, b, _ in combos}
    assert pairs == {(m, b) for m in ("faster_rcnn", "mask_rcnn", "retinanet") for b in ("resnet50", "resnext101_32x4d")} | \
        {(m, b) for m in ("atss", "paa") for b in ("resnet50", "resnext101_64x4d_dcn")} | {("detr", "resnet50")}
    assert {loss for _, _, loss in combos} == {"baseline", "focal_eiou"}
    by = {(j.config["model"]["name"], j.config["loss"]["name"]): j.config for j in plan.jobs}
    assert by[("detr", "baseline")]["schedule"]["optimizer"] == "adamw"          # DETR's own schedule
    assert by[("atss", "baseline")]["schedule"]["name"] == "cpu_small"
    # One backbone on the command line collapses the pairs but for ATSS/PAA's DCN rows, whose
    # detector files keep their deformable head towers (model.head_dcn): 8 variants x 3 rows.
    cpu = S.expand(["+experiment=table3", "backbone=resnet_tiny"])
    assert len(cpu.jobs) == 24 and {j.config["backbone"]["name"] for j in cpu.jobs} == {"resnet_tiny"}
    assert sum(bool(j.config["model"].get("head_dcn")) for j in cpu.jobs) == 6
    assert len({j.config["model"]["name"] for j in cpu.jobs}) == 6
    embedded = S.expand(["+experiment=table3_cpu"])
    cfgs = {(j.config["model"]["name"], j.config["loss"]["name"]): j.config for j in embedded.jobs
            if j.config["weight"] != "stock"}
    assert len(embedded.jobs) == 18 and {m for m, _ in cfgs} == {m for m, _, _ in combos}
    assert sum(j.config["weight"] == "stock" for j in embedded.jobs) == 6
    assert {c["backbone"]["name"] for c in cfgs.values()} == {"resnet_tiny"}
    assert cfgs[("mask_rcnn", "baseline")]["model"]["box_batch_size_per_image"] == 128
    assert cfgs[("detr", "focal_eiou")]["schedule"]["name"] == "detr_cpu_small"
    assert cfgs[("atss", "focal_eiou")]["schedule"]["name"] == "cpu_small"
    paper = S.expand(["+experiment=table3", "data=coco", "schedule=paper_90k"])
    scheds = {j.config["model"]["name"]: j.config["schedule"]["name"] for j in paper.jobs}
    assert scheds["detr"] == "detr_paper_90k" and scheds["retinanet"] == "paper_90k"


def test_fig9b_and_fig9c_sweep_the_focal_parameters(in_tmp):
    b = S.expand(["+experiment=fig9b"])
    assert len(b.jobs) == 14
    assert {(c["loss"]["name"], c["loss"]["params"]["beta"]) for c in (j.config for j in b.jobs)} == {
        (loss, beta) for loss in ("focal_l1", "focal_eiou_v1") for beta in (0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)}
    c = S.expand(["+experiment=fig9c"])
    assert {(x["loss"]["name"], x["loss"]["params"]["gamma"]) for x in (j.config for j in c.jobs)} == {
        (loss, g) for loss in ("focal_eiou", "focal_eiou_star") for g in (0.25, 0.5, 1.0, 2.0)}


def test_command_line_replaces_a_preset_sweep_and_adds_the_paper_setting(in_tmp):
    plan = S.expand(["+experiment=fig9c", "loss=focal_eiou", "data=coco", "schedule=paper_90k", "backbone=resnet50"])
    assert values(plan, "loss.name") == ["focal_eiou"] * 4
    assert plan.swept_keys == ["gamma"] and plan.jobs[0].name == "gamma=0.25"
    assert set(values(plan, "data.name")) == {"coco"} and set(values(plan, "schedule.max_iter")) == {90000}
    assert set(values(plan, "backbone.name")) == {"resnet50"}
    # ... and a command-line sweep crosses with the preset's.
    assert len(S.expand(["+experiment=table2", "seed=0,1"]).jobs) == 6
    # `experiment=` without the + works too.
    assert len(S.expand(["experiment=table2"]).jobs) == 3


# --------------------------------------------------------------------------- fast path == compose

EQUIVALENCE_CASES = [
    [],
    ["loss=focal_eiou", "gamma=0.25"],
    ["loss=focal_l1", "beta=0.5", "weight=3"],
    ["loss=focal_eiou_v1", "gamma=0.9", "beta=${gamma}"],
    ["data=coco", "model=faster_rcnn", "backbone=resnet50", "loss=baseline"],
    ["data=shapes_tiny", "data.num_train=7", "data.root=/x/y z"],
    ["+experiment=table1", "loss=iou"],
    ["+experiment=fig9a", "weight=0.5"],
    ["+model.kwargs.note='a;b $(touch x) \"q\"'", "++seed=3", "+sweep.params.tags=[a,b]"],
    ["schedule.steps=[10,20]", "model.anchor_sizes=[16,32,64]"],
    ["~wandb.project"],                   # deletion: the slow path
    ["wandb={mode: offline}"],            # dict merge: the slow path
    ["loss=ciou", "loss.params.alpha_iou_gate=0.5"],
]


@pytest.mark.parametrize("ovs", EQUIVALENCE_CASES, ids=lambda o: " ".join(o) or "defaults")
def test_fast_composition_equals_hydra_compose(in_tmp, ovs):
    composer = Composer([])
    assert composer.compose(list(ovs)) == C.to_container(C.compose(list(ovs)))


def test_fast_path_is_taken_for_plain_value_overrides(in_tmp):
    plan = S.expand(["loss=focal_eiou,eiou", "gamma=0.1,0.2,0.3", "seed=range(0,5)"])
    assert plan.stats["fast"] == 30 and plan.stats["slow"] == 0 and plan.stats["composed"] == 2


_KEYS = st.sampled_from([
    ("loss", ["eiou", "focal_eiou", "focal_l1", "giou", "baseline", "focal_eiou_star"]),
    ("gamma", ["0", "0.25", "1", "2.5", "${beta}"]),
    ("beta", ["0.4", "0.8", "1.0", "0.9"]),
    ("weight", ["0", "1", "2.5", "1e-3"]),
    ("seed", ["0", "7"]),
    ("data", ["shapes", "shapes_tiny", "coco"]),
    ("data.num_workers", ["0", "3"]),
    ("model", ["retinanet", "fcos", "faster_rcnn"]),
    ("+extra", ["1", "'x y'", "[1,2]", "null"]),
    ("+model.kwargs.note", ["'a;b'", "1", "[x]"]),
    ("schedule.max_iter", ["5", "100", "600", "-1", "abc"]),
    ("schedule.steps", ["[]", "[3]", "[50,90]", "[90,50]"]),
    ("launcher", ["local", "slurm"]),
    ("launcher.gpus_per_job", ["0", "2", "-1"]),
    ("backbone", ["resnet_tiny", "resnet50"]),
    ("~wandb.project", [""]),
    ("model.anchor_base", ["8", "0", "${data.anchor_base}"]),
])


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(_KEYS, st.integers(0, 5)), min_size=1, max_size=5, unique_by=lambda t: t[0][0]))
def test_fast_composition_equals_compose_property(picks):
    ovs = [f"{k}={vals[i % len(vals)]}" if not k.startswith("~") else k for (k, vals), i in picks]
    composer = Composer([])
    try:
        fast = composer.compose(ovs)
    except UserError as e:
        fast = ("error", str(e))
    try:
        ref = C.to_container(C.compose(ovs))
    except UserError as e:
        ref = ("error", str(e))
    assert fast == ref


# --------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("ovs, name, needle", [
    (["gamma=0.25,,0.5"], None, "invalid override"),
    (["nosuchkey=1,2"], None, "unknown config key 'nosuchkey'"),
    (["loss=nope,eiou"], None, "valid loss options"),
    (["loss=focal_eiou", "gamma=-1,0.5"], None, "gamma"),
    (["loss=focal_l1", "beta=0.2,0.5"], None, "beta=0.2 is not valid: must be a number in [1/e, 1]"),
    (["gamma=interval(0,1)"], None, "range()"),
    (["loss=glob(zzz*)"], None, "no values"),
    (["+experiment=table1,table2"], None, "cannot be swept"),
    (["hydra.run.dir=x"], None, "hydra"),
    (["launcher=local,slurm"], None, "cannot be swept"),
    (["+experiment=nope"], None, "valid experiment options"),
    (["loss=eiou"], "../evil", "invalid sweep name"),
    (["loss=eiou"], ".hidden", "invalid sweep name"),
    (["loss=eiou"], "a b", "invalid sweep name"),
])
def test_bad_input_is_one_line_user_error(in_tmp, ovs, name, needle):
    with pytest.raises(UserError) as e:
        S.expand(ovs, name=name)
    assert needle in str(e.value) and "\n" not in str(e.value)
    assert not (in_tmp / "runs").exists()


@pytest.mark.parametrize("args", [
    ["loss=focal_eiou", "gamma=-1,0.5", "launcher=slurm"],
    ["loss=eiou", "launcher=slurm", "launcher.partition=a b"],
    ["loss=eiou,giou", "launcher.max_parallel=0"],
])
def test_cli_rejects_before_creating_anything(tmp_path, args):
    out = cli(["sweep", *args], tmp_path)
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("bbrctl: error: ") and out.stderr.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- names and paths

def test_sanitize_keeps_names_inside_the_sweep_dir(in_tmp):
    plan = S.expand(["+model.kwargs.note='../../../evil',\"$(touch pwned); rm -rf ~\",'a b \"c\"'"])
    for j in plan.jobs:
        assert j.run_dir.parent == in_tmp / "runs" / "model.kwargs.note"
        assert set(j.dir_name) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._=-")
        assert not j.dir_name.startswith((".", "-"))
    assert sanitize("..") == "_" and sanitize("../x") == "__x" and sanitize("") == "_"
    with pytest.raises(UserError):
        ensure_inside(in_tmp / "runs" / ".." / "x", in_tmp / "runs")


def test_symlinked_run_dir_out_of_runs_root_is_refused(in_tmp, tmp_path):
    plan = S.expand(["loss=eiou"])
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    plan.sweep_dir.mkdir(parents=True)
    (plan.sweep_dir / plan.jobs[0].dir_name).symlink_to(outside)
    with pytest.raises(UserError, match="outside the runs directory"):
        S.expand(["loss=eiou"])


# --------------------------------------------------------------------------- dedupe and relaunch

def _prepare(plan):
    for j in plan.jobs:
        prepare_run_dir(j.run_dir, j.config, signature=j.signature, name=j.name, sweep=plan.name, overrides=j.overrides)


def test_rerun_skips_done_and_live_relaunches_failed_requeued_and_lost(in_tmp):
    plan = S.expand(["loss=focal_eiou", "gamma=0.1,0.2,0.3,0.4,0.5,0.6"])
    _prepare(plan)
    d = [j.run_dir for j in plan.jobs]
    atomic_write_json(d[0] / "results.json", {"status": "done", "metrics": {"bbox": {"AP": 12.5}}})
    atomic_write_json(d[1] / "results.json", {"status": "failed", "error": "boom"})
    write_status(d[2], "running", iteration=3, max_iter=10)                     # this live process
    write_status(d[3], "requeued", iteration=5, max_iter=10)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    atomic_write_json(d[4] / "status.json", {"state": "running", "pid": dead.pid, "host": os.uname().nodename,
                                             "updated": 0, "iteration": 1, "max_iter": 10})
    # d[5]: prepared, never started
    decisions = {x.run_dir: x for x in L.decide(plan)}
    assert [decisions[x].action for x in d] == ["skip", "launch", "skip", "launch", "launch", "launch"]
    assert decisions[d[1]].reason == "relaunch after failure"
    assert decisions[d[3]].reason == "resume from checkpoint"
    assert decisions[d[4]].state == "failed"                                   # lost


def test_a_failed_job_reads_as_running_once_relaunched(in_tmp):
    plan = S.expand(["loss=eiou"])
    _prepare(plan)
    rd = plan.jobs[0].run_dir
    atomic_write_json(rd / "results.json", {"status": "failed", "error": "boom"})
    os.utime(rd / "results.json", (1, 1))
    write_status(rd, "running", iteration=1, max_iter=4)
    (x,) = L.decide(plan)
    assert x.action == "skip" and x.state == "running"


def test_existing_run_dir_with_the_same_signature_is_reused(in_tmp):
    plan = S.expand(["loss=focal_eiou", "gamma=0.3"], name="s")
    j = plan.jobs[0]
    other = plan.sweep_dir / f"renamed-{j.signature}"
    prepare_run_dir(other, j.config, signature=j.signature, name="renamed", sweep="s")
    again = S.expand(["loss=focal_eiou", "gamma=0.3"], name="s")
    assert again.jobs[0].run_dir == other


def test_manifest_keeps_every_job_the_sweep_ever_had(in_tmp):
    a = S.expand(["loss=focal_eiou", "gamma=0.1,0.2"], name="m")
    b = S.expand(["loss=focal_eiou", "gamma=0.2,0.3"], name="m")
    m = a.merge_into({})
    m = b.merge_into(m)
    save_manifest(a.sweep_dir, m)
    m2 = load_manifest(a.sweep_dir)
    assert len(m2["jobs"]) == 3 and m2["name"] == "m"
    assert {v["dir"] for v in m2["jobs"].values()} == {j.dir_name for j in a.jobs + b.jobs}
