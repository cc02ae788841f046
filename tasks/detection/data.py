"""A site's detection data, train and test split, whatever its source (issue 16, docs/algorithms.md#federated-object-detection-fedvision): the
offline synthetic set, PASCAL VOC folders or COCO-format folders, one folder per site
(`dataset.roots`, in partition-id order) or the SuperNode's own (`local-data`); and the check
that every site's data is usable, run before training.

Images are uint8 H,W,3 arrays; folder images larger than `dataset.max_size` on their longer side
are shrunk on reading (boxes with them), so that a site's set fits in memory; the detector's own
transform then brings them to its `min_size`/`max_size`. Under strategy=centralised the one
client holds every site's training images (each site capped at examples_per_client / sites).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from tasks.common.data import DataError, load_dataset
from tasks.detection.annotations import Sample, read_coco, read_voc
from tasks.detection.settings import DetectionSettings, Sites
from tasks.detection.synthetic import make_site, site_profile


@dataclass
class DetectionSet:
    images: list[np.ndarray]  # uint8 (H, W, 3)
    boxes: list[np.ndarray]  # (k, 4) float32 x1 y1 x2 y2, pixels
    labels: list[np.ndarray]  # (k,) int64, 1..C
    # (k,) bool per image: VOC's difficult objects, which evaluation ignores (None: none are; training
    # ignores the flags and learns every object, docs/detection.md)
    difficult: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.images)

    def flags(self) -> list[np.ndarray]:
        """The difficult flags, all False where the set has none."""
        return self.difficult if self.difficult is not None else [np.zeros(len(y), bool) for y in self.labels]

    def take(self, idx) -> DetectionSet:
        return DetectionSet([self.images[i] for i in idx], [self.boxes[i] for i in idx], [self.labels[i] for i in idx],
                            None if self.difficult is None else [self.difficult[i] for i in idx])

    @staticmethod
    def joined(sets: list[DetectionSet]) -> DetectionSet:
        flags = [d for s in sets for d in s.flags()] if any(s.difficult is not None for s in sets) else None
        return DetectionSet([x for s in sets for x in s.images], [b for s in sets for b in s.boxes],
                            [y for s in sets for y in s.labels], flags)


# ---------------------------------------------------------------------------------- synthetic
@lru_cache(maxsize=16)
def _synthetic(d: tuple, seed: int, data_dir: str, cache_dir: str, sites: int, site: int, split: str) -> DetectionSet:
    d = dict(d)
    source = load_dataset(str(d["source"]), data_dir, cache_dir)
    objects, labels = (source.x_train, source.y_train) if split == "train" else (source.x_test, source.y_test)
    profile = site_profile(site, sites, int(d["num_classes"]), int(d["classes_per_site"]), int(d["min_object"]),
                           int(d["max_object"]), seed)
    n = int(d["train_images"] if split == "train" else d["test_images"])
    images, boxes, labs = make_site(np.asarray(objects), np.asarray(labels), profile, n, seed, site,
                                    int(d["canvas"]), int(d["max_objects"]), split)
    return DetectionSet(list(images), boxes, labs)


# ------------------------------------------------------------------------------------ folders
def _shrunk(sample: Sample, max_side: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        with Image.open(sample.image) as im:
            im = im.convert("RGB")
            scale = min(1.0, max_side / max(im.size))
            if scale < 1.0:
                im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.BILINEAR)
            return np.asarray(im), sample.boxes * np.float32(scale)
    except OSError as err:
        raise DataError(f"{sample.image}: not a readable image ({err}); remove or replace it") from err


@lru_cache(maxsize=8)
def _folder(kind: str, root: str, split: str, classes: tuple[str, ...], max_side: int) -> DetectionSet:
    samples = read_voc(root, split, classes) if kind == "voc" else read_coco(root, split, classes)[0]
    if not samples:
        raise DataError(f"{root}: the split '{split}' lists no images")
    read = [_shrunk(s, max_side) for s in samples]
    difficult = [s.difficult if s.difficult is not None else np.zeros(len(s.labels), bool) for s in samples]
    return DetectionSet([r[0] for r in read], [r[1] for r in read], [s.labels for s in samples],
                        difficult if any(d.any() for d in difficult) else None)


def site_root(s: Sites, site: int) -> str:
    if s.local_data:  # a SuperNode serving its own folder
        return str(Path(s.local_data).expanduser())
    if len(s.roots) != s.count:
        raise DataError(f"dataset.roots lists {len(s.roots)} folders but the federation has {s.count} sites "
                        f"(num_clients); give one {s.dataset} folder per site, in partition-id order, "
                        f"or serve each SuperNode's own with --node-config local-data=<folder>")
    return str(Path(s.roots[site]).expanduser())


# ---------------------------------------------------------------------------------- interface
def site_split(s: Sites, site: int, split: str) -> DetectionSet:
    """Site `site`'s whole split ("train" or "test")."""
    if s.is_synthetic:
        return _synthetic(s.synthetic, s.seed, s.data_dir, s.cache_dir, s.count, site, split)
    folder_split = s.train_split if split == "train" else s.test_split
    return _folder(s.format, site_root(s, site), folder_split, s.classes, s.max_side)


