"""An offline synthetic detection set made from the project's own images (issue 16, docs/algorithms.md#federated-object-detection-fedvision):
objects pasted at known boxes on larger canvases, with sites that differ as cameras in
different places do, so that a federation of them is non-IID.

Objects are the dataset's images (the CIFAR-10 sample's 32x32 pictures; their class is the
object's class), resized to the object's side and pasted whole: the box is the pasted square.
Site s of S (everything seeded by (seed, site), so a set is the same on every machine):
- classes: a window of `classes_per_site` of the C classes starting at class s * C / S (wrapping),
  as `partition=classes` does for the SSL task: neighbouring sites share some classes;
- scale: object sides drawn from the site's own range, the sites spread from near cameras (large
  objects) to far ones (small): [min_size, max_size] cut into S overlapping ranges;
- background: one kind per site (smooth colour field, gradient, stripes, flat colour with grain),
  in colours of its own;
- 1..`max_objects` objects per image, placed so that two boxes overlap by IoU <= 0.3.
Labels are 1..C (0 is torchvision's background). Training objects come from the dataset's train
split and evaluation objects from its test split, so a site is evaluated on pictures never seen.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

BACKGROUNDS = ("field", "gradient", "stripes", "grain")
MAX_IOU = 0.3


@dataclass(frozen=True)
class SiteProfile:
    classes: tuple[int, ...]  # 0-based classes this site sees
    size_range: tuple[int, int]  # object sides in pixels
    background: str
    palette: tuple[tuple[int, int, int], tuple[int, int, int]]


def site_profile(site: int, num_sites: int, num_classes: int, classes_per_site: int, min_size: int, max_size: int,
                 seed: int) -> SiteProfile:
    """What site `site` of `num_sites` looks like (see the module's docstring)."""
    rng = np.random.default_rng([seed, site, 1])
    start = site * num_classes // num_sites
    classes = tuple(sorted((start + k) % num_classes for k in range(min(classes_per_site, num_classes))))
    step = (max_size - min_size) / (num_sites + 1)
    hi = max_size - int(round(site * step))  # site 0: the largest objects
    lo = max(min_size, hi - int(round(2 * step)) - 1)
    palette = tuple(tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(2))
    return SiteProfile(classes, (lo, max(lo + 1, hi)), BACKGROUNDS[site % len(BACKGROUNDS)], palette)


def background(profile: SiteProfile, canvas: int, rng: np.random.Generator) -> np.ndarray:
    """One canvas of the site's background kind, uint8 (canvas, canvas, 3)."""
    a, b = (np.asarray(c, np.float32) for c in profile.palette)
    yy, xx = np.mgrid[0:canvas, 0:canvas].astype(np.float32) / max(1, canvas - 1)
    if profile.background == "field":  # smooth colour field: a coarse random grid, upsampled
        coarse = rng.uniform(0, 255, (4, 4, 3)).astype(np.uint8)
        img = np.asarray(Image.fromarray(coarse).resize((canvas, canvas), Image.BILINEAR), np.float32)
        img = 0.5 * img + 0.5 * a
    else:
        angle = rng.uniform(0, np.pi)
        t = np.cos(angle) * xx + np.sin(angle) * yy
        if profile.background == "gradient":
            w = (t - t.min()) / max(1e-6, float(t.max() - t.min()))
        elif profile.background == "stripes":
            w = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(3, 8) * t)
        else:  # grain: flat colour and noise
            w = np.zeros_like(t)
        img = a * (1 - w[..., None]) + b * w[..., None]
    img = img + rng.normal(0, 8 if profile.background == "grain" else 3, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _iou(box: np.ndarray, others: list[np.ndarray]) -> float:
    if not others:
        return 0.0
    o = np.stack(others)
    ix = np.clip(np.minimum(box[2], o[:, 2]) - np.maximum(box[0], o[:, 0]), 0, None)
    iy = np.clip(np.minimum(box[3], o[:, 3]) - np.maximum(box[1], o[:, 1]), 0, None)
    inter = ix * iy
    area = (box[2] - box[0]) * (box[3] - box[1])
    return float(np.max(inter / (area + (o[:, 2] - o[:, 0]) * (o[:, 3] - o[:, 1]) - inter)))


def make_site(objects: np.ndarray, object_labels: np.ndarray, profile: SiteProfile, n_images: int, seed: int,
              site: int, canvas: int = 64, max_objects: int = 3, split: str = "train"
              ) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """(images uint8 (n, canvas, canvas, 3), boxes per image (k, 4) float32 x1 y1 x2 y2, labels per
    image (k,) int64 in 1..C) of one site, objects drawn from `objects` of the site's classes."""
    rng = np.random.default_rng([seed, site, 2, 0 if split == "train" else 1])
    pools = {c: np.flatnonzero(object_labels == c) for c in profile.classes}
    empty = [c for c, idx in pools.items() if len(idx) == 0]
    if empty:
        raise ValueError(f"no object images of classes {empty} to paste (site {site})")
    lo, hi = profile.size_range
    hi = min(hi, canvas)
    images = np.empty((n_images, canvas, canvas, 3), np.uint8)
    all_boxes, all_labels = [], []
    for i in range(n_images):
        img = background(profile, canvas, rng)
        boxes, labels = [], []
        for _ in range(int(rng.integers(1, max_objects + 1))):
            for _ in range(20):  # a place that overlaps the others little enough
                side = int(rng.integers(min(lo, hi), hi + 1))
                x, y = (int(v) for v in rng.integers(0, canvas - side + 1, 2))
                box = np.asarray([x, y, x + side, y + side], np.float32)
                if _iou(box, boxes) <= MAX_IOU:
                    break
            else:
                continue
            cls = int(rng.choice(profile.classes))
            picture = objects[int(rng.choice(pools[cls]))]
            img[y:y + side, x:x + side] = np.asarray(Image.fromarray(picture).resize((side, side), Image.BILINEAR))
            boxes.append(box)
            labels.append(cls + 1)
        images[i] = img
        all_boxes.append(np.stack(boxes) if boxes else np.zeros((0, 4), np.float32))
        all_labels.append(np.asarray(labels, np.int64))
    return images, all_boxes, all_labels
