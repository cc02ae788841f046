"""Flower strategies on NumPy arrays, one per file over the shared base (strategies/base.py).

Each is built by Hydra from the `_target_` of its conf/strategy/*.yaml and validates its own
arguments. No torch here: torch work arrives as protocol.hooks.ServerHooks. Each class declares how
the server makes the global model of a round's accepted uploads (`aggregates_by`), so that a check
from outside (app/audit.py) asks the class, never the strategy's name: "weighted_mean" (FedAvg's
example-weighted mean: FederatedAveraging, FedU, FedEMA), "reweighted_mean" (other weights or a server-side step
after the mean: FedPav), "group_mean" (SDR's per-group averages), "none" (standalone: nothing combined).
"""

from strategies.base import FederatedAveraging
from strategies.fedema import FedEMA
from strategies.fedpav import FedPav
from strategies.fedu import FedU
from strategies.sdr import FedSDR
from strategies.standalone import Standalone

__all__ = ["FedEMA", "FedPav", "FedSDR", "FederatedAveraging", "FedU", "Standalone"]
