"""`bbrctl.simulate`: the protocol (pairs, schedule, step sign) and the vectorised engine.

The engine drives the library losses (bbrctl.losses.get_loss); bbrctl.simulate.reference
holds independent, straightforward autograd versions written from the paper, used here
as the cross-check and in benchmarks/simulate.py as the baseline.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from bbrctl.errors import UserError
from bbrctl.simulate import descent as E
from bbrctl.simulate import protocol as P
from bbrctl.simulate.reference import get_reference_loss

SIX = ("iou", "giou", "diou", "ciou", "eiou", "focal_eiou")


# ---------------------------------------------------------------------------- protocol

def test_pair_counts_are_the_papers():
    assert P.make_config(setup=1).n_pairs == 1000 * 49 * 7 == 343_000
    assert P.make_config(setup=2).n_pairs == 100 * 9 * 3 == 2_700
    cfg = P.make_config(setup=2)
    a, t = P.build_pairs(cfg)
    assert a.shape == t.shape == (2_700, 4)
    cfg1 = P.make_config(setup=1, points=3)
    a1, t1 = P.build_pairs(cfg1)
    assert a1.shape == (3 * 49 * 7, 4) and cfg1.n_pairs == a1.shape[0]


@pytest.mark.parametrize("setup", [1, 2])
@pytest.mark.parametrize("area", [1.0, 100.0])
def test_anchor_and_target_geometry(setup, area):
    cfg = P.make_config(setup=setup, target_area=area, dtype="float64", points=5)
    spec = cfg.spec
    a, t = P.build_pairs(cfg)
    n, s, k = 5, spec.anchors_per_point, len(spec.target_ratios)
    a = a.reshape(n, s, k, 4)
    t = t.reshape(n, s, k, 4)
    # Targets: all at (10, 10), area = target_area ("scale 100"), the setup's ratios.
    assert torch.allclose(t[..., :2], torch.tensor(10.0, dtype=torch.float64))
    assert torch.allclose(t[..., 2] * t[..., 3], torch.tensor(area, dtype=torch.float64))
    assert sorted({round(r, 9) for r in (t[0, 0, :, 2] / t[0, 0, :, 3]).tolist()}) == \
        sorted(round(r, 9) for r in spec.target_ratios)
    # Anchors: every (ratio, scale) once per point, area = target_area * scale / 100.
    got = {(round(w / h, 9), round(w * h / area * 100, 6)) for w, h in a[0, :, 0, 2:].tolist()}
    want = {(round(r, 9), round(sc, 6)) for r in spec.ratios for sc in spec.scales}
    assert got == want and len(got) == s
    # Each anchor is paired with every target; centres are shared by the point's anchors.
    assert torch.equal(a[:, :, :1].expand_as(a), a)
    assert torch.equal(a[:, :1, :, :2].expand(n, s, k, 2), a[..., :2])
    x0, y0, x1, y1 = spec.region
    c = a[:, 0, 0, :2]
    assert bool(((c[:, 0] >= x0) & (c[:, 0] <= x1) & (c[:, 1] >= y0) & (c[:, 1] <= y1)).all())


def test_setup2_region_is_the_square_of_side_2_5_at_10_10():
    assert P.SETUPS[2].region == (8.75, 8.75, 11.25, 11.25)
    assert P.SETUPS[1].region == (0.0, 0.0, 20.0, 20.0)


def test_step_schedule():
    mus = [P.step_size(t, 200) for t in range(1, 201)]
    assert mus.count(0.1) == 160 and mus.count(0.01) == 20 and mus.count(0.001) == 20
    assert (P.step_size(160, 200), P.step_size(161, 200), P.step_size(180, 200), P.step_size(181, 200)) == \
        (0.1, 0.01, 0.01, 0.001)
    assert mus == sorted(mus, reverse=True)
    assert P.step_size(1, 1) == 0.001 and P.step_size(8, 10) == 0.1 and P.step_size(9, 10) == 0.01


def test_seed_fixes_the_points_and_only_the_seed():
    a = P.sample_points(P.make_config(setup=1, seed=3))
    torch.manual_seed(12345)  # the global RNG must not matter
    b = P.sample_points(P.make_config(setup=1, seed=3))
    c = P.sample_points(P.make_config(setup=1, seed=4))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("kw, needle", [
    ({"setup": 3}, "--setup 3"),
    ({"losses": "eiou,foo"}, "'foo'"),
    ({"losses": "l1"}, "IoU-family"),
    ({"losses": "eiou,eiou"}, "twice"),
    ({"losses": ""}, "empty"),
    ({"iterations": 0}, "--iterations"),
    ({"points": 0}, "--points"),
    ({"target_area": 0.0}, "--target-area"),
    ({"target_area": float("inf")}, "--target-area"),
    ({"gamma": -1.0}, "--gamma"),
    ({"beta": 2.0, "losses": "focal_eiou_v1"}, "--beta"),
    ({"dtype": "float16"}, "--dtype"),
    ({"focal_reduction": "mean"}, "--focal-reduction"),
    ({"quantile_every": 0}, "--quantile-every"),
])
def test_bad_settings_are_one_line_user_errors(kw, needle):
    with pytest.raises(UserError) as e:
        P.make_config(**kw)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg


def test_signature_tracks_result_settings():
    base = P.make_config(setup=2)
    assert base.signature() == P.make_config(setup=2).signature()
    for kw in ({"seed": 1}, {"gamma": 1.0}, {"scale_step": False}, {"target_area": 100.0}, {"losses": "eiou"}):
        assert P.make_config(setup=2, **kw).signature() != base.signature(), kw


# ---------------------------------------------------------------------------- engine

def test_every_loss_lowers_the_error_on_setup2():
    """The sign of the step: on setup 2 (all 2,700 pairs) every loss's E(t) goes down."""
    cfg = P.make_config(setup=2, losses=",".join(P.SIM_LOSSES), iterations=40)
    traces = E.simulate(cfg, "cpu")
    for name, tr in traces.items():
        e = tr.error
        assert len(e) == cfg.iterations + 1
        assert e[1] < e[0] and e[10] < e[0] and e[-1] < e[0], name
        assert tr.summary()["mean_iou"] > tr.records[0]["mean"], name
    # Losses with a distance term move disjoint pairs too: well past IoU's error by t = 40.
    for name in ("giou", "diou", "ciou", "eiou"):
        assert traces[name].error[-1] < 0.5 * traces["iou"].error[-1], name


