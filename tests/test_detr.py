"""DETR (bbrctl.detection.models.detr): matcher, set loss, positional encoding, the loss swap and the
schedule it trains with, checked against plain re-implementations written here (brute-force
matching over permutations, loops over layers and images)."""

from __future__ import annotations

import copy
import functools
import itertools
import math

import pytest
import torch

from bbrctl.config import compose, to_container
from bbrctl.errors import UserError

torch.set_num_threads(1)

MICRO = ["model=detr", "backbone=resnet_tiny", "backbone.widths=[8,16,32,64]", "model.min_size=64",
         "model.max_size=64", "data=shapes_tiny", "model.d_model=32", "model.nhead=4", "model.enc_layers=1",
         "model.dec_layers=2", "model.dim_feedforward=64", "model.num_queries=6", "model.dropout=0.0"]
K = 3   # classes


@functools.lru_cache(maxsize=None)
def _stock():
    from bbrctl.detection.models.build import build_model

    torch.manual_seed(0)
    return build_model(to_container(compose(MICRO)), K, install_loss=False)


def hooked(loss="baseline", params=None, weight=1.0, **attrs):
    from bbrctl.detection.models.heads import install_bbr_loss

    m = install_bbr_loss(copy.deepcopy(_stock()), loss, params or {}, weight)
    for k, v in attrs.items():
        setattr(m, k, v)
    return m


def problem(seed=0, layers=2, b=2, q=5, sizes=(3, 2)):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(layers, b, q, K + 1, generator=g)
    c = 0.2 + 0.6 * torch.rand(layers, b, q, 2, generator=g)
    wh = 0.05 + 0.3 * torch.rand(layers, b, q, 2, generator=g)
    boxes = torch.cat([c, wh], -1)
    targets, image_sizes = [], [(64, 48), (40, 64)]
    for i, n in enumerate(sizes):
        h, w = image_sizes[i]
        xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
        wh_px = 4 + torch.rand(n, 2, generator=g) * torch.tensor([w * 0.3, h * 0.3])
        targets.append({"boxes": torch.cat([xy, xy + wh_px], 1), "labels": torch.randint(1, K + 1, (n,), generator=g)})
    return logits, boxes, targets, image_sizes


def xyxy(b):
    cx, cy, w, h = b.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)


def giou_pair(a, b):
    a, b = a.double().tolist(), b.double().tolist()
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    return inter / union - (hull - union) / hull


def normalised_gt(t, size):
    h, w = size
    b = t["boxes"].double()
    return torch.stack([(b[:, 0] + b[:, 2]) / 2 / w, (b[:, 1] + b[:, 3]) / 2 / h, (b[:, 2] - b[:, 0]) / w,
                        (b[:, 3] - b[:, 1]) / h], 1)


def plain_cost(logits_l, boxes_l, t, size, costs=(1.0, 5.0, 2.0)):
    """(Q, G) DETR matching cost for one image and layer, entry by entry."""
    prob = logits_l.double().softmax(-1)
    gt = normalised_gt(t, size)
    c = torch.zeros(len(boxes_l), len(gt), dtype=torch.float64)
    for qi in range(len(boxes_l)):
        for gi in range(len(gt)):
            c[qi, gi] = (-costs[0] * prob[qi, int(t["labels"][gi]) - 1]
                         + costs[1] * (boxes_l[qi].double() - gt[gi]).abs().sum()
                         - costs[2] * giou_pair(xyxy(boxes_l[qi]), xyxy(gt[gi])))
    return c


def brute_force(c):
    """Minimum-cost injective map gts -> queries by enumeration: {gt: query}."""
    q, g = c.shape
    best, arg = math.inf, None
    for perm in itertools.permutations(range(q), g):
        v = sum(float(c[perm[j], j]) for j in range(g))
        if v < best - 1e-12:
            best, arg = v, perm
    return {j: arg[j] for j in range(g)} if g else {}


