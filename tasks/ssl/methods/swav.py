"""SwAV (docs/algorithms.md#the-other-local-methods): prototypes, codes by Sinkhorn-Knopp, swapped prediction."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from protocol.checks import Float, Int
from tasks.common.sinkhorn import sinkhorn
from tasks.common.models import mlp_encoder
from tasks.ssl.methods.base import TEMPERATURE, SSLMethod, SyncPlan, one_encoder


class SwAV(SSLMethod):
    """The prototypes are aggregated like the other weights (they are uploaded)."""

    name = "swav"
    CONFIG = {"num_prototypes": Int(min=1), "temperature": TEMPERATURE, "epsilon": Float(above=0),
              "sinkhorn_iterations": Int(min=1)}

    def __init__(self, arch="resnet18", width=1.0, proj_hidden=2048, proj_dim=128, num_prototypes=3000,
                 temperature=0.1, epsilon=0.05, sinkhorn_iterations=3):
        super().__init__()
        self.online = mlp_encoder(arch, width, proj_hidden, proj_dim)
        self.prototypes = nn.Linear(proj_dim, num_prototypes, bias=False)
        self.temperature, self.epsilon, self.iterations = temperature, epsilon, sinkhorn_iterations

    def sync_plan(self, sync: str = "online") -> SyncPlan:
        one_encoder(sync)
        return SyncPlan(uploaded=("online", "prototypes"), local=())

    def loss(self, views, generator):
        v1, v2 = views
        with torch.no_grad():
            self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))
        s1 = self.prototypes(F.normalize(self.online(v1), dim=1))
        s2 = self.prototypes(F.normalize(self.online(v2), dim=1))
        q1, q2 = sinkhorn(s1.detach(), self.epsilon, self.iterations), sinkhorn(s2.detach(), self.epsilon, self.iterations)
        l12 = -(q2 * F.log_softmax(s1 / self.temperature, dim=1)).sum(1).mean()
        l21 = -(q1 * F.log_softmax(s2 / self.temperature, dim=1)).sum(1).mean()
        return 0.5 * (l12 + l21)
