"""COCO-format datasets: parsing, COCO-protocol filtering, errors, items, flips, sampling."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bbrctl.detection.data import datasets as D
from bbrctl.errors import UserError


def write_coco(root, images, anns, cats=None, split="train"):
    """A COCO dataset on disk: images as (id, w, h) get real JPEG files."""
    from PIL import Image

    img_dir = root / split
    img_dir.mkdir(parents=True, exist_ok=True)
    recs = []
    for img_id, w, h in images:
        name = f"{img_id:04d}.jpg"
        arr = (np.arange(w * h * 3, dtype=np.uint32).reshape(h, w, 3) * (img_id + 7) % 251).astype(np.uint8)
        Image.fromarray(arr).save(img_dir / name, quality=95)
        recs.append({"id": img_id, "file_name": name, "width": w, "height": h})
    ann_file = root / "annotations" / f"instances_{split}.json"
    ann_file.parent.mkdir(parents=True, exist_ok=True)
    ann_file.write_text(json.dumps({"images": recs, "annotations": anns,
                                    "categories": cats or [{"id": 3, "name": "a"}, {"id": 10, "name": "b"}]}))
    return img_dir, ann_file


def ann(aid, img, cat, bbox, crowd=0, seg=None):
    x, y, w, h = bbox
    return {"id": aid, "image_id": img, "category_id": cat, "bbox": list(bbox), "area": float(max(w, 0) * max(h, 0)),
            "iscrowd": crowd, "segmentation": seg if seg is not None else [[x, y, x + w, y, x + w, y + h, x, y + h]]}


@pytest.fixture
def small_coco(tmp_path):
    images = [(1, 40, 30), (2, 50, 40), (3, 40, 30)]
    anns = [
        ann(1, 1, 3, [2, 3, 10, 8]),
        ann(2, 1, 10, [20, 5, 15, 20]),
        ann(3, 1, 10, [0, 0, 40, 30], crowd=1),      # crowd: ignore region, no target
        ann(4, 2, 3, [5, 5, 0, 10]),                 # zero width: dropped and counted
        ann(5, 2, 10, [30, 10, -4, 5]),              # negative width: dropped
        ann(6, 2, 10, [10, 10, 20, 15]),
        ann(7, 2, 3, [45, 35, 20, 20]),              # clipped to the image: [45, 35, 50, 40]
        # image 3: no annotations at all
    ]
    img_dir, ann_file = write_coco(tmp_path, images, anns)
    cfg = {"name": "coco", "train_images": str(img_dir), "train_ann": str(ann_file),
           "val_images": str(img_dir), "val_ann": str(ann_file)}
    return cfg, img_dir, ann_file


def test_items_follow_the_contract(small_coco):
    cfg, _, _ = small_coco
    with pytest.warns(D.DataWarning, match=r"dropped 2 annotation\(s\).*annotation 4, image id 2"):
        ds = D.build_dataset(cfg, "val")
    assert len(ds) == 3  # val keeps the image without annotations
    image, target = ds[0]
    assert image.dtype.is_floating_point and tuple(image.shape) == (3, 30, 40)
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert target["image_id"] == 1
    assert target["boxes"].tolist() == [[2, 3, 12, 11], [20, 5, 35, 25]]  # crowd excluded, xyxy
    assert str(target["boxes"].dtype) == "torch.float32"
    # Category ids 3 and 10 -> contiguous labels 1 and 2.
    assert target["labels"].tolist() == [1, 2] and str(target["labels"].dtype) == "torch.int64"
    assert target["area"].tolist() == [80.0, 300.0] and target["iscrowd"].tolist() == [0, 0]
    assert D.contiguous_to_cat_id(ds) == {1: 3, 2: 10}
    _, t2 = ds[1]
    assert t2["boxes"].tolist() == [[10, 10, 30, 25], [45, 35, 50, 40]]
    _, t3 = ds[2]
    assert tuple(t3["boxes"].shape) == (0, 4) and tuple(t3["labels"].shape) == (0,)
    assert ds.stats["crowd"] == 1 and ds.stats["dropped_degenerate"] == 2 and ds.stats["images_without_objects"] == 1


def test_train_split_drops_images_without_objects(small_coco):
    cfg, _, _ = small_coco
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", D.DataWarning)
        train = D.build_dataset(cfg, "train")
        kept = D.build_dataset(cfg, "train", drop_empty=False)
    assert train.image_ids == [1, 2] and kept.image_ids == [1, 2, 3]
    assert train.stats["dropped_empty_images"] == 1


def test_masks_from_polygons_and_rle(tmp_path):
    from pycocotools import mask as mask_utils

    m = np.zeros((30, 40), dtype=np.uint8)
    m[5:15, 10:30] = 1
    m[8:12, 15:20] = 0  # a hole: only RLE can say this
    rle = mask_utils.encode(np.asfortranarray(m))
    anns = [ann(1, 1, 3, [10, 5, 20, 10], seg={"size": [30, 40], "counts": rle["counts"].decode()}),
            ann(2, 1, 10, [2, 2, 6, 4])]  # polygon
    img_dir, ann_file = write_coco(tmp_path, [(1, 40, 30)], anns)
    ds = D.CocoDetection(img_dir, ann_file, with_masks=True)
    image, t = ds[0]
    assert t["masks"].dtype.__str__() == "torch.uint8" and tuple(t["masks"].shape) == (2, 30, 40)
    assert np.array_equal(t["masks"][0].numpy(), m)
    assert int(t["masks"][1].sum()) > 0 and int(t["masks"][1][:2].sum()) == 0


@pytest.mark.parametrize("seg, pattern", [
    ({"size": [30, 40], "counts": "zz!!"}, r"malformed segmentation \(RLE string is malformed"),
    ([[1, 2, 3]], r"malformed segmentation \(each polygon must be"),
    ({"size": [10, 10], "counts": [3, 97]}, r"segmentation is 10x10, the image is 40x30"),
])
def test_malformed_segmentation_is_named(tmp_path, seg, pattern):
    img_dir, ann_file = write_coco(tmp_path, [(1, 40, 30)], [ann(1, 1, 3, [1, 1, 5, 5], seg=seg)])
    ds = D.CocoDetection(img_dir, ann_file, with_masks=True)
    with pytest.raises(UserError, match=pattern) as e:
        ds[0]
    assert "instances_train.json image id 1" in str(e.value)
    D.CocoDetection(img_dir, ann_file)[0]  # boxes alone do not need the segmentation


def test_hflip_moves_boxes_with_masks(tmp_path):
    anns = [ann(1, 1, 3, [2, 3, 10, 8]), ann(2, 1, 10, [25, 0, 15, 30])]
    img_dir, ann_file = write_coco(tmp_path, [(1, 40, 30)], anns)
    ds = D.CocoDetection(img_dir, ann_file, with_masks=True)
    image, t = ds[0]
    fimage, ft = ds[(0, True)]
    assert ft["boxes"].tolist() == [[28, 3, 38, 11], [0, 0, 15, 30]]
    assert np.array_equal(fimage.numpy(), image.flip(-1).numpy())
    for box, mask in zip(ft["boxes"], ft["masks"]):
        ys, xs = np.nonzero(mask.numpy())
        assert [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] == box.tolist()
    assert ft["labels"].tolist() == t["labels"].tolist()
    # Unflipped key forms agree.
    assert ds[(0, False)][1]["boxes"].tolist() == t["boxes"].tolist()


@given(st.lists(st.tuples(st.floats(0, 50), st.floats(0, 50), st.floats(0.5, 40), st.floats(0.5, 40)),
                min_size=0, max_size=6), st.integers(8, 100))
def test_hflip_is_an_involution_and_keeps_sizes(boxes, width):
    import torch

    b = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in boxes], dtype=torch.float32).reshape(-1, 4)
    image = torch.rand(3, 5, width)
    fi, ft = D.hflip(image, {"boxes": b})
    assert torch.allclose(ft["boxes"][:, 2] - ft["boxes"][:, 0], b[:, 2] - b[:, 0], atol=1e-4)
    assert bool((ft["boxes"][:, 2] >= ft["boxes"][:, 0]).all())
    ii, tt = D.hflip(fi, ft)
    assert torch.equal(ii, image) and torch.allclose(tt["boxes"], b, atol=1e-4)


def test_collate_keeps_variable_sized_targets(small_coco):
    cfg, _, _ = small_coco
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", D.DataWarning)
        ds = D.build_dataset(cfg, "val")
    images, targets = D.collate([ds[0], ds[1], ds[2]])
    assert len(images) == 3 and [t["image_id"] for t in targets] == [1, 2, 3]
    assert D.collate([]) == ((), ())


# ----------------------------------------------------------------------------- errors


def test_missing_annotation_file_is_named(tmp_path):
    (tmp_path / "img").mkdir()
    cfg = {"name": "coco", "train_images": str(tmp_path / "img"), "train_ann": str(tmp_path / "nope.json"),
           "val_images": str(tmp_path / "img"), "val_ann": str(tmp_path / "nope.json")}
    with pytest.raises(UserError, match=r"nope\.json.*does not exist \(data\.train_ann\)"):
        D.ensure_dataset(cfg)
    with pytest.raises(UserError, match=r"nope\.json.*does not exist"):
        D.build_dataset(cfg, "val")
    cfg["train_images"] = str(tmp_path / "missing_dir")
    with pytest.raises(UserError, match=r"missing_dir.*data\.train_images"):
        D.ensure_dataset(cfg)


@pytest.mark.parametrize("text, pattern", [
    ('{"images": [], "annotations": [', r"not valid JSON: .* line 1 column"),
    ("[1, 2]", r"top level is a list"),
    ('{"images": [], "categories": []}', r"'annotations' is missing"),
    ('{"images": {}, "annotations": [], "categories": []}', r"'images' is a dict"),
    (b"\xff\xfe\x00junk", r"not (UTF-8|valid JSON)"),
])
def test_corrupt_annotation_file_is_named(tmp_path, text, pattern):
    f = tmp_path / "bad.json"
    f.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(UserError, match=pattern) as e:
        D.CocoIndex(f)
    assert "bad.json" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("mutate, pattern", [
    (lambda d: d["annotations"].append(ann(9, 77, 3, [1, 1, 2, 2])), r"annotation 9 refers to image id 77"),
    (lambda d: d["annotations"].append(ann(9, 1, 5, [1, 1, 2, 2])), r"annotation 9 has category_id 5, not one of .*3, 10"),
    (lambda d: d["annotations"].append(dict(ann(9, 1, 3, [1, 1, 2, 2]), bbox=[1, 2])), r"annotation 9 \(image id 1\) has a malformed bbox"),
    (lambda d: d["images"].append({"id": 2, "file_name": "x.jpg"}), r"image record #1 \(id 2\) lacks width, height"),
    (lambda d: d["images"].append(dict(d["images"][0])), r"image id 1 is listed more than once"),
    (lambda d: d.update(categories=[]), r"'categories' is empty"),
])
def test_malformed_records_are_named(tmp_path, mutate, pattern):
    _, ann_file = write_coco(tmp_path, [(1, 20, 20)], [ann(1, 1, 3, [1, 1, 5, 5])])
    d = json.loads(ann_file.read_text())
    mutate(d)
    ann_file.write_text(json.dumps(d))
    with pytest.raises(UserError, match=pattern) as e:
        D.CocoIndex(ann_file)
    assert str(ann_file) in str(e.value)


def test_image_that_does_not_open_names_file_and_id(tmp_path):
    img_dir, ann_file = write_coco(tmp_path, [(1, 20, 20), (2, 20, 20), (3, 20, 20)],
                                   [ann(1, 2, 3, [1, 1, 5, 5])])
    (img_dir / "0002.jpg").write_bytes(b"this is not a JPEG")
    (img_dir / "0003.jpg").unlink()
    ds = D.CocoDetection(img_dir, ann_file)
    ds[0]
    with pytest.raises(UserError, match=r"0002\.jpg.*\(image id 2 in .*instances_train\.json\) cannot be read"):
        ds[1]
    with pytest.raises(UserError, match=r"0003\.jpg.*\(image id 3 .*does not exist"):
        ds[2]
    cfg = {"name": "coco", "train_images": str(img_dir), "train_ann": str(ann_file),
           "val_images": str(img_dir), "val_ann": str(ann_file)}
    with pytest.raises(UserError, match=r"image id 2"):
        D.check_dataset(cfg)
    assert D.check_dataset(cfg, read_images=False)["train"]["images"] == 3


def test_image_size_must_match_its_record(tmp_path):
    img_dir, ann_file = write_coco(tmp_path, [(1, 20, 20)], [])
    d = json.loads(ann_file.read_text())
    d["images"][0]["width"] = 33
    ann_file.write_text(json.dumps(d))
    with pytest.raises(UserError, match=r"image id 1\) is 20x20 px but .* says 33x20"):
        D.CocoDetection(img_dir, ann_file)[0]


def test_train_and_val_categories_must_agree(tmp_path):
    ti, ta = write_coco(tmp_path / "t", [(1, 20, 20)], [], cats=[{"id": 1, "name": "a"}, {"id": 2, "name": "b"}])
    vi, va = write_coco(tmp_path / "v", [(1, 20, 20)], [], cats=[{"id": 1, "name": "a"}, {"id": 4, "name": "d"}])
    cfg = {"name": "mine", "train_images": str(ti), "train_ann": str(ta), "val_images": str(vi), "val_ann": str(va)}
    with pytest.raises(UserError, match=r"different categories \(only in train: 2; only in val: 4\)"):
        D.check_dataset(cfg, read_images=False)
    assert D.num_classes(cfg) == 2  # from the val file
    assert D.num_classes(dict(cfg, num_classes=80)) == 80


# ----------------------------------------------------------------------------- sampling


def take(it, n):
    return [next(it) for _ in range(n)]


def test_train_sampler_is_reproducible_and_resumable():
    s = D.TrainSampler(10, seed=3)
    stream = take(iter(s), 35)
    assert stream == take(iter(D.TrainSampler(10, seed=3)), 35)
    assert stream != take(iter(D.TrainSampler(10, seed=4)), 35)
    for e in range(3):  # each epoch is a permutation
        assert sorted(i for i, _ in stream[10 * e:10 * e + 10]) == list(range(10))
    assert 5 <= sum(f for _, f in stream) <= 30
    # Resuming at position k continues the same stream.
    for k in (0, 7, 10, 23):
        assert take(iter(D.TrainSampler(10, seed=3, start=k)), 35 - k) == stream[k:]
    assert all(not f for _, f in take(iter(D.TrainSampler(10, seed=3, hflip_prob=0.0)), 20))


def test_train_sampler_shards_for_ddp():
    full = take(iter(D.TrainSampler(7, seed=1)), 42)
    ranks = [take(iter(D.TrainSampler(7, seed=1, rank=r, world_size=3)), 14) for r in range(3)]
    assert [ranks[p % 3][p // 3] for p in range(42)] == full
    resumed = take(iter(D.TrainSampler(7, seed=1, rank=1, world_size=3, start=9)), 5)
    assert resumed == [full[p] for p in range(9, 42) if p % 3 == 1][:5]
    with pytest.raises(UserError, match="training set is empty"):
        D.TrainSampler(0)


def test_sampler_keys_drive_a_dataloader(small_coco):
    import torch

    cfg, _, _ = small_coco
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", D.DataWarning)
        ds = D.build_dataset(cfg, "train")
    loader = torch.utils.data.DataLoader(ds, batch_size=2, sampler=D.TrainSampler(len(ds), seed=0),
                                         collate_fn=D.collate, num_workers=0)
    it = iter(loader)
    images, targets = next(it)
    assert len(images) == 2 and {t["image_id"] for t in targets} == {1, 2}
    ev = torch.utils.data.DataLoader(ds, batch_size=2, sampler=D.EvalSampler(len(ds)), collate_fn=D.collate)
    assert [t["image_id"] for _, ts in ev for t in ts] == [1, 2]
