"""ATSS and PAA (bbrctl.detection.models.atss / .paa / .dense): assigners, the mixture, the stock
losses and the configured-loss swap, each against a plain re-implementation written here
from the papers / reference code (loops over images, gts and levels; no shared helpers)."""

from __future__ import annotations

import copy
import functools
import math

import numpy as np
import pytest
import torch

from bbrctl.config import compose, to_container
from bbrctl.errors import UserError

torch.set_num_threads(1)

MICRO = ["backbone=resnet_tiny", "backbone.widths=[8,16,32,64]", "backbone.fpn_channels=32",
         "model.min_size=64", "model.max_size=64", "data=shapes_tiny", "model.head_convs=1", "model.anchor_base=8"]
NUM_CLASSES = 3


@functools.lru_cache(maxsize=None)
def _cfg(model: str) -> dict:
    return to_container(compose([f"model={model}", *MICRO]))


@functools.lru_cache(maxsize=None)
def _stock(model: str):
    from bbrctl.detection.models.build import build_model

    torch.manual_seed(0)
    return build_model(_cfg(model), NUM_CLASSES, install_loss=False)


def hooked(model: str, loss: str = "baseline", params=None, weight: float = 1.0):
    from bbrctl.detection.models.heads import install_bbr_loss

    return install_bbr_loss(copy.deepcopy(_stock(model)), loss, params or {}, weight)


def batch(size: int = 64):
    g = torch.Generator().manual_seed(3)
    images = [torch.rand(3, size, size, generator=g) for _ in range(2)]
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0], [20.0, 24.0, 60.0, 50.0]]), "labels": torch.tensor([1, 2])},
               {"boxes": torch.tensor([[10.0, 10.0, 50.0, 34.0]]), "labels": torch.tensor([3])}]
    return images, targets


def random_problem(seed: int, levels=((8, 8, 8.0), (4, 4, 16.0), (2, 2, 32.0)), gts=(3, 0, 5)):
    """Square anchors on a grid per level (h, w, stride; side 4 x stride) and random gts."""
    g = torch.Generator().manual_seed(seed)
    anchors, sizes = [], []
    for h, w, s in levels:
        ys, xs = torch.meshgrid(torch.arange(h) * s, torch.arange(w) * s, indexing="ij")
        c = torch.stack([xs.flatten(), ys.flatten()], 1).float() + torch.rand(h * w, 2, generator=g) * 0.5  # no float32/float64 near-ties
        half = 2 * s
        anchors.append(torch.cat([c - half, c + half], 1))
        sizes.append(h * w)
    boxes = []
    for n in gts:
        xy = torch.rand(n, 2, generator=g) * 50
        wh = 4 + torch.rand(n, 2, generator=g) * 40
        boxes.append(torch.cat([xy, xy + wh], 1))
    return torch.cat(anchors), sizes, boxes


def iou_matrix(a, b):
    """Pairwise IoU, one pair at a time, in the inputs' float32 (exact ties -- a gt inside
    two anchors of the same size -- must stay ties, as they do in the implementation)."""
    f = np.float32
    out = torch.zeros(len(a), len(b), dtype=torch.float64)
    for i, p in enumerate(a.float().numpy()):
        for j, q in enumerate(b.float().numpy()):
            iw = max(f(0), min(p[2], q[2]) - max(p[0], q[0]))
            ih = max(f(0), min(p[3], q[3]) - max(p[1], q[1]))
            inter = iw * ih
            union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter
            out[i, j] = float(inter / union)
    return out


def giou_plain(p, t):
    """GIoU loss per pair, Rezatofighi et al. Eq. (1), written out."""
    out = []
    for a, b in zip(p.double().tolist(), t.double().tolist()):
        iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = iw * ih
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
        out.append(1 - (inter / union - (hull - union) / hull))
    return torch.tensor(out, dtype=torch.float64)


def eiou_plain(p, t):
    """EIoU loss per pair, Eq. 7 of the Focal-EIoU paper, written out (float64)."""
    out = []
    for a, b in zip(p.double().tolist(), t.double().tolist()):
        iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = iw * ih
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        cw, ch = max(a[2], b[2]) - min(a[0], b[0]), max(a[3], b[3]) - min(a[1], b[1])
        rho2 = ((a[0] + a[2] - b[0] - b[2]) / 2) ** 2 + ((a[1] + a[3] - b[1] - b[3]) / 2) ** 2
        dw, dh = (a[2] - a[0]) - (b[2] - b[0]), (a[3] - a[1]) - (b[3] - b[1])
        out.append(1 - inter / union + rho2 / (cw ** 2 + ch ** 2) + dw ** 2 / cw ** 2 + dh ** 2 / ch ** 2)
    return torch.tensor(out, dtype=torch.float64)


