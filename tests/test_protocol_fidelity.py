"""Protocol fidelity (docs/protocol-fidelity.md): the presets and keys that make a run compare
what the paper's sources compared. Fixed inputs against plain re-implementations of the
sources' formulas; the sources are named in each test."""

from __future__ import annotations

import math

import pytest
import torch

from bbrctl.config import compose, to_container
from bbrctl.errors import UserError

torch.set_num_threads(1)

MICRO = ["backbone=resnet_tiny", "backbone.widths=[8,16,32,64]", "backbone.fpn_channels=32",
         "model.min_size=64", "model.max_size=64", "data=shapes_tiny", "model.head_convs=1"]


def encode_plain(gt, anchor, w):
    """Girshick et al.'s deltas, each divided by its std 1/w (maskrcnn-benchmark BoxCoder)."""
    aw, ah = anchor[2] - anchor[0], anchor[3] - anchor[1]
    ax, ay = anchor[0] + aw / 2, anchor[1] + ah / 2
    gw, gh = gt[2] - gt[0], gt[3] - gt[1]
    gx, gy = gt[0] + gw / 2, gt[1] + gh / 2
    return [w[0] * (gx - ax) / aw, w[1] * (gy - ay) / ah, w[2] * math.log(gw / aw), w[3] * math.log(gh / ah)]


def test_retinanet_box_coder_weights_key_scales_targets_and_decoding():
    from bbrctl.detection.models.build import build_model

    anchor, gt = [0.0, 0.0, 32.0, 32.0], [4.0, 2.0, 40.0, 30.0]
    for weights, override in (((1.0, 1.0, 1.0, 1.0), []), ((10.0, 10.0, 5.0, 5.0), ["+model.box_coder_weights=[10,10,5,5]"])):
        cfg = to_container(compose(["model=retinanet", *MICRO, *override]))
        m = build_model(cfg, 3)
        for coder in (m.box_coder, m.head.regression_head.box_coder):
            assert tuple(coder.weights) == weights
            d = coder.encode_single(torch.tensor([gt]), torch.tensor([anchor]))[0]
            assert d.tolist() == pytest.approx(encode_plain(gt, anchor, weights), rel=1e-5)
            back = coder.decode_single(d[None], torch.tensor([anchor]))[0]
            assert back.tolist() == pytest.approx(gt, rel=1e-5)
    with pytest.raises(UserError, match=r"model.box_coder_weights=\[10, 10, 5\] is not valid: must be .*a list of 4"):
        compose(["model=retinanet", "+model.box_coder_weights=[10,10,5]"])


def test_the_paper_presets_regress_the_atss_codes_deltas_and_libra_retinanet_beta():
    from bbrctl import sweep as S

    for preset, n in (("table2", 3), ("fig9b", 14)):
        plan = S.expand([f"+experiment={preset}"])
        assert len(plan.jobs) == n
        assert {tuple(j.config["model"]["box_coder_weights"]) for j in plan.jobs} == {(10.0, 10.0, 5.0, 5.0)}
    bal = next(j.config for j in S.expand(["+experiment=table2"]).jobs if j.config["loss"]["name"] == "balanced_l1")
    # mmdetection configs/libra_rcnn/libra_retinanet_r50_fpn_1x_coco.py: alpha 0.5, gamma 1.5, beta 0.11
    assert bal["loss"]["params"] == {"alpha": 0.5, "gamma": 1.5, "beta": 0.11}


def test_focal_l1_gradient_peak_moves_with_the_coder_weights():
    """FocalL1's gradient |dL/dx| peaks at x* = 1 / (e beta) (Eq. 8-9): with (10, 10, 5, 5) deltas
    an error of 0.1 anchor widths in x is x = 1, past the peak; with (1, 1, 1, 1) it is 0.1."""
    from bbrctl.losses import focal_l1_loss

    beta = 0.8
    xs = torch.linspace(0.01, 1.0, 1000, dtype=torch.float64, requires_grad=True)
    pred = torch.stack([xs, torch.zeros_like(xs), torch.zeros_like(xs), torch.zeros_like(xs)], 1)
    focal_l1_loss(pred, torch.zeros_like(pred), reduction="sum", beta=beta).backward()
    peak = float(xs.detach()[xs.grad.abs().argmax()])
    assert peak == pytest.approx(1 / (math.e * beta), abs=2e-3)
    err = 0.1   # anchor widths
    assert 1.0 * err < peak < 10.0 * err


def test_table3_paper_is_one_preset_with_the_sources_protocol(monkeypatch, tmp_path):
    monkeypatch.delenv("BBRCTL_WEIGHTS_DIR", raising=False)
    with pytest.raises(UserError, match="BBRCTL_WEIGHTS_DIR") as e:     # weights are required: no half-applied preset
        compose(["+experiment=table3_paper", "+detector=atss_r50"], validate=False)
    assert "\n" not in str(e.value)
    monkeypatch.setenv("BBRCTL_WEIGHTS_DIR", str(tmp_path))

    def cfg(det):
        return to_container(compose(["+experiment=table3_paper", f"+detector={det}", "loss=focal_eiou"], validate=False))

    for det in ("faster_rcnn_r50", "retinanet_x101", "atss_r50", "paa_r50", "paper_atss_x101_dcn", "paper_paa_x101_dcn",
                "detr_r50"):
        c = cfg(det)
        m = c["model"]
        assert c["data"]["name"] == "coco" and m["norm"] == "frozen_bn" and m["trainable_backbone_layers"] == 3
        assert m["weights_backbone"] == f"{tmp_path}/{c['backbone']['name']}.pth"
        dcn = det.startswith("paper_")
        assert c["schedule"]["name"] == ("paper_2x" if dcn else "detr_paper_90k" if det == "detr_r50" else "paper_90k")
        # sfzhang15/ATSS atss_dcnv2_X_101_64x4d_FPN_2x.yaml: MIN_SIZE_RANGE_TRAIN (640, 800), 180k, steps 120k/160k
        assert m.get("min_size_train") == ([640, 800] if dcn else None) and m["min_size"] == 800
        assert bool(m.get("head_dcn")) is dcn
        if dcn:
            assert c["schedule"]["max_iter"] == 180000 and c["schedule"]["steps"] == [120000, 160000]
            assert c["backbone"]["dcn_stages"] == [False, False, True, True]


