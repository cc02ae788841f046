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

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from tasks.common.data import DataError, load_dataset
from tasks.detection.annotations import VOC_CLASSES, Sample, read_coco, read_voc
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


def num_sites(cfg: dict) -> int:
    """Sites of the federation (under strategy=centralised: those its one client stands for)."""
    return int(cfg.get("centralised_from_clients") or cfg["num_clients"])


def class_names(cfg: dict) -> tuple[str, ...]:
    d = cfg["dataset"]
    if d["name"] == "voc" and not d.get("classes"):
        return VOC_CLASSES
    if d.get("classes"):
        return tuple(str(c) for c in d["classes"])
    return tuple(f"class{c}" for c in range(1, int(d["num_classes"]) + 1))


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


def site_root(cfg: dict, site: int) -> str:
    if cfg.get("local_data"):  # a SuperNode serving its own folder
        return str(Path(str(cfg["local_data"])).expanduser())
    roots = list(cfg["dataset"].get("roots") or [])
    if len(roots) != num_sites(cfg):
        raise DataError(f"dataset.roots lists {len(roots)} folders but the federation has {num_sites(cfg)} sites "
                        f"(num_clients); give one {cfg['dataset']['name']} folder per site, in partition-id order, "
                        f"or serve each SuperNode's own with --node-config local-data=<folder>")
    return str(Path(str(roots[site])).expanduser())


# ---------------------------------------------------------------------------------- interface
def site_split(cfg: dict, site: int, split: str) -> DetectionSet:
    """Site `site`'s whole split ("train" or "test")."""
    d = cfg["dataset"]
    if d["name"] == "synthetic_detection":
        key = tuple(sorted((k, v) for k, v in d.items() if not isinstance(v, list)))
        return _synthetic(key, int(cfg["seed"]), str(cfg["data_dir"]), str(cfg["cache_dir"]), num_sites(cfg), site,
                          split)
    folder_split = str(d["train_split"] if split == "train" else d["test_split"])
    return _folder(str(d["format"]), site_root(cfg, site), folder_split, class_names(cfg), int(d["max_size"]))


def _capped(data: DetectionSet, limit: int | None, seed: int) -> DetectionSet:
    if limit is None or limit >= len(data):
        return data
    return data.take(np.sort(np.random.default_rng(seed).permutation(len(data))[:limit]))


def client_train(cfg: dict, pid: int) -> DetectionSet:
    """Client `pid`'s training images: its site's, capped at examples_per_client (seeded); under
    strategy=centralised every site's."""
    limit, seed = cfg.get("examples_per_client"), int(cfg["seed"])
    if cfg.get("centralised_from_clients"):
        k = int(cfg["centralised_from_clients"])
        per_site = None if limit is None else int(limit) // k
        return DetectionSet.joined([_capped(site_split(cfg, s, "train"), per_site, seed + s) for s in range(k)])
    return _capped(site_split(cfg, pid, "train"), limit, seed + pid)


def site_test(cfg: dict, site: int) -> DetectionSet:
    """Site `site`'s test images (never trained on), capped at detection.eval_images (seeded). VOC's
    difficult objects stay marked for evaluation to ignore (`detection.voc_difficult=ignore`, the
    VOC protocol's rule) or count as ordinary objects (`include`)."""
    limit = cfg["detection"].get("eval_images")
    data = _capped(site_split(cfg, site, "test"), limit, int(cfg["seed"]) + 1000 + site)
    if cfg["detection"].get("voc_difficult", "ignore") == "include" and data.difficult is not None:
        data = DetectionSet(data.images, data.boxes, data.labels)
    return data


def check_simulated_sites(cfg: dict) -> None:
    """A simulation reads every site's folder from `dataset.roots` (no SuperNode serves its own):
    a folder dataset without them is refused before anything starts."""
    d = cfg["dataset"]
    if d["name"] != "synthetic_detection" and not d.get("roots") and not cfg.get("local_data"):
        example = ",".join(f"/data/site{k}" for k in range(min(num_sites(cfg), 3))) + (",..." if num_sites(cfg) > 3 else "")
        raise DataError(f"dataset={d['name']} needs dataset.roots, one folder per site (num_clients={num_sites(cfg)}), "
                        f"e.g. 'dataset.roots=[{example}]': a simulation reads every site's images from them (a "
                        f"deployment's SuperNodes may serve their own with --node-config local-data=<folder>)")


def check_detection_data(cfg: dict, sites_evaluate: bool = False) -> None:
    """Every site's train and test split read and checked before training (bad annotations are
    refused by the readers with the file named), and enough images for a batch. A folder dataset
    without `dataset.roots` whose sites evaluate themselves is a deployment whose SuperNodes serve
    their own folders (local-data): each checks its own at its first round, so nothing is read here."""
    if sites_evaluate and cfg["dataset"]["name"] != "synthetic_detection" and not cfg["dataset"].get("roots"):
        return
    bs = int(cfg["detection"]["batch_size"])
    for site in range(num_sites(cfg)):
        train = client_train(dict(cfg, centralised_from_clients=None), site)
        if len(train) < bs:
            raise DataError(f"site {site} has {len(train)} training images, fewer than detection.batch_size={bs}; "
                            f"lower detection.batch_size or raise examples_per_client")
        if len(site_test(cfg, site)) == 0:
            raise DataError(f"site {site} has no test images to evaluate on")
