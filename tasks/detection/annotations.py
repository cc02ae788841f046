"""Detection annotations read from a site's folder (PASCAL VOC or COCO format) and checked before
training: every problem refused with the file and what is wrong (issue 16, docs/algorithms.md#federated-object-detection-fedvision).

A `Sample` is one image with its boxes in pixels, (x1, y1, x2, y2) with x1 < x2 <= width and
y1 < y2 <= height (torchvision's convention), and labels 1..C (0 is torchvision's background).
Images without objects are allowed (zero boxes).

- VOC, torchvision's layout: `<root>/Annotations/<id>.xml`, `<root>/JPEGImages/<id>.jpg` and
  `<root>/ImageSets/Main/<split>.txt` (or `<root>/VOCdevkit/VOC20xx/...`); class names from
  `classes` (default: the 20 VOC classes). VOC's pixel coordinates start at 1: x1 = xmin - 1. An
  object's `<difficult>1</difficult>` is kept in `Sample.difficult` (0 or absent: not difficult);
  whether evaluation ignores such objects is `detection.voc_difficult` (tasks/detection/data.py).
- COCO: `<root>/annotations/instances_<split>.json` (or any `instances*.json` there) and the
  images under `<root>/images/` (or `<root>/<split>/`, or `<root>`); boxes are [x, y, w, h];
  category ids are mapped to 1..C in the order of the file's `categories`; crowd regions are left
  out (the COCO evaluation ignores them too).

An image name in an annotation (VOC `<filename>`, an id of the split's listing, COCO `file_name`)
must resolve inside the dataset's root (the VOC folder; the COCO root): `../`, an absolute path or
a symlink that leads elsewhere is refused with the annotation file, the name and the root.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasks.common.data import DataError

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor")


@dataclass
class Sample:
    image: Path
    boxes: np.ndarray  # (N, 4) float32, x1 y1 x2 y2 in pixels
    labels: np.ndarray  # (N,) int64, 1..C
    size: tuple[int, int]  # (height, width)
    difficult: np.ndarray | None = None  # (N,) bool, VOC's <difficult> flags (None: no object is)


def check_boxes(boxes: np.ndarray, labels: np.ndarray, size: tuple[int, int], num_classes: int, where: str) -> None:
    """Refuse a box outside its image or without area, and a label outside 1..num_classes."""
    h, w = size
    for (x1, y1, x2, y2), label in zip(boxes.tolist(), labels.tolist()):
        box = f"box ({x1:g}, {y1:g}, {x2:g}, {y2:g})"
        if not 1 <= label <= num_classes:
            raise DataError(f"{where}: {box} has class {label}, expected 1..{num_classes}")
        if x2 <= x1 or y2 <= y1:
            raise DataError(f"{where}: {box} has zero area (x2 must exceed x1 and y2 exceed y1)")
        if x1 < 0 or y1 < 0 or x2 > w or y2 > h:
            raise DataError(f"{where}: {box} lies outside its {w}x{h} image")


def inside_root(root: Path, folder: Path, name: str, where: str, kind: str = "image") -> Path:
    """`folder / name` when it resolves inside `root` (symlinks followed), else a DataError that
    names the file `where` that gave the name, the name and the root."""
    base = root.resolve()
    if Path(name).is_absolute():
        raise DataError(f"{where}: {kind} name {name!r} is an absolute path; an annotation may only name "
                        f"files inside the dataset root {base}")
    candidate = folder / name
    resolved = candidate.resolve()
    if not resolved.is_relative_to(base):
        raise DataError(f"{where}: {kind} name {name!r} resolves to {resolved}, outside the dataset root {base}; "
                        f"an annotation may only name files inside it")
    return candidate


def _sample(image: Path, boxes: list, labels: list, size: tuple[int, int], num_classes: int, where: str) -> Sample:
    if not image.is_file():
        raise DataError(f"{where}: its image {image} does not exist")
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    lab = np.asarray(labels, dtype=np.int64)
    check_boxes(b, lab, size, num_classes, where)
    return Sample(image, b, lab, size)


# ------------------------------------------------------------------------------------------ VOC
def _voc_root(root: Path) -> Path:
    if (root / "Annotations").is_dir():
        return root
    years = sorted((root / "VOCdevkit").glob("VOC20*")) if (root / "VOCdevkit").is_dir() else []
    if years:
        return years[-1]
    raise DataError(f"{root}: not a PASCAL VOC folder (expected Annotations/, JPEGImages/ and ImageSets/Main/, "
                    f"or VOCdevkit/VOC20xx/ holding them)")


def _voc_number(node, tag: str, where: str) -> float:
    found = node.find(tag)
    try:
        return float(found.text)
    except (AttributeError, TypeError, ValueError):
        raise DataError(f"{where}: <{tag}> is missing or not a number") from None


def read_voc(root: str | Path, split: str = "trainval", classes: tuple[str, ...] = VOC_CLASSES) -> list[Sample]:
    """The samples of `split` in a PASCAL VOC folder."""
    voc = _voc_root(Path(root))
    listing = voc / "ImageSets" / "Main" / f"{split}.txt"
    if not listing.is_file():
        raise DataError(f"{listing} does not exist: the VOC split '{split}' lists its image ids there")
    index = {name: i + 1 for i, name in enumerate(classes)}
    samples = []
    for image_id in listing.read_text().split():
        path = inside_root(voc, voc / "Annotations", f"{image_id}.xml", str(listing), "annotation")
        try:
            tree = ET.parse(path).getroot()
        except (OSError, ET.ParseError) as err:
            raise DataError(f"{path}: cannot be read as VOC XML ({err})") from None
        size = tree.find("size")
        if size is None:
            raise DataError(f"{path}: no <size>")
        hw = (int(_voc_number(size, "height", str(path))), int(_voc_number(size, "width", str(path))))
        boxes, labels, difficult = [], [], []
        for obj in tree.findall("object"):
            name = (obj.findtext("name") or "").strip()
            if name not in index:
                raise DataError(f"{path}: unknown class '{name}'; the classes are {list(classes)}")
            bb = obj.find("bndbox")
            if bb is None:
                raise DataError(f"{path}: object '{name}' has no <bndbox>")
            xmin, ymin, xmax, ymax = (_voc_number(bb, t, str(path)) for t in ("xmin", "ymin", "xmax", "ymax"))
            boxes.append((xmin - 1, ymin - 1, xmax, ymax))
            labels.append(index[name])
            flag = (obj.findtext("difficult") or "0").strip()
            if flag not in ("0", "1"):
                raise DataError(f"{path}: object '{name}' has <difficult>{flag}</difficult>, expected 0 or 1")
            difficult.append(flag == "1")
        image = inside_root(voc, voc / "JPEGImages", (tree.findtext("filename") or "").strip() or f"{image_id}.jpg",
                            str(path))
        sample = _sample(image, boxes, labels, hw, len(classes), str(path))
        sample.difficult = np.asarray(difficult, dtype=bool)
        samples.append(sample)
    return samples


# ----------------------------------------------------------------------------------------- COCO
def _coco_file(root: Path, split: str) -> Path:
    folder = root / "annotations"
    for candidate in (folder / f"instances_{split}.json", *sorted(folder.glob("instances*.json")),
                      root / "instances.json"):
        if candidate.is_file():
            return candidate
    raise DataError(f"{root}: no COCO instances file (expected annotations/instances_{split}.json)")


def _coco_image(root: Path, split: str, name: str, where: str) -> Path:
    folders = (root / "images", root / split, root)
    for folder in folders:
        inside_root(root, folder, name, where)  # from every folder it may be looked up in, before any lookup
    for folder in folders:
        if (folder / name).is_file():
            return folder / name
    return root / "images" / name


def read_coco(root: str | Path, split: str = "train", classes: tuple[str, ...] | None = None
              ) -> tuple[list[Sample], list[str]]:
    """(samples, class names) of a COCO-format folder. With `classes` (the run's class names), labels
    follow that list, matched by category name, so sites whose files number their categories
    differently agree; a category outside it is refused."""
    root = Path(root)
    path = _coco_file(root, split)
    try:
        doc = json.loads(path.read_text())
        categories = [(int(c["id"]), str(c["name"])) for c in doc["categories"]]
        images = {int(im["id"]): (str(im["file_name"]), (int(im["height"]), int(im["width"])))
                  for im in doc["images"]}
        annotations = doc.get("annotations", [])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"{path}: not a COCO instances file ({type(err).__name__}: {err})") from None
    if classes is None:
        index = {cid: i + 1 for i, (cid, _) in enumerate(categories)}
    else:
        unknown = [name for _, name in categories if name not in classes]
        if unknown:
            raise DataError(f"{path}: categories {unknown} are not among the run's classes {list(classes)} "
                            f"(dataset.classes)")
        index = {cid: classes.index(name) + 1 for cid, name in categories}
    names = list(classes) if classes is not None else [name for _, name in categories]
    per_image: dict[int, list] = {i: [] for i in images}
    for n, ann in enumerate(annotations):
        where = f"{path}: annotation {ann.get('id', n)}"
        if ann.get("image_id") not in images:
            raise DataError(f"{where}: image_id {ann.get('image_id')} is not among the file's images")
        if ann.get("category_id") not in index:
            raise DataError(f"{where}: unknown category_id {ann.get('category_id')}; the file's categories are "
                            f"{[c for c, _ in categories]}")
        if ann.get("iscrowd", 0):
            continue
        try:
            x, y, w, h = (float(v) for v in ann["bbox"])
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{where}: bbox must be [x, y, width, height]") from None
        per_image[ann["image_id"]].append(((x, y, x + w, y + h), index[ann["category_id"]], where))
    samples = []
    for image_id, (name, size) in images.items():
        objects = per_image[image_id]
        for box, label, where in objects:  # each box checked under its own annotation's name
            check_boxes(np.asarray([box], np.float32), np.asarray([label]), size, len(names), where)
        where = f"{path}: image {image_id} ({name})"
        samples.append(_sample(_coco_image(root, split, name, where), [o[0] for o in objects],
                               [o[1] for o in objects], size, len(names), where))
    return samples, names


def write_voc(root: str | Path, split: str, images: list, boxes: list, labels: list, classes: tuple[str, ...],
              start: int = 0) -> list[str]:
    """Write images (uint8 H,W,3) with their boxes and labels 1..C as a VOC split under `root`
    (Annotations/, JPEGImages/ as PNG, ImageSets/Main/<split>.txt); returns the image ids."""
    from PIL import Image

    voc = Path(root)
    for d in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (voc / d).mkdir(parents=True, exist_ok=True)
    ids = []
    for i, (image, b, y) in enumerate(zip(images, boxes, labels), start=start):
        image_id = f"{i:06d}"
        Image.fromarray(image).save(voc / "JPEGImages" / f"{image_id}.png")
        h, w = image.shape[:2]
        objects = "".join(
            f"<object><name>{classes[int(c) - 1]}</name><bndbox><xmin>{x1 + 1:g}</xmin><ymin>{y1 + 1:g}</ymin>"
            f"<xmax>{x2:g}</xmax><ymax>{y2:g}</ymax></bndbox></object>" for (x1, y1, x2, y2), c in zip(b.tolist(), y))
        (voc / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><filename>{image_id}.png</filename><size><width>{w}</width><height>{h}</height>"
            f"<depth>3</depth></size>{objects}</annotation>")
        ids.append(image_id)
    (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return ids
