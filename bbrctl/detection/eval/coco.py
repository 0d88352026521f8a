"""COCO evaluation of detections, with faster-coco-eval (C++ COCOeval).

    results = to_coco_results(outputs, image_ids, label_to_cat_id)   # model outputs -> COCO
    metrics = evaluate_detections(ann_file, results, iou_type="bbox")
    # {"AP": 41.2, "AP50": ..., "AP75": ..., "APs": ..., "APm": ..., "APl": ...}  (percent)

The numbers are COCOeval's ``stats[0:6]`` times 100: AP averaged over IoU thresholds
0.50:0.05:0.95 and over categories, AP at IoU 0.5 and 0.75, and AP over objects of area
< 32^2, 32^2-96^2 and > 96^2 px (areas of the ground truth's annotation ``area``, of the
detection's box for bbox and mask for segm), up to 100 detections per image. Crowd
annotations are ignore regions and images without annotations count their false
positives, exactly as pycocotools does: tests/test_evaluate.py checks the numbers against
pycocotools' COCOeval on the same detections.

A metric COCO leaves undefined (-1: no ground truth in that area range among the
evaluated images) is reported as NaN, not as a number that could be averaged by mistake.
No detections at all gives 0 for every defined metric.
"""

from __future__ import annotations

import math
import os
from typing import Any, Iterable, Mapping, Sequence

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
IOU_TYPES = ("bbox", "segm")


def evaluate_detections(ann_file: str | os.PathLike | dict, detections: Sequence[Mapping[str, Any]],
                        iou_type: str = "bbox", img_ids: Iterable[int] | None = None) -> dict[str, float]:
    """COCO AP metrics (percent) of ``detections`` against the ground truth ``ann_file``.

    ``detections``: dicts with image_id, category_id, score and bbox [x, y, w, h] (bbox) or
    segmentation as RLE (segm; a bbox entry is ignored there so that areas come from the
    masks, as detectron2 does). ``img_ids`` restricts the evaluation to those images
    (default: every image of the annotation file). The inputs are not modified.
    """
    return evaluate_with_categories(ann_file, detections, iou_type, img_ids)[0]


def evaluate_with_categories(ann_file: str | os.PathLike | dict, detections: Sequence[Mapping[str, Any]],
                             iou_type: str = "bbox", img_ids: Iterable[int] | None = None
                             ) -> tuple[dict[str, float], list[dict]]:
    """:func:`evaluate_detections` and :func:`per_category_ap` from one COCOeval pass."""
    from faster_coco_eval import COCO, COCOeval_faster

    if iou_type not in IOU_TYPES:
        raise ValueError(f"iou_type must be one of {', '.join(IOU_TYPES)}, got {iou_type!r}")
    gt = COCO(_gt_source(ann_file))
    dets = _prepare(detections, iou_type, set(gt.getImgIds()))
    dt = gt.loadRes(dets)
    ev = COCOeval_faster(gt, dt, iou_type, print_function=_quiet)
    if img_ids is not None:
        ids = sorted({int(i) for i in img_ids})
        unknown = sorted(set(ids) - set(gt.getImgIds()))
        if unknown:
            raise ValueError(f"img_ids not in {_name(ann_file)}: {unknown[:10]}")
        ev.params.imgIds = ids
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    names = {int(c["id"]): str(c.get("name", c["id"])) for c in gt.loadCats(gt.getCatIds())}
    return stats_to_metrics(ev.stats), per_category_ap(ev.eval["precision"], ev.params.catIds,
                                                       ev.params.iouThrs, ev.params.maxDets, names)


