"""Custom Flower strategies (NumPy only; torch work is injected through ServerHooks)."""

from strategies.fedssl import FedSSL, FedU, Layout, RunStopped, ServerHooks, Standalone

STRATEGIES = {"fedu": FedU, "fedbyol": FedU, "fedavg": FedSSL, "standalone": Standalone}

__all__ = ["STRATEGIES", "FedSSL", "FedU", "Layout", "RunStopped", "ServerHooks", "Standalone"]
