"""Global clusters in an upload (SPEC §8, `clusters=global`): the entries a layout marks as
`sum_merge` pairs (centroids, counts) arrive from each client as its per-centroid feature sums and
counts, not as weights; averaging them would be wrong. The server replaces their weighted mean by
federated k-means: c_j = sum_k s_kj / sum_k n_kj (protocol/clustering.merge_centroids, empty
clusters repaired as DeepCluster does, seeded by (seed, round) so that a resumed run repeats it),
and sends the new centroids with the total counts back down in the same entries. The first merge
(no client started from global clusters yet: each reports `global_clusters_started` 0) starts
them instead: clients then send the sums and counts of their own k-means clusters, and the server clusters those local centroids, weighted
by their counts, into the global ones (weighted k-means, as Orchestra starts from local centroids).
"""

from __future__ import annotations

import numpy as np

from protocol.clustering import merge_centroids, weighted_kmeans
from protocol.layout import Layout
from protocol.weights import NDArrays


def merge_clusters(layout: Layout, aggregated: NDArrays, updates, seed: int, server_round: int) -> NDArrays:
    """`aggregated` with every sum-merged pair recomputed from the updates' sums and counts."""
    for centroids, counts in layout.sum_merge:
        round_seed = int(np.random.SeedSequence([seed, server_round, 8]).generate_state(1)[0])
        sums, ns = [u[1][centroids] for u in updates], [u[1][counts] for u in updates]
        if not any(u[3].get("global_clusters_started", 1.0) for u in updates):
            local = [(s / n[:, None])[n > 0] for s, n in zip(sums, ns)]
            c, total = weighted_kmeans(np.concatenate(local), np.concatenate([n[n > 0] for n in ns]),
                                       len(aggregated[centroids]), seed=round_seed)
        else:
            result = merge_centroids(sums, ns, aggregated[centroids], seed=round_seed)
            c, total = result.centroids, result.counts
        aggregated[centroids] = np.asarray(c).astype(aggregated[centroids].dtype)
        aggregated[counts] = np.asarray(total).astype(aggregated[counts].dtype)
    return aggregated

