"""The upload layout: which arrays cross the wire, in which order, and how to check an update.

Server and client derive the same layout from the same config and code (convention 4, docs/architecture.md#conventions-and-where-they-come-from);
its fingerprint travels in every round's instructions, so a client built from another config
or code version refuses the weights instead of loading them into the wrong places.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from protocol.weights import NDArrays


def keys_fingerprint(keys: Sequence[str], shapes: Sequence[Sequence[int]]) -> str:
    """A short hash of the wire layout (key names and shapes, in order) both sides derive."""
    text = ";".join(f"{k}:{tuple(s)}" for k, s in zip(keys, shapes))
    return hashlib.sha1(text.encode()).hexdigest()[:16]


@dataclass
class Layout:
    """The wire layout of an upload.

    keys, shapes: the uploaded state_dict entries, in order.
    fingerprint: keys_fingerprint(keys, shapes).
    options: the settings that shaped it (e.g. SSL's sync and bn); sent to every client so that
        it builds the same layout.
    divergence_layers: positions of the backbone conv weights FedU's divergence reads (docs/algorithms.md#the-divergence-aware-predictor-update-dapu).
    regions: (array index, first row, end row, block, group) of every SDR individual group's slice,
        aggregated over the clients that trained that group (docs/algorithms.md#group-wise-aggregation); path_groups[p] = path p's
        group per block.
    dtypes: each array's NumPy dtype name ("float32", "int64"), to decode half-precision
        transfers (protocol/transfer.py).
    evaluated_by: "server" (the task's evaluator scores the models the server holds) or "clients"
        (each client scores the model it would use, with parts that never leave it, on its own
        test data, in Flower's evaluate phase; strategies/site_evaluation.py merges the reports).
    client_metrics: keys of the clients' fit metrics the strategy records per client in the round's
        record (e.g. a clustering method's NMI), besides those every strategy records.
    sum_merge: (centroids index, counts index) pairs of global clusters: clients upload per-centroid
        feature sums and counts there, the server merges them (strategies/cluster_merge.py).
    global_clusters: the method's clusters or prototypes are the federation's (docs/algorithms.md#federated-forms,
        `ssl.clusters=global`): only a strategy that aggregates can carry them.
    cluster_heads: (centroids index, head indices) pairs: the uploaded arrays whose row j is the
        classifier of global cluster j of a `sum_merge` pair (DeepCluster's head weight and bias);
        the server re-initialises the rows of clusters whose meaning it changed.
    """

    keys: list[str]
    shapes: list[tuple[int, ...]]
    fingerprint: str
    options: dict = field(default_factory=dict)
    divergence_layers: list[int] = field(default_factory=list)
    regions: list[tuple[int, int, int, int, int]] = field(default_factory=list)
    path_groups: list[tuple[int, ...]] = field(default_factory=list)
    dtypes: list[str] = field(default_factory=list)
    evaluated_by: str = "server"
    client_metrics: list[str] = field(default_factory=list)
    sum_merge: list[tuple[int, int]] = field(default_factory=list)
    global_clusters: bool = False
    cluster_heads: list[tuple[int, tuple[int, ...]]] = field(default_factory=list)

    def wire_dtypes(self) -> list[str]:
        """Each array's own dtype (float32 where the layout was built without them)."""
        return list(self.dtypes) or ["float32"] * len(self.keys)

    def check(self, arrays: NDArrays) -> str | None:
        """Why `arrays` is not a valid update in this layout, or None if it is."""
        if len(arrays) != len(self.keys):
            return f"expected {len(self.keys)} arrays, got {len(arrays)}"
        for key, shape, arr in zip(self.keys, self.shapes, arrays):
            if tuple(arr.shape) != tuple(shape):
                return f"{key}: shape {tuple(arr.shape)}, expected {tuple(shape)}"
            if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
                return f"{key}: non-finite values"
        return None
