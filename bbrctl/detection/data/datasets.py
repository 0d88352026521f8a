"""COCO-format detection data for ``bbrctl train``: cache, parse, load, batch, sample.

API used by the training engine::

    ensure_dataset(data_cfg)                       generate shapes / check COCO files exist
    build_dataset(data_cfg, "train"|"val", with_masks=False, train=None) -> CocoDetection
    num_classes(data_cfg) -> int                   foreground classes (labels are 1..C)
    contiguous_to_cat_id(dataset) -> {label: category_id}
    collate(batch) -> (images, targets)            tuples, as torchvision detectors take them
    TrainSampler(len(ds), seed, ...)               infinite, resumable, DDP-sharded stream
                                                   of (index, hflip) keys for a DataLoader

A dataset item is ``(image, target)``: image a float32 (3, H, W) tensor in [0, 1]; target
a dict with ``boxes`` float32 (K, 4) xyxy in pixels, ``labels`` int64 (K,) in 1..C,
``image_id`` int, ``area`` float32 (K,), ``iscrowd`` int64 (K,) (all zero), and, with
``with_masks``, ``masks`` uint8 (K, H, W).

COCO protocol, as torchvision's and detectron2's references apply it:

* crowd annotations (``iscrowd=1``) never become training targets; evaluation reads
  them from the annotation file, where COCOeval treats them as ignore regions;
* boxes with width or height <= 0 (after clipping to the image) are dropped, and the
  count is reported in one ``DataWarning`` per file and in ``dataset.stats``;
* images without usable annotations are dropped from the *training* set (they carry no
  box-regression signal and cost a forward pass) and kept in the *val* set, where their
  false positives count. ``build_dataset(..., drop_empty=False)`` keeps them.

Labels are contiguous: category ids sorted ascending map to 1..C (0 is background in
torchvision's detectors). Train and val files must list the same categories.

Randomness: the only augmentation is a horizontal flip for training, and the decision
is part of the key the sampler yields: ``dataset[(i, True)]`` is image i flipped. So a
run is reproducible from its seed whatever the number of loader workers, and resuming
at iteration k continues the exact stream (``TrainSampler(start=k * batch_size)``).

Errors name the file and record: a missing or corrupt annotation file, a malformed
record, an unknown category, an image file that does not open (at load time, with its
image id). They are ``UserError``s (exit 2). ``check_dataset`` reads every image up front.
"""

from __future__ import annotations

import json
import os
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from bbrctl.errors import UserError

SPLITS = ("train", "val")
# COCO's area ranges (px^2 of object area), for dataset summaries.
AREA_RANGES = {"small": (0.0, 32.0 ** 2), "medium": (32.0 ** 2, 96.0 ** 2), "large": (96.0 ** 2, float("inf"))}


class DataWarning(UserWarning):
    """Annotations dropped by the COCO protocol (counted, not fatal)."""


# --------------------------------------------------------------------------- config


def is_synthetic(data_cfg: Mapping[str, Any]) -> bool:
    from bbrctl.config.schema import is_synthetic as synthetic

    return synthetic(data_cfg)


def synthetic_dir(data_cfg: Mapping[str, Any]) -> Path:
    """The directory of the configured synthetic dataset: <data.root>/<parameters' name>."""
    from bbrctl.detection.data import synth

    root = data_cfg.get("root")
    if not root:
        raise UserError("data.root must be set: the directory that caches synthetic datasets")
    return synth.dataset_dir(synth.ShapesSpec.from_cfg(data_cfg), str(root))


def split_paths(data_cfg: Mapping[str, Any], split: str) -> tuple[Path, Path]:
    """(image directory, annotation file) of ``split`` from the data config.

    Synthetic data: derived from data.root and the generator parameters. COCO-format
    data: data.<split>_images and data.<split>_ann.
    """
    if split not in SPLITS:
        raise UserError(f"unknown data split {split!r}; valid: {', '.join(SPLITS)}")
    if is_synthetic(data_cfg):
        d = synthetic_dir(data_cfg)
        return d / split, d / "annotations" / f"instances_{split}.json"
    try:
        images, ann = data_cfg[f"{split}_images"], data_cfg[f"{split}_ann"]
    except (KeyError, AttributeError) as e:
        raise UserError(f"the data config lacks {e}; it needs {split}_images and {split}_ann") from None
    if images is None or ann is None:
        raise UserError(f"data.{split}_images and data.{split}_ann must be set")
    return Path(str(images)).expanduser(), Path(str(ann)).expanduser()