def per_category_ap(precision, cat_ids: Sequence[int], iou_thrs: Sequence[float], max_dets: Sequence[int],
                    names: Mapping[int, str] | None = None) -> list[dict]:
    """AP, AP50 and AP75 (percent) of each category from COCOeval's accumulated precision.

    ``precision`` is ``COCOeval.eval["precision"]``, shape [T IoU thresholds, R recall
    points, K categories, A area ranges, M max-detection settings], -1 where undefined.
    A category's AP is the mean over T and R of its column at area "all" and the largest
    max-detections setting: what COCOeval's ``stats[0:3]`` give when evaluated on that one
    category (tests/test_evaluate.py checks this against pycocotools). A category without
    ground truth among the evaluated images gets NaN.
    """
    import numpy as np

    p = np.asarray(precision, dtype=np.float64)
    thrs = np.asarray(iou_thrs, dtype=np.float64)
    m = len(max_dets) - 1
    out = []
    for k, cat in enumerate(cat_ids):
        col = p[:, :, k, 0, m]

        def mean(block) -> float:
            valid = block[block > -1]
            return float(valid.mean() * 100.0) if valid.size else math.nan

        row = {"category_id": int(cat), "name": (names or {}).get(int(cat), str(int(cat))), "AP": mean(col)}
        for key, thr in (("AP50", 0.5), ("AP75", 0.75)):
            t = np.where(np.isclose(thrs, thr))[0]
            row[key] = mean(col[t]) if t.size else math.nan
        out.append(row)
    return out


def stats_to_metrics(stats: Sequence[float]) -> dict[str, float]:
    """COCOeval.stats[0:6] (fractions, -1 undefined) -> {AP..APl} in percent, NaN undefined."""
    out = {}
    for key, v in zip(METRICS, list(stats)[:6]):
        v = float(v)
        out[key] = v * 100.0 if v >= 0 else math.nan
    return out


def _quiet(*args, **kwargs) -> None:
    pass


def _gt_source(ann_file):
    if isinstance(ann_file, dict):
        import copy

        return copy.deepcopy(ann_file)  # COCO() indexes and annotates the dict in place
    path = os.fspath(ann_file)
    if not os.path.isfile(path):
        from bbrctl.errors import UserError

        raise UserError(f"annotation file {path!r} does not exist")
    return path


def _name(ann_file) -> str:
    return "the ground truth" if isinstance(ann_file, dict) else repr(os.fspath(ann_file))


def _prepare(detections: Sequence[Mapping[str, Any]], iou_type: str, gt_img_ids: set) -> list[dict]:
    """Copies of the detections as plain Python numbers, checked; loadRes mutates its input."""
    out = []
    for k, d in enumerate(detections):
        try:
            img_id = int(d["image_id"])
            rec = {"image_id": img_id, "category_id": int(d["category_id"]), "score": float(d["score"])}
            if iou_type == "segm":
                seg = d["segmentation"]
                counts = seg["counts"]
                rec["segmentation"] = {"size": [int(x) for x in seg["size"]],
                                       "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}
            else:
                rec["bbox"] = [float(x) for x in d["bbox"]]
                if len(rec["bbox"]) != 4:
                    raise ValueError("bbox must have 4 numbers")
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"detection #{k} is not a COCO {iou_type} result ({type(e).__name__}: {e}): {dict(d)!r:.200}") from None
        if img_id not in gt_img_ids:
            raise ValueError(f"detection #{k} is for image id {img_id}, which the ground truth does not have")
        out.append(rec)
    return out


def to_coco_results(outputs: Sequence[Mapping[str, Any]], image_ids: Sequence[int],
                    label_to_cat_id: Mapping[int, int], mask_threshold: float = 0.5) -> list[dict]:
    """torchvision detector outputs -> COCO result dicts.

    ``outputs[i]`` (for image ``image_ids[i]``) has ``boxes`` (N, 4) xyxy in the image's
    pixels, ``scores`` (N,), ``labels`` (N,) contiguous, and optionally ``masks``
    (N, 1, H, W) probabilities (Mask R-CNN), binarised at ``mask_threshold`` and
    RLE-encoded. Tensors may live on any device; one copy to the host per image.
    """
    import numpy as np

    if len(outputs) != len(image_ids):
        raise ValueError(f"{len(outputs)} outputs for {len(image_ids)} image ids")
    results: list[dict] = []
    for out, img_id in zip(outputs, image_ids):
        boxes = _numpy(out["boxes"]).astype(np.float64).reshape(-1, 4)
        scores = _numpy(out["scores"]).astype(np.float64).reshape(-1)
        labels = _numpy(out["labels"]).astype(np.int64).reshape(-1)
        if not (len(boxes) == len(scores) == len(labels)):
            raise ValueError(f"image {img_id}: {len(boxes)} boxes, {len(scores)} scores, {len(labels)} labels")
        # Label 0 is the background slot of torchvision's heads: a detection of it (possible
        # with model.score_thresh near 0) is no object.
        keep = labels != 0
        masks = out.get("masks") if hasattr(out, "get") else None
        if not keep.all():
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            if masks is not None:
                masks = _numpy(masks)[keep]      # the one host copy masks_to_rle makes anyway
        try:
            cats = [int(label_to_cat_id[int(l)]) for l in labels]
        except KeyError as e:
            raise ValueError(f"image {img_id}: label {e.args[0]} has no category (labels: {sorted(label_to_cat_id)})") from None
        xywh = boxes.copy()
        xywh[:, 2:] -= xywh[:, :2]
        rles = None
        if masks is not None:
            rles = masks_to_rle(masks, mask_threshold)
        for j in range(len(boxes)):
            rec = {"image_id": int(img_id), "category_id": cats[j],
                   "bbox": [float(v) for v in xywh[j]], "score": float(scores[j])}
            if rles is not None:
                rec["segmentation"] = rles[j]
            results.append(rec)
    return results


