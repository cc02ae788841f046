"""FedU (ICCV 2021, docs/algorithms.md#fedu): FedAvg of the online encoder and predictor, plus the
divergence-aware predictor update (DAPU) decided per client on the server.

predictor: "dapu" (FedU), "global" (FedBYOL: always the server's predictor), "local" (ablation:
never adopt). dapu_scale: "absolute" (the paper's rule, d_k < mu) or "relative" (issue 14: each
layer's distance divided by the norm of the layer it is measured against, d_k^rel < mu_relative;
the paper's mu was set for the full ResNet-18 and at width 0.25 makes every decision "global").
Both divergences are recorded every round whichever decides. divergence: "paper" computes
d_k = distance(client k's upload, new aggregate) here at aggregation time, keeping one scalar per
client; "reference" uses the distance between the client's online encoder before and after its
local training, reported by the client.
Each client's decision travels in its own instructions the next time it is selected; a client
that skipped rounds keeps its last decision.
"""

from __future__ import annotations

import dataclasses

from protocol.checks import Choice, ConfigError, Float
from protocol.fields import ClientField
from protocol.instructions import Instructions
from protocol.weights import MU_RELATIVE_DEFAULT, NDArrays, dapu_adopts_global, layer_divergences
from strategies.base import FederatedAveraging


class FedU(FederatedAveraging):
    CLIENT_FIELDS = (
        ClientField("predictor_next", "next predictor global/local", style="tally", values=("global", "local")),
        ClientField("predictor_used", "predictor used", style="tally", values=("global", "local"), console=False),
        ClientField("divergence", "divergence", fmt=".3f"),
        ClientField("divergence_relative", "relative divergence", fmt=".4f"),
    )

    def __init__(self, *, predictor: str = "dapu", mu: float = 0.4, divergence: str = "paper",
                 dapu_scale: str = "absolute", mu_relative: float = MU_RELATIVE_DEFAULT, **kwargs):
        self.divergence: dict[int, float] = {}  # last divergence per partition id
        self.adopt_global: dict[int, bool] = {}  # decision for the client's next participation
        self.predictor_mode = Choice(options=("dapu", "global", "local")).check(predictor, "strategy.predictor")
        self.mu = Float(min=0).check(mu, "strategy.mu")
        self.divergence_form = Choice(options=("paper", "reference")).check(divergence, "strategy.divergence")
        self.dapu_scale = Choice(options=("absolute", "relative")).check(dapu_scale, "strategy.dapu_scale")
        self.mu_relative = Float(min=0).check(mu_relative, "strategy.mu_relative")
        super().__init__(**kwargs)
        if not self.layout.divergence_layers:
            raise ConfigError(f"strategy={self.name} measures the divergence of backbone conv layers, and the "
                              f"upload has none; upload the encoder (strategy.sync=online|target|both)")

    def state_dict(self) -> dict:
        return {**super().state_dict(), "divergence": dict(self.divergence), "adopt_global": dict(self.adopt_global)}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.divergence = {int(k): float(v) for k, v in state["divergence"].items()}
        self.adopt_global = {int(k): bool(v) for k, v in state["adopt_global"].items()}

    def instructions(self, server_round: int, pid: int) -> Instructions:
        # a client never seen keeps no local predictor yet, so it takes the global one; unless the
        # predictor is always the server's (FedBYOL), the client keeps its own copy of it
        return dataclasses.replace(super().instructions(server_round, pid),
                                   adopt_global_predictor=self.adopt_global.get(pid, True),
                                   keep_optional=self.predictor_mode != "global")

    def decide(self, divergence: float, relative: float) -> bool:
        """DAPU's decision from the client's divergence (absolute and relative forms)."""
        if self.predictor_mode == "global":
            return True
        if self.predictor_mode == "local":
            return False
        if self.dapu_scale == "relative":
            return dapu_adopts_global(relative, self.mu_relative)
        return dapu_adopts_global(divergence, self.mu)

    def aggregate_updates(self, server_round: int, updates) -> NDArrays:
        aggregated = super().aggregate_updates(server_round, updates)
        for pid, arrays, _, metrics in updates:
            if self.divergence_form == "paper":
                d, rel = layer_divergences(arrays, aggregated, self.layout.divergence_layers)
            else:
                d = float(metrics["divergence_reference"])
                rel = metrics.get("divergence_reference_relative")
                if rel is None and self.dapu_scale == "relative":
                    raise ValueError(f"client {pid} reported no divergence_reference_relative, which "
                                     f"strategy.dapu_scale=relative needs; run clients of this version")
                rel = None if rel is None else float(rel)
            self.divergence[pid] = d
            self.adopt_global[pid] = self.decide(d, rel)
            entry = self.record["clients"][str(pid)]
            entry["divergence"], entry["divergence_relative"] = d, rel
            entry["predictor_next"] = "global" if self.adopt_global[pid] else "local"
            entry["predictor_used"] = str(metrics.get("predictor_used", ""))
        return aggregated
