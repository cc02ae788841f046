"""MoCo v1/v2 (docs/algorithms.md#the-other-local-methods): query encoder + momentum key encoder + queue of keys, symmetric loss,
with shuffling BatchNorm done on one device."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from protocol.checks import Bool, Float, Int
from tasks.common.models import Encoder, build_backbone, mlp_head
from tasks.ssl.methods.base import TEMPERATURE, SSLMethod, SyncPlan, momentum_update, one_encoder


def moco_infonce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo's InfoNCE: positive = the key of the same image, negatives = the queue (dim x K)."""
    q, k = F.normalize(q, dim=1), F.normalize(k.detach(), dim=1)
    pos = (q * k).sum(1, keepdim=True)
    neg = q @ queue.detach()
    logits = torch.cat([pos, neg], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))


def split_forward(encoder: nn.Module, x: torch.Tensor, splits: int) -> torch.Tensor:
    """encoder(x) with BatchNorm statistics computed per sub-batch: `splits` consecutive chunks,
    as `splits` devices each holding one chunk would compute them."""
    if splits <= 1:
        return encoder(x)
    return torch.cat([encoder(chunk) for chunk in torch.chunk(x, splits)])


def shuffled_forward(encoder: nn.Module, x: torch.Tensor, splits: int, generator: torch.Generator) -> torch.Tensor:
    """Shuffling BN (MoCo §3.3) on one device: shuffle the batch, encode it in `splits` sub-batches
    (each with its own BatchNorm statistics), restore the order."""
    if splits <= 1:
        return encoder(x)
    perm = torch.randperm(len(x), generator=generator).to(x.device)
    out = split_forward(encoder, x[perm], splits)
    return out[torch.argsort(perm)]


class MoCo(SSLMethod):
    """v1: linear head, temperature 0.1; v2: MLP head, temperature 0.2. The key encoder and the
    queue are local state, like BYOL's target: they never leave the client.

    Shuffling BN (`shuffle_bn_splits` >= 2): with one device, batch statistics let a query and its
    positive key, normalised with the same batch, recognise each other. As MoCo does across GPUs,
    queries are encoded in `shuffle_bn_splits` sub-batches of the batch's order and keys in as many
    sub-batches of a shuffled order, so the statistics a query and its key see come from different
    samples. BatchNorm's running statistics are updated once per sub-batch. 1 turns it off (the
    whole batch in one BatchNorm, as this project did before).
    """

    name = "moco"
    CONFIG = {"mlp": Bool(), "key_momentum": Float(min=0, max=1), "queue_size": Int(min=1), "temperature": TEMPERATURE,
              "shuffle_bn_splits": Int(min=1)}

    def __init__(self, arch="resnet18", width=1.0, proj_hidden=2048, proj_dim=128, mlp=False,
                 key_momentum=0.99, queue_size=4096, temperature=0.1, shuffle_bn_splits=2):
        super().__init__()
        backbone = build_backbone(arch, width)
        head = mlp_head(backbone.out_dim, proj_hidden, proj_dim) if mlp else nn.Linear(backbone.out_dim, proj_dim)
        self.online = Encoder(backbone, head)
        self.key = copy.deepcopy(self.online)
        for p in self.key.parameters():
            p.requires_grad_(False)
        self.queue = _Queue(proj_dim, queue_size)
        self.m, self.temperature, self.splits = key_momentum, temperature, shuffle_bn_splits

    def sync_plan(self, sync: str = "online") -> SyncPlan:
        one_encoder(sync)
        return SyncPlan(uploaded=("online",), local=("key", "queue"))

    def loss(self, views, generator):
        v1, v2 = views
        q1, q2 = split_forward(self.online, v1, self.splits), split_forward(self.online, v2, self.splits)
        with torch.no_grad():
            k1 = shuffled_forward(self.key, v1, self.splits, generator)
            k2 = shuffled_forward(self.key, v2, self.splits, generator)
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
