"""The successor losses in the simulation (Algorithm 1): MPDIoU normalised by the canvas,
Wise-IoU's running mean updated once per iteration over all pairs, and the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from bbrctl.simulate import descent as E
from bbrctl.simulate import protocol as P
from helpers import run_cli


def _spy_factory(calls):
    def factory(name, **params):
        fn = E.default_loss_factory(name, **params)
        inner = fn._fn

        if name == "mpdiou":
            def spy(pred, target, image_size=None, **kw):    # keeps the keyword visible
                calls.append((pred.shape[0], image_size))
                return inner(pred, target, image_size=image_size, **kw)
        else:
            def spy(pred, target, **kw):
                calls.append((pred.shape[0], None))
                return inner(pred, target, **kw)

        fn._fn = spy
        return fn
    return factory


@pytest.mark.parametrize("area", [1.0, 4.0])
def test_mpdiou_is_normalised_by_the_canvas(area):
    calls = []
    cfg = P.make_config(setup=2, points=3, iterations=4, losses="mpdiou", target_area=area)
    E.simulate(cfg, "cpu", loss_factory=_spy_factory(calls))
    side = P.CANVAS * area ** 0.5
    assert calls and all(size == (side, side) for _, size in calls)


def test_wise_iou_mean_is_updated_once_per_iteration_over_every_pair():
    calls = []
    seen = {}

    def factory(name, **params):
        fn = _spy_factory(calls)(name, **params)
        seen[name] = fn
        return fn

    cfg = P.make_config(setup=1, points=200, iterations=6, losses="wiou_v3")
    assert cfg.n_pairs > E.CPU_CHUNK                                   # would be chunked otherwise
    E.simulate(cfg, "cpu", loss_factory=factory)
    assert [n for n, _ in calls] == [cfg.n_pairs] * cfg.iterations      # no chunks, no dropped pairs
    assert 0.0 < float(seen["wiou_v3"].state.value) < 1.0


def test_cli_runs_the_successors_beside_the_papers_losses(tmp_path):
    out = run_cli(["simulate", "--setup", "2", "--points", "3", "--iterations", "5", "--no-plots", "-q",
                   "--losses", "eiou,focal_eiou,siou,alpha_iou,wiou_v1,wiou_v2,wiou_v3,mpdiou,inner_iou,shape_iou,"
                   "focaler_iou", "--out", str(tmp_path / "sim")], tmp_path, timeout=200)
    assert out.returncode == 0, out.stderr
    summary = json.loads(next((tmp_path / "sim").rglob("summary.json")).read_text())
    text = json.dumps(summary)
    for name in ("siou", "wiou_v3", "mpdiou", "focaler_iou"):
        assert f'"{name}"' in text
    bad = run_cli(["simulate", "--setup", "2", "--losses", "siou,smooth_l1", "-q", "--out", str(tmp_path / "x")],
                  tmp_path, timeout=100)
    assert bad.returncode == 2 and "siou" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()
