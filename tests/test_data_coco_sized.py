"""The COCO-sized generated set (data=shapes_coco): non-square images drawn from a size mix,
exact annotations inside them, deterministic; the square sets keep their bytes and names."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from bbrctl.detection.data import synth

SMALL = dict(num_train=24, num_val=6, image_shapes=((160, 120), (120, 160), (96, 96)),
             image_shape_weights=(0.5, 0.3, 0.2), max_objects=5)


def test_square_sets_keep_their_directory_names():
    # The digest of a square set is what it was before image_shapes existed: no cache moves.
    assert synth.ShapesSpec(num_train=24, num_val=8, image_size=128).dirname() == "shapes-v1-seed0-128px-24+8-ca6ee6e9"
    assert "image_shapes" not in synth.ShapesSpec().to_dict()


def test_sizes_follow_the_mix_and_annotations_fit(tmp_path):
    spec = synth.ShapesSpec(**SMALL)
    assert spec.dirname().startswith("shapes-v1-seed0-upto160px-24+6-")
    synth.ensure_shapes(spec, tmp_path / "d")
    coco = json.loads((tmp_path / "d" / "annotations" / "instances_train.json").read_text())
    sizes = Counter((im["width"], im["height"]) for im in coco["images"])
    assert set(sizes) <= {(160, 120), (120, 160), (96, 96)} and len(sizes) == 3
    assert sizes[(160, 120)] > sizes[(96, 96)]
    from PIL import Image

    by_id = {im["id"]: im for im in coco["images"]}
    for im in coco["images"][:8]:
        with Image.open(tmp_path / "d" / "train" / im["file_name"]) as f:
            assert f.size == (im["width"], im["height"])
    assert coco["annotations"]
    for a in coco["annotations"]:
        im = by_id[a["image_id"]]
        x, y, w, h = a["bbox"]
        assert 0 <= x and 0 <= y and x + w <= im["width"] and y + h <= im["height"] and w > 0 and h > 0
        assert a["segmentation"]["size"] == [im["height"], im["width"]]
    # Deterministic: the same parameters give the same bytes.
    synth.ensure_shapes(spec, tmp_path / "e")
    for split in ("train", "val"):
        for p in sorted((tmp_path / "d" / split).iterdir()):
            assert p.read_bytes() == (tmp_path / "e" / split / p.name).read_bytes()


def test_from_config_and_bad_values():
    from bbrctl.config import compose, to_container
    from bbrctl.errors import UserError

    cfg = to_container(compose(["data=shapes_coco"]))
    spec = synth.ShapesSpec.from_cfg(cfg["data"])
    assert spec.image_shapes[0] == (640, 480) and len(spec.image_shape_weights) == len(spec.image_shapes)
    assert cfg["model"]["min_size"] == 800 and cfg["model"]["max_size"] == 1333   # COCO's resize
    assert cfg["data"]["aspect_ratio_group_factor"] == 3
    with pytest.raises(UserError, match="image_shape_weights"):
        synth.ShapesSpec(image_shapes=((64, 64),), image_shape_weights=(1.0, 2.0)).validate()
    with pytest.raises(UserError, match="image_shapes"):
        synth.ShapesSpec(image_shapes=((64, 9999),)).validate()
