"""Clustering primitives of DeepCluster and SeLa (docs/algorithms.md#clustering-based-self-supervision): k-means and its empty-cluster guard,
clients' sums and the server's merge, balanced sampling, Sinkhorn-Knopp labels, NMI."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from protocol.clustering import ClusteringError, assign, cluster_sums, kmeans, merge_centroids
from tasks.common.clustering import balanced_sample_weights, nmi
from tasks.common.sinkhorn import sela_labels

ROOT = Path(__file__).resolve().parents[1]


def blobs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three tight blobs of 5 points at (0, 0), (10, 0), (0, 10), shuffled; returns points and blob ids."""
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    truth = np.repeat(np.arange(3), 5)
    x = centres[truth] + rng.uniform(-0.3, 0.3, size=(15, 2))
    perm = rng.permutation(15)
    return x[perm].astype(np.float32), truth[perm]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kmeans_finds_three_blobs(seed):
    x, truth = blobs()
    res = kmeans(x, 3, iterations=20, seed=seed)  # k-means++ (random init may start two in one blob)
    # every blob is one cluster, three distinct clusters
    assert nmi(res.assignments, truth) == pytest.approx(1.0)
    for j in range(3):
        members = res.assignments == j
        np.testing.assert_allclose(res.centroids[j], x[members].mean(0), atol=1e-5)
        assert np.linalg.norm(res.centroids[j] - np.array([[0, 0], [10, 0], [0, 10]]), axis=1).min() < 0.3
    assert res.counts.tolist() == [5, 5, 5] and res.repairs == 0 and res.empty_last == 0
    np.testing.assert_array_equal(assign(x, res.centroids), res.assignments)


def test_kmeans_is_deterministic_for_a_seed():
    x = np.random.default_rng(1).normal(size=(60, 4)).astype(np.float32)
    a, b = kmeans(x, 5, iterations=10, seed=7), kmeans(x, 5, iterations=10, seed=7)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    np.testing.assert_array_equal(a.assignments, b.assignments)
    c = kmeans(x, 5, iterations=10, seed=8)
    assert not np.array_equal(a.centroids, c.centroids)  # the seed matters (k-means++ init)
    r1, r2 = (kmeans(x, 5, iterations=10, seed=7, init="random") for _ in range(2))
    np.testing.assert_array_equal(r1.assignments, r2.assignments)


def test_empty_cluster_takes_a_donor_and_splits_its_points():
    # two blobs of 4; the third starting centroid is far away, so cluster 2 starts empty
    x = np.array([[0, 0], [0.1, 0], [0, 0.1], [0.1, 0.1],
                  [10, 10], [10.1, 10], [10, 10.1], [10.1, 10.1]], np.float64)
    init = np.array([[0.0, 0.0], [10.0, 10.0], [1000.0, 1000.0]])
    res = kmeans(x, 3, iterations=1, seed=0, init=init)
    assert res.repairs == 1 and res.empty_last == 1
    assert (res.counts > 0).all() and res.counts.sum() == 8
    donor = 0 if res.assignments[:4].tolist().count(2) else 1
    block = slice(0, 4) if donor == 0 else slice(4, 8)
    # the donor's blob is now shared by the donor and cluster 2, the other blob untouched
    assert set(res.assignments[block].tolist()) == {donor, 2}
    other = slice(4, 8) if donor == 0 else slice(0, 4)
    assert set(res.assignments[other].tolist()) == {1 - donor}
    for j in range(3):  # centroids are the means of their points after the split
        np.testing.assert_allclose(res.centroids[j], x[res.assignments == j].mean(0))
    # further iterations keep three non-empty clusters
    assert (kmeans(x, 3, iterations=10, seed=0, init=init).counts > 0).all()


def test_duplicates_are_split_in_half():
    x = np.ones((4, 3))  # all points equal: every split falls on one side, so by rank
    res = kmeans(x, 2, iterations=3, seed=0)
    assert sorted(res.counts.tolist()) == [2, 2] and res.repairs >= 1


def test_cluster_sums_by_hand():
    x = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    sums, counts = cluster_sums(x, np.array([0, 1, 0]), 3)
    np.testing.assert_array_equal(sums, [[6, 8], [3, 4], [0, 0]])
    np.testing.assert_array_equal(counts, [2, 1, 0])
    assert sums.dtype == np.float64 and counts.dtype == np.int64


def test_merge_equals_lloyd_on_the_union():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(30, 5)).astype(np.float32)
    a = np.concatenate([rng.integers(0, 3, 10), rng.integers(0, 4, 10), rng.integers(1, 4, 10)])
    a[:4] = [0, 1, 2, 3]  # every cluster filled in the union; clients 1 and 3 each miss a cluster
    parts = [slice(0, 10), slice(10, 20), slice(20, 30)]
    uploads = [cluster_sums(x[p], a[p], 4) for p in parts]
    prev = np.zeros((4, 5), np.float32)
    merged = merge_centroids([s for s, _ in uploads], [n for _, n in uploads], prev, seed=0)
    sums, counts = cluster_sums(x, a, 4)
    np.testing.assert_allclose(merged.centroids, sums / counts[:, None], rtol=1e-6)
    assert merged.empty == 0 and merged.counts.tolist() == counts.tolist()
    assert merged.centroids.dtype == np.float32


