"""BYOL, FedU's local method (docs/algorithms.md#byol)."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F

from protocol.checks import Choice, Float
from tasks.common.models import mlp_encoder, mlp_head
from tasks.ssl.methods.base import SSLMethod, SyncPlan, momentum_update


def regression_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """l(p, z) = 2 - 2 cos(p, z), averaged over the batch (docs/algorithms.md#byol)."""
    return (2 - 2 * F.cosine_similarity(p, z.detach(), dim=-1)).mean()


def tau_at(tau0: float, progress: float, schedule: str) -> float:
    """Target EMA rate: constant (default) or BYOL's cosine ramp towards 1."""
    if schedule == "cosine":
        return 1 - (1 - tau0) * (math.cos(math.pi * progress) + 1) / 2
    return tau0


class BYOL(SSLMethod):
    """Online encoder (backbone + projector) -> predictor; target = EMA copy of the encoder."""

    name = "byol"
    CONFIG = {"tau": Float(min=0, below=1), "tau_schedule": Choice(options=("constant", "cosine"))}

    def __init__(self, arch="resnet18", width=1.0, proj_hidden=4096, proj_dim=2048, pred_hidden=4096,
                 tau=0.99, tau_schedule="constant"):
        super().__init__()
        self.online = mlp_encoder(arch, width, proj_hidden, proj_dim)
        self.predictor = mlp_head(proj_dim, pred_hidden, proj_dim)
        self.target = copy.deepcopy(self.online)
        for p in self.target.parameters():
            p.requires_grad_(False)
        self.tau0, self.tau_schedule = tau, tau_schedule

    def sync_plan(self, sync: str = "online") -> SyncPlan:
        """FedU uploads the online encoder and the predictor, never the target (docs/algorithms.md#upload-and-aggregation).
        The sync ablation uploads the target instead, or both encoders."""
        encoders = {"online": ("online",), "target": ("target",), "both": ("online", "target")}
        if sync not in encoders:
            raise ValueError(f"unknown sync '{sync}'; valid: {sorted(encoders)}")
        uploaded = encoders[sync] + ("predictor",)
        local = tuple(p for p in ("online", "target") if p not in uploaded)
        return SyncPlan(uploaded=uploaded, local=local, optional=("predictor",),
                        eval_encoder="target" if sync == "target" else "online")

    def loss(self, views, generator):
        v1, v2 = views
        p1, p2 = self.predictor(self.online(v1)), self.predictor(self.online(v2))
        with torch.no_grad():
            z1, z2 = self.target(v1), self.target(v2)
        return regression_loss(p1, z2) + regression_loss(p2, z1)

    def after_step(self, progress: float) -> None:
        momentum_update(self.target, self.online, tau_at(self.tau0, progress, self.tau_schedule))

    def init_local_parts(self, received: set[str]) -> None:
        """First participation: the local encoder starts as a copy of the received one
        (docs/algorithms.md#the-target-network-stays-on-the-client; not aliased to it as the reference code does)."""
        if "online" in received and "target" not in received:
            self.target.load_state_dict(self.online.state_dict())
        elif "target" in received and "online" not in received:
            self.online.load_state_dict(self.target.state_dict())