# --------------------------------------------------------------------------- matcher


@pytest.mark.parametrize("seed", range(4))
def test_matcher_costs_and_assignment_are_optimal(seed):
    from bbrctl.detection.models.detr import HungarianMatcher

    logits, boxes, targets, sizes = problem(seed, sizes=(3, 0) if seed == 3 else (3, 2))
    gts = [normalised_gt(t, s).float() for t, s in zip(targets, sizes)]
    labels = torch.cat([t["labels"] for t in targets]) - 1
    counts = [len(t["boxes"]) for t in targets]
    m = HungarianMatcher(1.0, 5.0, 2.0)
    cost = m.cost(logits, boxes, labels, torch.cat(gts)).view(2, 2, 5, -1)
    got = m(logits, boxes, labels, torch.cat(gts), counts)
    offset = [0, counts[0]]
    for layer in range(2):
        bi, qi, ti = got[layer]
        for i, t in enumerate(targets):
            if not counts[i]:
                assert not (bi == i).any()
                continue
            want_c = plain_cost(logits[layer, i], boxes[layer, i], t, sizes[i])
            torch.testing.assert_close(cost[layer, i, :, offset[i]:offset[i] + counts[i]].double(), want_c,
                                       rtol=1e-5, atol=1e-5)
            mine = {int(tt) - offset[i]: int(qq) for b_, qq, tt in zip(bi, qi, ti) if b_ == i}
            assert sorted(mine) == list(range(counts[i]))
            opt = brute_force(want_c)
            assert sum(float(want_c[q, g]) for g, q in mine.items()) == pytest.approx(
                sum(float(want_c[q, g]) for g, q in opt.items()), abs=1e-5)


# --------------------------------------------------------------------------- loss


def plain_set_loss(logits, boxes, targets, sizes, eos=0.1, weights=(1.0, 5.0, 2.0)):
    """DETR's loss summed over decoder layers, each with its own brute-force matching."""
    num_gt = max(sum(len(t["boxes"]) for t in targets), 1)
    ce = l1 = gi = 0.0
    for layer in range(logits.shape[0]):
        num = den = 0.0
        for i, t in enumerate(targets):
            match = brute_force(plain_cost(logits[layer, i], boxes[layer, i], t, sizes[i]))
            gt = normalised_gt(t, sizes[i])
            logp = logits[layer, i].double().log_softmax(-1)
            for q in range(logits.shape[2]):
                gts = [g for g, qq in match.items() if qq == q]
                cls = int(t["labels"][gts[0]]) - 1 if gts else K
                w = 1.0 if gts else eos
                num += -w * float(logp[q, cls])
                den += w
            for g, q in match.items():
                l1 += float((boxes[layer, i, q].double() - gt[g]).abs().sum()) / num_gt
                gi += (1 - giou_pair(xyxy(boxes[layer, i, q]), xyxy(gt[g]))) / num_gt
        ce += num / den
    return {"classification": weights[0] * ce, "bbox_l1": weights[1] * l1, "bbox_regression": weights[2] * gi}


@pytest.mark.parametrize("seed", range(3))
def test_stock_loss_with_auxiliary_layers_matches_the_plain_implementation(seed):
    logits, boxes, targets, sizes = problem(seed)
    got = hooked().compute_loss(logits, boxes, targets, sizes)
    want = plain_set_loss(logits, boxes, targets, sizes)
    assert got.keys() == want.keys()
    for k in want:
        assert float(got[k]) == pytest.approx(want[k], rel=1e-5), k


