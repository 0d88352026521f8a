"""COCO evaluation: faster-coco-eval's numbers must be pycocotools' numbers."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math

import numpy as np
import pytest

from bbrctl.detection.eval.coco import (METRICS, CocoEvaluator, evaluate_detections, masks_to_rle,
                                       stats_to_metrics, to_coco_results)

CATS = [{"id": 3, "name": "a"}, {"id": 7, "name": "b"}, {"id": 11, "name": "c"}]


def _box_mask(h, w, box):
    m = np.zeros((h, w), dtype=np.uint8)
    x, y, bw, bh = (int(round(v)) for v in box)
    m[y:y + bh, x:x + bw] = 1
    return m


def make_gt(seed: int, n_images: int = 12, size: int = 200, crowd: bool = True) -> dict:
    """Random GT over all three area ranges, with crowd regions and empty images."""
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(seed)
    images, anns = [], []
    for i in range(1, n_images + 1):
        images.append({"id": i, "file_name": f"{i}.jpg", "width": size, "height": size})
        if i % 5 == 0:
            continue  # an image without annotations: its detections are false positives
        for _ in range(int(rng.integers(1, 6))):
            side = float(np.exp(rng.uniform(np.log(8), np.log(150))))
            ar = float(np.exp(rng.uniform(-1, 1)))
            w, h = min(size - 2, round(side * ar ** 0.5)), min(size - 2, round(side / ar ** 0.5))
            x, y = float(rng.integers(0, size - w)), float(rng.integers(0, size - h))
            is_crowd = crowd and rng.random() < 0.12
            m = _box_mask(size, size, [x, y, w, h])
            rle = mask_utils.encode(np.asfortranarray(m))
            seg = ({"size": [size, size], "counts": rle["counts"].decode()} if is_crowd
                   else [[x, y, x + w, y, x + w, y + h, x, y + h]])
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(rng.choice([3, 7, 11])),
                         "bbox": [x, y, float(w), float(h)], "area": float(w * h), "iscrowd": int(is_crowd),
                         "segmentation": seg})
    return {"images": images, "annotations": anns, "categories": CATS}


def make_dets(gt: dict, seed: int, segm: bool = False) -> list[dict]:
    """Jittered copies of the GT (some relabelled) plus false positives, random scores."""
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(seed + 1000)
    size = gt["images"][0]["width"]
    dets = []
    for a in gt["annotations"]:
        for _ in range(int(rng.integers(0, 3))):
            x, y, w, h = a["bbox"]
            j = rng.normal(0, 0.12, 4) * np.array([w, h, w, h])
            box = [float(np.clip(x + j[0], 0, size - 2)), float(np.clip(y + j[1], 0, size - 2)),
                   float(max(1.0, w + j[2])), float(max(1.0, h + j[3]))]
            cat = a["category_id"] if rng.random() < 0.85 else int(rng.choice([3, 7, 11]))
            dets.append({"image_id": a["image_id"], "category_id": cat, "bbox": box, "score": float(rng.random())})
    for im in gt["images"]:
        for _ in range(int(rng.integers(0, 4))):
            w, h = (float(v) for v in rng.uniform(4, 90, 2))
            x, y = (float(v) for v in rng.uniform(0, size - 92, 2))
            dets.append({"image_id": im["id"], "category_id": int(rng.choice([3, 7, 11])),
                         "bbox": [x, y, w, h], "score": float(rng.random())})
    if segm:
        for d in dets:
            box = d["bbox"]
            rle = mask_utils.encode(np.asfortranarray(_box_mask(size, size, box)))
            d["segmentation"] = {"size": [size, size], "counts": rle["counts"].decode()}
    return dets


def pycocotools_stats(gt: dict, dets: list[dict], iou_type: str, tmp_path, img_ids=None,
                      cat_ids=None) -> list[float]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(path))
        dts = copy.deepcopy(dets)
        if iou_type == "segm":
            for d in dts:
                d.pop("bbox", None)  # areas from masks, as evaluate_detections does
        coco_dt = coco_gt.loadRes(dts)
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        if img_ids is not None:
            ev.params.imgIds = sorted(img_ids)
        if cat_ids is not None:
            ev.params.catIds = list(cat_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return list(ev.stats)


def assert_same(ours: dict, ref_stats: list[float]):
    ref = stats_to_metrics(ref_stats)
    for k in METRICS:
        if math.isnan(ref[k]):
            assert math.isnan(ours[k]), (k, ours[k])
        else:
            assert ours[k] == pytest.approx(ref[k], abs=1e-6), (k, ours[k], ref[k])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bbox_metrics_equal_pycocotools(seed, tmp_path):
    gt = make_gt(seed)
    assert any(a["iscrowd"] for a in gt["annotations"])  # crowd regions are exercised
    dets = make_dets(gt, seed)
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    before = copy.deepcopy(dets)
    ours = evaluate_detections(path, dets, "bbox")
    assert dets == before  # inputs untouched
    ref = pycocotools_stats(gt, dets, "bbox", tmp_path)
    assert 5 < ours["AP"] < 95  # a non-degenerate case
    assert_same(ours, ref)


def test_segm_metrics_equal_pycocotools(tmp_path):
    gt = make_gt(5)
    dets = make_dets(gt, 5, segm=True)
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    ours = evaluate_detections(path, dets, "segm")
    assert_same(ours, pycocotools_stats(gt, dets, "segm", tmp_path))
    assert 5 < ours["AP"] < 95


def test_image_subset_equals_pycocotools(tmp_path):
    gt = make_gt(3)
    dets = make_dets(gt, 3)
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    ids = [1, 2, 5, 7, 8]
    ours = evaluate_detections(path, dets, "bbox", img_ids=ids)
    assert_same(ours, pycocotools_stats(gt, dets, "bbox", tmp_path, img_ids=ids))
    assert ours != evaluate_detections(path, dets, "bbox")


def test_empty_detections_give_zeros(tmp_path):
    gt = make_gt(0)
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    assert evaluate_detections(path, [], "bbox") == {k: 0.0 for k in METRICS}
    assert evaluate_detections(path, [], "segm") == {k: 0.0 for k in METRICS}
    # Detections on images without ground truth only: still zeros, and as pycocotools says.
    dets = [{"image_id": 5, "category_id": 3, "bbox": [1.0, 1.0, 20.0, 20.0], "score": 0.9}]
    ours = evaluate_detections(path, dets, "bbox")
    assert ours == {k: 0.0 for k in METRICS}
    assert_same(ours, pycocotools_stats(gt, dets, "bbox", tmp_path))


def test_perfect_detections_score_100_and_missing_range_is_nan(tmp_path):
    gt = make_gt(4, crowd=False)
    # Keep only small and medium objects: COCO leaves APl undefined (-1) -> NaN.
    gt["annotations"] = [a for a in gt["annotations"] if a["area"] < 96 ** 2]
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
            for a in gt["annotations"]]
    ours = evaluate_detections(gt, dets, "bbox")  # a dict works as the ground truth too
    assert all(ours[k] == pytest.approx(100.0) for k in ("AP", "AP50", "AP75", "APs", "APm"))
    assert math.isnan(ours["APl"])
    assert_same(ours, pycocotools_stats(gt, dets, "bbox", tmp_path))


def test_bad_detections_are_named(tmp_path):
    gt = make_gt(0)
    with pytest.raises(ValueError, match="image id 999"):
        evaluate_detections(gt, [{"image_id": 999, "category_id": 3, "bbox": [0, 0, 1, 1], "score": 1}])
    with pytest.raises(ValueError, match="detection #1"):
        evaluate_detections(gt, [{"image_id": 1, "category_id": 3, "bbox": [0, 0, 1, 1], "score": 1},
                                 {"image_id": 1, "category_id": 3, "score": 1}])
    with pytest.raises(ValueError, match="iou_type"):
        evaluate_detections(gt, [], "keypoints")


def test_to_coco_results_converts_boxes_labels_and_masks():
    import torch
    from faster_coco_eval.core import mask as mask_utils  # pycocotools' decode warns under numpy 2

    probs = torch.zeros(2, 1, 20, 30)
    probs[0, 0, 2:5, 3:9] = 0.9
    probs[1, 0, 10:20, 0:30] = 0.6
    probs[1, 0, 12, 4] = 0.4  # below the threshold: a hole
    out = {"boxes": torch.tensor([[3.0, 2.0, 9.0, 5.0], [0.0, 10.0, 30.0, 20.0]]),
           "scores": torch.tensor([0.9, 0.3]), "labels": torch.tensor([2, 1]), "masks": probs}
    res = to_coco_results([out], [42], {1: 3, 2: 7})
    assert [r["category_id"] for r in res] == [7, 3]
    assert res[0]["bbox"] == [3.0, 2.0, 6.0, 3.0] and res[1]["bbox"] == [0.0, 10.0, 30.0, 10.0]
    assert [r["image_id"] for r in res] == [42, 42]
    assert res[0]["score"] == pytest.approx(0.9)
    json.dumps(res)  # plain Python: writable as a COCO results file
    for r, p in zip(res, probs):
        assert np.array_equal(mask_utils.decode(r["segmentation"]), (p[0] > 0.5).numpy().astype(np.uint8))
    assert to_coco_results([{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0)}],
                           [1], {1: 3}) == []
    assert masks_to_rle(torch.zeros(0, 1, 4, 4)) == []
    with pytest.raises(ValueError, match="label 5"):
        to_coco_results([{"boxes": torch.zeros(1, 4), "scores": torch.ones(1), "labels": torch.tensor([5])}], [1], {1: 3})


def test_evaluator_accumulates_batches(tmp_path):
    import torch

    gt = make_gt(6, crowd=False)
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    label_of = {3: 1, 7: 2, 11: 3}
    ev = CocoEvaluator(path, {v: k for k, v in label_of.items()}, iou_types=("bbox",))
    ids = [im["id"] for im in gt["images"]]
    for batch in (ids[:5], ids[5:]):
        outs = []
        for i in batch:
            anns = [a for a in gt["annotations"] if a["image_id"] == i]
            boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                                  for a in anns]).reshape(-1, 4)
            outs.append({"boxes": boxes, "scores": torch.ones(len(anns)),
                         "labels": torch.tensor([label_of[a["category_id"]] for a in anns], dtype=torch.int64)})
        ev.update(outs, batch)
    m = ev.compute()["bbox"]
    assert m["AP"] == pytest.approx(100.0) and m["AP75"] == pytest.approx(100.0)


# --------------------------------------------------------------------------- per-category AP


def _pycocotools_per_category(gt: dict, dets: list[dict], iou_type: str, tmp_path, cat_id: int) -> list[float]:
    """pycocotools' stats when it evaluates one category alone (params.catIds = [cat_id])."""
    return pycocotools_stats(gt, dets, iou_type, tmp_path, cat_ids=[cat_id])


