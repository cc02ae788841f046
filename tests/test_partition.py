"""Partitions: disjoint, sized as specified, reproducible from the seed (docs/algorithms.md#paper-setting-and-data-splits)."""

import numpy as np
import pytest

from tasks.common.partition import PartitionError, make_partition

LABELS10 = np.repeat(np.arange(10), 50)
LABELS100 = np.repeat(np.arange(100), 30)


def check_disjoint_cover(parts, n, cover=True):
    allidx = np.concatenate(parts)
    assert len(np.unique(allidx)) == len(allidx)  # disjoint
    if cover:
        assert len(allidx) == n


def test_classes_cifar10_client_k_gets_2k_and_2k_plus_1():
    parts = make_partition(LABELS10, 5, 0, 10, "classes")
    for k, p in enumerate(parts):
        assert set(LABELS10[p]) == {2 * k, 2 * k + 1}
        assert len(p) == 100
    check_disjoint_cover(parts, len(LABELS10))


def test_classes_cifar100_twenty_classes_each():
    parts = make_partition(LABELS100, 5, 0, 100, "classes")
    for k, p in enumerate(parts):
        assert set(LABELS100[p]) == set(range(20 * k, 20 * k + 20))
    check_disjoint_cover(parts, len(LABELS100))


def test_classes_refuses_more_clients_than_classes():
    with pytest.raises(PartitionError, match="11 clients x 1 classes each needs 11 classes but the dataset has 10"):
        make_partition(LABELS10, 11, 0, 10, "classes")


def test_iid_sizes_seed_reproducibility():
    a = make_partition(LABELS10, 3, 7, 10, "iid")
    b = make_partition(LABELS10, 3, 7, 10, "iid")
    c = make_partition(LABELS10, 3, 8, 10, "iid")
    assert [len(p) for p in a] == [167, 167, 166]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    check_disjoint_cover(a, len(LABELS10))


def test_dirichlet_is_skewed_reproducible_and_respects_min_size():
    a = make_partition(LABELS100, 5, 1, 100, "dirichlet", alpha=0.1, min_size=20)
    b = make_partition(LABELS100, 5, 1, 100, "dirichlet", alpha=0.1, min_size=20)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    check_disjoint_cover(a, len(LABELS100))
    assert min(len(p) for p in a) >= 20
    # with alpha = 0.1 most classes are dominated by one client
    share = [max(np.mean(np.isin(np.flatnonzero(LABELS100 == c), p)) for p in a) for c in range(100)]
    assert np.median(share) > 0.6
    with pytest.raises(PartitionError, match="alpha must be > 0"):
        make_partition(LABELS100, 5, 1, 100, "dirichlet", alpha=0)


def test_examples_per_client_is_a_balanced_seeded_subset():
    parts = make_partition(LABELS10, 5, 0, 10, "classes", max_examples_per_client=30)
    assert [len(p) for p in parts] == [30] * 5
    for k, p in enumerate(parts):
        assert np.bincount(LABELS10[p], minlength=10)[2 * k] == 15
    again = make_partition(LABELS10, 5, 0, 10, "classes", max_examples_per_client=30)
    assert all(np.array_equal(x, y) for x, y in zip(parts, again))


def test_unknown_partition_lists_valid_names():
    with pytest.raises(PartitionError, match="valid"):
        make_partition(LABELS10, 2, 0, 10, "shards")
