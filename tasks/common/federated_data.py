"""A client's share of the training set, and the evaluation sets, from the run config."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from protocol.checks import ConfigError
from protocol.messages import few
from tasks.common.data import DataError, ImageArrays, balanced_subset, load_dataset, take_rows
from tasks.common.local_data import local_images
from tasks.common.partition import make_partition


def dataset_from_cfg(cfg: dict) -> ImageArrays:
    return load_dataset(cfg["dataset"]["name"], str(cfg["data_dir"]), str(cfg["cache_dir"]), bool(cfg["data_download"]))


def _partition_key(cfg: dict) -> tuple:
    p = cfg["partition"]
    return (
        cfg["dataset"]["name"], str(cfg["data_dir"]), str(cfg["cache_dir"]), bool(cfg["data_download"]),
        int(cfg["num_clients"]), int(cfg["seed"]), p["name"], float(p.get("alpha") or 0.5),
        p.get("classes_per_client"), bool(p.get("shuffle_classes", False)), int(p.get("min_size") or 10),
        cfg.get("examples_per_client"),
    )


@lru_cache(maxsize=8)
def _partitions(key: tuple) -> tuple[np.ndarray, ...]:
    name, data_dir, cache_dir, download, k, seed, pname, alpha, cpc, shuffle, min_size, limit = key
    ds = load_dataset(name, data_dir, cache_dir, download)
    labels = np.asarray(ds.y_train)
    parts = make_partition(labels, k, seed, ds.num_classes, pname, alpha=alpha, classes_per_client=cpc,
                           shuffle_classes=shuffle, min_size=min_size, max_examples_per_client=limit)
    return tuple(parts)


def partitions(cfg: dict) -> list[np.ndarray]:
    """Training-set indices of every client (computed from labels only; cached per process)."""
    return list(_partitions(_partition_key(cfg)))


def client_images(cfg: dict, partition_id: int) -> np.ndarray:
    """The uint8 NHWC images of one client: only its rows are read from the memory map.

    A SuperNode started with --node-config local-data=<path> trains on its own images instead.
    """
    if cfg.get("local_data"):
        limit = cfg.get("examples_per_client")
        x = local_images(str(cfg["local_data"]), None if limit is None else int(limit), int(cfg["seed"]) + partition_id)
        if len(x) < int(cfg["batch_size"]):
            raise DataError(f"local data {cfg['local_data']} holds {len(x)} images, fewer than "
                            f"batch_size={cfg['batch_size']}; add images or lower batch_size")
        return x
    idx = partitions(cfg)[partition_id]
    return take_rows(dataset_from_cfg(cfg).x_train, idx)


def client_labels(cfg: dict, partition_id: int) -> np.ndarray | None:
    """The true labels of `client_images` (None for a SuperNode's own unlabeled images): read only to
    measure what unsupervised clusters capture (NMI), never to train."""
    if cfg.get("local_data"):
        return None
    return np.asarray(dataset_from_cfg(cfg).y_train)[partitions(cfg)[partition_id]]


def evaluation_sets(cfg: dict) -> dict:
    """kNN bank / linear-probe train set and the test set: seeded, class-balanced subsets."""
    ds = dataset_from_cfg(cfg)
    ev = cfg["eval"]
    bank = np.sort(balanced_subset(np.asarray(ds.y_train), ev.get("bank_size"), int(cfg["seed"])))
    test = np.sort(balanced_subset(np.asarray(ds.y_test), ev.get("test_size"), int(cfg["seed"]) + 1))
    return {
        "x_bank": take_rows(ds.x_train, bank), "y_bank": np.asarray(ds.y_train)[bank],
        "x_test": take_rows(ds.x_test, test), "y_test": np.asarray(ds.y_test)[test],
        "num_classes": ds.num_classes,
    }


def check_partitions(cfg: dict) -> None:
    """Refused before training: a missing dataset (DataError naming the paths searched), an
    impossible split (PartitionError), a client holding fewer images than one batch."""
    dataset_from_cfg(cfg)
    parts = partitions(cfg)
    small = [k for k, p in enumerate(parts) if len(p) < cfg["batch_size"]]
    if small:
        raise ConfigError(
            f"clients {few(small)} hold fewer examples than batch_size={cfg['batch_size']} "
            f"(smallest: {min(len(parts[k]) for k in small)}); lower batch_size or use fewer clients"
        )
