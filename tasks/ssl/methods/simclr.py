"""SimCLR (docs/algorithms.md#the-other-local-methods): encoder with an MLP projector; NT-Xent over the 2N views of a batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tasks.common.models import mlp_encoder
from tasks.ssl.methods.base import TEMPERATURE, SSLMethod, SyncPlan, one_encoder


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's InfoNCE over the 2N views of a batch: each view's positive is its twin."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = len(z1)
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))  # a view is not its own negative
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, targets)


class SimCLR(SSLMethod):
    """Temperature 0.07 as in FedU's code (SimCLR's own default is 0.5; `ssl.temperature`)."""

    name = "simclr"
    CONFIG = {"temperature": TEMPERATURE}

    def __init__(self, arch="resnet18", width=1.0, proj_hidden=4096, proj_dim=2048, temperature=0.07):
        super().__init__()
        self.online = mlp_encoder(arch, width, proj_hidden, proj_dim)
        self.temperature = temperature

    def sync_plan(self, sync: str = "online") -> SyncPlan:
        one_encoder(sync)
        return SyncPlan(uploaded=("online",), local=())

    def loss(self, views, generator):
        v1, v2 = views
        return nt_xent(self.online(v1), self.online(v2), self.temperature)
