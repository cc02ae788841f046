"""Robust aggregation rules (issue 26, `strategy.robust`): how the updates of one round are combined
when a client may be hostile. NumPy only; used by every strategy that averages.

- none: the weighted mean of the uploaded weights (FedAvg; the papers' rule).
- clip: each client's *update* (its weights minus the global model it received) is scaled down to
  an L2 norm of at most the bound, then the weighted mean of the clipped updates is added to the
  global model (norm-difference clipping, Sun et al. 2019, "Can you really backdoor federated
  learning?"). The bound is `clip_norm`, or, when it is null, the median norm of the round's
  updates: a hostile update ten times larger than the others is cut to the typical size, honest
  ones are barely touched, and no bound has to be tuned per model.
- trimmed_mean: coordinate by coordinate, the largest and smallest `trim_fraction` of the clients'
  values are dropped and the rest averaged, unweighted (Yin et al. 2018, "Byzantine-robust
  distributed learning"); with 5 clients and 0.2, one value at each end.
- median: the coordinate-wise median of the clients' values, unweighted (Yin et al. 2018).
Integer arrays (BatchNorm's step counters) follow the same rule and are rounded back.
Trimmed mean and median ignore the example counts: a weight is what a hostile client would inflate.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from protocol.weights import NDArrays, as_layer, weighted_average

RULES = ("none", "clip", "trimmed_mean", "median")


def update_norms(updates: Sequence[NDArrays], global_arrays: NDArrays) -> list[float]:
    """L2 norm of each client's change from the global model, over every floating array."""
    out = []
    for arrays in updates:
        total = 0.0
        for a, g in zip(arrays, global_arrays):
            if np.issubdtype(a.dtype, np.floating):
                total += float(np.sum((a.astype(np.float64) - g.astype(np.float64)) ** 2))
        out.append(float(np.sqrt(total)))
    return out


def clipped_mean(updates: Sequence[NDArrays], weights: Sequence[float], global_arrays: NDArrays,
                 clip_norm: float | None = None) -> tuple[NDArrays, dict]:
    """global + weighted mean of the updates' changes, each clipped to L2 norm <= bound."""
    norms = update_norms(updates, global_arrays)
    bound = float(np.median(norms)) if clip_norm is None else float(clip_norm)
    scales = [1.0 if n <= bound or n == 0 else bound / n for n in norms]
    clipped = []
    for arrays, s in zip(updates, scales):
        clipped.append([g.astype(np.float64) + s * (a.astype(np.float64) - g.astype(np.float64))
                        if np.issubdtype(a.dtype, np.floating) else a for a, g in zip(arrays, global_arrays)])
    mean = weighted_average(clipped, weights)
    out = [as_layer(m, a.dtype) for m, a in zip(mean, updates[0])]
    return out, {"clip_bound": bound, "update_norms": norms, "clip_scales": scales}


def _coordinatewise(updates: Sequence[NDArrays], reduce) -> NDArrays:
    out = []
    for layer in zip(*updates):
        stacked = np.stack([a.astype(np.float64) for a in layer])
        value = reduce(stacked)
        out.append(as_layer(value, layer[0].dtype))
    return out


def trimmed_mean(updates: Sequence[NDArrays], trim_fraction: float) -> NDArrays:
    """Coordinate-wise mean after dropping floor(trim_fraction * n) values at each end."""
    n = len(updates)
    k = int(np.floor(trim_fraction * n))
    if 2 * k >= n:
        raise ValueError(f"trim_fraction={trim_fraction} drops all {n} updates; lower it")
    return _coordinatewise(updates, lambda s: np.sort(s, axis=0)[k:n - k].mean(axis=0))


def coordinate_median(updates: Sequence[NDArrays]) -> NDArrays:
    return _coordinatewise(updates, lambda s: np.median(s, axis=0))


def combine(rule: str, updates: Sequence[NDArrays], weights: Sequence[float], global_arrays: NDArrays | None,
            clip_norm: float | None = None, trim_fraction: float = 0.2) -> tuple[NDArrays, dict]:
    """The round's aggregate under `rule`, and what the rule did (for the round's record)."""
    if not updates:
        raise ValueError("combine: no updates")
    if rule == "none":
        return weighted_average(updates, weights), {}
    if rule == "clip":
        if global_arrays is None:
            raise ValueError("robust=clip needs the global model the clients received")
        return clipped_mean(updates, weights, global_arrays, clip_norm)
    if rule == "trimmed_mean":
        return trimmed_mean(updates, trim_fraction), {"trimmed_per_end": int(np.floor(trim_fraction * len(updates)))}
    if rule == "median":
        return coordinate_median(updates), {}
    raise ValueError(f"robust={rule!r} is not valid; choose one of {list(RULES)}")