def focal_plain(logits, onehot, alpha=0.25, gamma=2.0):
    """Sigmoid focal loss per element (Lin et al. Eq. 5), float64."""
    x, y = logits.double(), onehot.double()
    p = torch.sigmoid(x)
    pt = torch.where(y > 0, p, 1 - p)
    at = torch.where(y > 0, torch.full_like(p, alpha), torch.full_like(p, 1 - alpha))
    return -at * (1 - pt) ** gamma * torch.log(pt.clamp(min=1e-300))


def decode_plain(d, a, weights=(10.0, 10.0, 5.0, 5.0)):
    """xyxy boxes from deltas (Girshick et al., std-divided), with torchvision's dw/dh clip."""
    d, a = d.double(), a.double()
    w, h = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
    cx, cy = a[:, 0] + 0.5 * w, a[:, 1] + 0.5 * h
    clip = math.log(1000.0 / 16)
    dx, dy = d[:, 0] / weights[0], d[:, 1] / weights[1]
    dw, dh = (d[:, 2] / weights[2]).clamp(max=clip), (d[:, 3] / weights[3]).clamp(max=clip)
    pcx, pcy, pw, ph = dx * w + cx, dy * h + cy, torch.exp(dw) * w, torch.exp(dh) * h
    return torch.stack([pcx - pw / 2, pcy - ph / 2, pcx + pw / 2, pcy + ph / 2], 1)


# --------------------------------------------------------------------------- ATSS assigner


def atss_plain(anchors, sizes, gt, k=9):
    """ATSS Alg. 1 per gt, per level, with Python loops; conflicts to the highest IoU."""
    a = len(anchors)
    if len(gt) == 0:
        return torch.full((a,), -1)
    ious = iou_matrix(anchors, gt)
    ac = (anchors[:, :2] + anchors[:, 2:]).double() / 2
    best = torch.full((a,), -1.0, dtype=torch.float64)
    arg = torch.full((a,), -1)
    for j, box in enumerate(gt.double().tolist()):
        gc = torch.tensor([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2], dtype=torch.float64)
        cands, start = [], 0
        for n in sizes:
            d = ((ac[start:start + n] - gc) ** 2).sum(1)
            cands += (np.argsort(d.numpy(), kind="stable")[:min(k, n)] + start).tolist()
            start += n
        vals = ious[cands, j]
        thr = vals.mean() + vals.std()          # unbiased, as torch.std in the reference
        for i in cands:
            x, y = ac[i].tolist()
            inside = min(x - box[0], y - box[1], box[2] - x, box[3] - y) > 0.01
            if ious[i, j] >= thr and inside and ious[i, j] > best[i]:
                best[i], arg[i] = ious[i, j], j
    return arg


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_atss_assigner_matches_the_plain_algorithm(seed):
    from bbrctl.detection.models.atss import atss_assign
    from bbrctl.detection.models.dense import pad_targets

    anchors, sizes, boxes = random_problem(seed)
    targets = [{"boxes": b, "labels": torch.ones(len(b), dtype=torch.int64)} for b in boxes]
    gt, _, valid = pad_targets(targets, "cpu")
    got = atss_assign(anchors, sizes, gt, valid, k=9)
    for i, b in enumerate(boxes):
        want = atss_plain(anchors, sizes, b)
        assert torch.equal(got[i], want), (seed, i)
    assert (got[0] >= 0).sum() > 0 and (got[1] == -1).all()   # image 1 has no gt


def test_atss_takes_fewer_than_k_on_small_levels_and_resolves_conflicts_by_iou():
    from bbrctl.detection.models.atss import atss_assign

    # One level of 4 anchors (fewer than k), two overlapping gts both claiming anchor 0.
    anchors = torch.tensor([[0.0, 0, 20, 20], [10, 0, 30, 20], [0, 10, 20, 30], [40, 40, 60, 60]])
    gt = torch.tensor([[[0.0, 0, 21, 21], [2.0, 2, 24, 18]]])
    got = atss_assign(anchors, [4], gt, torch.ones(1, 2, dtype=torch.bool), k=9)
    ious = iou_matrix(anchors, gt[0])
    assert got[0, 0] == int(ious[0].argmax())
    assert got[0, 3] == -1                  # centre outside both gts


