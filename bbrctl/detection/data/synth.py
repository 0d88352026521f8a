"""The synthetic "shapes" detection dataset, generated deterministically and cached.

Why it exists: the paper's experiments need COCO and a GPU; this dataset lets every loss
be trained and compared on a 2-core CPU in minutes, in COCO format so that the same data
and evaluation code serve both.

What an image holds (see ``render_image``):

* a smooth, muted colour field (``background_saturation``) with pixel noise and thin
  distractor strokes (1-2 px polylines, never annotated: "anything with an edge is an
  object" fails);
* 2-6 objects of five classes, ``CLASSES``: rectangle, ellipse, triangle (apex anywhere
  on one side, four orientations), bar (a capsule with aspect ratio 3:1 to 6:1, so boxes
  as elongated as 1:6) and ring (an elliptical annulus);
* sizes spread over COCO's area ranges (small < 32^2 <= medium < 96^2 <= large, in
  pixels of object area): each object first draws its range with probabilities
  ``size_mix`` (default 30/45/25%), then its area log-uniformly within the range (from
  ``min_size``^2 for small, up to what fits in the image for large), aspect ratios
  log-uniform in [1/2.5, 2.5] (bars 3-6); larger objects are painted first, and
  occlusion never moves an object out of its range, so ``size_mix`` is what the
  annotations show (up to placements that fail in crowded images);
* occlusion: objects are painted in order, later ones on top. A placement is rejected
  if it would leave any earlier object with less than ``min_visible`` (default 60%) of
  its pixels visible, so every drawn object stays annotated and recognisable. As in
  COCO, an object's box, area and mask are those of its *visible* pixels.
* colours: with probability ``color_cue`` (default 1) an object takes its class's hue
  (one fifth of the colour wheel each, random saturation and brightness), otherwise a
  random colour, so that only its shape tells the class; always a minimum luminance
  contrast against the background under it and a mild shading gradient.

Why these defaults: a from-scratch detector on a 2-core CPU gets a few hundred
iterations. Recognition is made easy (colour cue, muted background) so that the budget
goes into localisation, where the losses differ (measured with the stock RetinaNet
preset, 300 iterations of 8 images: AP50 47 with color_cue 1, 34 with 0.8); the hard part kept on purpose is
geometric: elongated bars, triangles whose apex is a single pixel row, rings, small
objects, occlusion, and exact visible-extent boxes. Every knob is in conf/data/shapes.yaml.

Annotations are exact: masks are rasterised first and the box is the tight box of the
visible mask in pixel units (pixel i covers [i, i+1)), so a detector is graded against
the true extent, which is what makes box-regression quality show in AP75 and AP.
Segmentations are compressed RLE (``iscrowd=0``) because occluded objects and rings are
not simple polygons; pycocotools and faster-coco-eval both read them.

Each parameter set has its own directory under the cache root (``data.root``):
``shapes-v<VERSION>-seed<seed>-<size>px-<train>+<val>-<hash of all parameters>``, see
:meth:`ShapesSpec.dirname`, so sweeping a generator knob never mixes two datasets.
Layout of that directory::

    train/000001.jpg ...   val/000001.jpg ...
    annotations/instances_train.json   annotations/instances_val.json
    manifest.json          written last: its presence marks a complete dataset

Determinism: every image is drawn from its own ``numpy.random.Generator`` seeded with
(seed, split, index), so the same parameters give byte-identical images and JSON, and
changing ``num_train`` does not change the images that exist in both versions.
Generation happens in a temporary sibling directory that is renamed into place, so an
interrupted run leaves no half dataset and concurrent generators cannot corrupt each
other (the first rename wins; the others discard their copy).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import socket
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping

CLASSES = ("rectangle", "ellipse", "triangle", "bar", "ring")
GENERATOR = "bbrctl.shapes"
# Bump when the pictures or annotations change for the same parameters: the manifest
# check then refuses a stale cache instead of silently mixing two generators' data.
VERSION = 1
MANIFEST = "manifest.json"
SPLITS = ("train", "val")
_SPLIT_CODE = {"train": 0, "val": 1}

_RECT, _ELLIPSE, _TRIANGLE, _BAR, _RING = range(len(CLASSES))


@dataclass(frozen=True)
class ShapesSpec:
    """Everything that determines the generated files (the manifest records it)."""

    seed: int = 0
    num_train: int = 512
    num_val: int = 128
    image_size: int = 160
    min_objects: int = 2
    max_objects: int = 6
    size_mix: tuple = (0.3, 0.45, 0.25)  # fractions of small, medium, large objects (COCO ranges)
    min_size: float = 12.0          # smallest sqrt(object area), px
    max_scale_frac: float = 0.8     # largest sqrt(box w*h), as a fraction of image_size
    clutter: float = 3.0            # mean number of distractor strokes per image
    noise: float = 6.0              # std of the additive (uniform) pixel noise, grey levels
    min_visible: float = 0.6        # fraction of an object's pixels that stays visible
    min_contrast: float = 45.0      # luminance gap between an object and its background
    color_cue: float = 1.0          # probability that an object has its class's hue
    background_saturation: float = 0.4  # 0: grey backgrounds, 1: fully coloured
    # Non-square images (the COCO-sized set, conf/data/shapes_coco.yaml): each image draws
    # its (width, height) from image_shapes with probabilities image_shape_weights; None:
    # every image is image_size x image_size. Left out of the manifest and digest when None,
    # so the square datasets keep their directories.
    image_shapes: tuple | None = None
    image_shape_weights: tuple | None = None

    # Config keys -> field names (the config says synth_seed; "seed" is the training seed).
    _CFG_KEYS = {"synth_seed": "seed"}
    _OPTIONAL = ("image_shapes", "image_shape_weights")

    @classmethod
    def from_cfg(cls, data_cfg: Mapping[str, Any]) -> "ShapesSpec":
        """Build from a data config node; keys not given keep their defaults."""
        defaults = {f.name: f.default for f in fields(cls)}
        kw: dict[str, Any] = {}
        for key in list(data_cfg.keys()):
            name = cls._CFG_KEYS.get(key, key)
            if name in defaults:
                v = data_cfg[key]
                if name == "image_shapes" and v is not None:
                    v = tuple(tuple(int(x) if _is_number(x) and float(x).is_integer() else x for x in pair)
                              if hasattr(pair, "__iter__") and not isinstance(pair, str) else pair for pair in v)
                # OmegaConf lists -> tuples: the spec is hashable and JSON-stable.
                elif not isinstance(v, (str, int, float, bool)) and v is not None and hasattr(v, "__iter__"):
                    v = tuple(float(x) if _is_number(x) else x for x in v)
                # clutter=3 and clutter=3.0 are the same dataset: one spelling, one hash.
                elif isinstance(defaults[name], float) and _is_number(v):
                    v = float(v)
                kw[name] = v
        spec = cls(**kw)
        spec.validate()
        return spec

    def validate(self) -> None:
        from bbrctl.errors import UserError

        def need(ok: bool, what: str) -> None:
            if not ok:
                raise UserError(f"data.{what}")

        ints = ("seed", "num_train", "num_val", "image_size", "min_objects", "max_objects")
        for name in ints:
            v = getattr(self, name)
            need(isinstance(v, int) and not isinstance(v, bool), f"{_cfg_name(name)} must be an integer, got {v!r}")
        number = _is_number

        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "size_mix":
                need(isinstance(v, tuple) and len(v) == 3 and all(number(x) and x >= 0 for x in v) and sum(v) > 0,
                     f"size_mix must be three non-negative numbers (small, medium, large), got {v!r}")
            elif f.name == "image_shapes":
                need(v is None or (isinstance(v, tuple) and len(v) >= 1 and all(
                    isinstance(p, tuple) and len(p) == 2 and all(isinstance(x, int) and not isinstance(x, bool)
                                                               and 32 <= x <= 2048 for x in p) for p in v)),
                     f"image_shapes must be a list of [width, height] pairs of integers in [32, 2048], got {v!r}")
            elif f.name == "image_shape_weights":
                n = len(self.image_shapes) if isinstance(self.image_shapes, tuple) else None
                need(v is None or (self.image_shapes is not None and isinstance(v, tuple) and len(v) == n
                                   and all(number(x) and x >= 0 for x in v) and sum(v) > 0),
                     f"image_shape_weights must be one non-negative number per entry of image_shapes "
                     f"({n}), not all zero, got {v!r}")
            else:
                need(number(v), f"{_cfg_name(f.name)} must be a number, got {v!r}")
        need(self.seed >= 0, f"synth_seed must be >= 0, got {self.seed}")
        need(self.num_train >= 1, f"num_train must be >= 1, got {self.num_train}")
        need(self.num_val >= 1, f"num_val must be >= 1, got {self.num_val}")
        need(32 <= self.image_size <= 2048, f"image_size must be in [32, 2048], got {self.image_size}")
        need(1 <= self.min_objects <= self.max_objects <= 50,
             f"min_objects/max_objects must satisfy 1 <= min <= max <= 50, got {self.min_objects}/{self.max_objects}")
        need(4 <= self.min_size < 32, f"min_size must be in [4, 32) px, got {self.min_size}")
        need(0.2 <= self.max_scale_frac <= 0.95, f"max_scale_frac must be in [0.2, 0.95], got {self.max_scale_frac}")
        need(self.clutter >= 0, f"clutter must be >= 0, got {self.clutter}")
        need(self.noise >= 0, f"noise must be >= 0, got {self.noise}")
        need(0 < self.min_visible <= 1, f"min_visible must be in (0, 1], got {self.min_visible}")
        need(0 <= self.min_contrast <= 200, f"min_contrast must be in [0, 200], got {self.min_contrast}")
        need(0 <= self.color_cue <= 1, f"color_cue must be in [0, 1], got {self.color_cue}")
        need(0 <= self.background_saturation <= 1,
             f"background_saturation must be in [0, 1], got {self.background_saturation}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["size_mix"] = list(self.size_mix)  # JSON has lists; keeps manifest comparisons exact
        for k in self._OPTIONAL:
            if d[k] is None:
                del d[k]
        if self.image_shapes is not None:
            d["image_shapes"] = [list(p) for p in self.image_shapes]
        if self.image_shape_weights is not None:
            d["image_shape_weights"] = list(self.image_shape_weights)
        return d

    def shape_of(self, rng) -> tuple[int, int]:
        """(width, height) of the next image: square, or drawn from image_shapes."""
        if self.image_shapes is None:
            return self.image_size, self.image_size
        w = self.image_shape_weights or (1.0,) * len(self.image_shapes)
        k = int(rng.choice(len(self.image_shapes), p=[x / sum(w) for x in w]))
        return self.image_shapes[k]

    def num_images(self, split: str) -> int:
        return self.num_train if split == "train" else self.num_val

    def digest(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(f"{GENERATOR}/{VERSION}/{blob}".encode()).hexdigest()[:8]

    def dirname(self) -> str:
        """The dataset's directory name: readable main parameters plus a hash of all."""
        size = (f"{self.image_size}px" if self.image_shapes is None else
                f"upto{max(max(p) for p in self.image_shapes)}px")
        return f"shapes-v{VERSION}-seed{self.seed}-{size}-{self.num_train}+{self.num_val}-{self.digest()}"


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def dataset_dir(spec: ShapesSpec, cache_root: str | os.PathLike) -> Path:
    """Where the dataset of ``spec`` lives under the cache root (``data.root``)."""
    return Path(cache_root).expanduser() / spec.dirname()


