"""The SSL task's model on the wire: which state_dict entries travel, derived from a method's
SyncPlan (convention 4, docs/architecture.md#conventions-and-where-they-come-from), and what a client keeps between rounds.

Client and server both call `build_federated_method` with the same settings and layout options
(sync, bn: the strategy's settings, sent to every client in its instructions), so the order of
the arrays exchanged through Flower is never guessed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from protocol.checks import Choice
from protocol.layout import Layout
from tasks.common.arrays import batchnorm_keys, get_arrays, module_layout, part_of
from tasks.common.models import is_divergence_weight
from tasks.ssl.methods import SSLMethod, SyncPlan, build_method

if TYPE_CHECKING:  # tasks/ssl/settings.py reads this module's LAYOUT_OPTIONS
    from tasks.ssl.settings import SSLSettings

# the settings that shape the upload (conf/strategy/*.yaml: strategy.sync, strategy.bn)
LAYOUT_OPTIONS = {"sync": Choice(options=("online", "target", "both")), "bn": Choice(options=("global", "local"))}
DEFAULT_OPTIONS = {"sync": "online", "bn": "global"}


def upload_keys(method: SSLMethod, plan: SyncPlan, bn: str = "global") -> list[str]:
    """Keys of the uploaded parts, in state_dict order; BatchNorm entries stay local when bn=local."""
    if bn not in ("global", "local"):
        raise ValueError(f"unknown bn mode '{bn}'; valid: ['global', 'local']")
    local_bn = batchnorm_keys(method) if bn == "local" else set()
    return [k for k in method.state_dict() if part_of(k) in plan.uploaded and k not in local_bn]


def kept_keys(method: SSLMethod, plan: SyncPlan, uploaded: list[str], keep_everything: bool, keep_optional: bool) -> list[str]:
    """Keys a client must remember between rounds: everything not replaced by the server.

    keep_everything: the client never takes the server's weights as they are (standalone, FedEMA).
    keep_optional: the client may decline an optional part (DAPU/local predictor), so it
    keeps its own copy of it.
    """
    sent = set(uploaded)
    keep = []
    for k in method.state_dict():
        if keep_everything or k not in sent or (keep_optional and part_of(k) in plan.optional):
            keep.append(k)
    return keep


def divergence_layers(keys: list[str], plan: SyncPlan) -> list[int]:
    """Positions of the evaluated encoder's backbone conv weights in the upload (docs/algorithms.md#the-divergence-aware-predictor-update-dapu)."""
    return [i for i, k in enumerate(keys) if is_divergence_weight(k, plan.eval_encoder + ".")]


def with_defaults(options: dict | None) -> dict:
    """The layout options with the defaults for those not given (sync=online, bn=global)."""
    return {**DEFAULT_OPTIONS, **(options or {})}


def build_federated_method(s: SSLSettings, options: dict | None = None) -> tuple[SSLMethod, SyncPlan, list[str]]:
    """The method, its SyncPlan and upload keys, built identically on server and clients."""
    options = with_defaults(options)
    torch.manual_seed(s.seed)  # the same initial weights everywhere
    method = build_method(s.method, s.model)
    plan = method.sync_plan(options["sync"])
    keys = upload_keys(method, plan, options["bn"])
    return method, plan, keys


def ssl_layout(s: SSLSettings, options: dict) -> tuple[Layout, list[np.ndarray]]:
    """The upload layout (with FedU's divergence layers) and the initial global arrays."""
    method, plan, keys = build_federated_method(s, options)
    merged = [(keys.index(c), keys.index(n)) for c, n in method.sum_merge if c in keys and n in keys]
    heads = [(keys.index(c), tuple(keys.index(h) for h in hs)) for c, hs in method.cluster_heads
             if c in keys and all(h in keys for h in hs)]
    layout = module_layout(method, keys, options=with_defaults(options),
                           divergence_layers=divergence_layers(keys, plan), client_metrics=list(method.CLIENT_METRICS),
                           sum_merge=merged, global_clusters=method.global_clusters, cluster_heads=heads)
    return layout, get_arrays(method, keys)