def test_centerness_targets():
    from bbrctl.detection.models.atss import centerness_targets

    anchors = torch.tensor([[0.0, 0, 20, 20], [5, 0, 15, 10]])
    gt = torch.tensor([[0.0, 0, 20, 20], [0.0, 0, 40, 10]])
    # anchor 0 centred in its gt: 1; anchor 1 centre (10, 5): l=10 r=30 t=5 b=5 -> sqrt(1/3)
    torch.testing.assert_close(centerness_targets(anchors, gt), torch.tensor([1.0, math.sqrt(1 / 3)]))


# --------------------------------------------------------------------------- ATSS loss


def _outputs(model, targets, size=64, seed=5):
    """A fixed head output for ``model``'s anchors on a ``size`` image, and the anchors."""
    from torchvision.models.detection.image_list import ImageList

    model.train()
    images = torch.zeros(len(targets), 3, size, size)
    feats = list(model.backbone(images).values())
    anchors = model.anchor_generator(ImageList(images, [(size, size)] * len(targets)), feats)[0]
    sizes = [int(f.shape[-2] * f.shape[-1]) for f in feats]
    g = torch.Generator().manual_seed(seed)
    a = anchors.shape[0]
    head = {"cls_logits": torch.randn(len(targets), a, NUM_CLASSES, generator=g) - 2,
            "bbox_regression": torch.randn(len(targets), a, 4, generator=g) * 0.3,
            "quality": torch.randn(len(targets), a, generator=g)}
    return head, anchors, sizes


def atss_loss_plain(head, anchors, sizes, targets):
    cls, reg_num, reg_den, ctr, num_pos = 0.0, 0.0, 0.0, 0.0, 0
    for i, t in enumerate(targets):
        matched = atss_plain(anchors, sizes, t["boxes"])
        onehot = torch.zeros(len(anchors), NUM_CLASSES, dtype=torch.float64)
        for a_i, j in enumerate(matched.tolist()):
            if j >= 0:
                onehot[a_i, int(t["labels"][j]) - 1] = 1
        cls += float(focal_plain(head["cls_logits"][i], onehot).sum())
        pos = [a_i for a_i, j in enumerate(matched.tolist()) if j >= 0]
        num_pos += len(pos)
        if not pos:
            continue
        gt = t["boxes"][matched[pos]].double()
        anc = anchors[pos].double()
        c = (anc[:, :2] + anc[:, 2:]) / 2
        l, tt, r, b = c[:, 0] - gt[:, 0], c[:, 1] - gt[:, 1], gt[:, 2] - c[:, 0], gt[:, 3] - c[:, 1]
        ct = torch.sqrt(torch.minimum(l, r) / torch.maximum(l, r) * torch.minimum(tt, b) / torch.maximum(tt, b))
        boxes = decode_plain(head["bbox_regression"][i, pos], anc)
        reg_num += float((giou_plain(boxes, gt) * ct).sum())
        reg_den += float(ct.sum())
        x = head["quality"][i, pos].double()
        ctr += float(-(ct * torch.log(torch.sigmoid(x)) + (1 - ct) * torch.log(1 - torch.sigmoid(x))).sum())
    n = max(num_pos, 1)
    return {"classification": cls / n, "bbox_regression": 2.0 * reg_num / reg_den, "bbox_ctrness": ctr / n}


def test_atss_stock_loss_matches_the_plain_implementation():
    m = hooked("atss")
    _, targets = batch()
    head, anchors, sizes = _outputs(m, targets)
    got = m.compute_loss(targets, head, anchors, sizes)
    want = atss_loss_plain(head, anchors, sizes, targets)
    assert got.keys() == want.keys()
    for k in want:
        assert float(got[k]) == pytest.approx(want[k], rel=1e-5), k


def _positives(m, head, anchors, sizes, targets):
    from bbrctl.detection.models.atss import atss_assign, centerness_targets
    from bbrctl.detection.models.dense import pad_targets

    gt, _, valid = pad_targets(targets, "cpu")
    matched = atss_assign(anchors, sizes, gt, valid)
    bi, ai = (matched >= 0).nonzero(as_tuple=True)
    g, a = gt[bi, matched[bi, ai]], anchors[ai]
    return head["bbox_regression"][bi, ai], a, g, centerness_targets(a, g)


def _stock_equals_explicit_giou(name: str, weight: float):
    """Check that loss=giou at the stock weight is the stock loss; return the stock pieces."""
    _, targets = batch()
    stock = hooked(name)
    head, anchors, sizes = _outputs(stock, targets)
    ref = stock.compute_loss(targets, head, anchors, sizes)
    explicit = hooked(name, "giou", {}, weight).compute_loss(targets, head, anchors, sizes)
    for k in ref:
        torch.testing.assert_close(explicit[k], ref[k], rtol=1e-5, atol=1e-6)
    return stock, targets, head, anchors, sizes, ref


