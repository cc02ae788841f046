"""FedPav (ACM MM 2020, docs/algorithms.md#fedpav): federated partial averaging for re-identification.

Clients upload the backbone and embedding block and keep their classifiers (local parts of the
re-ID task: they never travel). The server averages the uploads weighted by examples, or, with
`cdw=True`, by the cosine distance d_k each client reports (w_k = d_k / sum_j d_j); the clients
are told to report it in their instructions. With `kd=True`, every `kd_every` rounds the
aggregate is distilled on the server's public set towards the mean normalised embedding of every
client's latest upload (hooks.distill, torch side). Per-client weights, d_k and the KD loss go
into the round's record (summary.json, W&B).
"""

from __future__ import annotations

import dataclasses
from logging import WARNING

import numpy as np
from flwr.common import log

from protocol.checks import Bool, ConfigError, Int
from protocol.fields import ClientField, RoundField
from protocol.instructions import Instructions
from protocol.weights import NDArrays
from strategies.base import FederatedAveraging


class FedPav(FederatedAveraging):
    CLIENT_FIELDS = (ClientField("weight", "weights", fmt=".2f"),)
    aggregates_by = "reweighted_mean"  # cosine-distance weights (cdw) and distillation (kd) after the mean
    ROUND_FIELDS = (*FederatedAveraging.ROUND_FIELDS, RoundField("kd_loss", "KD loss", fmt=".4f"))

    def __init__(self, *, cdw: bool = False, kd: bool = False, kd_every: int = 10, **kwargs):
        self.latest: dict[int, NDArrays] = {}  # every client's latest upload: the KD teachers
        self.cdw = Bool().check(cdw, "strategy.cdw")
        self.kd = Bool().check(kd, "strategy.kd")
        self.kd_every = Int(min=1).check(kd_every, "strategy.kd_every")
        super().__init__(**kwargs)
        if self.kd and self.hooks.distill is None:
            raise ConfigError("strategy.kd=true needs server-side distillation, which this task does not offer")
        if self.dp[0] is not None and (self.cdw or self.kd):
            raise ConfigError("strategy.dp_noise_multiplier bounds each client's share of an equal-weight mean; "
                              "strategy.cdw and strategy.kd weigh or distil the raw uploads: turn them off for DP")

    def state_dict(self) -> dict:
        return {**super().state_dict(), "latest": dict(self.latest)}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.latest = {int(pid): [np.asarray(a) for a in arrays] for pid, arrays in state.get("latest", {}).items()}

    def instructions(self, server_round: int, pid: int) -> Instructions:
        return dataclasses.replace(super().instructions(server_round, pid), cdw=self.cdw)

    def aggregation_weights(self, updates) -> list[float]:
        """n_k, or the clients' cosine distances d_k under CDW (normalised by weighted_average)."""
        if not self.cdw:
            return [float(n) for _, _, n, _ in updates]
        d = [float(m.get("cdw", np.nan)) for _, _, _, m in updates]
        if all(np.isfinite(x) and x >= 0 for x in d) and sum(d) > 0:
            return d
        log(WARNING, "cdw: unusable distances %s; this round is weighted by examples", d)
        self.record["cdw_fallback"] = True
        return [float(n) for _, _, n, _ in updates]

    def aggregate_updates(self, server_round: int, updates) -> NDArrays:
        weights = self.aggregation_weights(updates)
        aggregated = self.combine(updates, weights)
        total = sum(weights)
        for (pid, arrays, _, metrics), w in zip(updates, weights):
            entry = self.record["clients"][str(pid)]
            entry["weight"] = w / total
            if "cdw" in metrics:
                entry["cdw"] = float(metrics["cdw"])
            if self.kd:
                self.latest[pid] = arrays
        if self.kd and server_round % self.kd_every == 0 and self.latest:
            teachers = [self.latest[pid] for pid in sorted(self.latest)]
            aggregated, loss = self.hooks.distill(aggregated, teachers, server_round)
            self.record["kd_loss"] = loss
            self.record["kd_teachers"] = sorted(self.latest)
        return aggregated
