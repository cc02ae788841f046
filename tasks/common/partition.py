"""Seeded, reproducible splits of a training set across clients (docs/algorithms.md#paper-setting-and-data-splits).

All functions take only the label vector, so a client can compute its own share without
touching the images, and the server can check a partition before any training starts.
"""

from __future__ import annotations

import numpy as np

from protocol.checks import Bool, Choice, Float, Int
from protocol.messages import few

# partition.* (conf/partition/*.yaml)
CONFIG = {
    "partition.name": Choice(options=("iid", "classes", "dirichlet")), "partition.alpha": Float(above=0),
    "partition.min_size": Int(min=1), "partition.classes_per_client": Int(min=1, null=True),
    "partition.shuffle_classes": Bool(),
}


class PartitionError(ValueError):
    """The requested partition cannot be built; the message says why and what would work."""


def iid(labels: np.ndarray, num_clients: int, seed: int) -> list[np.ndarray]:
    """Shuffle and cut into num_clients parts whose sizes differ by at most one."""
    if num_clients > len(labels):
        raise PartitionError(f"iid: {num_clients} clients but only {len(labels)} examples")
    perm = np.random.default_rng(seed).permutation(len(labels))
    return [np.sort(p) for p in np.array_split(perm, num_clients)]


def by_classes(
    labels: np.ndarray,
    num_clients: int,
    seed: int,
    num_classes: int,
    classes_per_client: int | None = None,
    shuffle_classes: bool = False,
) -> list[np.ndarray]:
    """Whole disjoint classes per client, as in FedU's non-IID setting (docs/algorithms.md#paper-setting-and-data-splits).

    Client k gets classes [k*c, (k+1)*c) with c = classes_per_client (default
    num_classes // num_clients): CIFAR-10 with 5 clients gives client k {2k, 2k+1}, CIFAR-100
    20 classes each. shuffle_classes=True permutes the class order with the seed first.
    """
    c = classes_per_client or num_classes // num_clients
    if c < 1 or num_clients * c > num_classes:
        raise PartitionError(
            f"classes: {num_clients} clients x {max(c, 1)} classes each needs {num_clients * max(c, 1)} "
            f"classes but the dataset has {num_classes}; use at most {num_classes} clients, fewer "
            f"classes_per_client, or partition=iid / partition=dirichlet"
        )
    order = np.arange(num_classes)
    if shuffle_classes:
        order = np.random.default_rng(seed).permutation(num_classes)
    parts = []
    for k in range(num_clients):
        mine = order[k * c : (k + 1) * c]
        parts.append(np.flatnonzero(np.isin(labels, mine)))
    empty = [k for k, p in enumerate(parts) if len(p) == 0]
    if empty:
        raise PartitionError(f"classes: clients {few(empty)} got classes with no examples in this dataset")
    return parts


def dirichlet(
    labels: np.ndarray,
    num_clients: int,
    seed: int,
    alpha: float,
    min_size: int = 10,
    max_tries: int = 1000,
) -> list[np.ndarray]:
    """Per class, split its examples by proportions drawn from Dir(alpha) over the clients.

    Redraws (up to max_tries) until every client holds at least min_size examples.
    """
    if alpha <= 0:
        raise PartitionError(f"dirichlet: alpha must be > 0, got {alpha}")
    if num_clients * min_size > len(labels):
        raise PartitionError(
            f"dirichlet: {num_clients} clients x min_size {min_size} exceeds {len(labels)} examples"
        )
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    for _ in range(max_tries):
        buckets: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            props = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(props)[:-1] * len(idx)).astype(int)
            for k, part in enumerate(np.split(idx, cuts)):
                buckets[k].append(part)
        parts = [np.sort(np.concatenate(b)) for b in buckets]
        if min(len(p) for p in parts) >= min_size:
            return parts
    raise PartitionError(
        f"dirichlet: no split with >= {min_size} examples per client after {max_tries} draws "
        f"(alpha={alpha}, {num_clients} clients); raise alpha or lower partition.min_size"
    )


def limit_per_client(parts: list[np.ndarray], labels: np.ndarray, limit: int | None, seed: int) -> list[np.ndarray]:
    """Keep at most `limit` examples per client: a seeded subset, balanced over the client's classes."""
    if limit is None:
        return parts
    out = []
    for k, idx in enumerate(parts):
        if len(idx) <= limit:
            out.append(idx)
            continue
        rng = np.random.default_rng([seed, k])
        groups = [rng.permutation(idx[labels[idx] == c]) for c in np.unique(labels[idx])]
        # round-robin over classes keeps the subset balanced
        take = np.concatenate([g[i : i + 1] for i in range(max(len(g) for g in groups)) for g in groups])
        out.append(np.sort(take[:limit]))
    return out


def make_partition(
    labels: np.ndarray,
    num_clients: int,
    seed: int,
    num_classes: int,
    name: str,
    alpha: float = 0.5,
    classes_per_client: int | None = None,
    shuffle_classes: bool = False,
    min_size: int = 10,
    max_examples_per_client: int | None = None,
) -> list[np.ndarray]:
    """Build the partition named by the config group `partition` (iid | classes | dirichlet)."""
    labels = np.asarray(labels)
    if num_clients < 1:
        raise PartitionError(f"num_clients must be >= 1, got {num_clients}")
    if name == "iid":
        parts = iid(labels, num_clients, seed)
    elif name == "classes":
        parts = by_classes(labels, num_clients, seed, num_classes, classes_per_client, shuffle_classes)
    elif name == "dirichlet":
        parts = dirichlet(labels, num_clients, seed, alpha, min_size)
    else:
        raise PartitionError(f"unknown partition '{name}'; valid: ['classes', 'dirichlet', 'iid']")
    return limit_per_client(parts, labels, max_examples_per_client, seed)
