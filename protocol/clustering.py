"""k-means for DeepCluster and federated clusters, the one implementation both halves use (NumPy only).

The clients' half (docs/algorithms.md#deepcluster): seeded Lloyd k-means with DeepCluster's
empty-cluster guard, nearest-centroid assignment, per-centroid feature sums and counts. The
server's half (docs/algorithms.md#federated-forms, `clusters=global`): the merge of the clients'
sums and counts into new global centroids with the same empty-cluster rule, and the start of the
global clusters: the same k-means, weighted, over the clients' local centroids. It lives in
protocol/ because both the server (which never imports torch) and the clients' tasks import it;
torch tensors are accepted anywhere (moved to the CPU and converted without importing torch).
Every random choice comes from `np.random.default_rng(seed)`: same inputs and seed, same result.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PERTURBATION = 1.0 / 1024  # relative size of the empty-cluster perturbation (faiss's EPS, which DeepCluster ran)


class ClusteringError(ValueError):
    """Bad clustering input; the message names the problem (the caller maps it to config keys)."""


def _numpy(x, dtype=None) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor: to the CPU, half precisions widened to float32
        x = x.detach().cpu()
        if x.is_floating_point() and x.element_size() < 4:
            x = x.float()
        x = x.numpy()
    return np.asarray(x, dtype=dtype)


def _pick_donor(counts: np.ndarray, rng: np.random.Generator) -> int | None:
    """A random non-empty cluster (docs/algorithms.md#federated-forms), drawn with probability proportional to size - 1 as in
    faiss's k-means (which DeepCluster's code runs): singletons cannot be split, big clusters are
    split first. None when no cluster has two points."""
    w = np.maximum(counts - 1, 0).astype(np.float64)
    return None if w.sum() <= 0 else int(rng.choice(len(counts), p=w / w.sum()))


def _perturbation(centroid: np.ndarray, rng: np.random.Generator, eps: float) -> np.ndarray:
    """A random direction of length eps * ||centroid|| (eps when the centroid is zero)."""
    d = rng.standard_normal(centroid.shape)
    d /= np.linalg.norm(d) or 1.0
    return d * eps * (float(np.linalg.norm(centroid)) or 1.0)


@dataclass(frozen=True)
class MergeResult:
    centroids: np.ndarray  # (k, D) in previous_centroids' dtype
    counts: np.ndarray  # (k,) int64 total counts over clients, before repair
    empty: int  # clusters no client filled (repaired when a donor exists, else kept)
    refilled: tuple[int, ...] = ()  # the empty clusters repaired from a donor, in repair order
    donors: tuple[int, ...] = ()  # refilled[i]'s donor (split with it: both clusters changed meaning)


def merge_centroids(sums_list, counts_list, previous_centroids, seed: int,
                    eps: float = PERTURBATION) -> MergeResult:
    """The server's federated k-means step (docs/algorithms.md#federated-forms, `clusters=global`): c_j = sum_k s_kj / sum_k n_kj,
    a Lloyd update over the union of the clients' points. A cluster nobody filled gets the
    empty-cluster rule without points: donor d drawn as in `_pick_donor` from the total counts,
    c_e = c_d + delta, c_d = c_d - delta (clients split d's points at their next assignment), and
    the donor's count is halved for the next draw (faiss). With no donor (all totals <= 1) or no
    client at all, an empty cluster keeps its previous centroid. Seed it per round for resume."""
    prev = _numpy(previous_centroids)
    if prev.ndim != 2:
        raise ClusteringError(f"previous centroids must be (k, D), got shape {prev.shape}")
    k, dim = prev.shape
    if len(sums_list) != len(counts_list):
        raise ClusteringError(f"{len(sums_list)} sums but {len(counts_list)} counts")
    total_s, total_n = np.zeros((k, dim), np.float64), np.zeros(k, np.int64)
    for s, n in zip(sums_list, counts_list):
        s, n = _numpy(s, np.float64), _numpy(n).astype(np.int64).ravel()
        if s.shape != (k, dim) or n.shape != (k,) or (n < 0).any():
            raise ClusteringError(f"a client's sums {s.shape} / counts {n.shape} do not match centroids "
                                  f"{(k, dim)} or hold negative counts")
        total_s += s
        total_n += n
    c = prev.astype(np.float64)
    full = total_n > 0
    c[full] = total_s[full] / total_n[full, None]
    rng, left = np.random.default_rng(seed), total_n.copy()
    refilled, donors = [], []
    for e in np.flatnonzero(~full):
        donor = _pick_donor(left, rng)
        if donor is None:
            break
        delta = _perturbation(c[donor], rng, eps)
        c[e], c[donor] = c[donor] + delta, c[donor] - delta
        left[e] = left[donor] // 2
        left[donor] -= left[e]
        refilled.append(int(e))
        donors.append(donor)
    out = prev.dtype if prev.dtype.kind == "f" else np.float64
    return MergeResult(c.astype(out), total_n, int((~full).sum()), tuple(refilled), tuple(donors))


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


def _mean(x: np.ndarray, rows: np.ndarray, w: np.ndarray | None) -> np.ndarray:
    """The mean of x[rows], weighted by w[rows] when weights are given."""
    if w is None:
        return x[rows].mean(0)
    return ((w[rows, None] * x[rows]).sum(0) / w[rows].sum()).astype(x.dtype)


def _repair(x, a, c, counts, rng, eps, w=None) -> int:
    """DeepCluster's guard (docs/algorithms.md#deepcluster), in place: each empty cluster e takes a random non-empty
    donor d's centroid; with a random delta, c_e = c_d + delta and c_d = c_d - delta; d's points go
    to the nearer of the two (the side of (x - c_d) . delta), rank-split in half when all fall on one
    side (duplicates); both centroids then become the (weighted) means of their points (Lloyd's update).
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
        c[e], c[donor] = _mean(x, members[side], w), _mean(x, members[~side], w)
        counts[e], counts[donor] = side.sum(), (~side).sum()
        repaired += 1
    return repaired


def _kmeans_pp(x: np.ndarray, k: int, rng: np.random.Generator, w: np.ndarray | None = None) -> np.ndarray:
    """k-means++ seeding: the first centre uniform (weighted: in proportion to weight), each next one
    drawn with probability proportional to (weight x) the squared distance to the nearest centre
    chosen so far."""
    idx = [int(rng.integers(len(x))) if w is None else int(rng.choice(len(x), p=w / w.sum()))]
    d2 = ((x - x[idx[0]]) ** 2).sum(1).astype(np.float64)
    for _ in range(1, k):
        p = d2 if w is None else d2 * w
        if p.sum() > 0:
            i = int(rng.choice(len(x), p=p / p.sum()))
        else:  # all remaining points coincide with centres: any unused one
            i = int(rng.choice(np.setdiff1d(np.arange(len(x)), idx)))
        idx.append(i)
        d2 = np.minimum(d2, ((x - x[i]) ** 2).sum(1))
    return x[idx].copy()


@dataclass(frozen=True)
class KMeansResult:
    centroids: np.ndarray  # (k, D), the features' float dtype; each the mean of its points
    assignments: np.ndarray  # (N,) int64; no cluster is empty (k <= N)
    counts: np.ndarray  # (k,) int64: points per cluster
    mass: np.ndarray  # (k,) float64: weight per cluster (the counts when the points are not weighted)
    repairs: int  # empty clusters repaired over all iterations
    empty_last: int  # clusters empty at the last assignment step, before repair
    iterations: int  # Lloyd iterations run (fewer than asked when the assignments stopped changing)


def kmeans(features, k: int, iterations: int = 20, seed: int = 0, init="k-means++",
           eps: float = PERTURBATION, weights=None) -> KMeansResult:
    """Lloyd's k-means of (N, D) features (DeepCluster's step 1, docs/algorithms.md#deepcluster), deterministic for a seed.
    Features are clustered as given (Euclidean; L2-normalise first for cosine). `init`:
    "k-means++", "random" (k distinct points) or a (k, D) array of starting centroids. Each
    iteration assigns, updates centroids to means, then repairs empty clusters (`_repair`).
    Stops early when the assignments no longer change. `weights` (N,), positive: weighted
    k-means (weighted means and k-means++ draws), how the server starts the global clusters from
    the clients' local centroids weighted by their counts (docs/algorithms.md#federated-forms)."""
    x = _features(features)
    _check_k(k, len(x))
    w = None if weights is None else _numpy(weights, np.float64).ravel()
    if w is not None and (w.shape != (len(x),) or not np.all(np.isfinite(w)) or (w <= 0).any()):
        raise ClusteringError(f"k-means weights must be {len(x)} positive finite values, got shape {w.shape}")
    if iterations < 1:
        raise ClusteringError(f"k-means iterations={iterations} must be at least 1")
    rng = np.random.default_rng(seed)
    if isinstance(init, str):
        if init not in ("k-means++", "random"):
            raise ClusteringError(f"k-means init={init!r}: use 'k-means++', 'random' or a (k, D) array")
        c = _kmeans_pp(x, k, rng, w) if init == "k-means++" else x[np.sort(rng.choice(len(x), k, replace=False))]
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
        mass = counts if w is None else np.bincount(a, weights=w, minlength=k)
        if w is not None:
            sums = np.zeros_like(sums)
            np.add.at(sums, a, w[:, None] * x.astype(np.float64))
        full = counts > 0
        c[full] = (sums[full] / mass[full, None]).astype(x.dtype)
        empty = int((~full).sum())
        repairs += _repair(x, a, c, counts, rng, eps, w)
    counts = np.bincount(a, minlength=k).astype(np.int64)
    mass = counts.astype(np.float64) if w is None else np.bincount(a, weights=w, minlength=k)
    return KMeansResult(c, a, counts, mass, repairs, empty, done)
