"""A client's share of the image training set, and the evaluation sets, from the run's image section (tasks/common/sections.py)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from protocol.checks import ConfigError
from protocol.messages import few
from tasks.common.data import DataError, ImageArrays, balanced_subset, load_dataset, take_rows
from tasks.common.local_data import local_images
from tasks.common.partition import make_partition
from tasks.common.sections import Evaluation, Images


def dataset_of(d: Images) -> ImageArrays:
    return load_dataset(d.dataset, d.data_dir, d.cache_dir, d.download)


@lru_cache(maxsize=8)
def _partitions(key: tuple) -> tuple[np.ndarray, ...]:
    name, data_dir, cache_dir, download, k, seed, pname, alpha, cpc, shuffle, min_size, limit = key
    ds = load_dataset(name, data_dir, cache_dir, download)
    labels = np.asarray(ds.y_train)
    parts = make_partition(labels, k, seed, ds.num_classes, pname, alpha=alpha, classes_per_client=cpc,
                           shuffle_classes=shuffle, min_size=min_size, max_examples_per_client=limit)
    return tuple(parts)


def partitions(d: Images) -> list[np.ndarray]:
    """Training-set indices of every client (computed from labels only; cached per process)."""
    return list(_partitions(d.partition_key()))


def client_images(d: Images, partition_id: int) -> np.ndarray:
    """The uint8 NHWC images of one client: only its rows are read from the memory map.

    A SuperNode started with --node-config local-data=<path> trains on its own images instead.
    """
    if d.local_data:
        x = local_images(d.local_data, d.examples_per_client, d.seed + partition_id)
        if len(x) < d.batch_size:
            raise DataError(f"local data {d.local_data} holds {len(x)} images, fewer than "
                            f"batch_size={d.batch_size}; add images or lower batch_size")
        return x
    idx = partitions(d)[partition_id]
    return take_rows(dataset_of(d).x_train, idx)


def client_labels(d: Images, partition_id: int) -> np.ndarray | None:
    """The true labels of `client_images` (None for a SuperNode's own unlabeled images): read only to
    measure what unsupervised clusters capture (NMI), never to train."""
    if d.local_data:
        return None
    return np.asarray(dataset_of(d).y_train)[partitions(d)[partition_id]]


def evaluation_sets(d: Images, ev: Evaluation) -> dict:
    """kNN bank / linear-probe train set and the test set: seeded, class-balanced subsets."""
    ds = dataset_of(d)
    bank = np.sort(balanced_subset(np.asarray(ds.y_train), ev.bank_size, ev.seed))
    test = np.sort(balanced_subset(np.asarray(ds.y_test), ev.test_size, ev.seed + 1))
    return {
        "x_bank": take_rows(ds.x_train, bank), "y_bank": np.asarray(ds.y_train)[bank],
        "x_test": take_rows(ds.x_test, test), "y_test": np.asarray(ds.y_test)[test],
        "num_classes": ds.num_classes,
    }


def check_partitions(d: Images) -> None:
    """Refused before training: a missing dataset (DataError naming the paths searched), an
    impossible split (PartitionError), a client holding fewer images than one batch."""
    dataset_of(d)
    parts = partitions(d)
    small = [k for k, p in enumerate(parts) if len(p) < d.batch_size]
    if small:
        raise ConfigError(
            f"clients {few(small)} hold fewer examples than batch_size={d.batch_size} "
            f"(smallest: {min(len(parts[k]) for k in small)}); lower batch_size or use fewer clients"
        )
