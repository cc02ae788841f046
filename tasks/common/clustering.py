"""Clustering primitives for DeepCluster and SeLa, local and federated (docs/algorithms.md#clustering-based-self-supervision): seeded k-means
with the empty-cluster guard, per-centroid sums and the server's merge (federated k-means),
balanced sampling, SeLa's Sinkhorn-Knopp pseudo-labels, and NMI.

numpy only; the server's half (`merge_centroids`, the empty-cluster donor rule) lives in
protocol/clustering.py, which the server may import, and is re-exported here; torch tensors
are accepted anywhere (moved to the CPU and converted, without importing torch here). Every
random choice comes from `np.random.default_rng(seed)`: same inputs and seed, same result.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from protocol.clustering import (  # noqa: F401 - the server's half, re-exported for the clients' code
    PERTURBATION,
    ClusteringError,
    MergeResult,
    _numpy,
    _perturbation,
    _pick_donor,
    merge_centroids,
)



def _features(features) -> np.ndarray:
    x = _numpy(features)
    if x.ndim != 2 or len(x) == 0:
        raise ClusteringError(f"features must be a non-empty (N, D) array, got shape {x.shape}")
    return x.astype(np.result_type(x.dtype, np.float32), copy=False)


def _check_k(k: int, n: int) -> None:
    if k < 2:
        raise ClusteringError(f"number of clusters k={k} must be at least 2")
    if k > n:
        raise ClusteringError(f"number of clusters k={k} exceeds the number of points ({n})")


def assign(features, centroids) -> np.ndarray:
    """Index of the nearest centroid per row, by squared Euclidean distance (ties: lowest index).
    On L2-normalised features and centroids this is the cosine-nearest centroid too
    (||x - c||^2 = 2 - 2 cos); normalising is the caller's choice (DeepCluster: PCA, then L2)."""
    x, c = _features(features), _numpy(centroids)
    if c.ndim != 2 or c.shape[1] != x.shape[1]:
        raise ClusteringError(f"centroids of shape {c.shape} do not match features of dimension {x.shape[1]}")
    c = c.astype(x.dtype, copy=False)
    d = (c * c).sum(1)[None, :] - 2.0 * (x @ c.T)  # ||x||^2 is the same for every centroid
    return d.argmin(1).astype(np.int64)