def test_atss_loss_swap_spaces_normalisers_and_the_explicit_stock_equivalent():
    from bbrctl.losses import focal_eiou_loss, smooth_l1_loss

    # GIoU with weight 2 through the swap path is the stock loss (same normaliser).
    stock, targets, head, anchors, sizes, ref = _stock_equals_explicit_giou("atss", 2.0)
    d, a, g, ct = _positives(stock, head, anchors, sizes, targets)
    boxes = stock.decode(d, a)
    # Focal-EIoU keeps ATSS's centerness weighting inside Eq. 11: sum(W ctr L) / sum(W ctr), x weight.
    fe = hooked("atss", "focal_eiou", {"gamma": 0.5}, 2.5).compute_loss(targets, head, anchors, sizes)
    u = torch.diagonal(iou_matrix(boxes.detach(), g))
    w_fe, ctr = u ** 0.5, ct.double()
    want = 2.5 * float((w_fe * ctr * eiou_plain(boxes.detach(), g)).sum() / (w_fe * ctr).sum())
    assert float(fe["bbox_regression"]) == pytest.approx(want, rel=1e-5)
    assert float(fe["bbox_regression"]) != pytest.approx(2.5 * float(focal_eiou_loss(boxes, g, gamma=0.5)), rel=1e-3)
    for k in ("classification", "bbox_ctrness"):
        torch.testing.assert_close(fe[k], ref[k])
    # An l_n loss works on the encoded deltas, weighted by ctr / sum(ctr).
    sl = hooked("atss", "smooth_l1", {"beta": 1.0}, 1.0).compute_loss(targets, head, anchors, sizes)
    per = smooth_l1_loss(d, stock.encode(g, a), reduction="none", beta=1.0)
    torch.testing.assert_close(sl["bbox_regression"], (per * ct / ct.sum()).sum())
    # baseline x weight multiplies the stock term.
    w = hooked("atss", "baseline", {}, 2.5).compute_loss(targets, head, anchors, sizes)
    torch.testing.assert_close(w["bbox_regression"], 2.5 * ref["bbox_regression"])


# --------------------------------------------------------------------------- PAA: the mixture


def sklearn_em_plain(x, max_iter=100, tol=1e-3, reg=1e-6):
    """scikit-learn's GaussianMixture(2, covariance_type='diag') fit + predict, 1-D, float64,
    init means (min, max), variances 1, weights 1/2, written out from its source."""
    x = np.asarray(x, dtype=np.float64)
    mu, var, w = np.array([x.min(), x.max()]), np.ones(2), np.full(2, 0.5)

    def logp(mu, var, w):
        return -0.5 * (np.log(2 * np.pi) + np.log(var) + (x[:, None] - mu) ** 2 / var) + np.log(w)

    lower = -np.inf
    for _ in range(max_iter):
        lp = logp(mu, var, w)
        norm = np.logaddexp(lp[:, 0], lp[:, 1])
        resp = np.exp(lp - norm[:, None])
        nk = resp.sum(0) + 10 * np.finfo(np.float64).eps
        mu = resp.T @ x / nk
        var = resp.T @ (x * x) / nk - mu ** 2 + reg
        w = nk / nk.sum()
        prev, lower = lower, norm.mean()
        if abs(lower - prev) < tol:
            break
    lp = logp(mu, var, w)
    return lp.argmax(1), np.logaddexp(lp[:, 0], lp[:, 1]), mu, var, w


