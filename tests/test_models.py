"""Detector builders and loss hooks (bbrctl.detection.models.build / heads).

The key guarantee: with each model's stock loss configured (``baseline`` or its explicit
equivalent), the hooked model computes exactly torchvision's own loss values, so a
torchvision upgrade that changes a head fails here instead of silently diverging.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch

from bbrctl.config import compose, to_container
from bbrctl.errors import UserError

torch.set_num_threads(1)  # tiny tensors: threads only add contention on a shared CPU

MODELS = ("retinanet", "fcos", "faster_rcnn", "mask_rcnn")
# Each detector's stock box loss written as a bbrctl loss (torchvision's settings).
EXPLICIT_STOCK = {
    "retinanet": ("l1", {}),
    "fcos": ("giou", {}),
    "faster_rcnn": ("smooth_l1", {"beta": 1 / 9}),
    "mask_rcnn": ("smooth_l1", {"beta": 1 / 9}),
}
MICRO = ["backbone=resnet_tiny", "backbone.widths=[8,16,32,64]", "backbone.fpn_channels=32",
         "model.min_size=64", "model.max_size=64", "data=shapes_tiny"]
RCNN_MICRO = ["model.box_head_dim=32", "model.box_batch_size_per_image=32", "model.rpn_batch_size_per_image=32",
              "model.rpn_post_nms_top_n_train=64", "model.rpn_pre_nms_top_n_train=128"]
NUM_CLASSES = 3


@functools.lru_cache(maxsize=None)
def _base_cfg(model: str) -> dict:
    extra = RCNN_MICRO + (["model.mask_head_channels=8"] if model == "mask_rcnn" else []) if "rcnn" in model else \
        ["model.head_convs=1"]
    return to_container(compose([f"model={model}", *MICRO, *extra]))


def micro_cfg(model: str, loss: str = "baseline", params: dict | None = None, weight: float = 1.0,
              loss_in_rpn: bool = False) -> dict:
    cfg = copy.deepcopy(_base_cfg(model))
    cfg["loss"] = {"name": loss, "params": dict(params or {})}
    cfg["weight"] = weight
    if "rcnn" in model:
        cfg["model"]["loss_in_rpn"] = loss_in_rpn
    return cfg


@functools.lru_cache(maxsize=None)
def _stock_model(model: str):
    from bbrctl.detection.models.build import build_model

    torch.manual_seed(0)
    return build_model(micro_cfg(model), NUM_CLASSES, install_loss=False)


def hooked(model: str, loss: str = "baseline", params=None, weight=1.0, loss_in_rpn=False):
    from bbrctl.detection.models.heads import install_bbr_loss

    m = copy.deepcopy(_stock_model(model))
    return install_bbr_loss(m, loss, params or {}, weight, loss_in_rpn=loss_in_rpn)


def batch(with_masks: bool, size: int = 64):
    g = torch.Generator().manual_seed(3)
    images = [torch.rand(3, size, size, generator=g) for _ in range(2)]
    boxes = [torch.tensor([[4.0, 6.0, 30.0, 40.0], [20.0, 24.0, 60.0, 50.0]]), torch.tensor([[10.0, 10.0, 50.0, 34.0]])]
    targets = []
    for b in boxes:
        t = {"boxes": b, "labels": torch.arange(1, len(b) + 1)}
        if with_masks:
            m = torch.zeros(len(b), size, size, dtype=torch.uint8)
            for k, (x0, y0, x1, y1) in enumerate(b.int().tolist()):
                m[k, y0:y1, x0:x1] = 1
            t["masks"] = m
        targets.append(t)
    return images, targets


def losses_of(model, seed: int = 1, backward: bool = False):
    model.train()
    images, targets = batch(with_masks=hasattr(model, "roi_heads") and model.roi_heads.has_mask())
    torch.manual_seed(seed)  # R-CNN samplers draw from the global RNG
    out = model(images, targets)
    if backward:
        model.zero_grad()
        sum(out.values()).backward()
    return out


# --------------------------------------------------------------------------- stock equivalence


@pytest.mark.parametrize("model", MODELS)
def test_stock_loss_reproduces_torchvision(model):
    stock = copy.deepcopy(_stock_model(model))
    ref = losses_of(stock, backward=True)
    ref_grads = {n: p.grad.clone() for n, p in stock.named_parameters() if p.grad is not None}
    name, params = EXPLICIT_STOCK[model]
    variants = {"baseline": hooked(model, "baseline"), name: hooked(model, name, params)}
    if "rcnn" in model:
        variants[f"{name}+rpn"] = hooked(model, name, params, loss_in_rpn=True)
    for label, m in variants.items():
        got = losses_of(m, backward=True)
        assert got.keys() == ref.keys(), label
        for k in ref:
            torch.testing.assert_close(got[k], ref[k], rtol=1e-6, atol=1e-7, msg=f"{model} {label} {k}")
        grads = {n: p.grad for n, p in m.named_parameters() if p.grad is not None}
        assert grads.keys() == ref_grads.keys()
        for n in ref_grads:
            torch.testing.assert_close(grads[n], ref_grads[n], rtol=1e-4, atol=1e-6, msg=f"{model} {label} grad {n}")


@pytest.mark.parametrize("model", MODELS)
def test_hooks_change_only_the_regression_term(model):
    ref = losses_of(hooked(model))
    got = losses_of(hooked(model, "eiou", weight=2.5))
    reg = {"retinanet": "bbox_regression", "fcos": "bbox_regression"}.get(model, "loss_box_reg")
    for k in ref:
        if k == reg:
            assert not torch.allclose(got[k], ref[k]), "EIoU must replace the stock regression term"
        else:
            torch.testing.assert_close(got[k], ref[k], msg=k)


@pytest.mark.parametrize("model", MODELS)
def test_weight_multiplies_the_regression_term(model):
    reg = {"retinanet": "bbox_regression", "fcos": "bbox_regression"}.get(model, "loss_box_reg")
    for loss in ("baseline", "focal_eiou"):
        one = losses_of(hooked(model, loss, weight=1.0))[reg]
        two = losses_of(hooked(model, loss, weight=2.5))[reg]
        torch.testing.assert_close(two, 2.5 * one)


# --------------------------------------------------------------------------- every model x every loss


def _all_losses():
    from bbrctl.losses import LOSSES

    return ("baseline", *LOSSES)


@pytest.mark.parametrize("loss", _all_losses())
@pytest.mark.parametrize("model", MODELS)
def test_every_model_trains_with_every_loss(model, loss):
    m = hooked(model, loss, loss_in_rpn="rcnn" in model)
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    for step in range(2):
        out = losses_of(m, seed=step, backward=True)
        for k, v in out.items():
            assert torch.isfinite(v), f"{model}/{loss}: {k} = {v}"
        opt.step()
    reg = {"retinanet": "bbox_regression", "fcos": "bbox_regression"}.get(model, "loss_box_reg")
    assert out[reg] > 0
    moved = [n for n, p in m.named_parameters() if not torch.equal(p, before[n])]
    assert any("bbox_reg" in n or "bbox_pred" in n or "regression" in n for n in moved)


# --------------------------------------------------------------------------- normalisers, spaces


def _retina_head(loss, params=None, weight=1.0):
    from bbrctl.detection.models.heads import BoxRegressionLoss, RetinaNetRegressionHeadBBR
    from torchvision.models.detection.retinanet import RetinaNetRegressionHead

    head = RetinaNetRegressionHead(8, 1)
    head.__class__ = RetinaNetRegressionHeadBBR
    head.bbr = None if loss == "baseline" else BoxRegressionLoss(loss, params, weight)
    head.stock_weight = weight
    return head


def _retina_problem():
    """Two images sharing 6 anchors; image 0 has 1 foreground anchor, image 1 three."""
    anchors = torch.tensor([[0, 0, 10, 10], [5, 5, 25, 15], [20, 20, 40, 60],
                            [0, 30, 30, 50], [40, 0, 60, 30], [10, 10, 30, 30]], dtype=torch.float32)
    targets = [{"boxes": torch.tensor([[2.0, 1.0, 12.0, 13.0]])},
               {"boxes": torch.tensor([[22.0, 18.0, 41.0, 63.0], [38.0, 2.0, 64.0, 28.0]])}]
    matched = [torch.tensor([0, -1, -2, -1, -1, -1]), torch.tensor([-1, -1, 0, -2, 1, 0])]
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(2, 6, 4, generator=g) * 0.2
    return anchors, targets, matched, pred


def _fg(anchors, targets, matched, pred):
    for b in range(2):
        idx = torch.where(matched[b] >= 0)[0]
        yield b, pred[b, idx], anchors[idx], targets[b]["boxes"][matched[b][idx]]


@pytest.mark.parametrize("loss", ["l1", "smooth_l1", "focal_l1", "iou", "giou", "diou", "ciou", "eiou",
                                  "focal_eiou_v1"])
def test_retinanet_keeps_the_per_image_normaliser(loss):
    from bbrctl.losses import get_loss

    anchors, targets, matched, pred = _retina_problem()
    head = _retina_head(loss, weight=2.5)
    got = head.compute_loss(targets, {"bbox_regression": pred}, [anchors, anchors], matched)
    fn, coder = get_loss(loss), head.box_coder
    expected = 0.0
    for _, p, a, gt in _fg(anchors, targets, matched, pred):
        if fn.space == "boxes":
            per = fn(coder.decode_single(p, a), gt, reduction="sum")
        else:
            per = fn(p, coder.encode_single(gt, a), reduction="sum")
        expected = expected + per / len(p)
    torch.testing.assert_close(got, 2.5 * expected / 2)


def test_retinanet_focal_eiou_uses_eq11_over_the_batch():
    from bbrctl.losses import focal_eiou_loss

    anchors, targets, matched, pred = _retina_problem()
    head = _retina_head("focal_eiou", {"gamma": 0.5}, weight=2.5)
    got = head.compute_loss(targets, {"bbox_regression": pred}, [anchors, anchors], matched)
    boxes = [(head.box_coder.decode_single(p, a), gt) for _, p, a, gt in _fg(anchors, targets, matched, pred)]
    all_pred, all_gt = torch.cat([b[0] for b in boxes]), torch.cat([b[1] for b in boxes])
    expected = focal_eiou_loss(all_pred, all_gt, gamma=0.5, reduction="weighted")
    torch.testing.assert_close(got, 2.5 * expected)
    # Eq. 11 over the batch is not the mean of per-image Eq. 11 values.
    per_image = torch.stack([focal_eiou_loss(p, g, gamma=0.5, reduction="weighted") for p, g in boxes]).mean()
    assert not torch.allclose(expected, per_image)


@pytest.mark.parametrize("loss", ["l1", "focal_l1", "iou", "giou", "diou", "ciou", "eiou", "focal_eiou",
                                  "focal_eiou_v1", "focal_eiou_star", "balanced_l1", "smooth_l1"])
def test_perfect_regression_costs_nothing(loss):
    anchors, targets, matched, pred = _retina_problem()
    head = _retina_head(loss)
    exact = pred.clone()
    for b in range(2):
        idx = torch.where(matched[b] >= 0)[0]
        exact[b, idx] = head.box_coder.encode_single(targets[b]["boxes"][matched[b][idx]], anchors[idx])
    got = head.compute_loss(targets, {"bbox_regression": exact}, [anchors, anchors], matched)
    assert abs(float(got)) < 1e-5
    worse = head.compute_loss(targets, {"bbox_regression": exact + 0.3}, [anchors, anchors], matched)
    assert float(worse) > 1e-3


def test_no_foreground_gives_a_connected_zero():
    anchors, targets, _, pred = _retina_problem()
    pred.requires_grad_(True)
    head = _retina_head("focal_eiou")
    none = [torch.full((6,), -1), torch.full((6,), -1)]
    got = head.compute_loss(targets, {"bbox_regression": pred}, [anchors, anchors], none)
    assert float(got.detach()) == 0.0
    got.backward()
    assert pred.grad is not None and torch.count_nonzero(pred.grad) == 0


def test_rcnn_box_loss_decodes_the_gt_class_deltas_with_the_head_weights():
    from bbrctl.detection.models.heads import BoxRegressionLoss
    from bbrctl.losses import eiou_loss

    m = hooked("faster_rcnn", "eiou", weight=2.5)
    rh = m.roi_heads
    coder = rh.box_coder
    assert tuple(coder.weights) == (10.0, 10.0, 5.0, 5.0)
    proposals = [torch.tensor([[0.0, 0.0, 20.0, 20.0], [10.0, 10.0, 40.0, 30.0], [5.0, 5.0, 15.0, 45.0]])]
    gt = torch.tensor([[2.0, 1.0, 22.0, 18.0], [8.0, 12.0, 44.0, 33.0]])
    matched = [torch.tensor([0, 1, 0])]
    labels = [torch.tensor([2, 1, 0])]  # the third RoI is background
    targets = [{"boxes": gt, "labels": torch.tensor([2, 1])}]
    reg_targets = [coder.encode_single(gt[matched[0]], proposals[0])]
    num_cls = NUM_CLASSES + 1
    g = torch.Generator().manual_seed(0)
    deltas = torch.randn(3, num_cls, 4, generator=g) * 5  # garbage in the other classes' columns
    pred_pos = reg_targets[0][:2] + torch.tensor([[0.1, -0.2, 0.05, 0.1], [0.0, 0.3, -0.1, 0.0]])
    deltas[0, 2], deltas[1, 1] = pred_pos[0], pred_pos[1]
    got = rh._box_loss(deltas.reshape(3, -1), proposals, matched, labels, reg_targets, targets)
    decoded = coder.decode_single(pred_pos, proposals[0][:2])
    expected = 2.5 * eiou_loss(decoded, gt[matched[0][:2]], reduction="sum") / 3  # / sampled RoIs
    torch.testing.assert_close(got, expected)
    rh.bbr = BoxRegressionLoss("focal_eiou", {"gamma": 0.5}, 1.0)
    got = rh._box_loss(deltas.reshape(3, -1), proposals, matched, labels, reg_targets, targets)
    from bbrctl.losses import focal_eiou_loss

    torch.testing.assert_close(got, focal_eiou_loss(decoded, gt[matched[0][:2]], gamma=0.5, reduction="weighted"))


def test_fcos_perfect_points_cost_nothing():
    m = hooked("fcos", "eiou")
    head = m.head
    anchors = [torch.tensor([[0.0, 0.0, 8.0, 8.0], [8.0, 8.0, 16.0, 16.0], [16.0, 0.0, 24.0, 8.0]])] * 2
    targets = [{"boxes": torch.tensor([[1.0, 2.0, 14.0, 15.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[10.0, 0.0, 30.0, 9.0]]), "labels": torch.tensor([2])}]
    matched = [torch.tensor([0, 0, -1]), torch.tensor([-1, -1, 0])]
    reg = torch.zeros(2, 3, 4)
    for b in range(2):
        for a in range(3):
            if matched[b][a] >= 0:
                reg[b, a] = head.box_coder.encode(anchors[b][a], targets[b]["boxes"][matched[b][a]])
    outs = {"cls_logits": torch.zeros(2, 3, NUM_CLASSES + 1), "bbox_regression": reg, "bbox_ctrness": torch.zeros(2, 3, 1)}
    assert float(head.compute_loss(targets, outs, anchors, matched)["bbox_regression"]) < 1e-5
    outs["bbox_regression"] = reg * 1.3
    assert float(head.compute_loss(targets, outs, anchors, matched)["bbox_regression"]) > 1e-3


# --------------------------------------------------------------------------- builders


def test_resnext101_32x4d_is_the_published_architecture():
    from bbrctl.detection.models.backbones import build_resnet

    cfg = to_container(compose(["backbone=resnext101_32x4d"]))["backbone"]
    net = build_resnet(cfg, "batch")  # BatchNorm: its affine weights are parameters
    # ResNeXt-101 32x4d has 44,177,704 parameters with its 1000-way classifier (2048*1000
    # + 1000), which detection drops.
    assert sum(p.numel() for p in net.parameters()) == 44_177_704 - 2_049_000
    assert net.layer3[0].conv2.groups == 32 and net.layer1[0].conv2.out_channels == 128


def test_resnet50_matches_torchvision_layout():
    import torchvision

    from bbrctl.detection.models.backbones import build_resnet

    cfg = to_container(compose(["backbone=resnet50"]))["backbone"]
    ours = build_resnet(cfg, "batch").state_dict()
    ref = {k: v for k, v in torchvision.models.resnet50(weights=None).state_dict().items() if not k.startswith("fc.")}
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in ref.items()}


def test_anchor_sizes_follow_the_data_hint():
    from bbrctl.detection.models.backbones import anchor_sizes

    assert anchor_sizes(to_container(compose(["data=coco"]))["model"]) == [32, 64, 128, 256, 512]
    assert anchor_sizes(to_container(compose(["model=faster_rcnn", "data=coco", "+data.anchor_base=12"]))["model"]) \
        == [12, 24, 48, 96, 192]
    assert anchor_sizes(to_container(compose(["model=fcos", "data=coco", "+data.anchor_base=12"]))["model"]) \
        == [8, 16, 32, 64, 128]  # FCOS: the strides, whatever the data
    assert anchor_sizes(to_container(compose(["model.anchor_sizes=[8,16,32]"]))["model"]) == [8, 16, 32]  # P3-P5


def test_normalisation_choice():
    from bbrctl.detection.models.build import build_model

    # From scratch, the standard backbones train GroupNorm; the CPU one BatchNorm.
    assert to_container(compose(["backbone=resnet50"]))["model"]["norm"] == "group"
    assert to_container(compose(["backbone=resnet_tiny"]))["model"]["norm"] == "batch"
    for norm, want in (("group", "GroupNorm"), ("batch", "BatchNorm2d"), ("frozen_bn", "FrozenBatchNorm2d")):
        cfg = micro_cfg("retinanet")
        cfg["model"]["norm"] = norm
        body = {type(x).__name__ for x in build_model(cfg, NUM_CLASSES).backbone.body.modules()}
        assert want in body and not body & ({"GroupNorm", "BatchNorm2d", "FrozenBatchNorm2d"} - {want}), norm


def test_local_imagenet_checkpoint_is_loaded(tmp_path):
    import torchvision

    from bbrctl.detection.models.build import build_model

    src = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(src.state_dict(), path)
    cfg = micro_cfg("retinanet")
    cfg["backbone"] = to_container(compose(["backbone=resnet18"]))["backbone"]
    cfg["model"].update(weights_backbone=str(path), norm="frozen_bn", trainable_backbone_layers=3)
    body = build_model(cfg, NUM_CLASSES).backbone.body
    torch.testing.assert_close(body.layer2[0].conv1.weight, src.layer2[0].conv1.weight)
    torch.testing.assert_close(body.bn1.running_mean, src.bn1.running_mean)
    assert not body.conv1.weight.requires_grad and body.layer4[0].conv1.weight.requires_grad

    cfg["model"]["weights_backbone"] = str(tmp_path / "missing.pth")
    with pytest.raises(UserError, match="no such file"):
        build_model(cfg, NUM_CLASSES)
    cfg["model"]["weights_backbone"] = str(path)
    cfg["backbone"] = micro_cfg("retinanet")["backbone"]  # other widths: must not load
    with pytest.raises(UserError, match="does not fit"):
        build_model(cfg, NUM_CLASSES)


@pytest.mark.parametrize("key, value, message", [
    ("model.name", "yolo", "model.name='yolo' is not a detector; valid: retinanet"),
    ("model.norm", "layer", "model.norm='layer' is not valid: must be one of group, batch, frozen_bn"),
    ("model.anchor_sizes", [32, 64], "one positive size per pyramid level"),
    ("model.anchor_base", 0, "model.anchor_base=0 is not valid: must be null or a number > 0"),
    ("model.returned_layers", [3, 2], "increasing integers"),
    ("model.extra_levels", "p9", "must be one of p6p7, pool, none"),
    ("backbone.widths", [8, 16], "a list of 4 integers"),
    ("backbone.block", "dense", "must be one of basic, bottleneck"),
    ("model.weights_backbone", "/x.pth", "frozen_bn or batch"),
])
def test_bad_model_config_is_one_line_user_error(key, value, message):
    from bbrctl.detection.models.build import check_model_config

    cfg = micro_cfg("retinanet")
    cfg["model"]["norm"] = "group"
    node, leaf = key.split(".")
    cfg[node][leaf] = value
    with pytest.raises(UserError) as e:
        check_model_config(cfg)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_models_module_imports_no_torch():
    import subprocess
    import sys

    code = ("import sys; import bbrctl.detection.models.build as m, bbrctl.train; "
            "m.check_model_config; assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