def test_table3_paper_sweep_expands_with_data_and_weights_and_refuses_without(monkeypatch, tmp_path):
    from bbrctl import sweep as S

    coco = tmp_path / "coco"
    for d in ("train2017", "val2017", "annotations"):
        (coco / d).mkdir(parents=True)
    for split in ("train", "val"):
        (coco / "annotations" / f"instances_{split}2017.json").write_text('{"images": [], "annotations": [], '
                                                                          '"categories": [{"id": 1, "name": "a"}]}')
    weights = tmp_path / "weights"
    weights.mkdir()
    for b in ("resnet50", "resnext101_32x4d", "resnext101_64x4d_dcn"):
        (weights / f"{b}.pth").write_bytes(b"")
    monkeypatch.setenv("COCO_ROOT", str(coco))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BBRCTL_WEIGHTS_DIR", raising=False)
    with pytest.raises(UserError, match="BBRCTL_WEIGHTS_DIR"):
        S.expand(["+experiment=table3_paper"])
    assert not (tmp_path / "runs").exists()                 # nothing created
    monkeypatch.setenv("BBRCTL_WEIGHTS_DIR", str(weights))
    plan = S.expand(["+experiment=table3_paper"])
    assert len(plan.jobs) == 33 and plan.duplicates == 11   # 11 pairs x (baseline, Focal-EIoU at 2.5 and stock)


def test_multi_scale_training_draws_the_shorter_side_and_tests_at_min_size():
    from bbrctl.detection.models.backbones import train_min_sizes
    from bbrctl.detection.models.build import build_model

    assert train_min_sizes({"min_size": 800, "min_size_train": [640, 800]}) == tuple(range(640, 801))
    assert train_min_sizes({"min_size": 800}) == 800
    over = ["model=atss", *MICRO, "model.min_size=64", "model.max_size=128", "+model.min_size_train=[48,64]"]
    m = build_model(to_container(compose(over)), 3)
    t = m.transform
    t.train()
    torch.manual_seed(0)
    sizes = {min(t([torch.rand(3, 100, 120)])[0].image_sizes[0]) for _ in range(40)}
    assert len(sizes) > 5 and min(sizes) >= 48 and max(sizes) <= 64
    t.eval()
    assert min(t([torch.rand(3, 100, 120)])[0].image_sizes[0]) == 64
    with pytest.raises(UserError, match=r"model.min_size_train=\[48, 60\] must end at model.min_size=64"):
        compose(["model=atss", *MICRO, "model.min_size=64", "+model.min_size_train=[48,60]"])


def test_dense_inference_thresholds_the_class_probability_and_ranks_by_sqrt_cls_times_quality():
    """sfzhang15/ATSS and kkhoot/PAA inference.py: candidate_inds = sigmoid(cls) > thresh, then
    the top-n by sqrt(cls x quality). Fixed head outputs: one anchor per level is the same box."""
    from bbrctl.detection.models.build import build_model

    cfg = to_container(compose(["model=paa", *MICRO, "model.topk_candidates=1", "model.score_voting=false"]))
    m = build_model(cfg, 2).eval()
    n = 16                                    # anchors of one 4x4 level
    logit = lambda p: math.log(p / (1 - p))
    cls = torch.full((1, n, 2), -20.0)
    qual = torch.full((1, n), -20.0)
    cls[0, 0, 0], qual[0, 0] = logit(0.9), logit(0.01)    # highest p_cls, sqrt(.9 x .01) = 0.095
    cls[0, 5, 0], qual[0, 5] = logit(0.5), logit(0.9)     # sqrt(.5 x .9) = 0.67: ranked first
    cls[0, 9, 1], qual[0, 9] = logit(0.06), logit(0.01)   # p above 0.05, final score 0.024 < 0.05: kept
    anchors = torch.tensor([[x * 16.0, y * 16.0, x * 16.0 + 16, y * 16.0 + 16] for y in range(4) for x in range(4)])
    head = {"cls_logits": cls, "bbox_regression": torch.zeros(1, n, 4), "quality": qual}
    m.topk_candidates = 1
    det = m.postprocess(head, anchors, [n], [(64, 64)])[0]
    assert det["scores"].tolist() == pytest.approx([math.sqrt(0.5 * 0.9)], rel=1e-4)
    m.topk_candidates = 3
    det = m.postprocess(head, anchors, [n], [(64, 64)])[0]
    assert sorted(det["scores"].tolist()) == pytest.approx(sorted([math.sqrt(0.06 * 0.01), math.sqrt(0.9 * 0.01),
                                                                   math.sqrt(0.5 * 0.9)]), rel=1e-4)