@pytest.mark.parametrize("scale_step", [True, False])
def test_ascending_instead_would_raise_the_error(scale_step):
    """A loss negated (i.e. the '+' of Algorithm 1 applied to the loss) must make E(t) worse."""
    eiou = get_reference_loss("eiou")

    def negated(name, **params):
        def fn(pred, target, weight=None, reduction="none"):
            return -eiou(pred, target, reduction=reduction)
        fn.name = name
        return fn

    cfg = P.make_config(setup=2, losses="eiou", iterations=10, scale_step=scale_step)
    up = E.simulate(cfg, "cpu", loss_factory=negated)["eiou"].error
    down = E.simulate(cfg, "cpu")["eiou"].error
    assert up[-1] > up[0] > down[-1]


@pytest.mark.parametrize("name", ["iou", "giou", "diou", "ciou", "eiou"])
def test_library_follows_the_reference_trajectories(name):
    """Same E(t) curve as the reference formulas. Boxes are compared pair by pair only for
    most pairs: the losses are piecewise smooth (min/max of edges), so a rounding-level
    difference (the library's eps is relative to |C|, the reference's absolute) can put a
    pair on the other side of a kink and its path then differs by O(µ)."""
    cfg = P.make_config(setup=2, losses=name, iterations=30, dtype="float64")
    lib = E.simulate(cfg, "cpu", keep_final=True)[name]
    ref = E.simulate(cfg, "cpu", keep_final=True, loss_factory=get_reference_loss)[name]
    assert lib.error == pytest.approx(ref.error, rel=1e-4)
    close = ((lib.final_boxes - ref.final_boxes).abs() <= 1e-5).all(dim=1)
    assert close.double().mean() >= 0.99


def test_gradient_is_the_chain_rule_through_xywh():
    """loss_grad + descend_ == autograd with (x, y, w, h) as the leaf, one plain step."""
    g = torch.Generator().manual_seed(0)
    b = torch.cat([torch.rand(64, 2, generator=g, dtype=torch.float64) * 3,
                   0.2 + torch.rand(64, 2, generator=g, dtype=torch.float64)], 1)
    t = torch.tensor([[1.0, 1.0, 1.0, 1.0]], dtype=torch.float64).expand(64, 4)
    fn = E.default_loss_factory("ciou")
    leaf = b.clone().requires_grad_(True)
    xyxy = torch.cat([leaf[:, :2] - leaf[:, 2:] / 2, leaf[:, :2] + leaf[:, 2:] / 2], 1)
    txyxy = torch.cat([t[:, :2] - t[:, 2:] / 2, t[:, :2] + t[:, 2:] / 2], 1)
    (want,) = torch.autograd.grad(fn(xyxy, txyxy, reduction="none").sum(), leaf)
    rows = b.t().contiguous()
    gr = E.loss_grad(fn, rows, E.xywh_rows_to_xyxy(t.t().contiguous()), weighted=False, n_total=64)
    E.descend_(rows, gr, 0.1, None, 1e-9)
    assert torch.allclose(rows.t(), b - 0.1 * want, atol=1e-12)