@pytest.mark.parametrize("seed,iou_type", [(0, "bbox"), (4, "bbox"), (5, "segm")])
def test_per_category_ap_equals_pycocotools_on_each_category_alone(seed, iou_type, tmp_path):
    from bbrctl.detection.eval.coco import evaluate_with_categories

    gt = make_gt(seed)
    dets = make_dets(gt, seed, segm=iou_type == "segm")
    metrics, per_cat = evaluate_with_categories(gt, dets, iou_type)
    assert [r["category_id"] for r in per_cat] == [3, 7, 11]
    assert [r["name"] for r in per_cat] == ["a", "b", "c"]
    for row in per_cat:
        ref = stats_to_metrics(_pycocotools_per_category(gt, dets, iou_type, tmp_path, row["category_id"]))
        for key in ("AP", "AP50", "AP75"):
            assert row[key] == pytest.approx(ref[key], abs=1e-6), (row, key, ref[key])
    # The categories differ (the check is not passing on a constant), and the overall AP is
    # their mean, as COCO defines it.
    aps = [r["AP"] for r in per_cat]
    assert max(aps) - min(aps) > 1
    assert metrics["AP"] == pytest.approx(sum(aps) / len(aps), abs=1e-6)


def test_a_category_without_ground_truth_has_nan_ap(tmp_path):
    from bbrctl.detection.eval.coco import evaluate_with_categories

    gt = make_gt(1)
    gt["annotations"] = [a for a in gt["annotations"] if a["category_id"] != 7]
    dets = make_dets(gt, 1)
    dets.append({"image_id": 1, "category_id": 7, "bbox": [1.0, 1.0, 10.0, 10.0], "score": 0.9})
    _, per_cat = evaluate_with_categories(gt, dets, "bbox")
    by_id = {r["category_id"]: r for r in per_cat}
    assert math.isnan(by_id[7]["AP"]) and math.isnan(by_id[7]["AP50"])
    assert not math.isnan(by_id[3]["AP"])


def test_coco_evaluator_keeps_per_category_ap(tmp_path):
    gt = make_gt(2)
    dets = make_dets(gt, 2)
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    ev = CocoEvaluator(path, {1: 3, 2: 7, 3: 11})
    ev.extend(dets, [im["id"] for im in gt["images"]])
    metrics = ev.compute()
    assert set(ev.per_category) == {"bbox"} and len(ev.per_category["bbox"]) == 3
    assert metrics["bbox"]["AP"] == pytest.approx(sum(r["AP"] for r in ev.per_category["bbox"]) / 3, abs=1e-6)