@pytest.mark.parametrize("seed", range(6))
def test_gmm_matches_scikit_learns_em_written_out(seed):
    from bbrctl.detection.models.paa import gmm_fit_1d

    rng = np.random.default_rng(seed)
    rows = [np.sort(np.concatenate([rng.normal(0.3, 0.1, rng.integers(2, 12)), rng.normal(1.5, 0.3, rng.integers(2, 20))]))
            for _ in range(4)] + [np.sort(rng.uniform(0, 3, 7)), np.array([0.5, 0.6])]
    width = max(len(r) for r in rows)
    x = torch.full((len(rows), width), math.inf, dtype=torch.float64)
    for i, r in enumerate(rows):
        x[i, :len(r)] = torch.from_numpy(r)
    fit = gmm_fit_1d(x, torch.isfinite(x), check_every=1)
    for i, r in enumerate(rows):
        assign, dens, mu, var, w = sklearn_em_plain(r)
        n = len(r)
        assert fit["assignment"][i, :n].tolist() == assign.tolist(), i
        np.testing.assert_allclose(fit["log_density"][i, :n].numpy(), dens, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(fit["means"][i].numpy(), mu, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(fit["variances"][i].numpy(), var, rtol=1e-6, atol=1e-9)


def test_gmm_separates_a_clear_two_mode_sample_and_float32_agrees():
    from bbrctl.detection.models.paa import gmm_fit_1d, separate

    x = torch.tensor([[0.10, 0.12, 0.15, 0.18, 2.0, 2.1, 2.3, 2.4, 2.6]])
    valid = torch.ones_like(x, dtype=torch.bool)
    fit = gmm_fit_1d(x, valid)
    assert fit["assignment"][0].tolist() == [0] * 4 + [1] * 5
    torch.testing.assert_close(fit["means"][0], torch.tensor([0.1375, 2.28]), rtol=1e-3, atol=1e-3)
    pos = separate(x, valid, fit)
    # component 0 up to its density peak (near its mean 0.1375): the first two or three
    assert pos[0, :2].all() and not pos[0, 4:].any()
    f64 = gmm_fit_1d(x.double(), valid)
    assert torch.equal(f64["assignment"], fit["assignment"])


# --------------------------------------------------------------------------- PAA: assignment


def candidates_plain(anchors, gt):
    """MaxIoUAssigner(pos 0.1, neg 0.1, min_pos_iou 0, gt_max_assign_all), as a loop."""
    if len(gt) == 0:
        return torch.full((len(anchors),), -1)
    ious = iou_matrix(anchors, gt)
    best, arg = ious.max(1)
    out = torch.where(best >= 0.1, arg, torch.full_like(arg, -1))
    for j in range(len(gt)):
        m = ious[:, j].max()
        if m > 0:
            out[ious[:, j] == m] = j
    return out


def paa_select_plain(cand, cost, sizes, n_gt, topk=9):
    """Steps 3-5 per gt (mmdet's paa_reassign), with the written-out EM."""
    out = torch.full_like(cand, -1)
    level = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    for j in range(n_gt):
        idx, vals = [], []
        for lv in range(len(sizes)):
            mine = torch.where((cand == j) & (level == lv))[0]
            if len(mine):
                v, o = cost[mine].topk(min(topk, len(mine)), largest=False)
                idx += mine[o].tolist()
                vals += v.tolist()
        if len(idx) < 2:
            continue
        order = np.argsort(np.array(vals), kind="stable")
        idx, vals = np.array(idx)[order], np.array(vals)[order]
        assign, dens, *_ = sklearn_em_plain(vals)
        fg = np.where(assign == 0)[0]
        if not len(fg):
            continue
        peak = fg[np.argmax(dens[fg])]
        for p in fg[fg <= peak]:
            out[idx[p]] = j
    return out


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_paa_candidates_and_selection_match_the_per_gt_loops(seed):
    from bbrctl.detection.models.dense import pad_targets
    from bbrctl.detection.models.paa import candidate_assign, paa_select

    anchors, sizes, boxes = random_problem(seed)
    targets = [{"boxes": b, "labels": torch.ones(len(b), dtype=torch.int64)} for b in boxes]
    gt, _, valid = pad_targets(targets, "cpu")
    cand = candidate_assign(anchors, gt, valid)
    for i, b in enumerate(boxes):
        assert torch.equal(cand[i], candidates_plain(anchors, b)), (seed, i)
    g = torch.Generator().manual_seed(seed)
    cost = (torch.rand(cand.shape, generator=g, dtype=torch.float64) * 2) ** 2
    got, _ = paa_select(cand, cost, sizes, gt.shape[1], topk=9, check_every=1)
    for i, b in enumerate(boxes):
        want = paa_select_plain(cand[i], cost[i], sizes, len(b))
        assert torch.equal(got[i], want), (seed, i)
    assert (got >= 0).sum() > 0 and ((got >= 0) <= (cand >= 0)).all()   # positives are candidates


def reg_unweighted(head, anchors, real, targets):
    """The GIoU mean over positives (what bbrctl's PAA baseline was before issue 21)."""
    total, n = 0.0, 0
    for i, t in enumerate(targets):
        pos = [a for a, j in enumerate(real[i].tolist()) if j >= 0]
        if pos:
            total += float(giou_plain(decode_plain(head["bbox_regression"][i, pos], anchors[pos]),
                                      t["boxes"][real[i, pos]].double()).sum())
            n += len(pos)
    return total / max(n, 1)


def test_paa_loss_matches_the_plain_implementation_for_a_given_assignment(monkeypatch):
    from bbrctl.detection.models.dense import pad_targets

    _, targets = batch()
    m = hooked("paa")
    head, anchors, sizes = _outputs(m, targets)
    real = m.assign(targets, head, anchors, sizes)[0]
    assert (real >= 0).any()
    gt, labels, valid = pad_targets(targets, "cpu")
    monkeypatch.setattr(m, "assign", lambda *a: (real, gt, labels, valid))
    got = m.compute_loss(targets, head, anchors, sizes)
    cls, reg, iou, num_pos, iou_sum = 0.0, 0.0, 0.0, 0, 0.0
    for i, t in enumerate(targets):
        onehot = torch.zeros(len(anchors), NUM_CLASSES, dtype=torch.float64)
        pos = [a for a, j in enumerate(real[i].tolist()) if j >= 0]
        for a in pos:
            onehot[a, int(t["labels"][real[i, a]]) - 1] = 1
        cls += float(focal_plain(head["cls_logits"][i], onehot).sum())
        num_pos += len(pos)
        if pos:
            g = t["boxes"][real[i, pos]].double()
            boxes = decode_plain(head["bbox_regression"][i, pos], anchors[pos])
            iou_t = torch.diagonal(iou_matrix(boxes, g))
            # mmdet PAAHead.loss_by_feat: GIoU(weight=iou.clamp(1e-12), avg_factor=iou.sum())
            reg += float((giou_plain(boxes, g) * iou_t.clamp(min=1e-12)).sum())
            iou_sum += float(iou_t.sum())
            x = head["quality"][i, pos].double()
            iou += float(-(iou_t * torch.log(torch.sigmoid(x)) + (1 - iou_t) * torch.log(1 - torch.sigmoid(x))).sum())
    assert float(got["classification"]) == pytest.approx(cls / max(num_pos, 2), rel=1e-5)
    # weight_reduce_loss divides by avg_factor + float32 eps
    assert float(got["bbox_regression"]) == pytest.approx(1.3 * reg / (iou_sum + 1.1920929e-07), rel=1e-5)
    # the weighting matters here: the unweighted mean is a different number
    assert float(got["bbox_regression"]) != pytest.approx(1.3 * reg_unweighted(head, anchors, real, targets), rel=1e-2)
    assert float(got["bbox_iou"]) == pytest.approx(0.5 * iou / num_pos, rel=1e-5)


def test_paa_loss_swap_and_assignment_option():
    from bbrctl.losses import focal_eiou_loss

    stock, targets, head, anchors, sizes, ref = _stock_equals_explicit_giou("paa", 1.3)
    fe_model = hooked("paa", "focal_eiou", {"gamma": 0.5}, 2.5)
    fe = fe_model.compute_loss(targets, head, anchors, sizes)
    matched = stock.assign(targets, head, anchors, sizes)[0]
    assert torch.equal(fe_model.assign(targets, head, anchors, sizes)[0], matched)   # stock assignment kept
    bi, ai = (matched >= 0).nonzero(as_tuple=True)
    gt = torch.cat([t["boxes"] for t in targets])[torch.tensor([0, 2])[bi] + matched[bi, ai]]
    boxes = stock.decode(head["bbox_regression"][bi, ai], anchors[ai])
    # PAA* keeps PAA's IoU weighting inside Eq. 11: sum(W u L) / sum(W u), u = IoU(pred, gt).
    u = torch.diagonal(iou_matrix(boxes.detach(), gt))
    w_fe = u ** 0.5
    l_eiou = eiou_plain(boxes.detach(), gt)
    want = 2.5 * float((w_fe * u * l_eiou).sum() / (w_fe * u).sum())
    assert float(fe["bbox_regression"]) == pytest.approx(want, rel=1e-5)
    assert float(fe["bbox_regression"]) != pytest.approx(2.5 * float(focal_eiou_loss(boxes, gt, gamma=0.5)), rel=1e-3)
    # loss_in_assignment: the configured loss scores the candidates, so the assignment moves.
    moved = hooked("paa", "focal_eiou", {"gamma": 0.5}, 2.5)
    moved.loss_in_assignment = True
    assert not torch.equal(moved.assign(targets, head, anchors, sizes)[0], matched)


def test_score_voting_matches_the_reference_loop():
    from bbrctl.detection.models.paa import score_vote

    g = torch.Generator().manual_seed(0)
    xy = torch.rand(30, 2, generator=g) * 40
    cand = torch.cat([xy, xy + 10 + torch.rand(30, 2, generator=g) * 20], 1)
    scores = torch.rand(30, generator=g)
    labels = torch.randint(0, 2, (30,), generator=g)
    dets, dl = cand[:5], labels[:5]
    got = score_vote(dets, dl, cand, scores, labels)
    for d in range(5):
        num, den = torch.zeros(4, dtype=torch.float64), 0.0
        ious = iou_matrix(dets[d:d + 1], cand)[0]
        for n in range(30):
            if labels[n] == dl[d] and ious[n] > 0.01:
                p = math.exp(-(1 - float(ious[n])) ** 2 / 0.025) * float(scores[n])
                num += p * cand[n].double()
                den += p
        torch.testing.assert_close(got[d].double(), num / den, rtol=1e-5, atol=1e-4)


# --------------------------------------------------------------------------- the detectors


@pytest.mark.parametrize("model", ["atss", "paa"])
@pytest.mark.parametrize("loss", ["baseline", "focal_eiou", "smooth_l1", "ciou"])
def test_dense_detectors_train_and_predict(model, loss):
    params = {"focal_eiou": {"gamma": 0.5}, "smooth_l1": {"beta": 1.0}}.get(loss, {})
    m = hooked(model, loss, params, 2.5 if loss in ("focal_eiou", "ciou") else 1.0)
    opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
    images, targets = batch()
    m.train()
    for _ in range(2):
        out = m(images, targets)
        assert set(out) == {"classification", "bbox_regression", "bbox_ctrness" if model == "atss" else "bbox_iou"}
        assert all(torch.isfinite(v) for v in out.values()) and out["bbox_regression"] > 0
        opt.zero_grad()
        sum(out.values()).backward()
        assert m.head.bbox_reg.weight.grad.abs().sum() > 0
        opt.step()
    m.eval()
    m.score_thresh = 0.0
    with torch.no_grad():
        dets = m(images)
    assert len(dets) == 2 and dets[0]["boxes"].shape[1] == 4 and dets[0]["boxes"].shape[0] > 0
    assert dets[0]["labels"].min() >= 1 and dets[0]["labels"].max() <= NUM_CLASSES


def test_a_batch_without_objects_gives_finite_connected_losses():
    for name in ("atss", "paa"):
        m = hooked(name, "focal_eiou", {"gamma": 0.5}, 2.5)
        m.train()
        images, _ = batch()
        empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}] * 2
        out = m(images, empty)
        assert float(out["bbox_regression"].detach()) == 0.0 and torch.isfinite(out["classification"]).all()
        sum(out.values()).backward()