def cluster_sums(features, assignments, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-cluster feature sums (k, D) float64 and counts (k,) int64: what a client uploads in
    `clusters=global` (docs/algorithms.md#federated-forms): aggregates over its assignments, never one image's feature."""
    x, a = _features(features), _numpy(assignments).astype(np.int64).ravel()
    if len(a) != len(x):
        raise ClusteringError(f"{len(a)} assignments for {len(x)} feature rows")
    if len(a) and (a.min() < 0 or a.max() >= k):
        raise ClusteringError(f"assignments must lie in [0, {k}), got [{a.min()}, {a.max()}]")
    sums = np.zeros((k, x.shape[1]), np.float64)
    np.add.at(sums, a, x.astype(np.float64))
    return sums, np.bincount(a, minlength=k).astype(np.int64)


def _repair(x, a, c, counts, rng, eps) -> int:
    """DeepCluster's guard (docs/algorithms.md#deepcluster), in place: each empty cluster e takes a random non-empty
    donor d's centroid; with a random delta, c_e = c_d + delta and c_d = c_d - delta; d's points go
    to the nearer of the two (the side of (x - c_d) . delta), rank-split in half when all fall on one
    side (duplicates); both centroids then become the means of their points (Lloyd's update).
    Returns how many clusters were repaired."""
    repaired = 0
    for e in np.flatnonzero(counts == 0):
        donor = _pick_donor(counts, rng)
        if donor is None:  # fewer points than clusters: cannot happen when k <= N
            break
        members = np.flatnonzero(a == donor)
        proj = (x[members] - c[donor]) @ _perturbation(c[donor], rng, eps).astype(x.dtype)
        side = proj > 0
        if side.all() or not side.any():
            side = np.zeros(len(members), bool)
            side[np.argsort(proj, kind="stable")[len(members) // 2:]] = True
        a[members[side]] = e
        c[e], c[donor] = x[members[side]].mean(0), x[members[~side]].mean(0)
        counts[e], counts[donor] = side.sum(), (~side).sum()
        repaired += 1
    return repaired


def _kmeans_pp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding: the first centre uniform, each next one drawn with probability
    proportional to the squared distance to the nearest centre chosen so far."""
    idx = [int(rng.integers(len(x)))]
    d2 = ((x - x[idx[0]]) ** 2).sum(1).astype(np.float64)
    for _ in range(1, k):
        if d2.sum() > 0:
            i = int(rng.choice(len(x), p=d2 / d2.sum()))
        else:  # all remaining points coincide with centres: any unused one
            i = int(rng.choice(np.setdiff1d(np.arange(len(x)), idx)))
        idx.append(i)
        d2 = np.minimum(d2, ((x - x[i]) ** 2).sum(1))
    return x[idx].copy()


@dataclass(frozen=True)
class KMeansResult:
    centroids: np.ndarray  # (k, D), the features' float dtype; each the mean of its points
    assignments: np.ndarray  # (N,) int64; no cluster is empty (k <= N)
    counts: np.ndarray  # (k,) int64
    repairs: int  # empty clusters repaired over all iterations
    empty_last: int  # clusters empty at the last assignment step, before repair
    iterations: int  # Lloyd iterations run (fewer than asked when the assignments stopped changing)


def kmeans(features, k: int, iterations: int = 20, seed: int = 0, init="k-means++",
           eps: float = PERTURBATION) -> KMeansResult:
    """Lloyd's k-means of (N, D) features (DeepCluster's step 1, docs/algorithms.md#deepcluster), deterministic for a seed.
    Features are clustered as given (Euclidean; L2-normalise first for cosine). `init`:
    "k-means++", "random" (k distinct points) or a (k, D) array of starting centroids. Each
    iteration assigns, updates centroids to means, then repairs empty clusters (`_repair`).
    Stops early when the assignments no longer change."""
    x = _features(features)
    _check_k(k, len(x))
    if iterations < 1:
        raise ClusteringError(f"k-means iterations={iterations} must be at least 1")
    rng = np.random.default_rng(seed)
    if isinstance(init, str):
        if init not in ("k-means++", "random"):
            raise ClusteringError(f"k-means init={init!r}: use 'k-means++', 'random' or a (k, D) array")
        c = _kmeans_pp(x, k, rng) if init == "k-means++" else x[np.sort(rng.choice(len(x), k, replace=False))]
    else:
        c = _numpy(init).astype(x.dtype)  # a copy: the caller's array is left alone
        if c.shape != (k, x.shape[1]):
            raise ClusteringError(f"k-means init of shape {c.shape}, expected {(k, x.shape[1])}")
    a, repairs, empty, done = None, 0, 0, 0
    for _ in range(iterations):
        new = assign(x, c)
        if a is not None and np.array_equal(new, a):  # a fixed point: c already holds its means
            break
        a, done = new, done + 1
        sums, counts = cluster_sums(x, a, k)
        full = counts > 0
        c[full] = (sums[full] / counts[full, None]).astype(x.dtype)
        empty = int((~full).sum())
        repairs += _repair(x, a, c, counts, rng, eps)
    return KMeansResult(c, a, np.bincount(a, minlength=k).astype(np.int64), repairs, empty, done)


def balanced_sample_weights(assignments, k: int) -> np.ndarray:
    """Per-sample weights inversely proportional to the size of the sample's cluster, so every
    non-empty cluster weighs the same in the loss (DeepCluster's guard, docs/algorithms.md#deepcluster); mean 1:
    w_i = N / (K' n_{a_i}), K' = number of non-empty clusters."""
    a = _numpy(assignments).astype(np.int64).ravel()
    counts = np.bincount(a, minlength=k)
    return len(a) / ((counts > 0).sum() * counts[a].astype(np.float64))


def balanced_sampler_indices(assignments, n: int, seed) -> np.ndarray:
    """n sample indices uniform over non-empty clusters (DeepCluster's UnifLabelSampler): each
    cluster gives n // K' + 1 members (without replacement when it has enough, else with),
    then all are shuffled and cut to n. `seed`: an int or a np.random.Generator."""
    a = _numpy(assignments).astype(np.int64).ravel()
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    clusters = np.unique(a)
    if len(clusters) == 0:
        raise ClusteringError("balanced sampling needs at least one assignment")
    per = n // len(clusters) + 1
    members = [np.flatnonzero(a == j) for j in clusters]
    picks = [rng.choice(m, per, replace=len(m) < per) for m in members]
    return rng.permutation(np.concatenate(picks))[:n]


def _logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
    m = np.nan_to_num(x.max(axis=axis, keepdims=True), neginf=0.0, posinf=0.0)  # stabiliser, finite
    return (np.log(np.exp(x - m).sum(axis=axis, keepdims=True)) + m).squeeze(axis)


@dataclass(frozen=True)
class SelaResult:
    labels: np.ndarray  # (N,) int64: argmax of each row of the plan (SeLa's hard pseudo-labels)
    plan: np.ndarray  # (N, K) float64 transport plan Q, total mass 1: rows -> 1/N, columns -> 1/K
    iterations: int  # Sinkhorn-Knopp iterations run
    error: float  # max relative deviation of the column marginals from 1/K at the end


def sela_labels(logits, sk_lambda: float = 25.0, iterations: int = 100, tol: float = 1e-3) -> SelaResult:
    """SeLa's pseudo-labels (Asano et al., ICLR 2020; docs/algorithms.md#sela): the equal-partition problem solved
    by Sinkhorn-Knopp, Q = diag(alpha) P^lambda diag(beta) with P = softmax(logits) (N, K), rows
    scaled to 1/N and columns to 1/K alternately until the columns deviate by < tol (relative).
    Not losses.sinkhorn (SwAV's): that one takes exp(scores / epsilon) unstabilised in the input's
    dtype (lambda * logits overflows float32 beyond ~88), runs a fixed 3 iterations with no
    convergence check, and needs torch, which this numpy module avoids. Here everything is in the
    log domain in float64, so P^lambda never under- or overflows."""
    z = _numpy(logits, np.float64)
    if z.ndim != 2:
        raise ClusteringError(f"logits must be (N, K), got shape {z.shape}")
    n, k = z.shape
    _check_k(k, n)
    if sk_lambda <= 0 or iterations < 1:
        raise ClusteringError(f"sk_lambda={sk_lambda} must be > 0 and iterations={iterations} >= 1")
    log_k = sk_lambda * (z - _logsumexp(z, 1)[:, None])  # log P^lambda
    u, v, it = np.zeros(n), None, 0
    while True:
        col = _logsumexp(log_k + u[:, None], 0)  # log column sums / exp(v)
        err = np.inf if v is None else float(np.abs(np.exp(col + v + np.log(k)) - 1).max())
        if err < tol or it == iterations:
            break
        v = -np.log(k) - col  # columns -> 1/K
        u = -np.log(n) - _logsumexp(log_k + v[None, :], 1)  # rows -> 1/N (exact after each step)
        it += 1
    plan = np.exp(log_k + u[:, None] + v[None, :])
    return SelaResult(plan.argmax(1).astype(np.int64), plan, it, err)


def _entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def nmi(a, b) -> float:
    """Normalised mutual information, docs/algorithms.md#nmi: NMI(A, B) = I(A; B) / sqrt(H(A) H(B)) (natural log;
    the base cancels). Labels may be any integers (only the partition matters). Degenerate cases
    (sklearn's convention): both labelings constant -> 1.0 (the same partition); exactly one
    constant -> 0.0 (I = 0)."""
    a, b = _numpy(a).ravel(), _numpy(b).ravel()
    if len(a) != len(b) or len(a) == 0:
        raise ClusteringError(f"nmi needs two non-empty labelings of equal length, got {len(a)} and {len(b)}")
    ia, ib = (np.unique(v, return_inverse=True)[1].ravel() for v in (a, b))
    ka, kb = ia.max() + 1, ib.max() + 1
    joint = np.bincount(ia * kb + ib, minlength=ka * kb).reshape(ka, kb) / len(a)
    ha, hb = _entropy(joint.sum(1)), _entropy(joint.sum(0))
    if ha == 0.0 or hb == 0.0:
        return 1.0 if ha == hb else 0.0
    mi = ha + hb - _entropy(joint.ravel())  # I(A; B) = H(A) + H(B) - H(A, B)
    return float(min(max(mi / np.sqrt(ha * hb), 0.0), 1.0))


def nmi_report(assignments, labels=None, previous=None) -> dict:
    """A client's clusters measured (docs/algorithms.md#nmi): `nmi_labels` against the true labels (what the features
    capture; when labels exist) and `nmi_previous` against its clusters of the previous clustering
    (stability; when it clustered the same images before)."""
    a = _numpy(assignments)
    out = {}
    if labels is not None and len(labels) == len(a):
        out["nmi_labels"] = nmi(a, labels)
    if previous is not None and len(previous) == len(a):
        out["nmi_previous"] = nmi(a, previous)
    return out
