"""Deformable backbones (bbrctl.detection.models.dcn, ``backbone.dcn_stages``)."""

from __future__ import annotations

import pytest
import torch

from bbrctl.config import compose, to_container

torch.set_num_threads(1)


def test_modulated_deform_conv_starts_as_half_its_plain_conv_and_learns_offsets():
    from bbrctl.detection.models.dcn import ModulatedDeformConv2d

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=4, bias=False)
    dcn = ModulatedDeformConv2d.from_conv(conv)
    x = torch.randn(2, 8, 9, 11)
    # Zero offsets, masks sigmoid(0) = 0.5 at initialisation (DCNv2's reference init).
    torch.testing.assert_close(dcn(x), 0.5 * conv(x), rtol=1e-5, atol=1e-5)
    assert torch.equal(dcn.weight, conv.weight) and dcn.conv_offset.out_channels == 27
    dcn(x).square().sum().backward()
    assert dcn.conv_offset.weight.grad.abs().sum() > 0 and dcn.weight.grad.abs().sum() > 0


def test_apply_dcn_converts_the_3x3_convs_of_the_flagged_stages_only():
    from bbrctl.detection.models.dcn import ModulatedDeformConv2d, apply_dcn
    from bbrctl.detection.models.backbones import build_resnet

    b = {"block": "bottleneck", "layers": [1, 2, 2, 1], "widths": [8, 16, 16, 16], "groups": 4, "width_per_group": 32}
    net = build_resnet(b, "group")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert apply_dcn(net, [False, True, True, True]) == 5
    assert not isinstance(net.layer1[0].conv2, ModulatedDeformConv2d)
    assert all(isinstance(blk.conv2, ModulatedDeformConv2d) for s in (net.layer2, net.layer3, net.layer4) for blk in s)
    assert net.layer2[0].conv2.stride == (2, 2) and net.layer2[0].conv2.groups == 4
    after = net.state_dict()
    for k, v in before.items():          # every plain weight kept under its name
        assert torch.equal(after[k], v), k
    assert {k for k in after if k not in before} == {k for k in after if ".conv_offset." in k}
    out = net(torch.randn(1, 3, 64, 64))
    assert torch.isfinite(out).all()
    assert apply_dcn(net, None) == 0 and apply_dcn(net, [False] * 4) == 0


def test_resnext101_64x4d_dcn_is_the_published_trunk_plus_offset_convs():
    import torchvision

    from bbrctl.detection.models.dcn import ModulatedDeformConv2d
    from bbrctl.detection.models.backbones import build_backbone

    cfg = to_container(compose(["model=atss", "backbone=resnext101_64x4d_dcn"]))
    # sfzhang15/ATSS atss_dcnv2_X_101_64x4d_FPN_2x.yaml: STAGE_WITH_DCN (False, False, True, True)
    assert cfg["backbone"]["dcn_stages"] == [False, False, True, True]
    body = build_backbone(cfg).body
    ref = torchvision.models.resnext101_64x4d(weights=None)
    n_ref = sum(p.numel() for n, p in ref.named_parameters() if not n.startswith("fc."))
    dcn = [m for m in body.modules() if isinstance(m, ModulatedDeformConv2d)]
    assert len(dcn) == 23 + 3                            # every block of c4-c5, none in c2-c3
    assert not any(isinstance(m, ModulatedDeformConv2d) for m in (*body.layer1.modules(), *body.layer2.modules()))
    offsets = sum(p.numel() for m in dcn for p in m.conv_offset.parameters())
    assert offsets == sum(m.in_channels * 27 * 9 + 27 for m in dcn)
    n_body = sum(p.numel() for p in body.parameters())
    assert n_body - offsets == n_ref                     # ResNeXt-101 64x4d itself, 81.4M parameters
    assert {m.groups for m in dcn} == {64}


@pytest.mark.parametrize("model", ["retinanet", "atss", "detr"])
def test_dcn_backbone_trains_in_a_detector(model):
    from bbrctl.detection.models.build import build_model

    over = [f"model={model}", "backbone=resnet_tiny", "backbone.widths=[8,16,32,64]", "backbone.fpn_channels=32",
            "model.min_size=64", "model.max_size=64", "+backbone.dcn_stages=[false,false,true,true]", "model.norm=group"]
    if model == "detr":
        over += ["model.d_model=32", "model.enc_layers=1", "model.dec_layers=1", "model.dim_feedforward=32",
                 "model.num_queries=4"]
    else:
        over += ["model.head_convs=1"]
    m = build_model(to_container(compose(over)), 3)
    m.train()
    t = {"boxes": torch.tensor([[4.0, 6.0, 40.0, 50.0]]), "labels": torch.tensor([1])}
    out = m([torch.rand(3, 64, 64), torch.rand(3, 64, 64)], [t, t])
    sum(out.values()).backward()
    offs = [p for n, p in m.named_parameters() if ".conv_offset." in n]
    assert offs and all(p.grad is not None for p in offs)


def test_head_dcn_is_the_last_conv_of_each_tower_and_the_dcn_rows_set_it():
    """ATSS/PAA ``USE_DCN_IN_TOWER``: the last of the NUM_CONVS tower convs is a DFConv2d
    (modulated, bias kept), the others plain; the offsets start at zero."""
    from bbrctl.detection.models.dcn import ModulatedDeformConv2d
    from bbrctl.detection.models.build import build_model

    for det in ("atss_x101_dcn", "paa_x101_dcn"):
        assert to_container(compose([f"+detector={det}"]))["model"]["head_dcn"] is True
    over = ["model=paa", "backbone=resnet_tiny", "backbone.widths=[8,16,32,64]", "backbone.fpn_channels=32",
            "model.min_size=64", "model.max_size=64", "model.head_convs=3", "model.norm=group"]
    plain = build_model(to_container(compose(over)), 3)
    assert not any(isinstance(m, ModulatedDeformConv2d) for m in plain.head.modules())
    torch.manual_seed(0)
    m = build_model(to_container(compose([*over, "+model.head_dcn=true"])), 3)
    for tower in (m.head.cls_tower, m.head.reg_tower):
        convs = [mod for mod in tower if isinstance(mod, (torch.nn.Conv2d, ModulatedDeformConv2d))]
        assert len(convs) == 3 and isinstance(convs[-1], ModulatedDeformConv2d)
        assert not any(isinstance(c, ModulatedDeformConv2d) for c in convs[:-1])
        assert convs[-1].bias is not None and float(convs[-1].conv_offset.weight.abs().sum()) == 0.0
    m.train()
    t = {"boxes": torch.tensor([[4.0, 6.0, 40.0, 50.0]]), "labels": torch.tensor([1])}
    sum(m([torch.rand(3, 64, 64), torch.rand(3, 64, 64)], [t, t]).values()).backward()
    assert m.head.reg_tower[6].conv_offset.weight.grad is not None