def masks_to_rle(masks, threshold: float = 0.5) -> list[dict]:
    """(N, 1, H, W) or (N, H, W) mask probabilities -> compressed RLEs (counts as str)."""
    import numpy as np
    from pycocotools import mask as mask_utils

    m = _numpy(masks)
    if m.ndim == 4:
        m = m[:, 0]
    if m.ndim != 3:
        raise ValueError(f"masks must be (N, 1, H, W) or (N, H, W), got shape {m.shape}")
    binary = np.asfortranarray((m > threshold).transpose(1, 2, 0).astype(np.uint8))
    if binary.shape[2] == 0:
        return []
    rles = mask_utils.encode(binary)
    return [{"size": [int(s) for s in r["size"]], "counts": r["counts"].decode("ascii")} for r in rles]


def _numpy(x):
    import numpy as np

    if hasattr(x, "detach"):  # a torch tensor
        return x.detach().to("cpu").numpy()
    return np.asarray(x)


class CocoEvaluator:
    """Collect results batch by batch, then compute the metrics for each IoU type.

        ev = CocoEvaluator(val_ds.ann_file, contiguous_to_cat_id(val_ds), iou_types=("bbox",))
        for images, targets in loader:
            ev.update(model(images), [t["image_id"] for t in targets])
        metrics = ev.compute()      # {"bbox": {"AP": ..}, "segm": {...}}
        ev.per_category             # {"bbox": [{"category_id", "name", "AP", "AP50", "AP75"}, ...]}

    With DDP, gather ``ev.results`` and ``ev.image_ids`` on rank 0 and ``extend`` them.
    Only the evaluated images count (``img_ids``), so a subset evaluation is fair.
    """

    def __init__(self, ann_file: str | os.PathLike, label_to_cat_id: Mapping[int, int],
                 iou_types: Sequence[str] = ("bbox",), mask_threshold: float = 0.5):
        for t in iou_types:
            if t not in IOU_TYPES:
                raise ValueError(f"iou_type must be one of {', '.join(IOU_TYPES)}, got {t!r}")
        self.ann_file = ann_file
        self.label_to_cat_id = dict(label_to_cat_id)
        self.iou_types = tuple(iou_types)
        self.mask_threshold = mask_threshold
        self.results: list[dict] = []
        self.image_ids: list[int] = []
        self.per_category: dict[str, list[dict]] = {}   # filled by compute()

    def update(self, outputs: Sequence[Mapping[str, Any]], image_ids: Sequence[int]) -> None:
        ids = [int(i) for i in image_ids]
        self.results.extend(to_coco_results(outputs, ids, self.label_to_cat_id, self.mask_threshold))
        self.image_ids.extend(ids)

    def extend(self, results: Iterable[dict], image_ids: Iterable[int]) -> None:
        self.results.extend(results)
        self.image_ids.extend(int(i) for i in image_ids)

    def compute(self) -> dict[str, dict[str, float]]:
        if not self.image_ids:
            raise ValueError("nothing to evaluate: no images were passed to update()")
        metrics = {}
        for t in self.iou_types:
            metrics[t], self.per_category[t] = evaluate_with_categories(self.ann_file, self.results, t,
                                                                        img_ids=self.image_ids)
        return metrics
