"""Flower strategies on NumPy arrays, one per file over the shared base (strategies/base.py).

Each is built by Hydra from the `_target_` of its conf/strategy/*.yaml and validates its own
arguments. No torch here: torch work arrives as protocol.hooks.ServerHooks.
"""

from strategies.base import FedSSL
from strategies.fedema import FedEMA
from strategies.fedpav import FedPav
from strategies.fedu import FedU
from strategies.sdr import FedSDR
from strategies.standalone import Standalone

__all__ = ["FedEMA", "FedPav", "FedSDR", "FedSSL", "FedU", "Standalone"]