def _capped(data: DetectionSet, limit: int | None, seed: int) -> DetectionSet:
    if limit is None or limit >= len(data):
        return data
    return data.take(np.sort(np.random.default_rng(seed).permutation(len(data))[:limit]))


def client_train(s: Sites, pid: int) -> DetectionSet:
    """Client `pid`'s training images: its site's, capped at examples_per_client (seeded); under
    strategy=centralised (`pooled`) every site's."""
    if s.pooled:
        per_site = None if s.examples_per_client is None else s.examples_per_client // s.count
        return DetectionSet.joined([_capped(site_split(s, k, "train"), per_site, s.seed + k) for k in range(s.count)])
    return _capped(site_split(s, pid, "train"), s.examples_per_client, s.seed + pid)


def site_test(s: Sites, site: int) -> DetectionSet:
    """Site `site`'s test images (never trained on), capped at detection.eval_images (seeded). VOC's
    difficult objects stay marked for evaluation to ignore (`detection.voc_difficult=ignore`, the
    VOC protocol's rule) or count as ordinary objects (`include`)."""
    data = _capped(site_split(s, site, "test"), s.eval_images, s.seed + 1000 + site)
    if s.voc_difficult == "include" and data.difficult is not None:
        data = DetectionSet(data.images, data.boxes, data.labels)
    return data


def check_simulated_sites(s: DetectionSettings) -> None:
    """A simulation reads every site's folder from `dataset.roots` (no SuperNode serves its own):
    a folder dataset without them is refused before anything starts."""
    sites = s.sites
    if not sites.readable() and not sites.local_data:
        example = ",".join(f"/data/site{k}" for k in range(min(sites.count, 3))) + (",..." if sites.count > 3 else "")
        raise DataError(f"dataset={sites.dataset} needs dataset.roots, one folder per site (num_clients={sites.count}), "
                        f"e.g. 'dataset.roots=[{example}]': a simulation reads every site's images from them (a "
                        f"deployment's SuperNodes may serve their own with --node-config local-data=<folder>)")


def check_detection_data(s: DetectionSettings, sites_evaluate: bool = False) -> None:
    """Every site's train and test split read and checked before training (bad annotations are
    refused by the readers with the file named), and enough images for a batch. A folder dataset
    without `dataset.roots` whose sites evaluate themselves is a deployment whose SuperNodes serve
    their own folders (local-data): each checks its own at its first round, so nothing is read here."""
    if sites_evaluate and not s.sites.readable():
        return
    bs, each = s.training.batch_size, replace(s.sites, pooled=False)
    for site in range(s.sites.count):
        train = client_train(each, site)
        if len(train) < bs:
            raise DataError(f"site {site} has {len(train)} training images, fewer than detection.batch_size={bs}; "
                            f"lower detection.batch_size or raise examples_per_client")
        if len(site_test(s.sites, site)) == 0:
            raise DataError(f"site {site} has no test images to evaluate on")
