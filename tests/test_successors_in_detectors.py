"""The successor losses inside detectors: Wise-IoU's running mean survives resume exactly
and does not depend on the number of DDP ranks; MPDIoU gets each pair's image size."""

from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path

import pytest
import torch

from bbrctl import store

OVERRIDES = ["model=retinanet", "loss=wiou_v3", "data=shapes_tiny", "schedule=smoke", "schedule.max_iter=6",
             "schedule.checkpoint_period=3", "schedule.eval_period=0", "backbone=resnet_tiny",
             "backbone.widths=[8,16,32,64]", "backbone.fpn_channels=32"]


def _prepare(run_dir: Path) -> dict:
    from bbrctl.config import compose, signature, to_container

    cfg = to_container(compose(OVERRIDES))
    store.prepare_run_dir(run_dir, cfg, signature=signature(cfg), name="wiou", overrides=OVERRIDES)
    return cfg


def _train(cfg: dict, run_dir: Path) -> None:
    from bbrctl.detection.train import engine

    torch.set_num_threads(1)
    engine.run(cfg, run_dir, engine.Dist(), progress=False)


@pytest.mark.slow
def test_wiou_running_mean_is_checkpointed_and_resumed_exactly(tmp_path):
    from bbrctl.detection.train.checkpoint import load_checkpoint

    full, resumed = tmp_path / "full", tmp_path / "resumed"
    cfg = _prepare(full)
    _train(cfg, full)
    ck = full / store.CHECKPOINTS
    last, mid = load_checkpoint(ck / "last.pt"), load_checkpoint(ck / "prev.pt")
    assert (mid["iteration"], last["iteration"]) == (3, 6)
    (mean_mid,), (mean_last,) = [[s["mean"] for s in c["loss_state"]] for c in (mid, last)]
    assert mean_mid.dtype == torch.float64 and 0 < float(mean_last) < float(mean_mid) < 1.0  # it moved

    # The same run, stopped after its iteration-3 checkpoint and resumed from it.
    shutil.copytree(full, resumed)
    rck = resumed / store.CHECKPOINTS
    (rck / "last.pt").unlink()
    (rck / "prev.pt").rename(rck / "last.pt")
    for f in (store.RESULTS,):
        (resumed / f).unlink(missing_ok=True)
    _train(cfg, resumed)
    got = load_checkpoint(rck / "last.pt")
    assert torch.equal(got["loss_state"][0]["mean"], mean_last)
    diff = [k for k in last["model"] if not torch.equal(got["model"][k], last["model"][k])]
    assert not diff, f"{len(diff)} tensors differ after resume, e.g. {diff[:3]}"


def test_a_resume_without_the_saved_state_would_differ():
    """The running mean matters: the same batch from a reset mean gives another loss."""
    from bbrctl.losses import get_loss

    g = torch.Generator().manual_seed(0)
    t = torch.rand(64, 2, generator=g) * 50
    t = torch.cat([t, t + 20], 1)
    p = t + torch.randn(64, 4, generator=g) * 5
    a, b = get_loss("wiou_v3"), get_loss("wiou_v3")
    for _ in range(20):
        a(p.requires_grad_(), t)
    assert float(a.state.value) != float(b.state.value)
    assert not torch.equal(a(p, t).detach(), b(p, t).detach())
    b.state.load_state_dict(a.state.state_dict())
    assert torch.equal(a(p, t).detach(), b(p, t).detach())


# ------------------------------------------------------------------ rank independence

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batches():
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(5):
        t = torch.rand(40, 2, generator=g) * 60
        t = torch.cat([t, t + 5 + torch.rand(40, 2, generator=g) * 40], 1)
        out.append((t + torch.randn(40, 4, generator=g) * 6, t))
    return out