def _matched(logits, boxes, targets, sizes):
    """(layer, pred cxcywh, gt cxcywh, image size) of the stock matching."""
    from bbrctl.detection.models.detr import HungarianMatcher

    gts = torch.cat([normalised_gt(t, s).float() for t, s in zip(targets, sizes)])
    labels = torch.cat([t["labels"] for t in targets]) - 1
    out = []
    for layer, (bi, qi, ti) in enumerate(HungarianMatcher()(logits, boxes, labels, gts, [len(t["boxes"]) for t in targets])):
        scale = torch.tensor([[sizes[i][1], sizes[i][0]] * 2 for i in bi.tolist()], dtype=torch.float32)
        out.append((boxes[layer, bi, qi], gts[ti], scale))
    return out


def test_detr_star_swaps_only_the_giou_term():
    from bbrctl.losses import focal_eiou_loss, smooth_l1_loss

    logits, boxes, targets, sizes = problem(1)
    ref = hooked().compute_loss(logits, boxes, targets, sizes)
    # The configured GIoU at weight 2 (in pixels) is the stock term (GIoU is scale-invariant).
    explicit = hooked("giou", {}, 2.0).compute_loss(logits, boxes, targets, sizes)
    for k in ref:
        torch.testing.assert_close(explicit[k], ref[k], rtol=1e-5, atol=1e-6)
    num_gt = sum(len(t["boxes"]) for t in targets)
    pairs = _matched(logits, boxes, targets, sizes)
    fe = hooked("focal_eiou", {"gamma": 0.5}, 2.5).compute_loss(logits, boxes, targets, sizes)
    want = sum(2.5 * focal_eiou_loss(xyxy(p) * s, xyxy(g) * s, gamma=0.5) for p, g, s in pairs)  # Eq. 11 per layer
    torch.testing.assert_close(fe["bbox_regression"], want)
    for k in ("classification", "bbox_l1"):
        torch.testing.assert_close(fe[k], ref[k])
    sl = hooked("smooth_l1", {"beta": 1.0}, 1.0).compute_loss(logits, boxes, targets, sizes)
    want = sum(smooth_l1_loss(p, g, reduction="sum", beta=1.0) / num_gt for p, g, _ in pairs)
    torch.testing.assert_close(sl["bbox_regression"], want)
    base = hooked("baseline", {}, 2.5).compute_loss(logits, boxes, targets, sizes)
    torch.testing.assert_close(base["bbox_regression"], 2.5 * ref["bbox_regression"])


def test_detr_star_reading_giou_l1_drops_the_l1_term_and_the_config_key_builds_it():
    from bbrctl.detection.models.build import build_model, box_loss_weight
    from bbrctl.losses import focal_eiou_loss

    logits, boxes, targets, sizes = problem(1)
    ref = hooked().compute_loss(logits, boxes, targets, sizes)
    giou_only = hooked("focal_eiou", {"gamma": 0.5}, 2.5).compute_loss(logits, boxes, targets, sizes)
    both = hooked("focal_eiou", {"gamma": 0.5}, 2.5, replaces="giou_l1").compute_loss(logits, boxes, targets, sizes)
    pairs = _matched(logits, boxes, targets, sizes)
    want = sum(2.5 * focal_eiou_loss(xyxy(p) * s, xyxy(g) * s, gamma=0.5) for p, g, s in pairs)
    torch.testing.assert_close(both["bbox_regression"], want)
    assert float(both["bbox_l1"]) == 0.0 and float(giou_only["bbox_l1"]) == pytest.approx(float(ref["bbox_l1"]))
    torch.testing.assert_close(both["classification"], ref["classification"])
    # the stock loss keeps L1 whatever the reading
    stock_both = hooked(replaces="giou_l1").compute_loss(logits, boxes, targets, sizes)
    torch.testing.assert_close(stock_both["bbox_l1"], ref["bbox_l1"])
    cfg = to_container(compose([*MICRO, "+model.bbr_replaces=giou_l1", "loss=focal_eiou", "weight=stock"]))
    assert build_model(cfg, K).replaces == "giou_l1"
    assert box_loss_weight(cfg) == 2.0                      # DETR's loss_giou
    assert build_model(to_container(compose(MICRO)), K).replaces == "giou"
    with pytest.raises(UserError, match=r"model.bbr_replaces='l1' is not valid: must be one of giou, giou_l1"):
        compose([*MICRO, "+model.bbr_replaces=l1"])