@pytest.mark.parametrize("model", ["atss", "paa"])
def test_one_square_anchor_per_location_of_side_8x_stride_on_coco(model):
    from bbrctl.detection.models.build import build_model

    def sides(*over):
        m = build_model(to_container(compose([f"model={model}", *over])), 3)
        return [s[0] for s in m.anchor_generator.sizes], m.anchor_generator.aspect_ratios[0]

    assert sides("data=coco") == ([64, 128, 256, 512, 1024], (1.0,))   # octave base scale 8 x strides 8..128
    assert sides()[0] == [32, 64, 128, 256, 512]                        # data=shapes halves RetinaNet's base too
    assert sides("model.anchor_sizes=[10,20,30,40,50]")[0] == [10, 20, 30, 40, 50]
    assert to_container(compose([f"model={model}"]))["model"]["topk"] == 9


@pytest.mark.parametrize("model, override, message", [
    ("atss", "model.aspect_ratios=[0.5,1.0]", "ATSS uses one square anchor per location"),
    ("paa", "model.topk=0", "model.topk=0 is not valid: must be an integer in [1, 100]"),
    ("paa", "model.score_voting=3", "model.score_voting=3 is not valid: must be true or false"),
    ("atss", "model.extra_levels=pool", "ATSS uses p6p7 or none"),
    ("atss", "+backbone.dcn_stages=[true]", "backbone.dcn_stages=[True] is not valid: must be null or a list of 4"),
])
def test_bad_dense_config_is_a_one_line_user_error(model, override, message):
    with pytest.raises(UserError) as e:      # refused where the config is composed, before anything exists
        compose([f"model={model}", override])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_paa_iou_weighting_with_disjoint_positives_and_with_none(monkeypatch):
    """Edge cases of the IoU-weighted regression term, as mmdet's PAAHead has them: every
    positive disjoint from its gt (all u = 0) gives 1.3 x sum(1e-12 GIoU) / eps, finite and
    tiny (Focal-EIoU: exactly 0); no positive gives a 0 still connected to the graph."""
    from bbrctl.detection.models.dense import pad_targets

    _, targets = batch()
    for loss, params in (("baseline", {}), ("focal_eiou", {"gamma": 0.5})):
        m = hooked("paa", loss, params, 1.0 if loss == "baseline" else 2.5)
        head, anchors, sizes = _outputs(m, targets)
        head = {k: v.clone().requires_grad_(True) for k, v in head.items()}
        gt, labels, valid = pad_targets(targets, "cpu")
        matched = torch.full((2, anchors.shape[0]), -1)
        matched[0, 0] = 0
        with torch.no_grad():
            head["bbox_regression"][0, 0] = torch.tensor([60.0, 60.0, 0.0, 0.0])   # 6 anchor sides away
        monkeypatch.setattr(m, "assign", lambda *a: (matched, gt, labels, valid))
        reg = m.compute_loss(targets, head, anchors, sizes)["bbox_regression"]
        box = decode_plain(head["bbox_regression"][0, :1].detach(), anchors[:1])
        assert float(torch.diagonal(iou_matrix(box, gt[0, :1]))[0]) == 0.0
        want = 1.3 * 1e-12 * float(giou_plain(box, gt[0, :1].double())[0]) / 1.1920929e-07 if loss == "baseline" else 0.0
        assert float(reg.detach()) == pytest.approx(want, rel=1e-4, abs=1e-12)
        reg.backward()
        assert torch.isfinite(head["bbox_regression"].grad).all()
        none = torch.full_like(matched, -1)
        monkeypatch.setattr(m, "assign", lambda *a: (none, gt, labels, valid))
        out = m.compute_loss(targets, head, anchors, sizes)["bbox_regression"]
        assert float(out.detach()) == 0.0 and out.requires_grad


