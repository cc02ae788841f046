"""Custom Flower strategies (NumPy only; torch work is injected through ServerHooks)."""

from strategies.fedpav import FedPav
from strategies.fedssl import FedEMA, FedSSL, FedU, Layout, RunStopped, ServerHooks, Standalone

STRATEGIES = {"fedu": FedU, "fedbyol": FedU, "fedema": FedEMA, "fedavg": FedSSL, "centralised": FedSSL,
              "standalone": Standalone, "fedpav": FedPav}

__all__ = ["STRATEGIES", "FedEMA", "FedPav", "FedSSL", "FedU", "Layout", "RunStopped", "ServerHooks", "Standalone"]