def _cfg_name(field_name: str) -> str:
    return {v: k for k, v in ShapesSpec._CFG_KEYS.items()}.get(field_name, field_name)


def categories() -> list[dict]:
    return [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(CLASSES)]


# --------------------------------------------------------------------------- rendering


def _object_mask(cls: int, w: int, h: int, rng) -> "Any":
    """Rasterise one object's full (unoccluded) mask as a bool (h, w) array filling its box."""
    import numpy as np
    from PIL import Image, ImageDraw

    im = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(im)
    x1, y1 = w - 1, h - 1  # PIL boxes include both end pixels
    if cls == _RECT:
        d.rectangle([0, 0, x1, y1], fill=1)
    elif cls == _ELLIPSE:
        d.ellipse([0, 0, x1, y1], fill=1)
    elif cls == _TRIANGLE:
        side = int(rng.integers(4))  # which box side the base lies on
        t = float(rng.uniform(0.0, 1.0))
        if side == 0:    # base at the bottom, apex on the top edge
            pts = [(0, y1), (x1, y1), (t * x1, 0)]
        elif side == 1:  # base at the top
            pts = [(0, 0), (x1, 0), (t * x1, y1)]
        elif side == 2:  # base on the left
            pts = [(0, 0), (0, y1), (x1, t * y1)]
        else:            # base on the right
            pts = [(x1, 0), (x1, y1), (0, t * y1)]
        d.polygon(pts, fill=1)
    elif cls == _BAR:
        d.rounded_rectangle([0, 0, x1, y1], radius=(min(w, h) - 1) / 2.0, fill=1)
    elif cls == _RING:
        d.ellipse([0, 0, x1, y1], fill=1)
        t = max(2, int(round(min(w, h) * float(rng.uniform(0.15, 0.3)))))
        if w - 2 * t >= 3 and h - 2 * t >= 3:
            d.ellipse([t, t, x1 - t, y1 - t], fill=0)
    return np.asarray(im, dtype=bool)