def test_merge_repairs_a_cluster_nobody_filled():
    s1 = np.array([[1.0, 1.0], [4.0, 0.0], [0.0, 0.0]])
    n1 = np.array([1, 2, 0])  # cluster 0 is a singleton, cluster 2 empty: the donor must be cluster 1
    prev = np.array([[0.0, 0.0], [0.0, 0.0], [7.0, 7.0]])
    res = merge_centroids([s1], [n1], prev, seed=0)
    assert res.empty == 1
    np.testing.assert_allclose(res.centroids[0], [1.0, 1.0])
    lloyd = np.array([2.0, 0.0])  # the donor's Lloyd centroid
    c_e, c_d = res.centroids[2], res.centroids[1]
    np.testing.assert_allclose((c_e + c_d) / 2, lloyd)  # c_d ± delta
    assert 0 < np.linalg.norm(c_e - c_d) < 0.01  # small: 2 * ||delta|| = 2 * 2 / 1024
    again = merge_centroids([s1], [n1], prev, seed=0)
    np.testing.assert_array_equal(res.centroids, again.centroids)  # seeded
    # no client at all: the previous centroids stay
    none = merge_centroids([], [], prev, seed=0)
    np.testing.assert_array_equal(none.centroids, prev)
    assert none.empty == 3


def test_server_side_needs_no_torch():
    code = "import sys, protocol.clustering, tasks.common.clustering; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_torch_tensors_are_accepted():
    torch = pytest.importorskip("torch")
    x, _ = blobs()
    res = kmeans(torch.from_numpy(x).half(), 3, iterations=5, seed=0)
    assert res.centroids.dtype == np.float32 and (res.counts == 5).all()


def test_balanced_weights_by_hand():
    # sizes 3, 1, 0 -> K' = 2 non-empty clusters, N = 4: w = N / (K' n) = 4/6 and 4/2
    w = balanced_sample_weights(np.array([0, 0, 0, 1]), 3)
    np.testing.assert_allclose(w, [2 / 3, 2 / 3, 2 / 3, 2.0])
    assert w.mean() == pytest.approx(1.0)
    assert w[:3].sum() == pytest.approx(w[3:].sum())  # each cluster weighs the same


def test_sinkhorn_marginals_are_equal_partition():
    logits = np.random.default_rng(0).normal(size=(200, 8))
    res = sela_labels(logits, sk_lambda=25.0, iterations=1000, tol=1e-6)
    np.testing.assert_allclose(res.plan.sum(1), 1 / 200, rtol=1e-9)
    np.testing.assert_allclose(res.plan.sum(0), 1 / 8, rtol=1e-5)
    assert res.error < 1e-6 and res.plan.sum() == pytest.approx(1.0) and res.iterations < 1000
    short = sela_labels(logits, sk_lambda=25.0, iterations=3, tol=1e-6)  # the cap is honoured
    assert short.iterations == 3 and short.error > 1e-6


def test_sela_labels_are_equal_sized_even_when_predictions_collapse():
    rng = np.random.default_rng(1)
    truth = np.repeat(np.arange(4), 30)
    separated = 8.0 * np.eye(4)[truth] + rng.normal(scale=0.1, size=(120, 4))
    res = sela_labels(separated, sk_lambda=10.0)
    assert np.bincount(res.labels, minlength=4).tolist() == [30, 30, 30, 30]
    assert nmi(res.labels, truth) == pytest.approx(1.0)
    # every sample prefers cluster 0 (a collapsed head) with huge logits: still balanced, no NaN
    # (an unstabilised exp(lambda x log p) would overflow here: the solver works in the log domain)
    collapsed = np.zeros((120, 4)) + rng.normal(scale=1.0, size=(120, 4))
    collapsed[:, 0] += 100.0
    res = sela_labels(collapsed, sk_lambda=25.0, iterations=1000, tol=1e-4)
    assert np.isfinite(res.plan).all()
    assert all(abs(c - 30) <= 3 for c in np.bincount(res.labels, minlength=4))


