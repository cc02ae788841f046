"""Re-identification data for FedPav (docs/algorithms.md#fedpav): one identity set per client, retrieval on
identities never seen in training, and an unlabeled public set for server-side distillation.

Two sources, one interface (`client_train`, `client_eval`, `public_images`, `num_identities`):

`dataset=cifar100_reid` — a proxy that keeps the problem's shape, built from CIFAR-100 (classes
play identities): `public_classes` classes go to the server as its unlabeled public set (no
client trains on them); the other classes are split among the clients in disjoint sets of
different sizes (largest/smallest ≈ `size_ratio`); each client holds out `eval_fraction` of its
identities for evaluation, whose test images become query (`query_per_id` per identity) and
gallery (the rest). Cameras are unknown (-1), so no same-camera exclusion applies.

`dataset=reid_folders` — real re-ID data sets in the Market-1501 layout, one per client
(`dataset.roots`, in partition-id order): `bounding_box_train/` (training), `query/` and
`bounding_box_test/` (gallery). File names `0002_c1s1_000451_03.jpg` give identity 2, camera 1;
identity -1 marks distractors (kept in the gallery as negatives) and 0000 junk (ignored in
evaluation, never trained on). `dataset.public_root` is a folder of unlabeled images for the
server's distillation. Images are resized to `dataset.image_size` [H, W].
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from tasks.common.data import DataError, load_dataset, take_rows
from tasks.common.local_data import image_files, read_image_files
from tasks.reid.retrieval import JUNK_ID
from tasks.reid.settings import Identities, ReIDSettings

MARKET_NAME = re.compile(r"^(-1|\d+)_c(\d+)")


@dataclass
class EvalSet:
    query: np.ndarray
    query_ids: np.ndarray
    query_cams: np.ndarray
    gallery: np.ndarray
    gallery_ids: np.ndarray
    gallery_cams: np.ndarray


# ---------------------------------------------------------------- CIFAR-100 proxy
def _sizes(total: int, k: int, ratio: float) -> list[int]:
    w = np.linspace(1.0, ratio, k)
    raw = w / w.sum() * total
    sizes = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - sizes))[: total - sizes.sum()]:
        sizes[i] += 1
    return sizes.tolist()


@dataclass
class ProxyPlan:
    train_classes: list[np.ndarray]  # per client, global class ids
    eval_classes: list[np.ndarray]
    public_classes: np.ndarray


def proxy_plan(num_clients: int, num_classes: int, public: int, eval_fraction: float, ratio: float,
               seed: int) -> ProxyPlan:
    """Which classes are the server's public set, and each client's training / evaluation identities."""
    per_client = num_classes - public
    if public < 0 or per_client < 4 * num_clients:
        raise DataError(
            f"cifar100_reid: {num_clients} clients need at least 4 identities each (2 to train, 2 to evaluate) "
            f"but only {per_client} of {num_classes} classes are left after {public} public ones; "
            f"use fewer clients or lower dataset.public_classes"
        )
    if not 0 < eval_fraction < 1 or ratio < 1:
        raise DataError(f"cifar100_reid: eval_fraction must be in (0, 1) (got {eval_fraction}) and "
                        f"size_ratio >= 1 (got {ratio})")
    order = np.random.default_rng([seed, 5]).permutation(num_classes)
    public_classes, rest = np.sort(order[:public]), order[public:]
    train, evaluation, start = [], [], 0
    for n in _sizes(per_client, num_clients, ratio):
        ids = rest[start:start + n]
        start += n
        n_eval = min(n - 2, max(2, int(round(eval_fraction * n))))
        evaluation.append(np.sort(ids[:n_eval]))
        train.append(np.sort(ids[n_eval:]))
    return ProxyPlan(train, evaluation, public_classes)


def _proxy(d: Identities):
    ds = load_dataset(d.source, d.data_dir, d.cache_dir, d.download)
    plan = proxy_plan(d.num_clients, ds.num_classes, d.public_classes, d.eval_fraction, d.size_ratio, d.seed)
    return ds, plan


def _rows_of(labels: np.ndarray, classes: np.ndarray) -> np.ndarray:
    return np.flatnonzero(np.isin(labels, classes))


def _limit(idx: np.ndarray, limit, seed: int) -> np.ndarray:
    if limit is None or len(idx) <= int(limit):
        return idx
    return np.sort(np.random.default_rng(seed).choice(idx, int(limit), replace=False))


# ---------------------------------------------------------------- Market-1501 folders
def parse_market_name(name: str) -> tuple[int, int] | None:
    """(identity, camera) from a Market-1501 file name, or None if it does not follow the format."""
    m = MARKET_NAME.match(name)
    return (int(m.group(1)), int(m.group(2))) if m else None


@lru_cache(maxsize=16)
def read_market_split(folder: str, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images, identities and cameras of one Market-1501 split folder (files not in the format are refused)."""
    path = Path(folder)
    if not path.is_dir():
        raise DataError(f"re-ID folder {path} does not exist; a Market-1501 style data set needs "
                        f"bounding_box_train/, query/ and bounding_box_test/")
    files = image_files(path, recursive=False)
    parsed = [parse_market_name(p.name) for p in files]
    bad = [p.name for p, x in zip(files, parsed) if x is None]
    if bad:
        raise DataError(f"{path}: {len(bad)} file names do not follow <id>_c<camera>..., e.g. {bad[:3]}")
    if not files:
        raise DataError(f"{path}: no images")
    ids = np.array([x[0] for x in parsed], dtype=np.int64)
    cams = np.array([x[1] for x in parsed], dtype=np.int64)
    return read_image_files(files, size), ids, cams