def _luma(rgb) -> "Any":
    return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]


def _background(width: int, height: int, spec: ShapesSpec, rng):
    """Smooth colour field plus thin distractor strokes, as float32 (height, width, 3)."""
    import numpy as np
    from PIL import Image, ImageDraw

    grid = rng.uniform(25, 190, size=(3, 3, 3))
    grey = grid.mean(axis=2, keepdims=True)
    grid = (grey + spec.background_saturation * (grid - grey)).astype(np.uint8)
    im = Image.fromarray(grid, "RGB").resize((width, height), Image.BILINEAR)
    d = ImageDraw.Draw(im)
    for _ in range(int(rng.poisson(spec.clutter))):
        n = int(rng.integers(2, 5))
        if width == height:
            pts = [tuple(float(v) for v in p) for p in rng.uniform(0, width, size=(n, 2))]
        else:
            pts = [(float(x) * width, float(y) * height) for x, y in rng.uniform(0, 1, size=(n, 2))]
        color = tuple(int(c) for c in rng.integers(0, 256, size=3))
        d.line(pts, fill=color, width=int(rng.integers(1, 3)))
    return np.asarray(im, dtype=np.float32)


def _pick_color(cls: int, local_luma: float, spec: ShapesSpec, rng):
    import colorsys

    import numpy as np

    cued = spec.color_cue > 0 and rng.random() < spec.color_cue
    for _ in range(12):
        if cued:  # the class's hue (five sectors of the colour wheel), any brightness
            hue = (cls / len(CLASSES) + float(rng.normal(0.0, 0.025))) % 1.0
            rgb = colorsys.hsv_to_rgb(hue, float(rng.uniform(0.55, 1.0)), float(rng.uniform(0.35, 1.0)))
            c = np.array(rgb, dtype=np.float32) * 255.0
        else:
            c = rng.integers(0, 256, size=3).astype(np.float32)
        if abs(float(_luma(c)) - local_luma) >= spec.min_contrast:
            return c
    # Rare fallback: the extreme that is farthest from the background.
    v = 235.0 if local_luma < 128 else 20.0
    return np.full(3, v, dtype=np.float32)