def test_loss_in_matching_replaces_the_giou_cost():
    from bbrctl.detection.models.detr import HungarianMatcher

    logits, boxes, targets, sizes = problem(2)
    stock = hooked()
    # GIoU as the configured loss at weight 2 costs 2 - 2 GIoU: the same optimum as -2 GIoU.
    same = hooked("giou", {}, 2.0, loss_in_matching=True).compute_loss(logits, boxes, targets, sizes)
    for k, v in stock.compute_loss(logits, boxes, targets, sizes).items():
        torch.testing.assert_close(same[k], v, rtol=1e-5, atol=1e-6)
    # The cost it builds is weight x the per-pair loss, in pixels.
    m = hooked("eiou", {}, 2.5, loss_in_matching=True)
    calls = []
    real = HungarianMatcher.__call__

    def spy(self, logits, boxes, labels, tboxes, counts, box_cost=None):
        calls.append(box_cost(boxes.flatten(1, 2)))
        return real(self, logits, boxes, labels, tboxes, counts, box_cost)

    HungarianMatcher.__call__ = spy
    try:
        m.compute_loss(logits, boxes, targets, sizes)
    finally:
        HungarianMatcher.__call__ = real
    from bbrctl.losses import eiou_loss

    c = calls[0].view(2, 2, 5, -1)
    gt0 = normalised_gt(targets[0], sizes[0]).float()
    s = torch.tensor([sizes[0][1], sizes[0][0]] * 2, dtype=torch.float32)
    want = 2.5 * eiou_loss(xyxy(boxes[1, 0, 3]).expand(3, 4) * s, xyxy(gt0) * s, reduction="none")
    torch.testing.assert_close(c[1, 0, 3, :3], want)


# --------------------------------------------------------------------------- the model


def test_sine_position_encoding_follows_detr():
    from bbrctl.detection.models.detr import sine_position_encoding

    pad = torch.zeros(1, 2, 3, dtype=torch.bool)
    pad[0, :, 2] = True                                   # last column is padding
    pos = sine_position_encoding(pad, 4)
    assert pos.shape == (1, 8, 2, 3)
    eps, scale = 1e-6, 2 * math.pi
    for y in range(2):
        for x in range(2):
            ye, xe = (y + 1) / (2 + eps) * scale, (x + 1) / (2 + eps) * scale
            want = []
            for e in (ye, xe):
                for i in range(4):
                    t = e / 10000 ** (2 * (i // 2) / 4)
                    want.append(math.sin(t) if i % 2 == 0 else math.cos(t))
            torch.testing.assert_close(pos[0, :, y, x], torch.tensor(want), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("loss", ["baseline", "focal_eiou", "l1"])
def test_detr_trains_and_predicts(loss):
    m = hooked(loss, {"gamma": 0.5} if loss == "focal_eiou" else {}, 2.5 if loss == "focal_eiou" else 1.0)
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 64, 64, generator=g) for _ in range(2)]
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0], [20.0, 24.0, 60.0, 50.0]]), "labels": torch.tensor([1, 2])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    m.train()
    for _ in range(2):
        out = m(images, targets)
        assert set(out) == {"classification", "bbox_l1", "bbox_regression"}
        assert all(torch.isfinite(v) for v in out.values())
        opt.zero_grad()
        sum(out.values()).backward()
        trunk = next(m.backbone.body.parameters())     # the stem's first weight, whatever the stem
        assert trunk.grad.abs().sum() > 0 and m.query_embed.weight.grad.abs().sum() > 0
        opt.step()
    m.eval()
    with torch.no_grad():
        dets = m(images)
    assert [d["boxes"].shape for d in dets] == [(6, 4), (6, 4)]
    assert all(((d["labels"] >= 1) & (d["labels"] <= K)).all() for d in dets)