def _root(d: Identities, pid: int) -> Path:
    if d.local_data:  # a SuperNode serving its own re-ID data set
        return Path(d.local_data)
    if len(d.roots) != d.num_clients:
        raise DataError(f"dataset.roots lists {len(d.roots)} folders but num_clients={d.num_clients}; "
                        f"give one Market-1501 style folder per client")
    return Path(d.roots[pid]).expanduser()


# ---------------------------------------------------------------- the interface
def num_identities(d: Identities, pid: int) -> int:
    """Size of client `pid`'s classifier."""
    if d.is_proxy:
        return len(_proxy(d)[1].train_classes[pid])
    _, ids, _ = read_market_split(str(_root(d, pid) / "bounding_box_train"), d.image_size)
    return len(np.unique(ids[ids > JUNK_ID]))


def client_train(d: Identities, pid: int) -> tuple[np.ndarray, np.ndarray]:
    """A client's training images and its local identity labels 0..n_k-1."""
    limit, seed = d.examples_per_client, d.seed + pid
    if d.is_proxy:
        ds, plan = _proxy(d)
        classes = plan.train_classes[pid]
        labels = np.asarray(ds.y_train)
        idx = _limit(_rows_of(labels, classes), limit, seed)
        return take_rows(ds.x_train, idx), np.searchsorted(classes, labels[idx])
    x, ids, _ = read_market_split(str(_root(d, pid) / "bounding_box_train"), d.image_size)
    rows = _limit(np.flatnonzero(ids > JUNK_ID), limit, seed)  # no junk or distractors in training
    identities = np.unique(ids[ids > JUNK_ID])
    return x[rows], np.searchsorted(identities, ids[rows])


def client_eval(d: Identities, pid: int) -> EvalSet:
    """Query and gallery of client `pid`'s evaluation identities (never trained on)."""
    if d.is_proxy:
        ds, plan = _proxy(d)
        labels = np.asarray(ds.y_test)
        q_per_id = d.query_per_id
        query, gallery = [], []
        for c in plan.eval_classes[pid]:
            rows = np.random.default_rng([d.seed, 7, int(c)]).permutation(np.flatnonzero(labels == c))
            query.append(rows[:q_per_id])
            gallery.append(rows[q_per_id:])
        q, g = np.sort(np.concatenate(query)), np.sort(np.concatenate(gallery))
        unknown = np.full(len(q), -1), np.full(len(g), -1)
        return EvalSet(take_rows(ds.x_test, q), labels[q], unknown[0], take_rows(ds.x_test, g), labels[g], unknown[1])
    root, size = _root(d, pid), d.image_size
    qx, qi, qc = read_market_split(str(root / "query"), size)
    gx, gi, gc = read_market_split(str(root / "bounding_box_test"), size)
    return EvalSet(qx, qi, qc, gx, gi, gc)


def public_images(d: Identities, limit: int | None) -> np.ndarray:
    """The server's unlabeled public set for distillation (from classes / data no client trains on),
    at most `limit` images (reid.kd_public_size; None: all)."""
    if d.is_proxy:
        ds, plan = _proxy(d)
        idx = _limit(_rows_of(np.asarray(ds.y_train), plan.public_classes), limit, d.seed + 11)
        return take_rows(ds.x_train, idx)
    if not d.public_root:
        raise DataError("strategy.kd=true needs an unlabeled public set: set dataset.public_root=<folder of images>")
    files = image_files(Path(d.public_root).expanduser())
    if not files:
        raise DataError(f"dataset.public_root {d.public_root}: no images found")
    files = [files[i] for i in _limit(np.arange(len(files)), limit, d.seed + 11)]
    return read_image_files(files, d.image_size)


def check_reid_data(s: ReIDSettings) -> None:
    """Everything a run will read, checked before training starts (DataError with the fix); when the
    server distils (strategy.kd), its public set too."""
    d, bs = s.identities, s.training.batch_size
    for pid in range(d.num_clients):
        if not d.is_proxy:
            _root(d, pid)
        n = num_identities(d, pid)
        if n < 2:
            raise DataError(f"client {pid} has {n} training identities; re-ID training needs at least 2")
        images = len(client_train(d, pid)[0])
        if images < bs:
            raise DataError(f"client {pid} has {images} training images, fewer than reid.batch_size="
                            f"{bs}; lower reid.batch_size or raise examples_per_client")
    if s.distillation.enabled:
        public_images(d, s.distillation.public_size)