def test_nmi_values():
    assert nmi([0, 0, 1, 1, 2], [0, 0, 1, 1, 2]) == pytest.approx(1.0)
    assert nmi([0, 0, 1, 1, 2], [5, 5, 3, 3, 9]) == pytest.approx(1.0)  # relabelled
    assert nmi([0, 0, 1, 1], [0, 1, 0, 1]) == pytest.approx(0.0, abs=1e-12)  # joint = product
    # worked example, a = [0,0,1,1], b = [0,0,0,1] (natural log):
    #   H(A) = ln 2 = 0.693147
    #   H(B) = -(3/4 ln 3/4 + 1/4 ln 1/4) = 0.215762 + 0.346574 = 0.562335
    #   joint p(0,0) = 1/2, p(1,0) = p(1,1) = 1/4: H(A,B) = 0.346574 + 2 * 0.346574 = 1.039721
    #   I = H(A) + H(B) - H(A,B) = 0.215762 (= 3/4 ln 4/3)
    #   NMI = 0.215762 / sqrt(0.693147 * 0.562335) = 0.215762 / 0.624324 = 0.345592
    expected = 0.75 * math.log(4 / 3) / math.sqrt(math.log(2) * (math.log(4) - 0.75 * math.log(3)))
    assert expected == pytest.approx(0.345592, abs=1e-6)
    assert nmi([0, 0, 1, 1], [0, 0, 0, 1]) == pytest.approx(expected, rel=1e-12)
    assert nmi([0, 0, 0, 1], [0, 0, 1, 1]) == pytest.approx(expected, rel=1e-12)  # symmetric
    # degenerate: both constant -> 1, one constant -> 0
    assert nmi([3, 3, 3], [1, 1, 1]) == 1.0
    assert nmi([3, 3, 3], [0, 1, 2]) == 0.0


def test_nmi_matches_the_definition_summed_by_hand():
    # sklearn is not in the venv: compare with I = sum p(x,y) log(p(x,y) / (p(x) p(y))) written out
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 5, 300), rng.integers(0, 3, 300)
    b[:150] = a[:150] % 3
    mi = 0.0
    for x in set(a.tolist()):
        for y in set(b.tolist()):
            pxy, px, py = np.mean((a == x) & (b == y)), np.mean(a == x), np.mean(b == y)
            mi += pxy * math.log(pxy / (px * py)) if pxy > 0 else 0.0

    def h(v):
        return -sum(np.mean(v == t) * math.log(np.mean(v == t)) for t in set(v.tolist()))

    assert nmi(a, b) == pytest.approx(mi / math.sqrt(h(a) * h(b)), rel=1e-12)


def test_bad_input_names_the_problem():
    x, _ = blobs()
    with pytest.raises(ValueError, match="at least 2"):
        kmeans(x, 1, iterations=5, seed=0)
    with pytest.raises(ValueError, match="exceeds the number of points"):
        kmeans(x, 16, iterations=5, seed=0)
    with pytest.raises(ClusteringError, match="at least 2"):
        sela_labels(np.zeros((10, 1)), sk_lambda=10.0)
    with pytest.raises(ClusteringError, match="init"):
        kmeans(x, 3, seed=0, init="farthest")
    with pytest.raises(ClusteringError, match="do not match"):
        merge_centroids([np.zeros((3, 2))], [np.zeros(2)], np.zeros((3, 2)), seed=0)
    with pytest.raises(ClusteringError, match="equal length"):
        nmi([0, 1], [0])


def test_global_clusters_start_from_the_clients_local_centroids_weighted_by_counts():
    from strategies.cluster_merge import start_clusters

    # two clients' local centroids around (0, 0) and (10, 10); the counts pull each global centroid
    # (a client uploads sum and count per cluster; a cluster it left empty is not a point)
    sums_a, counts_a = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 0.0]]), np.array([3, 3, 0])  # (0, 0) x3, (1, 0) x3
    sums_b, counts_b = np.array([[10.0, 10.0], [20.0, 24.0], [0.0, 0.0]]), np.array([1, 2, 0])  # (10, 10), (10, 12) x2
    previous = np.zeros((2, 2))
    c, total = start_clusters([sums_a[:2], sums_b[:2]], [counts_a[:2], counts_b[:2]], previous, seed=0)
    order = np.argsort(c[:, 0])
    assert np.allclose(c[order], [[0.5, 0.0], [10.0, 34 / 3]]) and total[order].tolist() == [6.0, 3.0]
    assert np.array_equal(start_clusters([sums_a[:2], sums_b[:2]], [counts_a[:2], counts_b[:2]], previous, 0)[0], c)
    # fewer local centroids (4) than global clusters (6): each is a centroid, the rest split from donors
    c, total = start_clusters([sums_a, sums_b], [counts_a, counts_b], np.zeros((6, 2)), seed=0)
    assert total.tolist() == [3, 3, 1, 2, 0, 0]
    assert len({tuple(np.round(row, 6)) for row in c}) == 6  # the two empty ones took perturbed donors' places
    from protocol.clustering import kmeans

    weighted = kmeans(np.array([[0.0], [1.0], [10.0], [11.0]]), 2, seed=0, weights=[3, 1, 1, 1])
    order = np.argsort(weighted.centroids[:, 0])
    assert np.allclose(weighted.centroids[order, 0], [0.25, 10.5]) and weighted.mass[order].tolist() == [4.0, 2.0]
    assert weighted.counts[order].tolist() == [2, 2]
    with pytest.raises(ClusteringError, match="positive finite"):
        kmeans(np.zeros((4, 1)), 2, weights=[1, 0, 1, 1])
