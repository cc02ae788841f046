"""FedEMA's client-side update (ICLR 2022; SPEC §3): mix the local and global models.

W_k <- mu_k * W_k^local + (1 - mu_k) * W_g for the uploaded parts (online encoder and
predictor), mu_k = min(lambda_k * d_k, 1), d_k = FedU's divergence between the local and the
global online encoder, lambda_k = tau / d_k at the client's first mixing, then fixed (or a fixed
lambda from the config).
"""

from __future__ import annotations

import numpy as np

from strategies.weights import layer_divergence
from tasks.methods.base import SSLMethod
from tasks.wire import get_arrays, set_arrays


def ema_mix(method: SSLMethod, keys: list[str], global_arrays: list[np.ndarray], divergence_idx: list[int],
            tau: float, lam: float | None) -> dict:
    """Mix the method's uploaded entries with the global ones in place; returns d, lambda, mu."""
    local = get_arrays(method, keys)
    d = layer_divergence(local, global_arrays, divergence_idx)
    if lam is None:
        lam = tau / max(d, 1e-12)  # the autoscaler: the first mixing gets mu = tau
    mu = min(lam * d, 1.0)
    mixed = [
        (mu * lo.astype(np.float64) + (1 - mu) * g.astype(np.float64)).astype(lo.dtype)
        if np.issubdtype(lo.dtype, np.floating) else np.asarray(g)
        for lo, g in zip(local, global_arrays)
    ]
    set_arrays(method, keys, mixed)
    return {"divergence": d, "lambda": lam, "mu": mu}
