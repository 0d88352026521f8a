"""CPU speed settings (bbrctl.detection.train.speed, backbone stems, image cache): what each keeps.

The no-op resize skip and the image cache must change no number; channels_last and the
NCHW GroupNorm only the float rounding; bf16 autocast must leave losses and detections in
float32. Speed itself is measured by benchmarks/main_job.py, never here.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch

from bbrctl.config import compose, to_container
from bbrctl.detection.train import speed
from bbrctl.errors import UserError

torch.set_num_threads(1)

MICRO = ["backbone=resnet_tiny", "backbone.widths=[8,16,32,64]", "backbone.fpn_channels=32", "data=shapes_tiny"]


@functools.lru_cache(maxsize=None)
def _cfg(*extra: str) -> dict:
    return to_container(compose([*MICRO, *extra]))


def cfg(*extra: str) -> dict:
    return copy.deepcopy(_cfg(*extra))


def batch(n=2, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = [torch.rand(3, size, size, generator=g) for _ in range(n)]
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0], [20.0, 10.0, 60.0, 30.0]]),
                "labels": torch.tensor([1, 2])} for _ in range(n)]
    return images, targets


def build(c, seed=0, install_loss=True):
    from bbrctl.detection.models.build import build_model

    torch.manual_seed(seed)
    return build_model(c, 3, install_loss=install_loss)


# --------------------------------------------------------------------------- no-op resize


@pytest.mark.parametrize("size", [64, 48])   # 64: scale 1, skipped; 48: resized to 64
def test_same_size_transform_equals_torchvision_and_keeps_the_rng_stream(size):
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    c = cfg("model.min_size=64", "model.max_size=64")
    model = build(c)
    assert type(model.transform) is speed.SameSizeTransform
    stock = copy.deepcopy(model.transform)
    stock.__class__ = GeneralizedRCNNTransform
    images, targets = batch(size=size)
    for training in (True, False):
        model.transform.train(training)
        stock.train(training)
        torch.manual_seed(5)
        ours = model.transform([im.clone() for im in images], copy.deepcopy(targets))
        after_ours = torch.rand(3)
        torch.manual_seed(5)
        ref = stock([im.clone() for im in images], copy.deepcopy(targets))
        after_ref = torch.rand(3)
        assert torch.equal(ours[0].tensors, ref[0].tensors) and ours[0].image_sizes == ref[0].image_sizes
        for a, b in zip(ours[1], ref[1]):
            assert torch.equal(a["boxes"], b["boxes"])
        assert torch.equal(after_ours, after_ref)  # the same global random stream


# --------------------------------------------------------------------------- memory format


def test_groupnorm_nchw_matches_groupnorm_on_channels_last_input():
    ref = torch.nn.GroupNorm(4, 16)
    ours = copy.deepcopy(ref)
    ours.__class__ = speed.GroupNormNCHW
    x = torch.randn(2, 16, 9, 7).to(memory_format=torch.channels_last).requires_grad_(True)
    x2 = x.detach().clone().requires_grad_(True)
    y, y2 = ours(x), ref(x2)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, y2)
    y.square().sum().backward()
    y2.square().sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad)
    assert list(ours.state_dict()) == list(ref.state_dict())


@pytest.mark.parametrize("model", ["retinanet", "fcos"])
def test_channels_last_changes_rounding_only(model):
    c = cfg(f"model={model}", "model.min_size=64", "model.max_size=64", "model.head_convs=1")
    a, b = build(c), build(c)
    keys = list(a.state_dict())
    speed.use_channels_last(b)
    assert list(b.state_dict()) == keys
    assert any(isinstance(m, speed.GroupNormNCHW) for m in b.modules())
    images, targets = batch()
    a.train(), b.train()
    la, lb = a(images, copy.deepcopy(targets)), b(images, copy.deepcopy(targets))
    for k in la:
        torch.testing.assert_close(la[k], lb[k], rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- bf16 autocast


def test_cpu_amp_setting(monkeypatch):
    assert speed.cpu_autocast_dtype("off") is None and speed.cpu_autocast_dtype(False) is None
    assert speed.cpu_autocast_dtype("bf16") is torch.bfloat16
    monkeypatch.setattr(speed, "has_bf16_matmul_hardware", lambda: True)
    assert speed.cpu_autocast_dtype("auto") is torch.bfloat16
    monkeypatch.setattr(speed, "has_bf16_matmul_hardware", lambda: False)
    assert speed.cpu_autocast_dtype("auto") is None
    with pytest.raises(UserError, match=r"schedule.cpu_amp='fp8' is not valid; valid: auto, bf16, off"):
        speed.cpu_autocast_dtype("fp8")


SMALL = {"faster_rcnn": ["model.box_head_dim=32", "model.box_batch_size_per_image=32",
                         "model.rpn_batch_size_per_image=32"],
         "detr": ["model.d_model=32", "model.nhead=2", "model.enc_layers=1", "model.dec_layers=1",
                  "model.dim_feedforward=32", "model.num_queries=5"]}


# Every detector the engine can train: the main job's CPU settings (bf16 on AMX) apply to each.
@pytest.mark.parametrize("model", ["retinanet", "fcos", "faster_rcnn", "atss", "paa", "detr"])
def test_bf16_autocast_keeps_losses_and_detections_in_float32(model):
    extra = SMALL.get(model, ["model.head_convs=1"])
    c = cfg(f"model={model}", "model.min_size=64", "model.max_size=64", *extra)
    m = speed.fp32_outputs(speed.use_channels_last(build(c, install_loss=False)))
    from bbrctl.detection.models.heads import install_bbr_loss

    install_bbr_loss(m, "focal_eiou", {"gamma": 0.5}, 2.5)
    images, targets = batch()
    m.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = m(images, copy.deepcopy(targets))
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    m.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(images)
    assert all(o["scores"].dtype == torch.float32 and o["boxes"].dtype == torch.float32 for o in out)


def test_train_config_rejects_bad_cpu_settings():
    from bbrctl.config.schema import SCHEDULE, check_group

    s = cfg()["schedule"]
    with pytest.raises(UserError, match=r"schedule.cpu_amp='yes' is not valid: must be one of auto, bf16, off"):
        check_group({**s, "cpu_amp": "yes"}, SCHEDULE, "schedule")
    with pytest.raises(UserError, match="schedule.channels_last='1' is not valid: must be true or false"):
        check_group({**s, "channels_last": "1"}, SCHEDULE, "schedule")
    check_group({**s, "cpu_amp": False}, SCHEDULE, "schedule")       # a bare YAML `off`


# --------------------------------------------------------------------------- stems


@pytest.mark.parametrize("stem", ["pool", "stride4", "conv3x2"])
def test_stems_give_layer1_a_stride_4_input(stem):
    from bbrctl.detection.models.backbones import build_resnet

    b = {**cfg()["backbone"], "stem": stem}
    net = build_resnet(b, "batch")
    x = torch.rand(1, 3, 64, 96)
    y = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    assert tuple(y.shape) == (1, 8, 16, 24)


def test_bad_stem_is_one_line_user_error():
    from bbrctl.detection.models.build import check_model_config

    c = cfg()
    c["backbone"]["stem"] = "patchify"
    with pytest.raises(UserError, match=r"backbone.stem='patchify' is not valid: must be one of pool, stride4, conv3x2"):
        check_model_config(c)


# --------------------------------------------------------------------------- image cache


def test_image_cache_returns_the_same_items_and_reads_each_file_once(tmp_path):
    from bbrctl.detection.data.datasets import build_dataset, ensure_dataset

    c = cfg()
    ensure_dataset(c["data"])
    plain = build_dataset({**c["data"], "cache_images": False}, "train")
    cached = build_dataset({**c["data"], "cache_images": True}, "train")
    for i in range(len(plain)):
        for flip in (False, True):
            a, b = plain[(i, flip)], cached[(i, flip)]
            assert torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"])
    arr = cached.load_image(0)
    assert not arr.flags.writeable and cached.load_image(0) is arr
    # A cached image is not read again: copies whose image directory is gone still load it
    # (the cache is shared by the copy), the uncached one does not.
    assert torch.equal(_moved(cached, tmp_path)[0][0], plain[0][0])
    with pytest.raises(UserError, match="does not exist"):
        _moved(plain, tmp_path).load_image(0)


def _moved(ds, tmp_path):
    out = copy.copy(ds)
    out.img_dir = tmp_path / "nowhere"
    return out
