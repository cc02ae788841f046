"""What DeepCluster and SeLa measure and weigh on a client: inverse-size sample weights and NMI
(docs/algorithms.md#clustering-based-self-supervision).

The k-means they cluster with is protocol/clustering.py (the server's merge uses the same one) and
SeLa's Sinkhorn-Knopp is tasks/common/sinkhorn.py. NumPy only: torch tensors are accepted anywhere
(moved to the CPU and converted, without importing torch here).
"""

from __future__ import annotations

import numpy as np

from protocol.clustering import ClusteringError, _numpy


def balanced_sample_weights(assignments, k: int) -> np.ndarray:
    """Per-sample weights inversely proportional to the size of the sample's cluster, so every
    non-empty cluster weighs the same in the loss (DeepCluster's guard, docs/algorithms.md#deepcluster); mean 1:
    w_i = N / (K' n_{a_i}), K' = number of non-empty clusters."""
    a = _numpy(assignments).astype(np.int64).ravel()
    counts = np.bincount(a, minlength=k)
    return len(a) / ((counts > 0).sum() * counts[a].astype(np.float64))


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