# Object area / box area of each class, nominal (rings vary with their thickness): turns a
# target object area into a box size.
_FILL = {_RECT: 1.0, _ELLIPSE: math.pi / 4, _TRIANGLE: 0.5, _BAR: 0.95, _RING: 0.55}
# COCO's area ranges, in px^2 of object area.
_RANGES = ((0.0, 32.0 ** 2), (32.0 ** 2, 96.0 ** 2), (96.0 ** 2, math.inf))


def _sample_shape(spec: ShapesSpec, bucket: int, rng, width: int, height: int) -> tuple[int, int, int] | None:
    """Class and box size (w, h) of one object whose area falls in COCO range ``bucket``.

    None when the draw does not fit the ``width`` x ``height`` image (the caller draws
    again). Object scales are relative to the image's shorter side.
    """
    size = min(width, height)
    cls = int(rng.integers(len(CLASSES)))
    if cls == _BAR:
        aspect = float(rng.uniform(3.0, 6.0))
        if rng.random() < 0.5:
            aspect = 1.0 / aspect
    else:
        aspect = math.exp(float(rng.uniform(-math.log(2.5), math.log(2.5))))
    fill = _FILL[cls]
    max_side = min(size - 2, spec.max_scale_frac * size * max(math.sqrt(aspect), 1 / math.sqrt(aspect)))
    max_area = fill * max_side ** 2 * min(aspect, 1 / aspect)  # the longer side is max_side
    lo = max(_RANGES[bucket][0], spec.min_size ** 2)
    hi = min(_RANGES[bucket][1], max_area)
    if hi <= lo:
        return None
    area = math.exp(float(rng.uniform(math.log(lo), math.log(hi))))
    w = int(round(math.sqrt(area / fill * aspect)))
    h = int(round(math.sqrt(area / fill / aspect)))
    if min(w, h) < 3 or w > width - 2 or h > height - 2:
        return None
    return cls, w, h