def ensure_dataset(data_cfg: Mapping[str, Any], force: bool = False) -> dict | None:
    """Make the configured dataset available, or explain what is missing.

    Synthetic data (``name: shapes`` / ``shapes_tiny``) is generated into
    :func:`synthetic_dir` unless a complete copy is there (see
    :func:`bbrctl.detection.data.synth.ensure_shapes`); returns its manifest. For COCO-format
    data, checks that both splits' image directories and annotation files exist and
    raises UserError naming the first missing path and the config key that points at it.
    """
    if is_synthetic(data_cfg):
        from bbrctl.detection.data import synth

        spec = synth.ShapesSpec.from_cfg(data_cfg)
        manifest, _ = synth.ensure_shapes(spec, synthetic_dir(data_cfg), force=force)
        return manifest
    for split in SPLITS:
        images, ann = split_paths(data_cfg, split)
        if not images.is_dir():
            raise UserError(f"image directory {str(images)!r} does not exist (data.{split}_images; "
                            f"for COCO set data.root to the folder holding {images.name}/)")
        if not ann.is_file():
            raise UserError(f"annotation file {str(ann)!r} does not exist (data.{split}_ann)")
    return None


def num_classes(data_cfg: Mapping[str, Any]) -> int:
    """Number of foreground classes; labels run 1..num_classes.

    Synthetic data: known without reading files. COCO-format: ``data.num_classes`` if
    set, else the categories of the val annotation file (much smaller than train's).
    """
    if is_synthetic(data_cfg):
        from bbrctl.detection.data.synth import CLASSES

        return len(CLASSES)
    n = data_cfg.get("num_classes")
    if n is not None:
        return int(n)
    _, ann = split_paths(data_cfg, "val")
    return len(load_coco_json(ann)["categories"])


# --------------------------------------------------------------------------- parsing


