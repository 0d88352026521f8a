"""The main-job presets and what the embedded default changes against the paper's setting."""

from __future__ import annotations

import pytest

from bbrctl import sweep as S
from bbrctl.config import compose, to_container


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_table1_seeds_runs_the_headline_rows_with_three_seeds_in_table1s_sweep(in_tmp):
    plan = S.expand(["+experiment=table1_seeds"])
    got = sorted((j.config["loss"]["name"], j.config["seed"]) for j in plan.jobs)
    assert got == [(loss, s) for loss in ("baseline", "eiou", "focal_eiou") for s in (0, 1, 2)]
    assert plan.name == "table1"
    # Seed 0 of these rows is the same job as table1's: one run directory serves both.
    single = {j.config["loss"]["name"]: j.signature for j in S.expand(["+experiment=table1"]).jobs}
    for j in plan.jobs:
        if j.config["seed"] == 0:
            assert j.signature == single[j.config["loss"]["name"]]


def test_paper_scale_configs_keep_the_papers_settings():
    cfg = to_container(compose(["+experiment=table1", "data=coco", "schedule=paper_90k", "backbone=resnet50"]))
    m, b, s = cfg["model"], cfg["backbone"], cfg["schedule"]
    assert (m["extra_levels"], m["anchor_scales_per_octave"], m["aspect_ratios"]) == ("p6p7", 3, [0.5, 1.0, 2.0])
    assert (m["topk_candidates"], m["detections_per_img"], m["head_convs"]) == (1000, 100, 4)
    assert b["stem"] == "pool"
    assert (s["max_iter"], s["batch_size"], s["cpu_threads"], s["channels_last"]) == (90000, 16, None, False)
    assert s["cpu_amp"] in ("off", False)
    assert cfg["data"].get("cache_images") is False


def test_embedded_default_is_the_cpu_setting():
    cfg = to_container(compose([]))
    assert (cfg["model"]["extra_levels"], cfg["backbone"]["stem"]) == ("none", "conv3x2")
    assert (cfg["schedule"]["cpu_threads"], cfg["schedule"]["cpu_amp"], cfg["schedule"]["channels_last"]) == \
        (1, "auto", True)
    assert cfg["data"]["cache_images"] is True
    # FCOS and the R-CNNs keep their own pyramids on the small data.
    assert to_container(compose(["model=fcos"]))["model"]["extra_levels"] == "p6p7"
    assert to_container(compose(["model=faster_rcnn"]))["model"]["extra_levels"] == "pool"