class _Placed:
    """An accepted object: its box and its full and still-visible masks (box-sized)."""

    __slots__ = ("cls", "x0", "y0", "w", "h", "full", "vis", "n_full", "n_vis", "n_min")

    def __init__(self, cls, x0, y0, w, h, mask, n_min):
        self.cls, self.x0, self.y0, self.w, self.h = cls, x0, y0, w, h
        self.full, self.vis = mask, mask.copy()
        self.n_full = self.n_vis = int(mask.sum())
        self.n_min = n_min  # fewest visible pixels allowed (min_visible, and its area range)

    def overlap(self, x0, y0, w, h, mask):
        """(slices into self, slices into the other mask) of the box intersection, or None."""
        ix0, iy0 = max(self.x0, x0), max(self.y0, y0)
        ix1, iy1 = min(self.x0 + self.w, x0 + w), min(self.y0 + self.h, y0 + h)
        if ix0 >= ix1 or iy0 >= iy1:
            return None
        mine = (slice(iy0 - self.y0, iy1 - self.y0), slice(ix0 - self.x0, ix1 - self.x0))
        theirs = (slice(iy0 - y0, iy1 - y0), slice(ix0 - x0, ix1 - x0))
        return mine, theirs

    def full_mask(self, width: int, height: int):
        import numpy as np

        m = np.zeros((height, width), dtype=bool)
        m[self.y0:self.y0 + self.h, self.x0:self.x0 + self.w] = self.vis
        return m


def _occlusion_hits(placed: list, x0: int, y0: int, w: int, h: int, m) -> list | None:
    """What a placement covers of each earlier object, or None if it hides too much.

    Too much: an earlier object would keep fewer than its ``n_min`` pixels (min_visible
    of its own, and never fewer than its COCO area range starts at, so that ``size_mix``
    describes the annotations).
    """
    hits = []
    for o in placed:
        ov = o.overlap(x0, y0, w, h, m)
        if ov is None:
            continue
        covered = int((o.vis[ov[0]] & m[ov[1]]).sum())
        if o.n_vis - covered < o.n_min:
            return None
        hits.append((o, ov, covered))
    return hits


