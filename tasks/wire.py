"""Which state_dict entries cross the wire, derived from a method's SyncPlan (DESIGN.md conv. 4).

Client and server both call `upload_keys` on a model built from the same config, so the
order of the arrays exchanged through Flower is never guessed; `layout_fingerprint` lets the
client check that it agrees with the server before it trusts the arrays it receives.
"""

from __future__ import annotations

import numpy as np
import torch

from strategies.weights import keys_fingerprint
from tasks.methods import build_method
from tasks.methods.base import SSLMethod, SyncPlan, batchnorm_keys, part_of
from tasks.models import is_divergence_weight


def upload_keys(method: SSLMethod, plan: SyncPlan, bn: str = "global") -> list[str]:
    """Keys of the uploaded parts, in state_dict order; BatchNorm entries stay local when bn=local."""
    if bn not in ("global", "local"):
        raise ValueError(f"unknown bn mode '{bn}'; valid: ['global', 'local']")
    local_bn = batchnorm_keys(method) if bn == "local" else set()
    return [k for k in method.state_dict() if part_of(k) in plan.uploaded and k not in local_bn]


def kept_keys(method: SSLMethod, plan: SyncPlan, uploaded: list[str], keep_everything: bool, keep_optional: bool) -> list[str]:
    """Keys a client must remember between rounds: everything not replaced by the server.

    keep_everything: the client never takes the server's weights (standalone).
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
    """Positions of the evaluated encoder's backbone conv weights in the upload (SPEC §2.3)."""
    return [i for i, k in enumerate(keys) if is_divergence_weight(k, plan.eval_encoder + ".")]


def get_arrays(method: SSLMethod, keys: list[str]) -> list[np.ndarray]:
    state = method.state_dict()
    return [state[k].detach().cpu().numpy().copy() for k in keys]


def set_arrays(method: SSLMethod, keys: list[str], arrays: list[np.ndarray], skip_parts: tuple[str, ...] = ()) -> set[str]:
    """Load arrays into the named entries; returns the parts that were loaded."""
    if len(keys) != len(arrays):
        raise ValueError(f"got {len(arrays)} arrays for {len(keys)} keys")
    state = {k: torch.from_numpy(np.asarray(a)) for k, a in zip(keys, arrays) if part_of(k) not in skip_parts}
    method.load_state_dict(state, strict=False)
    return {part_of(k) for k in state}


def layout_fingerprint(method: SSLMethod, keys: list[str]) -> str:
    state = method.state_dict()
    return keys_fingerprint(keys, [tuple(state[k].shape) for k in keys])


def build_federated_method(cfg: dict) -> tuple[SSLMethod, SyncPlan, list[str]]:
    """The method, its SyncPlan and upload keys, built identically on server and clients."""
    torch.manual_seed(int(cfg["seed"]))  # the same initial weights everywhere
    method = build_method(cfg["ssl"], cfg["model"])
    plan = method.sync_plan(cfg["strategy"].get("sync", "online"))
    keys = upload_keys(method, plan, cfg["strategy"].get("bn", "global"))
    return method, plan, keys