def test_reg_weighting_none_is_the_plain_mean_and_changes_the_signature():
    from bbrctl.config import signature
    from bbrctl.detection.models.dense import pad_targets

    _, targets = batch()
    for name in ("atss", "paa"):
        m = hooked(name)
        m.reg_weighting = "none"
        head, anchors, sizes = _outputs(m, targets)
        if name == "paa":
            matched = m.assign(targets, head, anchors, sizes)[0]
        else:
            from bbrctl.detection.models.atss import atss_assign

            gt_, _, valid_ = pad_targets(targets, "cpu")
            matched = atss_assign(anchors, sizes, gt_, valid_)
        got = m.compute_loss(targets, head, anchors, sizes)["bbox_regression"]
        want = (2.0 if name == "atss" else 1.3) * reg_unweighted(head, anchors, matched, targets)
        assert float(got) == pytest.approx(want, rel=1e-5), name
    base = _cfg("paa")
    off = to_container(compose(["model=paa", *MICRO, "model.reg_weighting=none"]))
    assert signature(base) != signature(off)
    with pytest.raises(UserError, match=r"model.reg_weighting='centerness' is not valid: must be one of iou, none"):
        compose(["model=paa", *MICRO, "model.reg_weighting=centerness"])


@pytest.mark.parametrize("model, stock", [("atss", 2.0), ("paa", 1.3), ("retinanet", 1.0), ("faster_rcnn", 1.0),
                                          ("fcos", 1.0), ("detr", 2.0)])
