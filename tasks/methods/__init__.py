"""Registry of local self-supervised methods, selected with `ssl=<name>` (conf/ssl/<name>.yaml)."""

from __future__ import annotations

import inspect

from tasks.methods.base import SSLMethod, SyncPlan
from tasks.methods.byol import BYOL
from tasks.methods.contrastive import SimCLR, SimSiam, SwAV, MoCo

METHODS = {"byol": BYOL, "simsiam": SimSiam, "simclr": SimCLR, "moco": MoCo, "mocov2": MoCo, "swav": SwAV}
# ssl keys read by the training loop, not by the method's constructor
TRAINING_KEYS = {"name", "lr", "lr_schedule", "momentum", "weight_decay"}
# head sizes a preset may set for every method; a method without such a head ignores them
SHARED_HEAD_KEYS = {"proj_hidden", "proj_dim", "pred_hidden"}


def build_method(ssl_cfg, model_cfg) -> SSLMethod:
    """Build the method named by ssl_cfg.name with the backbone described by model_cfg."""
    name = ssl_cfg["name"]
    if name not in METHODS:
        raise ValueError(f"unknown ssl '{name}'; valid: {sorted(METHODS)}")
    cls = METHODS[name]
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    kwargs = {k: v for k, v in ssl_cfg.items() if k not in TRAINING_KEYS}
    unknown = sorted(k for k in kwargs if k not in accepted and k not in SHARED_HEAD_KEYS)
    if unknown:
        raise ValueError(f"ssl={name} does not take {unknown}; it takes {sorted(accepted - {'arch', 'width'})}")
    kwargs = {k: v for k, v in kwargs.items() if k in accepted}
    return cls(arch=model_cfg["arch"], width=float(model_cfg["width"]), **kwargs)


__all__ = ["METHODS", "SSLMethod", "SyncPlan", "build_method"]
