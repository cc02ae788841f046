"""Differential privacy of the federation's aggregate (issue 26): each client's update clipped, Gaussian
noise added once to their sum, and the privacy spent so far. NumPy only.

The mechanism is DP-FedAvg's (McMahan et al. 2018, "Learning differentially private recurrent
language models"), user-level: neighbouring federations differ by one client's whole data.
- Each update (the client's weights minus the global model it received, every floating array:
  BatchNorm's running statistics too, they are computed from the client's data) is scaled to an
  L2 norm of at most C (`dp_clip`).
- The clipped updates are summed with equal weights (an example count is what a client could
  inflate, and it would change the sensitivity), N(0, (z C)^2) is added to every coordinate of the
  sum (z = `dp_noise_multiplier`), and the sum is divided by m, the number of clients selected
  for the round, fixed before anyone answers: a failed or rejected client contributes zero.
  One client changes the sum by at most C, so the noise is calibrated to sensitivity C.
- Integer arrays (step counters) are the unweighted mean, rounded: counts of steps, not data.
Privacy spent: the Gaussian mechanism with sensitivity C and noise z C satisfies (alpha,
alpha / (2 z^2))-Rényi DP for every order alpha > 1 (Mironov 2017, "Rényi differential privacy",
Prop. 7); T rounds compose additively (Prop. 1); the conversion to (epsilon, delta) is the one of
Canonne, Kamath and Steinke 2020 (Prop. 12), minimised over the orders. Client sampling
(fraction_fit < 1) would amplify privacy; it is not claimed here, so the epsilon reported is an
upper bound for any fraction_fit. The noise is drawn from a generator seeded by (seed, round), so
a rerun repeats it; the server that adds it is trusted (central DP).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from protocol.weights import NDArrays, as_layer

ORDERS = tuple([1.0 + x / 10.0 for x in range(1, 100)] + list(range(11, 64)) + [128.0, 256.0, 512.0, 1024.0])


def dp_mean(updates: Sequence[NDArrays], global_arrays: NDArrays, clip: float, noise_multiplier: float,
            denominator: int, rng: np.random.Generator) -> tuple[NDArrays, dict]:
    """global + (sum of the updates' changes clipped to `clip` + N(0, (z clip)^2)) / denominator."""
    if denominator < len(updates) or denominator < 1:
        raise ValueError(f"dp_mean: denominator {denominator} is below the {len(updates)} updates")
    floating = [np.issubdtype(g.dtype, np.floating) for g in global_arrays]
    deltas, norms, scales = [], [], []
    for arrays in updates:
        d = [a.astype(np.float64) - g.astype(np.float64) if f else None for a, g, f in zip(arrays, global_arrays, floating)]
        norm = math.sqrt(sum(float(np.sum(x ** 2)) for x in d if x is not None))
        scale = 1.0 if norm <= clip else clip / norm
        deltas.append([x * scale if x is not None else None for x in d])
        norms.append(norm)
        scales.append(scale)
    std = noise_multiplier * clip
    out = []
    for i, (g, f) in enumerate(zip(global_arrays, floating)):
        if f:
            total = sum(d[i] for d in deltas) + rng.normal(0.0, std, size=g.shape)
            out.append(as_layer(g.astype(np.float64) + total / denominator, g.dtype))
        else:
            out.append(as_layer(np.mean([u[i].astype(np.float64) for u in updates], axis=0), g.dtype))
    return out, {"update_norms": norms, "clip_scales": scales, "noise_std_of_sum": std}


def gaussian_epsilon(rounds: int, noise_multiplier: float, delta: float) -> tuple[float, float]:
    """(epsilon, best order) after `rounds` releases of the Gaussian mechanism with noise multiplier z
    (sensitivity 1, std z), at `delta`: min over orders of the RDP bound converted by
    Canonne-Kamath-Steinke: eps = rdp + log((a - 1) / a) - (log(delta) + log(a)) / (a - 1)."""
    if rounds <= 0:
        return 0.0, math.nan
    best, order = math.inf, math.nan
    for a in ORDERS:
        rdp = rounds * a / (2.0 * noise_multiplier ** 2)
        eps = rdp + math.log((a - 1) / a) - (math.log(delta) + math.log(a)) / (a - 1)
        if eps < best:
            best, order = eps, a
    return max(best, 0.0), order