def render_image(spec: ShapesSpec, split: str, index: int):
    """Draw image ``index`` (0-based) of ``split``.

    Returns ``(rgb uint8 (H, W, 3), objects)`` with objects a list of
    ``(class_index, visible_mask bool (H, W))`` in painting order; W = H = image_size
    unless the spec has image_shapes.
    """
    import numpy as np

    rng = np.random.default_rng([spec.seed, _SPLIT_CODE[split], index])
    width, height = spec.shape_of(rng)
    img = _background(width, height, spec, rng)

    placed: list[_Placed] = []
    n = int(rng.integers(spec.min_objects, spec.max_objects + 1))
    mix = [float(x) for x in spec.size_mix]
    buckets = sorted(rng.choice(3, size=n, p=[x / sum(mix) for x in mix]).tolist(), reverse=True)
    for bucket in buckets:  # large first: small objects on top occlude little
        hits = None
        for _attempt in range(10):
            shape = _sample_shape(spec, bucket, rng, width, height)
            if shape is None:
                continue
            cls, w, h = shape
            m = _object_mask(cls, w, h, rng)
            n_pix = int(m.sum())
            if n_pix == 0 or n_pix < _RANGES[bucket][0]:  # rasterised below its range (thin rings)
                continue
            # Positions are cheap to retry, rasterising is not: a few per shape.
            for _pos in range(4):
                x0 = int(rng.integers(0, width - w + 1))
                y0 = int(rng.integers(0, height - h + 1))
                hits = _occlusion_hits(placed, x0, y0, w, h, m)
                if hits is not None:
                    break
            if hits is not None:
                break
        if hits is None:
            continue  # a crowded image: this object is left out
        for o, ov, covered in hits:
            o.vis[ov[0]] &= ~m[ov[1]]
            o.n_vis -= covered
        placed.append(_Placed(cls, x0, y0, w, h, m, max(spec.min_visible * n_pix, _RANGES[bucket][0])))

        region = img[y0:y0 + h, x0:x0 + w]
        # The box's mean stands in for the background under the object (no mask gather).
        color = _pick_color(cls, float(_luma(region[::4, ::4].mean(axis=(0, 1)))), spec, rng)
        # Mild linear shading across the object so that it is not a flat stencil.
        theta = float(rng.uniform(0, 2 * math.pi))
        amp = float(rng.uniform(0.0, 0.25))
        xs = (np.arange(w, dtype=np.float32) - np.float32(w / 2.0)) * np.float32(math.cos(theta) / max(w, h))
        ys = (np.arange(h, dtype=np.float32) - np.float32(h / 2.0)) * np.float32(math.sin(theta) / max(w, h))
        shade = np.float32(1.0) + np.float32(amp) * (xs[None, :] + ys[:, None])
        np.copyto(region, color[None, None, :] * shade[:, :, None], where=m[:, :, None])

    if spec.noise > 0:
        # Uniform noise with the requested std, from raw random bytes: 8x cheaper than
        # Gaussian draws, which were the largest cost of an image.
        u = np.frombuffer(rng.bytes(img.size), dtype=np.uint8).reshape(img.shape).astype(np.float32)
        img += (u - np.float32(127.5)) * np.float32(spec.noise * math.sqrt(3.0) / 127.5)
    rgb = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return rgb, [(o.cls, o.full_mask(width, height)) for o in placed]


def _annotation(mask, ann_id: int, image_id: int, cls: int) -> dict:
    import numpy as np
    from pycocotools import mask as mask_utils

    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    x0, x1, y0, y1 = int(xs[0]), int(xs[-1]) + 1, int(ys[0]), int(ys[-1]) + 1
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": cls + 1,
        "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
        "area": float(mask.sum()),
        "iscrowd": 0,
        "segmentation": {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": rle["counts"].decode("ascii")},
    }


def generate_split(spec: ShapesSpec, split: str, out_dir: Path) -> dict:
    """Write one split's images into ``out_dir/split`` and return its COCO dict."""
    from PIL import Image

    img_dir = out_dir / split
    img_dir.mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for index in range(spec.num_images(split)):
        rgb, objects = render_image(spec, split, index)
        image_id = index + 1
        file_name = f"{image_id:06d}.jpg"
        # JPEG, as COCO: noisy images hardly compress losslessly (PNG costs 20x the time
        # and 4x the space). 4:4:4 chroma keeps colour edges, hence box extents, crisp.
        Image.fromarray(rgb, "RGB").save(img_dir / file_name, format="JPEG", quality=95, subsampling=0)
        images.append({"id": image_id, "file_name": file_name, "width": int(rgb.shape[1]), "height": int(rgb.shape[0])})
        for cls, mask in objects:
            anns.append(_annotation(mask, len(anns) + 1, image_id, cls))
    return {
        "info": {"description": f"bbrctl synthetic shapes ({split})", "version": str(VERSION),
                 "generator": GENERATOR, "params": spec.to_dict()},
        "licenses": [],
        "images": images,
        "annotations": anns,
        "categories": categories(),
    }


def generate(spec: ShapesSpec, out_dir: str | os.PathLike) -> dict:
    """Write the whole dataset into ``out_dir`` (which should be new); return the manifest.

    Not atomic by itself: ``ensure_shapes`` calls it on a temporary directory.
    """
    from bbrctl.store import atomic_write_json, atomic_write_text

    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    counts = {}
    for split in SPLITS:
        coco = generate_split(spec, split, out_dir)
        text = json.dumps(coco, separators=(",", ":"))
        atomic_write_text(out_dir / "annotations" / f"instances_{split}.json", text)
        counts[split] = {"images": len(coco["images"]), "annotations": len(coco["annotations"])}
    manifest = {"generator": GENERATOR, "version": VERSION, "params": spec.to_dict(),
                "classes": list(CLASSES), "splits": counts,
                "generation_s": round(time.perf_counter() - t0, 3)}
    atomic_write_json(out_dir / MANIFEST, manifest)  # last: marks the dataset complete
    return manifest


