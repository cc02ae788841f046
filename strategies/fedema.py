"""FedEMA (ICLR 2022, docs/algorithms.md#fedema): FedU's synchronisation; each client mixes its local and the global
model, W_k <- mu_k W_k + (1 - mu_k) W_g with mu_k = min(lambda_k d_k, 1).

The server averages as FedAvg and tells every client, in its instructions, to mix with FedEMA's
rule and its parameters (the autoscaler's tau, or a fixed lambda) and to keep its whole model.
It records every client's divergence d_k, lambda_k and mu_k (or that it started from the global
model: "first", or was reset to it after skipping rounds: "reset").
"""

from __future__ import annotations

import dataclasses

from protocol.checks import Float
from protocol.fields import ClientField
from protocol.instructions import Instructions
from protocol.weights import NDArrays
from strategies.base import FederatedAveraging


class FedEMA(FederatedAveraging):
    CLIENT_FIELDS = (ClientField("divergence", "divergence", fmt=".3f"), ClientField("mu", "EMA mu", fmt=".2f"))

    def __init__(self, *, ema_tau: float = 0.7, ema_lambda: float | None = None, **kwargs):
        self.ema_tau = Float(above=0).check(ema_tau, "strategy.ema_tau")
        self.ema_lambda = Float(min=0, null=True).check(ema_lambda, "strategy.ema_lambda")
        super().__init__(**kwargs)

    def instructions(self, server_round: int, pid: int) -> Instructions:
        return dataclasses.replace(super().instructions(server_round, pid), mix="ema", mix_tau=self.ema_tau,
                                   mix_lambda=self.ema_lambda, keep_everything=True)

    def aggregate_updates(self, server_round: int, updates) -> NDArrays:
        aggregated = super().aggregate_updates(server_round, updates)
        for pid, _, _, metrics in updates:
            entry = self.record["clients"][str(pid)]
            for key in ("divergence", "lambda", "mu"):
                if f"ema_{key}" in metrics:
                    entry[key] = float(metrics[f"ema_{key}"])
            entry["mixing"] = str(metrics.get("ema_mixing", "mixed" if "ema_mu" in metrics else "first"))
        return aggregated
