"""Custom Flower strategies (NumPy only; torch work is injected through ServerHooks)."""

from strategies.fedpav import FedPav
from strategies.sdr import FedSDR
from strategies.fedssl import ClientRules, FedEMA, FedSSL, FedU, Layout, RunStopped, ServerHooks, Standalone

STRATEGIES = {"fedu": FedU, "fedbyol": FedU, "fedema": FedEMA, "fedavg": FedSSL, "centralised": FedSSL,
              "standalone": Standalone, "fedpav": FedPav, "sdr": FedSDR}

__all__ = ["STRATEGIES", "ClientRules", "FedEMA", "FedPav", "FedSDR", "FedSSL", "FedU", "Layout", "RunStopped", "ServerHooks", "Standalone"]
