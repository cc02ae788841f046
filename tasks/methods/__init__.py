"""Registry of local self-supervised methods, selected with `ssl=<name>`."""

from __future__ import annotations

from tasks.methods.base import SSLMethod, SyncPlan
from tasks.methods.byol import BYOL

METHODS = {"byol": BYOL}


def build_method(ssl_cfg, model_cfg) -> SSLMethod:
    """Build the method named by ssl_cfg.name with the backbone described by model_cfg."""
    name = ssl_cfg["name"]
    if name not in METHODS:
        raise ValueError(f"unknown ssl '{name}'; valid: {sorted(METHODS)}")
    if name == "byol":
        return BYOL(arch=model_cfg["arch"], width=float(model_cfg["width"]),
                    proj_hidden=int(ssl_cfg["proj_hidden"]), proj_dim=int(ssl_cfg["proj_dim"]),
                    pred_hidden=int(ssl_cfg["pred_hidden"]), tau=float(ssl_cfg["tau"]),
                    tau_schedule=str(ssl_cfg["tau_schedule"]))
    raise AssertionError(name)


__all__ = ["METHODS", "SSLMethod", "SyncPlan", "build_method"]