def read_manifest(root: str | os.PathLike) -> dict | None:
    from bbrctl.store import read_json

    m = read_json(Path(root) / MANIFEST)
    return m if isinstance(m, dict) and m.get("generator") == GENERATOR else None


def check_manifest(root: Path, spec: ShapesSpec, manifest: dict) -> None:
    """Refuse a cached dataset made by another generator version or other parameters."""
    from bbrctl.errors import UserError

    if manifest.get("version") != VERSION:
        raise UserError(f"{str(root)!r} holds shapes data from generator version "
                        f"{manifest.get('version')}, this bbrctl writes version {VERSION}; delete that directory")
    have, want = manifest.get("params", {}), spec.to_dict()
    diff = [f"{_cfg_name(k)}={have.get(k)!r} (config: {v!r})" for k, v in want.items() if have.get(k) != v]
    if diff:
        raise UserError(f"{str(root)!r} holds a shapes dataset generated with other parameters: "
                        f"{', '.join(diff)}; delete that directory")


# Temporary generation directories older than this are leftovers of killed processes.
_STALE_TMP_S = 3600.0


def ensure_shapes(spec: ShapesSpec, root: str | os.PathLike, force: bool = False) -> tuple[dict, bool]:
    """Make sure ``root`` holds the dataset for ``spec``; generate it if needed.

    Returns ``(manifest, generated)``. Safe against interruption and concurrency: the
    data is generated in ``<root>.tmp-<host>-<pid>-<ns>`` and renamed into place; a lock
    file lets concurrent callers wait for one generator instead of all generating.
    ``force`` regenerates even if a complete copy exists.
    """
    from bbrctl.errors import UserError

    root = Path(root).expanduser()
    if not force:
        manifest = read_manifest(root)
        if manifest is not None:
            check_manifest(root, spec, manifest)
            return manifest, False
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the data directory {str(root.parent)!r} (data.root): {e.strerror or e}") from None

    with _lock(root.parent / f".{root.name}.lock"):
        if not force:
            manifest = read_manifest(root)  # another process may have finished meanwhile
            if manifest is not None:
                check_manifest(root, spec, manifest)
                return manifest, False
        # Never delete a directory we did not write, even with force.
        if root.exists() and any(root.iterdir()) and read_manifest(root) is None and not _looks_like_ours(root):
            raise UserError(f"{str(root)!r} exists and is not a bbrctl shapes dataset; "
                            "point data.root at another directory")
        _remove_stale_tmp(root)
        tmp = root.parent / f".{root.name}.tmp-{socket.gethostname()}-{os.getpid()}-{time.time_ns()}"
        try:
            manifest = generate(spec, tmp)
            if root.exists():
                # Only reached for force or a dataset without manifest (interrupted by
                # an older layout); move it aside first so the rename below can succeed.
                old = root.parent / f".{root.name}.old-{os.getpid()}-{time.time_ns()}"
                os.rename(root, old)
                shutil.rmtree(old, ignore_errors=True)
            os.rename(tmp, root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return manifest, True


def _looks_like_ours(root: Path) -> bool:
    names = {p.name for p in root.iterdir()}
    return names <= {"train", "val", "annotations", MANIFEST}


def _remove_stale_tmp(root: Path) -> None:
    now = time.time()
    for p in root.parent.glob(f".{root.name}.tmp-*"):
        try:
            if now - p.stat().st_mtime > _STALE_TMP_S:
                shutil.rmtree(p, ignore_errors=True)
        except FileNotFoundError:
            pass


class _lock:
    """An exclusive advisory lock on a file (fcntl), held for a ``with`` block.

    Only an optimisation: correctness comes from the rename, so a file system without
    locks (some network mounts) just lets concurrent callers generate in parallel.
    """

    def __init__(self, path: Path):
        self.path = path
        self.fd: int | None = None

    def __enter__(self):
        try:
            import fcntl

            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.lockf(self.fd, fcntl.LOCK_EX)
        except (OSError, ImportError):
            if self.fd is not None:
                os.close(self.fd)
            self.fd = None
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            os.close(self.fd)  # closing releases the lock
        return False
