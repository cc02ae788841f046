"""Custom Flower strategies (NumPy only; torch work is injected through ServerHooks)."""

from strategies.fedssl import FedEMA, FedSSL, FedU, Layout, RunStopped, ServerHooks, Standalone

STRATEGIES = {"fedu": FedU, "fedbyol": FedU, "fedema": FedEMA, "fedavg": FedSSL, "centralised": FedSSL,
              "standalone": Standalone}

__all__ = ["STRATEGIES", "FedEMA", "FedSSL", "FedU", "Layout", "RunStopped", "ServerHooks", "Standalone"]