def test_paper_defaults_and_the_cpu_setting():
    cfg = to_container(compose(["model=detr", "schedule=paper_90k"]))
    m, s = cfg["model"], cfg["schedule"]
    assert (m["d_model"], m["nhead"], m["enc_layers"], m["dec_layers"], m["num_queries"]) == (256, 8, 6, 6, 100)
    assert (m["cost_class"], m["cost_bbox"], m["cost_giou"]) == (1.0, 5.0, 2.0)
    assert (m["loss_ce"], m["loss_bbox"], m["loss_giou"], m["eos_coef"]) == (1.0, 5.0, 2.0, 0.1)
    assert m["loss_in_matching"] is False
    assert (s["name"], s["optimizer"], s["base_lr"], s["backbone_lr_factor"], s["weight_decay"], s["clip_grad_norm"]) == \
        ("detr_paper_90k", "adamw", 1e-4, 0.1, 1e-4, 0.1)
    cpu = to_container(compose(["model=detr"]))
    assert cpu["schedule"]["name"] == "detr_cpu_small" and cpu["schedule"]["optimizer"] == "adamw"
    assert cpu["model"]["num_queries"] < 100 and cpu["model"]["enc_layers"] < 6
    # Other models keep the schedule they were given; a command-line value still wins.
    assert to_container(compose(["model=atss"]))["schedule"]["name"] == "cpu_small"
    assert to_container(compose(["model=detr", "schedule.max_iter=7", "schedule.steps=[5]"]))["schedule"]["max_iter"] == 7


def test_backbone_lr_factor_makes_a_trunk_param_group():
    from bbrctl.detection.train.engine import build_optimizer

    m = _stock()
    sched = {"optimizer": "adamw", "base_lr": 1e-4, "batch_size": 2, "base_batch_size": 2, "weight_decay": 1e-4}
    one = build_optimizer(m, sched)
    assert len(one.param_groups) == 1
    two = build_optimizer(m, {**sched, "backbone_lr_factor": 0.1})
    rest, trunk = two.param_groups
    assert trunk["lr_scale"] == 0.1 and rest["lr_scale"] == 1.0
    trunk_ids = {id(p) for p in m.backbone.body.parameters()}
    assert {id(p) for p in trunk["params"]} == trunk_ids
    assert not trunk_ids & {id(p) for p in rest["params"]}
    assert len(trunk["params"]) + len(rest["params"]) == len(list(m.parameters()))


@pytest.mark.parametrize("override, message", [
    ("model.nhead=3", "divisible by model.nhead"),
    ("model.dec_layers=0", "model.dec_layers=0 is not valid: must be an integer in [1, 24]"),
    ("model.eos_coef=0", "model.eos_coef=0 is not valid: must be a number in (0, 1]"),
    ("model.loss_in_matching=maybe", "model.loss_in_matching='maybe' is not valid: must be true or false"),
    ("backbone.layers=[1,1]", "backbone.layers=[1, 1] is not valid: must be a list of 4 integers"),
    ("model.cost_class=0 model.cost_bbox=0 model.cost_giou=0", "the matcher would have nothing to match on"),
])
def test_bad_detr_config_is_a_one_line_user_error(override, message):
    from bbrctl.detection.models.build import check_model_config

    with pytest.raises(UserError) as e:      # refused where the config is composed, before anything exists
        compose([*MICRO, *override.split()])
    assert message in str(e.value) and "\n" not in str(e.value)
    import yaml

    cfg = to_container(compose(MICRO))      # and by the builder's own check, for configs made in code
    for ov in override.split():
        key, _, value = ov.partition("=")
        node, leaf = key.split(".")
        cfg[node][leaf] = yaml.safe_load(value)
    with pytest.raises(UserError) as e:
        check_model_config(cfg)
    assert message in str(e.value)
