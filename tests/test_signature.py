"""Signatures identify experiments, not machines; runs made under the old signature are adopted."""

from __future__ import annotations

import json
import os

import pytest

from bbrctl import config as C
from bbrctl import launch as L
from bbrctl import sweep as S
from bbrctl.store import RunDir, prepare_run_dir, read_job, write_results

OVERRIDES = [["loss=focal_eiou"], ["data=coco", "loss=eiou", "model=faster_rcnn"], ["data=shapes_tiny", "seed=3"],
             ["model.weights_backbone=/w/resnet50-imagenet.pth", "model.norm=frozen_bn"]]


def _sig(ovs) -> str:
    return C.signature(C.to_container(C.compose(ovs)))


@pytest.mark.parametrize("ovs", OVERRIDES, ids=" ".join)
def test_same_experiment_same_signature_on_another_machine(ovs, monkeypatch, tmp_path):
    monkeypatch.delenv("BBRCTL_RUNS_ROOT", raising=False)
    here = _sig(ovs)
    # Another user, another cache, another COCO mount, another runs root.
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("BBRCTL_DATA_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("COCO_ROOT", str(tmp_path / "mnt" / "coco"))
    monkeypatch.setenv("BBRCTL_RUNS_ROOT", str(tmp_path / "elsewhere"))
    moved = [*ovs, "data.num_workers=7", "launcher=slurm", "wandb.mode=offline", f"runs_root={tmp_path}/r"]
    if "data=coco" in ovs:
        moved.append(f"data.root={tmp_path}/other")
    if any(o.startswith("model.weights_backbone") for o in ovs):
        moved.append("model.weights_backbone=/cluster/weights/resnet50-imagenet.pth")
    assert _sig(moved) == here


def test_what_changes_results_changes_the_signature():
    base = _sig([])
    for ovs in (["gamma=0.25"], ["seed=1"], ["data.num_train=100"], ["data.synth_seed=1"], ["schedule.max_iter=300",
                "schedule.steps=[200]"], ["data=coco"], ["data=coco", "data.name=my_coco_subset"],
                ["model.weights_backbone=/w/other.pth", "model.norm=frozen_bn"]):
        assert _sig(ovs) != base, ovs
    assert _sig(["data=coco"]) != _sig(["data=coco", "data.name=lvis"])   # two datasets need two names


def test_a_sweep_finds_its_jobs_from_another_cache_and_runs_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a = S.expand(["seed=0,1"], runs_root=tmp_path / "runs")
    monkeypatch.setenv("BBRCTL_DATA_DIR", str(tmp_path / "moved-cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "h2"))
    b = S.expand(["seed=0,1"], runs_root=tmp_path / "runs")
    assert [j.signature for j in a.jobs] == [j.signature for j in b.jobs]
    assert [j.dir_name for j in a.jobs] == [j.dir_name for j in b.jobs]


def test_a_run_made_under_the_legacy_signature_is_adopted_once(tmp_path, monkeypatch):
    """A finished sweep of bbrctl 0.1 (signature over paths) is found, not re-run."""
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    plan = S.expand(["seed=0,1", "loss=eiou"], runs_root=runs)
    old_dirs = {}
    for job in plan.jobs:
        old = C.legacy_signature(job.config)
        assert old != job.signature            # the old hash included the data cache path
        d = plan.sweep_dir / f"{job.name}-{old}"
        prepare_run_dir(d, job.config, signature=old, name=job.name, sweep=plan.name, overrides=job.overrides)
        write_results(d, "done", signature=old, metrics={"bbox": {"AP": 30.0}}, iteration=4, max_iter=4)
        old_dirs[job.signature] = (d, old)
    (plan.sweep_dir / "sweep.json").write_text(json.dumps({
        "name": plan.name, "jobs": {old: {"dir": d.name, "name": "x", "index": i}
                                    for i, (d, old) in enumerate(old_dirs.values())},
        "launches": [{"id": 1, "launcher": "local", "jobs": [old for _, old in old_dirs.values()], "pid": 1}]}))

    again = S.expand(["seed=0,1", "loss=eiou"], runs_root=runs)
    for job in again.jobs:
        d, old = old_dirs[job.signature]
        assert job.run_dir == d and job.previous_signatures == [old]
    result = L.launch(again)
    assert result.to_launch == [] and "2 done" in result.message
    for job in again.jobs:
        d, old = old_dirs[job.signature]
        rec = read_job(d)
        assert rec["signature"] == job.signature and rec["previous_signatures"] == [old]
    manifest = json.loads((again.sweep_dir / "sweep.json").read_text())
    assert set(manifest["jobs"]) == {j.signature for j in again.jobs}
    assert set(manifest["launches"][0]["jobs"]) == {j.signature for j in again.jobs}
    # Adopted: the next expansion finds them by the new signature, no legacy hash needed.
    third = S.expand(["seed=0,1", "loss=eiou"], runs_root=runs)
    assert all(j.previous_signatures == [] and j.run_dir.exists() for j in third.jobs)
    assert sorted(os.listdir(again.sweep_dir)) == sorted([*(d.name for d, _ in old_dirs.values()), ".sweep.lock",
                                                          "sweep.json"])


def test_a_single_train_run_under_the_legacy_signature_is_resumed_not_duplicated(tmp_path, monkeypatch):
    from bbrctl.train import run_name, train_from_overrides

    monkeypatch.chdir(tmp_path)
    ovs = ["data=shapes_tiny", "schedule=smoke"]
    cfg = C.to_container(C.compose(ovs))
    cfg["runs_root"] = str(tmp_path / "runs")
    old = C.legacy_signature(cfg)
    d = tmp_path / "runs" / "train" / f"{run_name(cfg)}-{old}"
    prepare_run_dir(d, cfg, signature=old, name=run_name(cfg))
    write_results(d, "done", signature=old, metrics={"bbox": {"AP": 1.0}}, iteration=4, max_iter=4)
    run_dir, results = train_from_overrides(ovs, runs_root=tmp_path / "runs")
    assert run_dir == d and results.get("skipped")
    assert read_job(d)["previous_signatures"] == [old]
    assert os.listdir(tmp_path / "runs" / "train") == [d.name]


def test_an_edited_config_no_longer_matches_its_job(tmp_path, capsys):
    import yaml

    from bbrctl.cli import main

    cfg = C.to_container(C.compose(["data=shapes_tiny", "schedule=smoke", "loss=eiou"]))
    d = tmp_path / "job"
    prepare_run_dir(d, cfg, signature=C.signature(cfg), name="eiou")
    cfg["loss"] = {"name": "giou", "params": {}}
    RunDir(d).config.write_text(yaml.safe_dump(cfg))
    with pytest.raises(SystemExit) as e:
        main(["train", "--run-dir", str(d), "--no-progress"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "was changed after the job was signed" in err and err.count("\n") == 1
    assert not RunDir(d).checkpoints.exists()