def test_scaled_step_uses_2_minus_iou():
    b = torch.tensor([[0.0], [0.0], [1.0], [1.0]], dtype=torch.float64)
    g = torch.tensor([[1.0], [2.0], [3.0], [5.0]], dtype=torch.float64)
    plain, scaled = b.clone(), b.clone()
    E.descend_(plain, g, 0.1, None, 1e-9)
    E.descend_(scaled, g, 0.1, torch.tensor([0.25], dtype=torch.float64), 1e-9)
    assert torch.allclose(scaled - b, (plain - b) * 1.75)


def test_sides_stay_positive():
    b = torch.tensor([[0.0], [0.0], [0.01], [1.0]])
    g = torch.tensor([[-10.0], [0.0], [10.0], [0.0]])   # pushes w far below zero
    E.descend_(b, g, 0.1, None, 1e-3)
    assert b[2, 0] == pytest.approx(1e-3) and b[3, 0] == 1.0


def test_focal_eiou_applies_eq11_over_all_pairs():
    """Per-pair gradient = P · W_i ∂L_EIoU,i / Σ_j W_j with W = IoU^γ held constant."""
    cfg = P.make_config(setup=2, points=4, dtype="float64")
    a, t = P.build_pairs(cfg)
    rows, trows = a.t().contiguous(), t.t().contiguous()
    txyxy = E.xywh_rows_to_xyxy(trows)
    gamma = 0.5
    focal = E.default_loss_factory("focal_eiou", gamma=gamma)
    assert "weighted" in focal.reductions
    got = E.loss_grad(focal, rows, txyxy, weighted=True, n_total=a.shape[0])
    ge = E.loss_grad(E.default_loss_factory("eiou"), rows, txyxy, weighted=False, n_total=a.shape[0])
    w = E.iou_rows(rows, trows, trows[2] * trows[3]) ** gamma
    assert (w == 0).any() and (w > 0).any()
    want = ge * (a.shape[0] * w / w.sum())
    assert torch.allclose(got, want, atol=1e-9, rtol=1e-6)


def test_simulate_picks_eq11_for_focal_losses_only():
    seen = {}

    def spy(name, **params):
        fn = E.default_loss_factory(name, **params)

        def call(pred, target, weight=None, reduction=None):
            seen.setdefault(name, set()).add(reduction)
            return fn(pred, target, reduction=reduction)
        call.name, call.reductions = name, fn.reductions
        return call

    cfg = P.make_config(setup=2, points=2, iterations=2, losses="eiou,focal_eiou,focal_eiou_star,focal_eiou_v1")
    E.simulate(cfg, "cpu", loss_factory=spy)
    assert seen == {"eiou": {"none"}, "focal_eiou": {"weighted"}, "focal_eiou_star": {"weighted"},
                    "focal_eiou_v1": {"none"}}
    seen.clear()
    E.simulate(P.with_overrides(cfg, focal_reduction="none"), "cpu", loss_factory=spy)
    assert seen["focal_eiou"] == {"none"}


@pytest.mark.parametrize("name", ["iou", "focal_eiou"])
def test_dropping_frozen_pairs_changes_nothing(name):
    """Compaction (CPU default) vs computing every pair every iteration: same boxes, same E."""
    cfg = P.make_config(setup=1, points=6, losses=name, iterations=40, dtype="float64", focal_reduction="none")
    a, t = P.build_pairs(cfg)
    fn = E.default_loss_factory(name, **cfg.loss_params(name))
    on = E.regress(fn, a, t, cfg, compact=True, keep_final=True, compact_every=3)
    off = E.regress(fn, a, t, cfg, compact=False, keep_final=True)
    assert on.frozen_pairs > a.shape[0] // 2     # most setup-1 pairs are disjoint
    assert torch.equal(on.final_boxes, off.final_boxes)
    assert max(abs(x - y) for x, y in zip(on.error, off.error)) <= 1e-9 * on.error[0]
    assert all(r1 == pytest.approx(r2, abs=1e-12) for r1, r2 in zip(on.records, off.records))


@pytest.mark.parametrize("name", ["giou", "ciou", "eiou"])
def test_chunks_change_nothing(name):
    """Per-pair losses evaluated a chunk of pairs at a time (the CPU default) vs all at once."""
    cfg = P.make_config(setup=1, points=10, losses=name, iterations=25, dtype="float64")
    a, t = P.build_pairs(cfg)
    fn = E.default_loss_factory(name)
    whole = E.regress(fn, a, t, cfg, chunk=0, compact=False, keep_final=True)
    parts = E.regress(fn, a, t, cfg, chunk=1000, keep_final=True)        # 3,430 pairs: 4 chunks
    assert torch.equal(whole.final_boxes, parts.final_boxes)
    assert parts.error == pytest.approx(whole.error, rel=1e-13)
    assert parts.records == whole.records


