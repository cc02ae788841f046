"""FedEMA's client-side update (ICLR 2022; docs/algorithms.md#fedema): mix the local and the global models.

W_k <- mu_k * W_k^local + (1 - mu_k) * W_g for the uploaded parts (online encoder and
predictor), mu_k = min(lambda_k * d_k, 1), d_k = FedU's divergence between the local and the
global online encoder, lambda_k = tau / d_k at the client's first mixing, then fixed (or a fixed
lambda from the instructions). A client that skipped rounds takes the global model and resets
its target to it.
"""

from __future__ import annotations

import numpy as np

from protocol.weights import ema_coefficients, ema_mixture, layer_divergence
from tasks.common.arrays import get_arrays, set_arrays
from tasks.ssl.methods.base import SSLMethod


def ema_mix(method: SSLMethod, keys: list[str], global_arrays: list[np.ndarray], divergence_idx: list[int],
            tau: float, lam: float | None) -> dict:
    """Mix the method's uploaded entries with the global ones in place; returns d, lambda, mu."""
    local = get_arrays(method, keys)
    d = layer_divergence(local, global_arrays, divergence_idx)
    lam, mu = ema_coefficients(d, tau, lam)
    set_arrays(method, keys, ema_mixture(local, global_arrays, mu))
    return {"divergence": d, "lambda": lam, "mu": mu}


def fedema_update(method: SSLMethod, keys: list[str], received: list[np.ndarray], divergence_idx: list[int],
                  info: dict, server_round: int, tau: float, fixed_lambda: float | None) -> dict:
    """FedEMA's rule (docs/algorithms.md#fedema) on a client that trained before: reset to the global model after skipped rounds,
    otherwise mix with lambda fixed (given) or remembered from its first mixing (`info`)."""
    if int(info.get("last_round", 0)) < server_round - 1:
        loaded = set_arrays(method, keys, received)
        method.init_local_parts(loaded)
        return {"mixing": "reset"}
    lam = fixed_lambda if fixed_lambda is not None else info.get("ema_lambda")
    return ema_mix(method, keys, received, divergence_idx, tau, None if lam is None else float(lam))
