"""The server's half of federated k-means (docs/algorithms.md#federated-forms, `clusters=global`): merge the clients'
per-centroid feature sums and counts into new global centroids, with DeepCluster's empty-cluster
rule. NumPy only (the server never imports torch); the clients' half (k-means, assignment, sums)
is tasks/common/clustering.py, which re-exports these.
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


def weighted_kmeans(points, weights, k: int, iterations: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(centroids (k, D), total weight per centroid) of seeded weighted k-means over `points` (the
    clients' local centroids, weighted by their counts: how `clusters=global` starts, as Orchestra
    clusters the clients' local centroids on the server). k-means++ seeding drawn in proportion to
    weight x squared distance; an empty cluster takes a random point plus a small perturbation."""
    x, w = _numpy(points, np.float64), _numpy(weights, np.float64).ravel()
    keep = w > 0
    x, w = x[keep], w[keep]
    if len(x) == 0:
        raise ClusteringError("no client reported a non-empty cluster to start the global clusters from")
    rng = np.random.default_rng(seed)
    first = int(rng.choice(len(x), p=w / w.sum()))
    c = [x[first]]
    d2 = ((x - x[first]) ** 2).sum(1)
    for _ in range(1, k):
        p = w * d2
        i = int(rng.choice(len(x), p=p / p.sum())) if p.sum() > 0 else int(rng.choice(len(x), p=w / w.sum()))
        c.append(x[i] + (_perturbation(x[i], rng, PERTURBATION) if p.sum() <= 0 else 0.0))
        d2 = np.minimum(d2, ((x - c[-1]) ** 2).sum(1))
    c = np.stack(c)
    for _ in range(iterations):
        a = np.argmin(((x[:, None, :] - c[None]) ** 2).sum(-1), axis=1)
        totals = np.bincount(a, weights=w, minlength=k)
        for j in range(k):
            if totals[j] > 0:
                c[j] = (w[a == j, None] * x[a == j]).sum(0) / totals[j]
            else:
                i = int(rng.choice(len(x), p=w / w.sum()))
                c[j] = x[i] + _perturbation(x[i], rng, PERTURBATION)
    a = np.argmin(((x[:, None, :] - c[None]) ** 2).sum(-1), axis=1)
    return c, np.bincount(a, weights=w, minlength=k)
