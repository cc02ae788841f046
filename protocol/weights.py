"""Weight maths on lists of NumPy arrays, shared by strategies and clients (no torch here).

Weighted average (FedAvg, docs/algorithms.md#upload-and-aggregation), FedU's layer divergence and DAPU rule (docs/algorithms.md#the-divergence-aware-predictor-update-dapu), and
FedEMA's mixing coefficient and mixture (docs/algorithms.md#fedema).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

NDArrays = list[np.ndarray]


def weighted_average(updates: Sequence[NDArrays], weights: Sequence[float]) -> NDArrays:
    """sum_k w_k / sum_j w_j * W_k, layer by layer (docs/algorithms.md#upload-and-aggregation), accumulated in float64.

    Integer arrays (BatchNorm's num_batches_tracked) are averaged and rounded back.
    The order of `updates` is the caller's: strategies pass them sorted by partition id so
    that a rerun sums in the same order and gives the same bits.
    """
    if not updates:
        raise ValueError("weighted_average: no updates")
    w = np.asarray(weights, dtype=np.float64)
    if np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weighted_average: weights must be >= 0 with a positive sum, got {w.tolist()}")
    w = w / w.sum()
    out = []
    for layer in zip(*updates):
        acc = np.zeros(layer[0].shape, dtype=np.float64)
        for wk, arr in zip(w, layer):
            acc += wk * arr
        out.append(as_layer(acc, layer[0].dtype))
    return out


def as_layer(value, dtype) -> np.ndarray:
    """`value` as an ndarray of `dtype`, integers rounded; a 0-d result stays a 0-d array.

    NumPy turns 0-d arithmetic (BatchNorm's num_batches_tracked) into scalars; the aggregate's
    check accepts arrays only, so every combining rule ends here.
    """
    value = np.asarray(value)
    if np.issubdtype(dtype, np.integer):
        value = np.rint(value)
    return np.asarray(value, dtype=dtype)


def layer_divergences(a: NDArrays, b: NDArrays, layers: Sequence[int]) -> tuple[float, float]:
    """FedU's divergence, mean over the chosen layers of ||W_l^a - W_l^b||_2 (docs/algorithms.md#the-divergence-aware-predictor-update-dapu), and its
    scale-free form (issue 14), mean of ||W_l^a - W_l^b||_2 / ||W_l^b||_2, in one pass: the paper's
    distances grow with the layers' size, so one mu cannot serve every width."""
    if not layers:
        raise ValueError("layer_divergence: no layers selected")
    absolute, relative = [], []
    for i in layers:
        ref = b[i].astype(np.float64).ravel()
        d = float(np.linalg.norm(a[i].astype(np.float64).ravel() - ref))
        absolute.append(d)
        relative.append(d / max(float(np.linalg.norm(ref)), 1e-12))
    return float(np.mean(absolute)), float(np.mean(relative))


def layer_divergence(a: NDArrays, b: NDArrays, layers: Sequence[int]) -> float:
    """FedU's divergence: mean over the chosen layers of ||W_l^a - W_l^b||_2 (docs/algorithms.md#the-divergence-aware-predictor-update-dapu)."""
    return layer_divergences(a, b, layers)[0]


# The relative threshold that matches the paper's mu = 0.4 on the reference model: the mean norm of
# FedU's 17 divergence layers of the CIFAR ResNet-18 at width 1 as initialised here (torch's default
# conv init) is 8.15 (4.07 at width 0.25, 2.88 at 0.125); 0.4 / 8.15 = 0.049.
MU_RELATIVE_DEFAULT = 0.049


def dapu_adopts_global(divergence: float, mu: float) -> bool:
    """Divergence-aware predictor update (docs/algorithms.md#the-divergence-aware-predictor-update-dapu): d_k < mu -> take the global predictor.
    The same rule serves the relative divergence with its own threshold (strategy.mu_relative)."""
    return divergence < mu


def ema_coefficients(divergence: float, tau: float, lam: float | None) -> tuple[float, float]:
    """FedEMA (docs/algorithms.md#fedema): (lambda_k, mu_k) with mu_k = min(lambda_k * d_k, 1); lambda_k = tau / d_k
    at the client's first mixing (the autoscaler: its first mixing gets mu = tau), else the given one."""
    if lam is None:
        lam = tau / max(divergence, 1e-12)
    return lam, min(lam * divergence, 1.0)


def ema_mixture(local: NDArrays, global_arrays: NDArrays, mu: float) -> NDArrays:
    """mu * W_local + (1 - mu) * W_global for floating arrays (float64 maths, original dtype);
    integer arrays (BatchNorm's batch counters) take the global value."""
    return [
        (mu * lo.astype(np.float64) + (1 - mu) * g.astype(np.float64)).astype(lo.dtype)
        if np.issubdtype(lo.dtype, np.floating) else np.asarray(g)
        for lo, g in zip(local, global_arrays)
    ]


def nbytes(arrays: NDArrays) -> int:
    return int(sum(a.nbytes for a in arrays))