def _rank_main(rank: int, world: int, port: int, out_dir: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                         world_size=world)
    from bbrctl.losses import get_loss

    loss = get_loss("wiou_v3", momentum=0.2)
    values = []
    for i, (p, t) in enumerate(_batches()):
        # Uneven shards (rank 0 gets 10 pairs of 40, the last step gives rank 1 none).
        cut = 10 if i < 4 else 40
        sl = slice(0, cut) if rank == 0 else slice(cut, None)
        loss(p[sl].requires_grad_(), t[sl])
        values.append(float(loss.state.value))
    torch.save(torch.tensor(values, dtype=torch.float64), os.path.join(out_dir, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


def test_wiou_running_mean_does_not_depend_on_the_number_of_ranks(tmp_path):
    import torch.multiprocessing as mp

    from bbrctl.losses import get_loss

    single = get_loss("wiou_v3", momentum=0.2)
    want = []
    for p, t in _batches():
        single(p.requires_grad_(), t)
        want.append(float(single.state.value))
    mp.start_processes(_rank_main, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True,
                       start_method="spawn")
    for r in range(2):
        got = torch.load(tmp_path / f"rank{r}.pt").tolist()
        assert got == pytest.approx(want, rel=1e-12, abs=1e-15), r
    assert len(set(want)) == len(want)    # the mean moved at every step


# ------------------------------------------------------------------ MPDIoU image sizes

@pytest.mark.parametrize("model", ["retinanet", "fcos", "faster_rcnn", "atss", "paa", "detr"])
def test_mpdiou_gets_each_pairs_own_input_image_size(model):
    """Two images of different aspect ratios: after the transform they differ in size; every
    pair the loss sees carries the size of the image its target box belongs to."""
    from bbrctl.config import compose, to_container
    from bbrctl.detection.models.heads import bbr_losses
    from bbrctl.detection.models.build import build_model

    cfg = to_container(compose([f"model={model}", "loss=mpdiou", "backbone=resnet_tiny",
                                "backbone.widths=[8,16,32,64]", "backbone.fpn_channels=32",
                                "model.min_size=64", "model.max_size=160"]))
    torch.manual_seed(0)
    net = build_model(cfg, 3)
    (bbr,) = bbr_losses(net)
    seen = []
    inner = bbr.fn

    def spy(pred, target, **kw):
        seen.append((target.detach().clone(), kw["image_size"].detach().clone()))
        return inner(pred, target, **kw)

    bbr.fn = spy
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 128)]
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[20.0, 10.0, 100.0, 50.0]]), "labels": torch.tensor([2])}]
    net.train()
    net(images, targets)
    # The transform keeps min_size=64 for both: (w, h) = (64, 64) and (128, 64).
    want = {0: (64.0, 64.0), 1: (128.0, 64.0)}
    checked = 0
    for target, size in seen:
        assert size.shape == (target.shape[0], 2)
        for box, wh in zip(target, size):
            img = 0 if box[0] < 14 else 1
            assert tuple(wh.tolist()) == want[img], (model, box.tolist(), wh.tolist())
            checked += 1
    assert checked > 0 and {0, 1} <= {0 if b[0] < 14 else 1 for t, _ in seen for b in t}


@pytest.mark.parametrize("model,key", [("paa", "loss_in_assignment"), ("detr", "loss_in_matching")])
def test_mpdiou_as_an_assignment_or_matching_cost_is_refused_before_anything_runs(model, key, tmp_path):
    from helpers import run_cli

    out = run_cli(["config", f"model={model}", "loss=mpdiou", f"model.{key}=true"], tmp_path)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [
        f"bbrctl: error: loss=mpdiou needs each image's size and cannot be the {key.split('_')[-1]} cost; "
        f"set model.{key}=false"]


@pytest.mark.parametrize("loss", ["siou", "alpha_iou", "wiou_v1", "wiou_v2", "wiou_v3", "mpdiou", "inner_iou",
                                  "shape_iou", "focaler_iou"])
def test_every_successor_trains_a_detector_step(loss):
    """loss=<name> through the config: installed, finite, and its gradient reaches the head."""
    from bbrctl.config import compose, to_container
    from bbrctl.detection.models.heads import bbr_losses
    from bbrctl.detection.models.build import build_model

    cfg = to_container(compose(["model=retinanet", f"loss={loss}", "backbone=resnet_tiny",
                                "backbone.widths=[8,16,32,64]", "backbone.fpn_channels=32",
                                "model.min_size=64", "model.max_size=96"]))
    torch.manual_seed(0)
    net = build_model(cfg, 3).train()
    (bbr,) = bbr_losses(net)
    assert bbr.name == loss and bbr.weight == 2.5
    images = [torch.rand(3, 64, 80), torch.rand(3, 64, 64)]
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 50.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[20.0, 10.0, 60.0, 30.0]]), "labels": torch.tensor([2])}]
    losses = net(images, targets)
    reg = losses["bbox_regression"]
    assert torch.isfinite(reg) and float(reg) > 0
    reg.backward()
    g = net.head.regression_head.bbox_reg.weight.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
