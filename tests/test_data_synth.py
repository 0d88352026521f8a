"""The synthetic shapes dataset: determinism, exact annotations, variety, caching, CLI."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from pathlib import Path

import numpy as np
import pytest

from bbrctl.detection.data import datasets as D
from bbrctl.detection.data import synth
from bbrctl.errors import UserError

TINY = synth.ShapesSpec(num_train=6, num_val=3, image_size=96, max_objects=5)


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_files(tmp_path):
    synth.ensure_shapes(TINY, tmp_path / "a")
    synth.ensure_shapes(TINY, tmp_path / "b")
    a, b = tree(tmp_path / "a"), tree(tmp_path / "b")
    a.pop("manifest.json"), b.pop("manifest.json")  # records the generation time
    assert a == b
    assert len([k for k in a if k.endswith(".jpg")]) == 9
    synth.ensure_shapes(synth.ShapesSpec(**{**TINY.to_dict(), "seed": 1, "size_mix": (0.4, 0.4, 0.2)}), tmp_path / "c")
    c = tree(tmp_path / "c")
    assert c["train/000001.jpg"] != a["train/000001.jpg"]


def test_more_images_keep_the_existing_ones():
    # Each image has its own seed: growing the split does not reshuffle it.
    small = synth.ShapesSpec(num_train=2, image_size=64)
    big = synth.ShapesSpec(num_train=9, image_size=64)
    a, _ = synth.render_image(small, "train", 1)
    b, _ = synth.render_image(big, "train", 1)
    assert np.array_equal(a, b)
    c, _ = synth.render_image(big, "val", 1)
    assert not np.array_equal(a, c)


@pytest.fixture(scope="module")
def medium(tmp_path_factory):
    """A 160 px dataset big enough for distribution checks (~0.5 s)."""
    spec = synth.ShapesSpec(num_train=60, num_val=4, image_size=160)
    root = tmp_path_factory.mktemp("shapes") / "medium"
    synth.ensure_shapes(spec, root)
    return spec, root, json.loads((root / "annotations" / "instances_train.json").read_text())


def test_annotations_are_exact(medium):
    from faster_coco_eval.core import mask as mask_utils
    from PIL import Image

    spec, root, coco = medium
    assert [c["name"] for c in coco["categories"]] == list(synth.CLASSES)
    by_image: dict[int, list] = {}
    for a in coco["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])
    assert min(a["id"] for a in coco["annotations"]) == 1
    for im in coco["images"][:20]:
        with Image.open(root / "train" / im["file_name"]) as f:
            assert f.size == (spec.image_size, spec.image_size) and f.mode == "RGB"
        union = np.zeros((spec.image_size, spec.image_size), dtype=np.int32)
        for a in by_image.get(im["id"], []):
            m = mask_utils.decode(a["segmentation"])
            ys, xs = np.nonzero(m)
            x, y, w, h = a["bbox"]
            assert [x, y, x + w, y + h] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            assert a["area"] == m.sum() and a["iscrowd"] == 0
            union += m
        assert union.max() <= 1  # visible masks never overlap: occlusion is resolved


def test_objects_are_drawn_where_annotated(medium):
    # The objects' pixels differ from the background around them: boxes are not empty.
    from faster_coco_eval.core import mask as mask_utils
    from PIL import Image

    spec, root, coco = medium
    for a in coco["annotations"][:60]:
        if a["area"] < 60:
            continue
        img = np.asarray(Image.open(root / "train" / f"{a['image_id']:06d}.jpg")).astype(float)
        m = mask_utils.decode(a["segmentation"]).astype(bool)
        inside = img[m]
        assert inside.std(axis=0).mean() < 30  # one colour (+ shading and noise)


def test_variety_of_classes_sizes_and_aspects(medium):
    _, _, coco = medium
    anns = coco["annotations"]
    assert {a["category_id"] for a in anns} == set(range(1, len(synth.CLASSES) + 1))
    areas = np.array([a["area"] for a in anns])
    small, large = (areas < 32 ** 2).mean(), (areas >= 96 ** 2).mean()
    assert 0.25 < small < 0.6 and 0.02 < large and 0.25 < 1 - small - large
    aspect = np.array([max(a["bbox"][2] / a["bbox"][3], a["bbox"][3] / a["bbox"][2]) for a in anns])
    assert aspect.max() >= 5.0 and (aspect >= 3).mean() > 0.08
    per_image = np.bincount([a["image_id"] for a in anns])[1:]
    assert per_image.min() >= 1 and per_image.max() <= 6


def test_rendering_is_fast():
    spec = synth.ShapesSpec(image_size=160)
    synth.render_image(spec, "train", 0)  # imports
    t0 = time.perf_counter()
    for i in range(20):
        synth.render_image(spec, "train", i)
    per_image = (time.perf_counter() - t0) / 20
    # ~5 ms on a loaded 2-core machine; generous bound against CI noise.
    assert per_image < 0.05, per_image


# ----------------------------------------------------------------------------- cache


def test_cache_is_reused_and_mismatches_refused(tmp_path):
    root = tmp_path / "ds"
    m1, gen1 = synth.ensure_shapes(TINY, root)
    stamp = (root / "annotations" / "instances_val.json").stat().st_mtime_ns
    m2, gen2 = synth.ensure_shapes(TINY, root)
    assert gen1 and not gen2 and m1 == m2
    assert (root / "annotations" / "instances_val.json").stat().st_mtime_ns == stamp
    other = synth.ShapesSpec(**{**TINY.to_dict(), "clutter": 1.0, "size_mix": TINY.size_mix})
    with pytest.raises(UserError, match=r"other parameters: clutter=3.0 \(config: 1.0\)"):
        synth.ensure_shapes(other, root)
    _, gen3 = synth.ensure_shapes(TINY, root, force=True)
    assert gen3 and synth.read_manifest(root)["params"] == TINY.to_dict()
    assert not list(tmp_path.glob(".ds.tmp-*")) and not list(tmp_path.glob(".ds.old-*"))


def test_interrupted_generation_is_redone(tmp_path, monkeypatch):
    root = tmp_path / "ds"
    calls = []
    real = synth.generate_split

    def dying(spec, split, out_dir):
        calls.append(split)
        if split == "val":
            raise KeyboardInterrupt  # killed half way
        return real(spec, split, out_dir)

    monkeypatch.setattr(synth, "generate_split", dying)
    with pytest.raises(KeyboardInterrupt):
        synth.ensure_shapes(TINY, root)
    assert not root.exists() and not list(tmp_path.glob(".ds.tmp-*"))  # nothing half-written
    monkeypatch.setattr(synth, "generate_split", real)
    # A directory left by something else without a manifest (an old layout) is replaced...
    (root / "train").mkdir(parents=True)
    (root / "train" / "junk.jpg").write_bytes(b"x")
    _, generated = synth.ensure_shapes(TINY, root)
    assert generated and not (root / "train" / "junk.jpg").exists()
    # ...but a directory that is not ours is never deleted.
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(UserError, match="is not a bbrctl shapes dataset"):
        synth.ensure_shapes(TINY, foreign, force=True)
    assert (foreign / "thesis.tex").read_text() == "precious"


def _generate_in_child(root: str, q) -> None:
    try:
        manifest, generated = synth.ensure_shapes(TINY, root)
        q.put(("ok", generated))
    except BaseException as e:  # report, do not hang the parent
        q.put(("error", repr(e)))


def test_concurrent_generators_do_not_corrupt_each_other(tmp_path):
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    root = str(tmp_path / "ds")
    procs = [ctx.Process(target=_generate_in_child, args=(root, q)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    results = [q.get(timeout=5) for _ in procs]
    assert all(r[0] == "ok" for r in results), results
    assert sum(r[1] for r in results) == 1  # the lock let one generate; the others reused it
    synth.ensure_shapes(TINY, tmp_path / "ref")
    got, ref = tree(Path(root)), tree(tmp_path / "ref")
    got.pop("manifest.json"), ref.pop("manifest.json")
    assert got == ref
    assert sorted(p.name for p in tmp_path.iterdir()) == [".ds.lock", ".ref.lock", "ds", "ref"]


def test_stale_temporary_directories_are_cleaned(tmp_path):
    stale = tmp_path / ".ds.tmp-host-1-2"
    fresh = tmp_path / ".ds.tmp-host-3-4"
    for d in (stale, fresh):
        (d / "train").mkdir(parents=True)
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    synth.ensure_shapes(TINY, tmp_path / "ds")
    assert not stale.exists() and fresh.exists()  # fresh: maybe another live generator


# ----------------------------------------------------------------------------- config + CLI


def test_shipped_configs_compose_and_generate(tmp_path, monkeypatch):
    from bbrctl import config as C

    monkeypatch.setenv("BBRCTL_DATA_DIR", str(tmp_path))
    cfg = C.to_container(C.compose(["data=shapes_tiny"]))["data"]
    assert cfg["root"] == str(tmp_path)
    images, ann = D.split_paths(cfg, "train")
    assert images.parent == D.synthetic_dir(cfg) and D.synthetic_dir(cfg).parent == tmp_path
    assert ann == images.parent / "annotations" / "instances_train.json"
    spec = synth.ShapesSpec.from_cfg(cfg)
    assert (spec.num_train, spec.num_val, spec.image_size) == (16, 8, 128)
    t0 = time.perf_counter()
    manifest = D.ensure_dataset(cfg)
    took = time.perf_counter() - t0
    assert manifest["splits"]["train"]["images"] == 16 and took < 5.0
    assert D.num_classes(cfg) == len(synth.CLASSES)
    train = D.build_dataset(cfg, "train")
    val = D.build_dataset(cfg, "val")
    assert len(val) == 8 and 0 < len(train) <= 16
    image, target = train[0]
    assert tuple(image.shape) == (3, 128, 128) and target["boxes"].shape[0] == target["labels"].shape[0] > 0
    assert int(target["labels"].min()) >= 1 and int(target["labels"].max()) <= len(synth.CLASSES)
    assert D.contiguous_to_cat_id(val) == {i: i for i in range(1, len(synth.CLASSES) + 1)}
    _, with_masks = D.build_dataset(cfg, "val", with_masks=True)[0]
    assert tuple(with_masks["masks"].shape)[1:] == (128, 128)
    default = C.to_container(C.compose([]))["data"]
    assert default["name"] == "shapes" and synth.ShapesSpec.from_cfg(default).num_train == 512


def test_each_parameter_set_has_its_own_directory(tmp_path):
    from bbrctl import config as C

    def data_dir(*overrides):
        cfg = C.to_container(C.compose(["data=shapes_tiny", f"data.root={tmp_path}", *overrides]))["data"]
        return D.synthetic_dir(cfg)

    base = data_dir()
    assert base.name.startswith(f"shapes-v{synth.VERSION}-seed0-128px-16+8-")
    assert data_dir("data.clutter=3") == data_dir("data.clutter=3.0") == base  # one spelling, one hash
    assert len({base, data_dir("data.clutter=1"), data_dir("data.color_cue=0"), data_dir("data.synth_seed=1"),
                data_dir("data.size_mix=[0.5,0.5,0]")}) == 5


@pytest.mark.parametrize("override, pattern", [
    ("data.num_train=0", r"data\.num_train=0 is not valid: must be an integer in \[1, 1000000\]"),
    ("data.image_size=abc", r"data\.image_size='abc' is not valid: must be an integer"),
    ("data.size_mix=[1,2]", r"data\.size_mix=\[1, 2\] is not valid: must be a list of 3 numbers >= 0"),
    ("data.min_visible=1.5", r"data\.min_visible=1\.5 is not valid: must be a number in \(0, 1\]"),
])
def test_bad_synth_parameters_are_one_line_errors(override, pattern):
    from bbrctl import config as C

    with pytest.raises(UserError, match=pattern) as e:
        C.compose(["data=shapes_tiny", override])       # the schema refuses it before anything exists
    assert "\n" not in str(e.value)
    cfg = C.to_container(C.compose(["data=shapes_tiny"]))["data"]
    key, _, value = override.partition("=")
    import yaml

    cfg[key.split(".")[1]] = yaml.safe_load(value)
    with pytest.raises(UserError) as e:                 # and the generator itself, called directly
        D.ensure_dataset(cfg)
    assert "\n" not in str(e.value)


def test_cli_synth_and_check(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from bbrctl.cli import app

    monkeypatch.setenv("BBRCTL_DATA_DIR", str(tmp_path))
    runner = CliRunner()
    r = runner.invoke(app, ["data", "synth", "data=shapes_tiny"])
    assert r.exit_code == 0, r.output
    assert "generated in" in r.output and "train 16 images" in r.output
    r = runner.invoke(app, ["data", "synth", "data=shapes_tiny"])
    assert r.exit_code == 0 and "already complete" in r.output
    r = runner.invoke(app, ["data", "check", "data=shapes_tiny", "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    assert report["val"]["images"] == report["val"]["images_read"] == 8 and report["val"]["categories"] == 5
    r = runner.invoke(app, ["data", "check", "data=shapes_tiny"])
    assert r.exit_code == 0 and r.output.strip().endswith("ok") and "small" in r.output


def test_cli_errors_exit_2_with_one_line(tmp_path):
    import subprocess
    import sys

    env = dict(os.environ, BBRCTL_DATA_DIR=str(tmp_path))
    bad = tmp_path / "coco"
    (bad / "annotations").mkdir(parents=True)
    (bad / "train2017").mkdir()
    (bad / "val2017").mkdir()
    (bad / "annotations" / "instances_train2017.json").write_text("{not json")
    (bad / "annotations" / "instances_val2017.json").write_text("{}")
    cmd = [sys.executable, "-m", "bbrctl", "data", "check", "data=coco", f"data.root={bad}"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "instances_train2017.json" in lines[0] and "not valid JSON" in lines[0]
    r = subprocess.run([sys.executable, "-m", "bbrctl", "data", "synth", "data=coco"], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 2 and "not synthetic" in r.stderr