def test_weight_stock_is_the_detectors_own_box_weight(model, stock):
    from bbrctl.config import signature
    from bbrctl.detection.models.build import box_loss_weight

    extra = ["model.anchor_sizes=[32,64,128,256,512]"] if model == "fcos" else []
    fe = to_container(compose([f"model={model}", "loss=focal_eiou", "+weighting=stock", *extra]))
    assert fe["weight"] == "stock" and box_loss_weight(fe) == stock
    assert box_loss_weight(to_container(compose([f"model={model}", "loss=focal_eiou", "+weighting=paper", *extra]))) == 2.5
    # baseline at its stock weight is the baseline: weight 1, one signature
    b_stock = to_container(compose([f"model={model}", "loss=baseline", "+weighting=stock", *extra]))
    b_one = to_container(compose([f"model={model}", "loss=baseline", *extra]))
    assert box_loss_weight(b_stock) == 1.0 and signature(b_stock) == signature(b_one)


def test_weight_stock_installs_the_stock_weight_in_atss():
    from bbrctl.detection.models.build import build_model

    cfg = to_container(compose(["model=atss", *MICRO, "loss=giou", "weight=stock"]))
    torch.manual_seed(0)
    m = build_model(cfg, NUM_CLASSES)
    assert m.bbr.weight == 2.0      # loss=giou weight=stock is ATSS's stock term
    _, targets = batch()
    head, anchors, sizes = _outputs(m, targets)
    ref = hooked("atss").compute_loss(targets, head, anchors, sizes)
    torch.testing.assert_close(m.compute_loss(targets, head, anchors, sizes)["bbox_regression"],
                               ref["bbox_regression"], rtol=1e-5, atol=1e-6)
