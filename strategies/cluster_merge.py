"""Global clusters in an upload (docs/algorithms.md#federated-forms, `clusters=global`): the entries a layout marks as
`sum_merge` pairs (centroids, counts) arrive from each client as its per-centroid feature sums and
counts, not as weights; averaging them would be wrong. The server replaces their weighted mean by
federated k-means: c_j = sum_k s_kj / sum_k n_kj (protocol/clustering.merge_centroids, empty
clusters repaired as DeepCluster does, seeded by (seed, round) so that a resumed run repeats it),
and sends the new centroids with the total counts back down in the same entries. The first merge
(no client started from global clusters yet: each reports `global_clusters_started` 0) starts
them instead: clients then send the sums and counts of their own k-means clusters, and the server clusters those local centroids, weighted
by their counts, into the global ones (weighted k-means, as Orchestra starts from local centroids).
"An empty cluster keeps its previous centroid": the previous centroids are the global model's, as
sent at the start of the round (`previous`), never the mean of the uploaded sums.

The classifier head tied to the clusters (a layout's `cluster_heads`: arrays whose row j scores
cluster j) is re-initialised here, on the server, whenever the server changes what its rows mean,
as DeepCluster re-initialises its head after each re-clustering (Caron et al. 2018, "Deep
Clustering for Unsupervised Learning of Visual Features"): the whole head when the global clusters
start (the averaged head classified each client's own k-means clusters, a different numbering on
every client), and the rows of every empty cluster refilled from a donor and of its donor (the
donor's points are split between the two, so both classes changed; a level start favours neither
half). Rows of the other clusters keep their averaged values: a Lloyd step moves a centroid, it
does not renumber it. Why the server: it owns the global head and is the only one that knows which
clusters it repaired, and every client then receives the same head with the round's weights (no
extra instruction, nothing a client could apply differently); seeded by (seed, round), a resumed
run repeats it. The new rows are DeepCluster's own initialisation: weights drawn from N(0, 0.01^2),
biases (1-D entries) zero.
"""

from __future__ import annotations

import numpy as np

from protocol.clustering import ClusteringError, kmeans, merge_centroids
from protocol.fields import RoundField
from protocol.layout import Layout
from protocol.weights import NDArrays


# what the merge records for the round (global clusters only; absent from other runs' rounds)
CLUSTER_FIELDS = (RoundField("global_clusters_filled", "global clusters filled", fmt=".0f"),
                  RoundField("global_largest_share", "largest global cluster share", fmt=".2f"))
HEAD_STD = 0.01  # DeepCluster's initialisation of its classifier's weights (biases zero)


def reinit_rows(arrays: NDArrays, heads, rows, rng: np.random.Generator) -> None:
    """Re-initialise rows `rows` of every array in `heads` in place: N(0, HEAD_STD^2) weights, zero biases."""
    rows = np.asarray(sorted(set(int(r) for r in rows)), np.int64)
    if len(rows) == 0:
        return
    for h in heads:
        a = arrays[h]
        if a.ndim >= 2:
            a[rows] = (HEAD_STD * rng.standard_normal((len(rows), *a.shape[1:]))).astype(a.dtype)
        else:
            a[rows] = 0


def start_clusters(sums, counts, previous: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The global clusters' start: the clients' local centroids (sum / count of each cluster a client
    filled), clustered by the one k-means (protocol/clustering.py) weighted by their counts; with
    fewer local centroids than global clusters, each is a global centroid and the rest are filled
    by the merge's empty-cluster rule (a donor split). (centroids, total counts)."""
    points = np.concatenate([s[n > 0] / n[n > 0, None] for s, n in zip(sums, counts)])
    weights = np.concatenate([n[n > 0] for n in counts]).astype(np.float64)
    if len(points) == 0:
        raise ClusteringError("no client reported a non-empty cluster to start the global clusters from")
    k = len(previous)
    if len(points) >= k:
        result = kmeans(points, k, seed=seed, weights=weights)
        return result.centroids, result.mass
    padded_sums, padded_counts = np.zeros((k, points.shape[1])), np.zeros(k, np.int64)
    padded_sums[:len(points)], padded_counts[:len(points)] = points * weights[:, None], weights
    result = merge_centroids([padded_sums], [padded_counts], previous, seed=seed)
    return result.centroids, result.counts


def merge_clusters(layout: Layout, aggregated: NDArrays, updates, seed: int, server_round: int,
                   previous: NDArrays, record: dict) -> NDArrays:
    """`aggregated` with every sum-merged pair recomputed from the updates' sums and counts, and
    the rows of its tied head re-initialised where the clusters changed meaning. `previous`: the
    global arrays the round started from (their centroids are what an empty cluster keeps). The
    round's `record` gets how many global clusters the clients' images filled and the largest
    one's share of them (before the repair: what the round's assignments did)."""
    heads = dict(layout.cluster_heads)
    for centroids, counts in layout.sum_merge:
        round_seed = int(np.random.SeedSequence([seed, server_round, 8]).generate_state(1)[0])
        head_rng = np.random.default_rng([seed, server_round, 9, centroids])
        sums, ns = [u[1][centroids] for u in updates], [u[1][counts] for u in updates]
        k = len(aggregated[centroids])
        filled = np.sum(ns, axis=0)
        record["global_clusters_filled"] = int((filled > 0).sum())
        record["global_largest_share"] = float(filled.max() / max(filled.sum(), 1))
        if not any(u[3].get("global_clusters_started", 1.0) for u in updates):
            c, total = start_clusters(sums, ns, previous[centroids], round_seed)
            changed = range(k)  # a new numbering: every row's class changed
        else:
            result = merge_centroids(sums, ns, previous[centroids], seed=round_seed)
            c, total = result.centroids, result.counts
            changed = (*result.refilled, *result.donors)
        aggregated[centroids] = np.asarray(c).astype(aggregated[centroids].dtype)
        aggregated[counts] = np.asarray(total).astype(aggregated[counts].dtype)
        if centroids in heads:
            for h in heads[centroids]:
                aggregated[h] = np.array(aggregated[h], copy=True)  # never write into a client's upload
            reinit_rows(aggregated, heads[centroids], changed, head_rng)
    return aggregated
