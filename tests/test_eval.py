"""`bbrctl eval`: a run's checkpoint evaluated again, sharded over two gloo ranks (torchrun) with
the same metrics as one process, on another split or data, into evals/<name>.json only."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bbrctl import store
from bbrctl.cli import main
from bbrctl.detection.train.checkpoint import load_checkpoint

TRAIN = ["data=shapes_tiny", "schedule=smoke", "backbone=resnet_tiny", "loss=eiou", "schedule.max_iter=12",
         "schedule.steps=[10]", "schedule.base_lr=0.02", "schedule.base_batch_size=2", "schedule.checkpoint_period=0"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalruns")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "bbrctl", "train", *TRAIN, "--runs-root", str(root), "--no-progress",
                          "--device", "cpu"], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    (run_dir,) = [p for p in (root / "train").iterdir() if p.is_dir()]
    return run_dir


def snapshot(run_dir):
    return {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}


def run(argv, capsys) -> tuple[int, str, str]:
    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.slow
def test_two_ranks_score_what_one_process_scores(trained):
    before = snapshot(trained)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    # A low score threshold: hundreds of detections, so that the gather has something to lose.
    args = ["eval", "--run-dir", str(trained), "--device", "cpu", "model.score_thresh=0.01"]
    one = subprocess.run([sys.executable, "-m", "bbrctl", *args, "--name", "one"], capture_output=True, text=True,
                         env=env, timeout=300)
    assert one.returncode == 0, one.stdout + one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                          "-m", "bbrctl", *args, "--name", "two"], capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stdout + two.stderr
    a, b = store.read_eval(trained, "one"), store.read_eval(trained, "two")
    assert (a["world_size"], b["world_size"]) == (1, 2)
    assert a["images"] == b["images"] == 8 and a["detections"] == b["detections"] > 100
    assert a["metrics"] == b["metrics"] and a["metrics"]["bbox"]["AP50"] > 0
    assert a["checkpoint_iteration"] == 12 and a["signature"] == store.read_job(trained)["signature"]
    # The training results are untouched; only evals/ is new.
    assert snapshot(trained) == before
    assert {"one.json", "two.json"} <= {p.name for p in store.RunDir(trained).evals.iterdir()}


def test_another_split_and_other_data_get_their_own_names(trained, capsys):
    before = snapshot(trained)
    code, out, err = run(["eval", "--run-dir", str(trained), "--split", "train", "--device", "cpu"], capsys)
    assert code == 0, err
    rec = store.read_eval(trained, "shapes_tiny-train")
    assert rec["split"] == "train" and rec["images"] == 16 and "shapes_tiny-train.json" in out
    code, out, err = run(["eval", "--run-dir", str(trained), "data.num_val=4", "--device", "cpu", "--json"], capsys)
    assert code == 0, err
    rec = json.loads(out)
    assert rec["images"] == 4 and rec["name"].startswith("shapes_tiny-val-") and rec["data"]["num_val"] == 4
    assert snapshot(trained) == before


@pytest.mark.parametrize("args, needle", [
    (["loss=giou"], "`bbrctl eval` changes the data and how detections are read, not 'loss=giou'"),
    (["schedule.max_iter=5"], "not 'schedule.max_iter=5'"),
    (["data.nosuch=1"], "unknown config key 'data.nosuch' in the run's data config"),
    (["data.num_val=0"], "data.num_val=0 is not valid"),
    (["data.num_val=2,4"], "takes one value per key"),
    (["--split", "test"], "--split 'test' is not valid; valid: val, train"),
    (["--name", "../x"], "--name '../x' is not valid"),
    (["data=coco", "data.num_classes=80", "data.root=/nonexistent"], "has 80 categories, the run's model was trained on 5"),
    (["data=coco", "data.root=/nonexistent/coco", "data.num_classes=5"], "/nonexistent/coco"),
    (["--checkpoint", "/nonexistent/w.pt"], "checkpoint '/nonexistent/w.pt' does not exist"),
])
def test_bad_input_exits_2_and_writes_nothing(trained, capsys, args, needle):
    before = snapshot(trained)
    code, out, err = run(["eval", "--run-dir", str(trained), "--device", "cpu", *args], capsys)
    assert code == 2, (out, err)
    assert err.count("\n") == 1 and err.startswith("bbrctl: error: ") and needle in err, err
    assert snapshot(trained) == before and not store.read_eval(trained, "shapes_tiny-val")


def test_a_run_without_checkpoint_and_unsafe_checkpoints_are_refused(trained, tmp_path, capsys):
    from bbrctl.config import compose, signature, to_container

    fresh = tmp_path / "fresh"
    cfg = to_container(compose(TRAIN))
    store.prepare_run_dir(fresh, cfg, signature=signature(cfg), name="fresh")
    code, _, err = run(["eval", "--run-dir", str(fresh)], capsys)
    assert code == 2 and "has no checkpoint yet" in err and not store.RunDir(fresh).evals.exists()

    import torch

    state = load_checkpoint(trained / "checkpoints" / "last.pt")
    torch.save({**state, "note": Pickled()}, tmp_path / "evil.pt")
    code, _, err = run(["eval", "--run-dir", str(trained), "--checkpoint", str(tmp_path / "evil.pt")], capsys)
    assert code == 2 and "is not a checkpoint bbrctl can load safely" in err, err
    # A bare state dict is fine; one of another model is named as such.
    torch.save(state["model"], tmp_path / "bare.pt")
    code, out, err = run(["eval", "--run-dir", str(trained), "--checkpoint", str(tmp_path / "bare.pt"), "--device",
                          "cpu"], capsys)
    assert code == 0 and store.read_eval(trained, "shapes_tiny-val-bare") is not None, err
    torch.save({k: v for k, v in state["model"].items() if "head" not in k}, tmp_path / "headless.pt")
    code, _, err = run(["eval", "--run-dir", str(trained), "--checkpoint", str(tmp_path / "headless.pt")], capsys)
    assert code == 2 and "does not fit the run's model" in err, err


class Pickled:
    """Anything torch.load(weights_only=True) must not unpickle."""


def test_background_label_detections_are_no_objects():
    import torch

    from bbrctl.detection.eval.coco import to_coco_results

    out = {"boxes": torch.tensor([[0.0, 0, 10, 10], [1, 1, 5, 5], [2, 2, 8, 9]]), "scores": torch.tensor([0.9, 0.5, 0.2]),
           "labels": torch.tensor([1, 0, 2]), "masks": torch.ones(3, 1, 12, 12) * torch.tensor([0.9, 0.1, 0.8])[:, None, None, None]}
    res = to_coco_results([out], [7], {1: 11, 2: 12})
    assert [(r["category_id"], r["score"]) for r in res] == [(11, pytest.approx(0.9)), (12, pytest.approx(0.2))]
    assert res[1]["bbox"] == [2.0, 2.0, 6.0, 7.0] and all("segmentation" in r for r in res)
