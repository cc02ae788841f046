"""Registry of local self-supervised methods, selected with `ssl=<name>` (conf/ssl/<name>.yaml)."""

from __future__ import annotations

import inspect

from protocol.checks import Choice, ConfigError, Float, Int, ListOf, conform
from tasks.ssl.methods.base import HEAD_CONFIG, SSLMethod, SyncPlan
from tasks.ssl.methods.byol import BYOL
from tasks.ssl.methods.deepcluster import DeepCluster
from tasks.ssl.methods.moco import MoCo
from tasks.ssl.methods.sela import SeLa
from tasks.ssl.methods.simclr import SimCLR
from tasks.ssl.methods.simsiam import SimSiam
from tasks.ssl.methods.swav import SwAV

METHODS = {"byol": BYOL, "simsiam": SimSiam, "simclr": SimCLR, "moco": MoCo, "mocov2": MoCo, "swav": SwAV,
           "deepcluster": DeepCluster, "sela": SeLa}
# ssl keys read by the training loop, not by the method's constructor
TRAINING_CONFIG = {"name": Choice(options=tuple(METHODS)), "lr": Float(above=0),
                   "lr_schedule": Choice(options=("cosine", "constant")), "momentum": Float(min=0),
                   "weight_decay": Float(min=0), "warmup_rounds": Int(min=0),
                   "jitter": ListOf(item=Float(min=0), length=4, description="a list of 4 numbers >= 0: colour-jitter "
                                    "brightness, contrast, saturation, hue"),
                   "predictor_lr_mult": Float(above=0)}


def method_config(name: str) -> dict:
    """Every ssl.* key method `name` reads, with its type (training keys, head sizes, its own)."""
    return {f"ssl.{k}": v for k, v in {**TRAINING_CONFIG, **HEAD_CONFIG, **METHODS[name].CONFIG}.items()}


def build_method(ssl_cfg, model_cfg) -> SSLMethod:
    """Build the method named by ssl_cfg.name with the backbone described by model_cfg.

    Every ssl.* key is checked against its type first (ConfigError naming the key); a key the
    method does not take is refused with the ones it does.
    """
    name = ssl_cfg["name"]
    if name not in METHODS:
        raise ConfigError(f"ssl={name!r} is not valid; choose one of {sorted(METHODS)}")
    cls = METHODS[name]
    conform(dict(ssl_cfg), method_config(name), "ssl.")
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    kwargs = {k: v for k, v in ssl_cfg.items() if k not in TRAINING_CONFIG}
    unknown = sorted(k for k in kwargs if k not in accepted and k not in HEAD_CONFIG)
    if unknown:
        raise ConfigError(f"ssl={name} does not take {unknown}; it takes {sorted(accepted - {'arch', 'width'})}")
    kwargs = {k: v for k, v in kwargs.items() if k in accepted}
    return cls(arch=model_cfg["arch"], width=float(model_cfg["width"]), **kwargs)


__all__ = ["METHODS", "SSLMethod", "SyncPlan", "build_method", "method_config"]
