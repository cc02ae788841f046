"""The local methods FedU is compared with (SPEC §1.2): SimSiam, SimCLR, MoCo v1/v2, SwAV.

Each is one small module: its heads, its loss, and in `sync_plan` the one declaration of
which parts are uploaded and which stay on the client (MoCo's key encoder and queue).
All use the shared two-view augmentation of SPEC §1.1 (as FedU's reference code does).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from tasks.methods.base import SSLMethod, SyncPlan, momentum_update
from tasks.models import Encoder, build_backbone, mlp_encoder, mlp_head


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """D(p, z) = -cos(p, sg(z)), averaged over the batch (SimSiam)."""
    return -F.cosine_similarity(p, z.detach(), dim=-1).mean()


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's InfoNCE over the 2N views of a batch: each view's positive is its twin."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = len(z1)
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))  # a view is not its own negative
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, targets)


def moco_infonce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo's InfoNCE: positive = the key of the same image, negatives = the queue (dim x K)."""
    q, k = F.normalize(q, dim=1), F.normalize(k.detach(), dim=1)
    pos = (q * k).sum(1, keepdim=True)
    neg = q @ queue.detach()
    logits = torch.cat([pos, neg], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """SwAV's equal-partition codes: rows (samples) sum to 1, columns (prototypes) to B/K."""
    q = torch.exp(scores / epsilon).T  # K x B
    q /= q.sum()
    k, b = q.shape
    for _ in range(iterations):
        q /= q.sum(dim=1, keepdim=True)
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= b
    return (q * b).T  # B x K, each row sums to 1


def _plan_online_only(uploaded=("online",)) -> SyncPlan:
    return SyncPlan(uploaded=uploaded, local=())


def _check_sync(sync: str) -> None:
    if sync != "online":
        raise ValueError(f"sync={sync!r} applies to BYOL only; this method has one encoder (use sync=online)")


class SimSiam(SSLMethod):
    """Encoder + predictor, no target network; L = 1/2 D(p1, z2) + 1/2 D(p2, z1) (SPEC §1.2)."""

    name = "simsiam"

    def __init__(self, arch="resnet18", width=1.0, proj_hidden=4096, proj_dim=2048, pred_hidden=4096):
        super().__init__()
        self.online = mlp_encoder(arch, width, proj_hidden, proj_dim)
        self.predictor = mlp_head(proj_dim, pred_hidden, proj_dim)

    def sync_plan(self, sync: str = "online") -> SyncPlan:
        _check_sync(sync)
        return SyncPlan(uploaded=("online", "predictor"), local=(), optional=("predictor",))

    def loss(self, v1, v2):
        z1, z2 = self.online(v1), self.online(v2)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        return 0.5 * negative_cosine(p1, z2) + 0.5 * negative_cosine(p2, z1)


class SimCLR(SSLMethod):
    """Encoder with an MLP projector; NT-Xent with a configurable temperature (SPEC §1.2)."""

    name = "simclr"

    def __init__(self, arch="resnet18", width=1.0, proj_hidden=4096, proj_dim=2048, temperature=0.07):
        super().__init__()
        self.online = mlp_encoder(arch, width, proj_hidden, proj_dim)
        self.temperature = temperature

    def sync_plan(self, sync: str = "online") -> SyncPlan:
        _check_sync(sync)
        return _plan_online_only()

    def loss(self, v1, v2):
        return nt_xent(self.online(v1), self.online(v2), self.temperature)


class MoCo(SSLMethod):
    """Query encoder + momentum key encoder (m) + queue of K keys, symmetric loss (SPEC §1.2).

    v1: linear head, temperature 0.1; v2: MLP head, temperature 0.2. The key encoder and the
    queue are local state, like BYOL's target: they never leave the client.
    """

    name = "moco"

    def __init__(self, arch="resnet18", width=1.0, proj_hidden=2048, proj_dim=128, mlp=False,
                 key_momentum=0.99, queue_size=4096, temperature=0.1):
        super().__init__()
        backbone = build_backbone(arch, width)
        head = mlp_head(backbone.out_dim, proj_hidden, proj_dim) if mlp else nn.Linear(backbone.out_dim, proj_dim)
        self.online = Encoder(backbone, head)
        self.key = copy.deepcopy(self.online)
        for p in self.key.parameters():
            p.requires_grad_(False)
        self.queue = _Queue(proj_dim, queue_size)
        self.m, self.temperature = key_momentum, temperature

    def sync_plan(self, sync: str = "online") -> SyncPlan:
        _check_sync(sync)
        return SyncPlan(uploaded=("online",), local=("key", "queue"))

    def loss(self, v1, v2):
        q1, q2 = self.online(v1), self.online(v2)
        with torch.no_grad():
            k1, k2 = self.key(v1), self.key(v2)
        loss = moco_infonce(q1, k2, self.queue.keys, self.temperature) + moco_infonce(q2, k1, self.queue.keys, self.temperature)
        self._pending = torch.cat([k1, k2])
        return loss

    def after_step(self, progress: float) -> None:
        momentum_update(self.key, self.online, self.m)
        self.queue.push(F.normalize(self._pending, dim=1))

    def init_local_parts(self, received: set[str]) -> None:
        self.key.load_state_dict(self.online.state_dict())


class _Queue(nn.Module):
    """MoCo's FIFO of normalised keys, kept as buffers so it travels in the state_dict."""

    def __init__(self, dim: int, size: int):
        super().__init__()
        self.register_buffer("keys", F.normalize(torch.randn(dim, size), dim=0))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def push(self, k: torch.Tensor) -> None:
        size = self.keys.shape[1]
        k = k[:size]
        idx = (int(self.ptr) + torch.arange(len(k), device=k.device)) % size
        self.keys[:, idx] = k.T
        self.ptr.fill_((int(self.ptr) + len(k)) % size)


class SwAV(SSLMethod):
    """Prototypes C, codes by Sinkhorn-Knopp, swapped prediction (SPEC §1.2).
    The prototypes are aggregated like the other weights."""

    name = "swav"

    def __init__(self, arch="resnet18", width=1.0, proj_hidden=2048, proj_dim=128, num_prototypes=3000,
                 temperature=0.1, epsilon=0.05, sinkhorn_iterations=3):
        super().__init__()
        self.online = mlp_encoder(arch, width, proj_hidden, proj_dim)
        self.prototypes = nn.Linear(proj_dim, num_prototypes, bias=False)
        self.temperature, self.epsilon, self.iterations = temperature, epsilon, sinkhorn_iterations

    def sync_plan(self, sync: str = "online") -> SyncPlan:
        _check_sync(sync)
        return _plan_online_only(("online", "prototypes"))

    def loss(self, v1, v2):
        with torch.no_grad():
            self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))
        s1 = self.prototypes(F.normalize(self.online(v1), dim=1))
        s2 = self.prototypes(F.normalize(self.online(v2), dim=1))
        q1, q2 = sinkhorn(s1.detach(), self.epsilon, self.iterations), sinkhorn(s2.detach(), self.epsilon, self.iterations)
        l12 = -(q2 * F.log_softmax(s1 / self.temperature, dim=1)).sum(1).mean()
        l21 = -(q1 * F.log_softmax(s2 / self.temperature, dim=1)).sum(1).mean()
        return 0.5 * (l12 + l21)
