"""SimSiam (docs/algorithms.md#the-other-local-methods): encoder + predictor, no target network."""

from __future__ import annotations

from tasks.common.losses import negative_cosine
from tasks.common.models import mlp_encoder, mlp_head
from tasks.ssl.methods.base import SSLMethod, SyncPlan, one_encoder


class SimSiam(SSLMethod):
    """L = 1/2 D(p1, sg z2) + 1/2 D(p2, sg z1), D = -cos (docs/algorithms.md#the-other-local-methods)."""

    name = "simsiam"

    def __init__(self, arch="resnet18", width=1.0, proj_hidden=4096, proj_dim=2048, pred_hidden=4096):
        super().__init__()
        self.online = mlp_encoder(arch, width, proj_hidden, proj_dim)
        self.predictor = mlp_head(proj_dim, pred_hidden, proj_dim)

    def sync_plan(self, sync: str = "online") -> SyncPlan:
        one_encoder(sync)
        return SyncPlan(uploaded=("online", "predictor"), local=(), optional=("predictor",))

    def loss(self, views, generator):
        v1, v2 = views
        z1, z2 = self.online(v1), self.online(v2)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        return 0.5 * negative_cosine(p1, z2) + 0.5 * negative_cosine(p2, z1)