def load_coco_json(path: str | os.PathLike) -> dict:
    """Read and structurally check a COCO annotation file; UserError names what is wrong."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read())
    except FileNotFoundError:
        raise UserError(f"annotation file {str(path)!r} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"annotation file {str(path)!r} is a directory, not a COCO JSON file") from None
    except PermissionError:
        raise UserError(f"annotation file {str(path)!r} is not readable (permission denied)") from None
    except json.JSONDecodeError as e:
        raise UserError(f"annotation file {str(path)!r} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except UnicodeDecodeError as e:
        raise UserError(f"annotation file {str(path)!r} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not isinstance(data, dict):
        raise UserError(f"annotation file {str(path)!r} is not a COCO file: top level is a {type(data).__name__}, not an object")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            what = "missing" if key not in data else f"a {type(data[key]).__name__}, not a list"
            raise UserError(f"annotation file {str(path)!r} is not a COCO file: {key!r} is {what}")
    return data


class CocoIndex:
    """The parsed, checked annotations of one COCO file (no torch, no images read).

    ``images``: list of image records kept; ``targets[image_id]``: list of
    (bbox xyxy, category_id, area, segmentation) of usable non-crowd objects;
    ``cat_ids``: sorted category ids; ``stats``: counts of what was read and dropped.
    """

    def __init__(self, ann_file: str | os.PathLike, drop_empty: bool = False, keep_segmentation: bool = True):
        self.ann_file = Path(ann_file)
        data = load_coco_json(self.ann_file)
        where = str(self.ann_file)

        self.categories = []
        for k, c in enumerate(data["categories"]):
            if not isinstance(c, dict) or not _is_int(c.get("id")):
                raise UserError(f"{where}: category record #{k} has no integer 'id': {_short(c)}")
            self.categories.append(c)
        self.cat_ids = sorted({c["id"] for c in self.categories})
        if not self.cat_ids:
            raise UserError(f"{where}: 'categories' is empty; a detection dataset needs at least one")
        if len(self.cat_ids) != len(self.categories):
            dup = [i for i, n in Counter(c["id"] for c in self.categories).items() if n > 1][0]
            raise UserError(f"{where}: category id {dup} is listed more than once")

        images: dict[int, dict] = {}
        for k, im in enumerate(data["images"]):
            if not isinstance(im, dict):
                raise UserError(f"{where}: image record #{k} is not an object: {_short(im)}")
            missing = [key for key in ("id", "file_name", "width", "height") if key not in im]
            if missing:
                raise UserError(f"{where}: image record #{k} (id {im.get('id')!r}) lacks {', '.join(missing)}")
            if not _is_int(im["id"]):
                raise UserError(f"{where}: image record #{k} has a non-integer id {im['id']!r}")
            if not (_is_int(im["width"]) and _is_int(im["height"]) and im["width"] > 0 and im["height"] > 0):
                raise UserError(f"{where}: image id {im['id']} has invalid size {im['width']!r}x{im['height']!r}")
            if im["id"] in images:
                raise UserError(f"{where}: image id {im['id']} is listed more than once")
            images[im["id"]] = im

        cat_set = set(self.cat_ids)
        targets: dict[int, list] = {i: [] for i in images}
        stats = Counter()
        first_degenerate = None
        for k, a in enumerate(data["annotations"]):
            if not isinstance(a, dict):
                raise UserError(f"{where}: annotation record #{k} is not an object: {_short(a)}")
            aid = a.get("id", f"#{k}")
            img_id = a.get("image_id")
            if img_id not in images:
                raise UserError(f"{where}: annotation {aid} refers to image id {img_id!r}, which is not in 'images'")
            if a.get("category_id") not in cat_set:
                raise UserError(f"{where}: annotation {aid} has category_id {a.get('category_id')!r}, "
                                f"not one of the file's categories ({_ids(self.cat_ids)})")
            bbox = a.get("bbox")
            if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(_is_num(v) for v in bbox)):
                raise UserError(f"{where}: annotation {aid} (image id {img_id}) has a malformed bbox {bbox!r}; "
                                "expected [x, y, width, height]")
            stats["annotations"] += 1
            if a.get("iscrowd", 0):
                stats["crowd"] += 1
                continue
            im = images[img_id]
            x, y, w, h = (float(v) for v in bbox)
            # Clip to the image, as torchvision's reference does, then drop empty boxes.
            x0, y0 = min(max(x, 0.0), im["width"]), min(max(y, 0.0), im["height"])
            x1, y1 = min(max(x + w, 0.0), im["width"]), min(max(y + h, 0.0), im["height"])
            if not (x1 > x0 and y1 > y0):
                stats["dropped_degenerate"] += 1
                if first_degenerate is None:
                    first_degenerate = (aid, img_id, bbox)
                continue
            area = a.get("area")
            if not _is_num(area):
                area = (x1 - x0) * (y1 - y0)
            # Segmentations dominate a COCO file's memory; keep them only when asked.
            segm = a.get("segmentation") if keep_segmentation else None
            targets[img_id].append(((x0, y0, x1, y1), a["category_id"], float(area), segm))

        self.stats = dict(images=len(images), **stats)
        self.stats.setdefault("crowd", 0)
        self.stats.setdefault("dropped_degenerate", 0)
        self.stats["objects"] = sum(len(t) for t in targets.values())
        empty = [i for i, t in targets.items() if not t]
        self.stats["images_without_objects"] = len(empty)
        if drop_empty:
            for i in empty:
                images.pop(i)
            self.stats["dropped_empty_images"] = len(empty)
        self.images = [images[i] for i in sorted(images)]
        self.targets = targets
        if first_degenerate is not None:
            aid, img_id, bbox = first_degenerate
            warnings.warn(f"{where}: dropped {self.stats['dropped_degenerate']} annotation(s) whose box has "
                          f"non-positive width or height inside the image (first: annotation {aid}, "
                          f"image id {img_id}, bbox {bbox})", DataWarning, stacklevel=2)

    def area_histogram(self) -> dict[str, int]:
        """Objects per COCO area range (by annotation area, as COCOeval bins them)."""
        hist = {k: 0 for k in AREA_RANGES}
        for objs in self.targets.values():
            for _, _, area, _ in objs:
                for k, (lo, hi) in AREA_RANGES.items():
                    if lo <= area < hi:
                        hist[k] += 1
                        break
        return hist


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")


def _short(obj: Any, n: int = 80) -> str:
    s = json.dumps(obj, default=str)
    return s if len(s) <= n else s[: n - 3] + "..."


def _ids(ids: Sequence[int], n: int = 12) -> str:
    s = ", ".join(str(i) for i in ids[:n])
    return s + (", ..." if len(ids) > n else "")


# --------------------------------------------------------------------------- dataset


class CocoDetection:
    """A map-style dataset over one COCO-format split (see the module docstring).

    Keys are ``i`` or ``(i, hflip)``. Plain Python so that importing it needs no torch;
    ``torch.utils.data.DataLoader`` takes any object with ``__len__``/``__getitem__``.
    """

    def __init__(self, img_dir: str | os.PathLike, ann_file: str | os.PathLike, *, with_masks: bool = False,
                 drop_empty: bool = False, split: str = "", cache_images: bool = False):
        self.img_dir = Path(img_dir)
        # Decoded images kept in memory (data.cache_images): a small dataset is read
        # ~10 times in a CPU run, and decoding was a twentieth of a training step.
        self._cache: dict[int, Any] | None = {} if cache_images else None
        self.ann_file = Path(ann_file)
        self.split = split
        if not self.img_dir.is_dir():
            raise UserError(f"image directory {str(self.img_dir)!r} does not exist")
        self.index = CocoIndex(self.ann_file, drop_empty=drop_empty, keep_segmentation=with_masks)
        self.with_masks = with_masks
        self.cat_ids = self.index.cat_ids
        self.categories = sorted(self.index.categories, key=lambda c: c["id"])
        self.cat_id_to_label = {c: i + 1 for i, c in enumerate(self.cat_ids)}
        self.label_to_cat_id = {i + 1: c for i, c in enumerate(self.cat_ids)}
        self.stats = self.index.stats
        self.image_ids = [im["id"] for im in self.index.images]

    def __len__(self) -> int:
        return len(self.index.images)

    def image_info(self, i: int) -> dict:
        return self.index.images[i]

    def image_path(self, i: int) -> Path:
        return self.img_dir / self.index.images[i]["file_name"]

    def load_image(self, i: int):
        """The image as a uint8 (H, W, 3) numpy array; UserError names an unreadable file."""
        if self._cache is not None and i in self._cache:
            return self._cache[i]
        import numpy as np
        from PIL import Image, UnidentifiedImageError

        info = self.index.images[i]
        path = self.image_path(i)
        try:
            with Image.open(path) as im:
                arr = np.asarray(im.convert("RGB"))
        except FileNotFoundError:
            raise UserError(f"image {str(path)!r} (image id {info['id']} in {self.ann_file}) does not exist") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise UserError(f"image {str(path)!r} (image id {info['id']} in {self.ann_file}) cannot be read: "
                            f"{' '.join(str(e).split()) or type(e).__name__}") from None
        if arr.shape[:2] != (info["height"], info["width"]):
            raise UserError(f"image {str(path)!r} (image id {info['id']}) is {arr.shape[1]}x{arr.shape[0]} px "
                            f"but {self.ann_file} says {info['width']}x{info['height']}")
        if self._cache is not None:
            arr.setflags(write=False)  # shared by every later read
            self._cache[i] = arr
        return arr

    def __getitem__(self, key):
        import numpy as np
        import torch

        i, flip = (key if isinstance(key, tuple) else (key, False))
        info = self.index.images[i]
        arr = self.load_image(i)
        h, w = arr.shape[:2]
        objs = self.index.targets[info["id"]]
        boxes = torch.tensor([o[0] for o in objs], dtype=torch.float32).reshape(-1, 4)
        target = {
            "boxes": boxes,
            "labels": torch.tensor([self.cat_id_to_label[o[1]] for o in objs], dtype=torch.int64),
            "image_id": int(info["id"]),
            "area": torch.tensor([o[2] for o in objs], dtype=torch.float32),
            "iscrowd": torch.zeros(len(objs), dtype=torch.int64),
        }
        if self.with_masks:
            masks = np.zeros((len(objs), h, w), dtype=np.uint8)
            for k, o in enumerate(objs):
                masks[k] = segmentation_to_mask(o[3], h, w, where=f"{self.ann_file} image id {info['id']}")
            target["masks"] = torch.from_numpy(masks)
        # HWC uint8 -> CHW float in [0, 1]; the copy makes the array writable for torch.
        image = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).float().div_(255.0)
        if flip:
            image, target = hflip(image, target)
        return image, target


def hflip(image, target: dict):
    """Mirror an image (C, H, W) and its target left-right (boxes, masks)."""
    width = image.shape[-1]
    image = image.flip(-1)
    target = dict(target)
    b = target["boxes"]
    if b.numel():
        target["boxes"] = b[:, [2, 1, 0, 3]] * b.new_tensor([-1.0, 1.0, -1.0, 1.0]) + b.new_tensor([width, 0.0, width, 0.0])
    if "masks" in target:
        target["masks"] = target["masks"].flip(-1)
    return image, target


def segmentation_to_mask(segm: Any, h: int, w: int, where: str = ""):
    """A COCO segmentation (polygons, RLE or uncompressed RLE) as a uint8 (h, w) mask."""
    import numpy as np
    # faster-coco-eval's mask API is pycocotools' (same RLE), without pycocotools'
    # DeprecationWarning on every decode under numpy 2.
    from faster_coco_eval.core import mask as mask_utils

    if segm is None or segm == []:
        raise UserError(f"{where}: an object has no segmentation, but the model needs masks")
    try:
        if isinstance(segm, list):
            if not all(isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 for p in segm):
                raise ValueError("each polygon must be a list of at least 3 x, y pairs")
            rles = mask_utils.frPyObjects(segm, h, w)
            rle = mask_utils.merge(rles)
        elif isinstance(segm, dict) and isinstance(segm.get("counts"), list):
            rle = mask_utils.frPyObjects(segm, h, w)
        elif isinstance(segm, dict) and isinstance(segm.get("counts"), (str, bytes)):
            rle = segm
        else:
            raise ValueError("not a polygon list or an RLE dict")
        m = mask_utils.decode(rle)
    except (ValueError, TypeError, KeyError, IndexError, RuntimeError) as e:
        raise UserError(f"{where}: malformed segmentation ({' '.join(str(e).split())})") from None
    if m.shape != (h, w):
        raise UserError(f"{where}: segmentation is {m.shape[1]}x{m.shape[0]}, the image is {w}x{h}")
    return np.ascontiguousarray(m, dtype=np.uint8)


def build_dataset(data_cfg: Mapping[str, Any], split: str, with_masks: bool = False,
                  drop_empty: bool | None = None) -> CocoDetection:
    """The dataset of ``split`` ("train" or "val") described by ``data_cfg``.

    ``drop_empty`` defaults to True for train, False for val (see the module docstring).
    ``data.cache_images`` keeps decoded images in memory (the synthetic data's default).
    Call :func:`ensure_dataset` first (it generates synthetic data).
    """
    img_dir, ann = split_paths(data_cfg, split)
    if drop_empty is None:
        drop_empty = split == "train"
    if not ann.is_file():
        raise UserError(f"annotation file {str(ann)!r} does not exist (data.{split}_ann)")
    if not img_dir.is_dir():
        raise UserError(f"image directory {str(img_dir)!r} does not exist (data.{split}_images)")
    return CocoDetection(img_dir, ann, with_masks=with_masks, drop_empty=drop_empty, split=split,
                         cache_images=bool(data_cfg.get("cache_images", False)))


def contiguous_to_cat_id(dataset: CocoDetection) -> dict[int, int]:
    """{contiguous label 1..C: COCO category id}, to turn predictions into COCO results."""
    return dict(dataset.label_to_cat_id)


def check_same_categories(train: CocoDetection, val: CocoDetection) -> None:
    """Train and val must agree on the categories, or labels would mean different things."""
    if train.cat_ids != val.cat_ids:
        only_t = sorted(set(train.cat_ids) - set(val.cat_ids))
        only_v = sorted(set(val.cat_ids) - set(train.cat_ids))
        raise UserError(f"{train.ann_file} and {val.ann_file} list different categories "
                        f"(only in train: {_ids(only_t) or 'none'}; only in val: {_ids(only_v) or 'none'})")


def read_categories(ann_file: str | os.PathLike) -> list[dict]:
    """The ``categories`` of a COCO annotation file without parsing the whole file.

    COCO's train file is ~450 MB, of which ``categories`` is a few KB: the file is mapped,
    the top-level ``"categories": [...]`` array is found and decoded alone. A file where
    that is ambiguous is parsed in full.
    """
    import mmap

    path = Path(ann_file)
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            found = []
            pos = mm.find(b'"categories"')
            while pos != -1 and len(found) < 2:
                found.append(pos)
                pos = mm.find(b'"categories"', pos + 1)
            if len(found) == 1:
                head = mm[found[0]:found[0] + 4096].decode("utf-8", "replace")
                rest = head[len('"categories"'):].lstrip()
                if rest.startswith(":"):
                    start = found[0] + len('"categories"') + (len(head) - len('"categories"') - len(rest)) + 1
                    window = 1 << 16
                    while True:
                        text = mm[start:start + window].decode("utf-8", "replace").lstrip()
                        try:
                            cats, _ = json.JSONDecoder().raw_decode(text)
                            break
                        except ValueError:
                            if start + window >= len(mm):
                                cats = None
                                break
                            window *= 4
                    if isinstance(cats, list) and all(isinstance(c, dict) and _is_int(c.get("id")) for c in cats):
                        return cats
    except (OSError, ValueError):
        pass        # empty or unmappable: the full parse says what is wrong
    return load_coco_json(path)["categories"]


def category_names(ann_file: str | os.PathLike) -> dict[int, str]:
    """{id: name} of a COCO file's categories; one-line UserError for a malformed list
    (an entry that is not an object, an id that is not a positive integer, a name that is
    not a string, an id given twice)."""
    cats = read_categories(ann_file)
    if not isinstance(cats, list):
        raise UserError(f"annotation file {str(ann_file)!r}: 'categories' must be a list of objects")
    out: dict[int, str] = {}
    for i, c in enumerate(cats):
        if not isinstance(c, dict):
            raise UserError(f"annotation file {str(ann_file)!r}: categories[{i}] must be an object with 'id' "
                            f"and 'name', got {json.dumps(c, default=str)[:60]}")
        cid, name = c.get("id"), c.get("name")
        if not _is_int(cid) or cid < 1:
            raise UserError(f"annotation file {str(ann_file)!r}: categories[{i}].id must be an integer >= 1, "
                            f"got {json.dumps(cid, default=str)[:40]}")
        if not isinstance(name, str):
            raise UserError(f"annotation file {str(ann_file)!r}: categories[{i}].name must be a string, "
                            f"got {json.dumps(name, default=str)[:40]}")
        if cid in out:
            raise UserError(f"annotation file {str(ann_file)!r}: category id {cid} is listed twice")
        out[int(cid)] = name
    return out


def check_same_category_files(train_ann: str | os.PathLike, val_ann: str | os.PathLike) -> None:
    """Train and val list the same categories, ids and names (cheap: see read_categories)."""
    tn, vn = category_names(train_ann), category_names(val_ann)
    t, v = sorted(tn), sorted(vn)
    if t != v:
        only_t, only_v = sorted(set(t) - set(v)), sorted(set(v) - set(t))
        raise UserError(f"{train_ann} and {val_ann} list different categories "
                        f"(only in train: {_ids(only_t) or 'none'}; only in val: {_ids(only_v) or 'none'}); "
                        "train and val must share one category list")
    renamed = [i for i in t if tn[i] != vn[i]]
    if renamed:
        i = renamed[0]
        raise UserError(f"{train_ann} and {val_ann} name category {i} differently ({json.dumps(tn[i])} in train, "
                        f"{json.dumps(vn[i])} in val{f'; {len(renamed) - 1} more' if len(renamed) > 1 else ''}); "
                        "train and val must share one category list")


def collate(batch: Sequence) -> tuple[tuple, tuple]:
    """[(image, target), ...] -> ((images...), (targets...)); detectors batch internally."""
    if not batch:
        return (), ()
    images, targets = zip(*batch)
    return images, targets


# --------------------------------------------------------------------------- sampling


class TrainSampler:
    """An endless, reproducible stream of ``(index, hflip)`` keys for training.

    Epoch e is a permutation of range(n) drawn from ``torch.Generator`` seeded with
    (seed, e); each key's flip is a coin with probability ``hflip_prob`` from the same
    generator. ``start`` skips that many keys of the global stream (resume at iteration
    k: ``start = k * global_batch``). With DDP, rank r of w takes every w-th key, so the
    ranks see disjoint images and together the same stream as one process.
    """

    def __init__(self, size: int, seed: int = 0, *, shuffle: bool = True, hflip_prob: float = 0.5,
                 start: int = 0, rank: int = 0, world_size: int = 1):
        if size <= 0:
            raise UserError("the training set is empty: no image has a usable annotation")
        if not 0.0 <= hflip_prob <= 1.0:
            raise ValueError(f"hflip_prob must be in [0, 1], got {hflip_prob}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.size, self.seed, self.shuffle, self.hflip_prob = size, int(seed), shuffle, hflip_prob
        self.start, self.rank, self.world_size = int(start), rank, world_size

    def epoch_keys(self, epoch: int) -> list[tuple[int, bool]]:
        import torch

        g = torch.Generator()
        # Mix seed and epoch so that (seed, e+1) and (seed+1, e) differ.
        g.manual_seed((self.seed * 1_000_003 + epoch) % (2 ** 63))
        order = torch.randperm(self.size, generator=g) if self.shuffle else torch.arange(self.size)
        flips = torch.rand(self.size, generator=g) < self.hflip_prob
        return list(zip(order.tolist(), flips.tolist()))

    def __iter__(self) -> Iterator[tuple[int, bool]]:
        pos = self.start  # position in the global stream
        epoch, offset = divmod(pos, self.size)
        while True:
            keys = self.epoch_keys(epoch)
            for k in range(offset, self.size):
                if (epoch * self.size + k) % self.world_size == self.rank:
                    yield keys[k]
            epoch, offset = epoch + 1, 0


class EvalSampler:
    """Indices 0..n-1 in order (rank r of w gets every w-th), no flips."""

    def __init__(self, size: int, rank: int = 0, world_size: int = 1):
        self.size, self.rank, self.world_size = size, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.size, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.size, self.world_size))


# --------------------------------------------------------------------------- checking


def check_dataset(data_cfg: Mapping[str, Any], read_images: bool = True, splits: Sequence[str] = SPLITS) -> dict:
    """Parse both splits and (optionally) open every image; return per-split counts.

    Raises UserError at the first problem; dropped boxes are counted, not fatal.
    """
    ensure_dataset(data_cfg)
    report = {}
    datasets = {}
    for split in splits:
        img_dir, ann = split_paths(data_cfg, split)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DataWarning)  # the counts below say it
            ds = CocoDetection(img_dir, ann, drop_empty=False, split=split, with_masks=False)
        datasets[split] = ds
        if read_images:
            for i in range(len(ds)):
                ds.load_image(i)
        report[split] = {
            "images": ds.stats["images"],
            "annotations": ds.stats.get("annotations", 0),
            "objects": ds.stats["objects"],
            "crowd": ds.stats["crowd"],
            "dropped_degenerate": ds.stats["dropped_degenerate"],
            "images_without_objects": ds.stats["images_without_objects"],
            "categories": len(ds.cat_ids),
            "area": ds.index.area_histogram(),
            "images_read": len(ds) if read_images else 0,
            "annotation_file": str(ds.ann_file),
            "image_dir": str(ds.img_dir),
        }
    if len(datasets) == 2:
        check_same_categories(datasets["train"], datasets["val"])
    return report