def test_same_seed_same_numbers():
    cfg = P.make_config(setup=2, iterations=25, losses="eiou,focal_eiou")
    r1 = E.simulate(cfg, "cpu")
    r2 = E.simulate(cfg, "cpu")
    for name in cfg.losses:
        assert r1[name].error == r2[name].error and r1[name].records == r2[name].records
    r3 = E.simulate(P.with_overrides(cfg, seed=1), "cpu")
    assert r3["eiou"].error != r1["eiou"].error


def test_records_cover_boxplot_iterations_and_the_end():
    cfg = P.make_config(setup=2, points=5, iterations=37, quantile_every=10)
    tr = E.simulate(cfg, "cpu")["giou"]
    assert tr.record_iterations[0] == 0 and tr.record_iterations[-1] == 37
    assert set(P.boxplot_iterations(37)) <= set(tr.record_iterations)
    assert {0, 10, 20, 30} <= set(tr.record_iterations)
    assert set(tr.records[0]) == set(E.RECORD_FIELDS)
    s = tr.summary()
    for key in ("final_error", "mean_iou", "median_iou", "frac_iou_gt_0.5", "frac_iou_gt_0.75", "frac_iou_gt_0.9"):
        assert isinstance(s[key], float) and math.isfinite(s[key])
    assert s["median_iou"] == tr.records[-1]["q50"]


@given(st.lists(st.floats(0, 1, allow_nan=False, width=32), min_size=1, max_size=300))
def test_iou_record_matches_torch(values):
    x = torch.tensor(values, dtype=torch.float32)
    rec = dict(zip(E.RECORD_FIELDS, E.iou_record(x).tolist()))
    xd = x.double()
    q = torch.quantile(xd, torch.tensor(E.QUANTILES, dtype=torch.float64)).tolist()
    assert [rec[n] for n in E.QUANTILE_NAMES] == pytest.approx(q, abs=1e-12)
    assert rec["mean"] == pytest.approx(xd.mean().item(), abs=1e-12)
    for th in E.THRESHOLDS:
        assert rec[f"frac_iou_gt_{th:g}"] == pytest.approx((x > th).double().mean().item(), abs=1e-12)


@given(st.lists(st.tuples(st.floats(-3, 3), st.floats(-3, 3), st.floats(0.01, 3), st.floats(0.01, 3)),
                min_size=1, max_size=20))
def test_iou_rows_matches_the_library(boxes):
    b = torch.tensor(boxes, dtype=torch.float64)
    t = torch.tensor([[0.3, -0.2, 1.0, 2.0]], dtype=torch.float64).expand_as(b)
    rows, trows = b.t().contiguous(), t.t().contiguous()
    got = E.iou_rows(rows, trows, trows[2] * trows[3])
    from bbrctl.losses import box_iou_aligned

    want = box_iou_aligned(E.xywh_rows_to_xyxy(rows), E.xywh_rows_to_xyxy(trows))
    assert torch.allclose(got, want, atol=1e-12)


def test_setup1_reduced_runs_and_keeps_disjoint_iou_pairs_frozen():
    cfg = P.make_config(setup=1, points=3, iterations=60)
    traces = E.simulate(cfg, "cpu")
    iou, giou = traces["iou"], traces["giou"]
    # Pairs with no overlap give the IoU loss no gradient: the share of IoU = 0 cannot shrink.
    assert iou.frozen_pairs > 0.9 * cfg.n_pairs
    assert iou.records[-1]["q50"] == 0.0
    for name in ("giou", "diou", "ciou", "eiou"):
        assert traces[name].error[-1] < traces[name].error[0], name
    assert giou.error[-1] < iou.error[-1]
    if iou.frozen_pairs == cfg.n_pairs:        # every pair disjoint: nothing moves at all
        assert iou.error[-1] == iou.error[0]


def test_device_errors():
    with pytest.raises(UserError, match="--device 'tpu'"):
        E.resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            E.resolve_device("cuda")
        assert E.resolve_device("auto").type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():  # pragma: no cover - no GPU on the CI runners
    cfg = P.make_config(setup=2, dtype="float64", losses="giou,ciou,eiou", iterations=50)
    cpu = E.simulate(cfg, "cpu")
    gpu = E.simulate(cfg, "cuda")
    for name in cfg.losses:
        assert gpu[name].error[-1] == pytest.approx(cpu[name].error[-1], rel=1e-6)


def test_engine_chunks_are_loss_blocks():
    # One chunk of pairs must be one CPU block of the fused loss (no ragged second block).
    from bbrctl.losses import boxes
    from bbrctl.simulate import descent as engine

    assert engine.CPU_CHUNK == boxes.CPU_BLOCK
