"""Standalone, the lower bound (docs/algorithms.md#baselines): every client trains alone; nothing is aggregated.

The server sends the initial model to a client only on its first participation and tells it to
keep its whole model; it keeps the latest upload of every client and evaluates each client's own
model (docs/algorithms.md#standalone-models: reported as the mean over clients).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from protocol.checks import ConfigError
from protocol.instructions import Instructions
from protocol.weights import NDArrays
from strategies.base import FederatedAveraging


class Standalone(FederatedAveraging):
    aggregates_by = "none"  # every client's upload is kept as its own model

    def __init__(self, **kwargs):
        if kwargs["layout"].global_clusters:
            raise ConfigError("ssl.clusters=global makes the clusters the federation's, but strategy=standalone "
                              "aggregates nothing; use ssl.clusters=local, or strategy=fedavg")
        if kwargs.get("dp_noise_multiplier") is not None:
            raise ConfigError("strategy.dp_noise_multiplier noises the aggregate, but strategy=standalone aggregates "
                              "nothing; drop it")
        if kwargs.get("robust", "none") != "none":
            raise ConfigError(f"strategy.robust={kwargs['robust']} chooses how updates are combined, but "
                              "strategy=standalone combines nothing; drop strategy.robust")
        self.latest: dict[int, NDArrays] = {}
        super().__init__(**kwargs)
        self.initial_arrays = [a.copy() for a in kwargs["initial_arrays"]]

    def state_dict(self) -> dict:
        return {**super().state_dict(), "latest": {pid: arrays for pid, arrays in self.latest.items()}}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.latest = {int(pid): [np.asarray(a) for a in arrays] for pid, arrays in state["latest"].items()}

    def instructions(self, server_round: int, pid: int) -> Instructions:
        return dataclasses.replace(super().instructions(server_round, pid), replace=pid not in self.intake.participated,
                                   keep_everything=True)

    def sends_weights_to(self, pid: int) -> bool:
        return pid not in self.intake.participated

    def aggregate_updates(self, server_round: int, updates) -> NDArrays:
        for pid, arrays, _, _ in updates:
            self.latest[pid] = arrays
        return self.initial_arrays  # what a client joining later starts from

    def models_to_evaluate(self, global_arrays: NDArrays) -> dict[str, NDArrays]:
        if not self.latest:
            return super().models_to_evaluate(global_arrays)
        return {str(pid): arrays for pid, arrays in sorted(self.latest.items())}
