"""Representation evaluation on frozen backbones (SPEC §4): weighted kNN and linear probe."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tasks.augment import to_float


@torch.no_grad()
def extract_features(net: nn.Module, images: np.ndarray, device: torch.device, batch_size: int = 512) -> torch.Tensor:
    """Features of uint8 NHWC images, no augmentation, network in eval mode; returned on CPU."""
    net.to(device).eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = to_float(torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size])), device)
        out.append(net(x).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def knn_predict(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, num_classes: int,
                k: int = 200, temperature: float = 0.1, chunk: int = 1024) -> torch.Tensor:
    """Weighted kNN on L2-normalised features: votes exp(cos / T) from the k nearest (SPEC §4)."""
    bank = F.normalize(bank, dim=1)
    queries = F.normalize(queries, dim=1)
    k = min(k, len(bank))
    preds = []
    for i in range(0, len(queries), chunk):
        sim = queries[i : i + chunk] @ bank.T
        top_sim, top_idx = sim.topk(k, dim=1)
        weights = (top_sim / temperature).exp()
        votes = torch.zeros(len(sim), num_classes)
        votes.scatter_add_(1, bank_labels[top_idx], weights)
        preds.append(votes.argmax(1))
    return torch.cat(preds)


def knn_accuracy(bank, bank_labels, queries, query_labels, num_classes, k=200, temperature=0.1) -> float:
    pred = knn_predict(bank, torch.as_tensor(bank_labels), queries, num_classes, k, temperature)
    return float((pred == torch.as_tensor(query_labels)).float().mean())


def linear_probe(train_f: torch.Tensor, train_y, test_f: torch.Tensor, test_y, num_classes: int,
                 epochs: int = 200, lr: float = 3e-3, batch_size: int = 2048, seed: int = 0) -> float:
    """A linear layer on cached frozen features, Adam, `epochs` passes; test top-1 (SPEC §4).

    Features are standardised with the training set's per-dimension mean and std first. The
    classifier stays linear in the features (the affine map folds into the layer), but Adam's
    fixed step no longer depends on the feature scale, which otherwise differs by orders of
    magnitude between a random and a trained encoder. Deliberate addition to SPEC §4.
    """
    g = torch.Generator().manual_seed(seed)
    mean, std = train_f.mean(0, keepdim=True), train_f.std(0, keepdim=True).clamp_min(1e-6)
    train_f, test_f = (train_f - mean) / std, (test_f - mean) / std
    train_y, test_y = torch.as_tensor(train_y), torch.as_tensor(test_y)
    layer = nn.Linear(train_f.shape[1], num_classes)
    with torch.no_grad():
        bound = 1 / train_f.shape[1] ** 0.5
        layer.weight.uniform_(-bound, bound, generator=g)
        layer.bias.uniform_(-bound, bound, generator=g)
    opt = torch.optim.Adam(layer.parameters(), lr=lr)
    for _ in range(epochs):
        order = torch.randperm(len(train_f), generator=g)
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            loss = F.cross_entropy(layer(train_f[idx]), train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    with torch.no_grad():
        return float((layer(test_f).argmax(1) == test_y).float().mean())


@torch.no_grad()
def recalibrate_batchnorm(net: nn.Module, images: np.ndarray, device: torch.device, batch_size: int = 512) -> None:
    """Re-estimate BatchNorm running statistics on `images` (cumulative average, no training).

    Used for the global encoder under `strategy.bn=local`, whose BatchNorm statistics never
    left the clients, so the server has none of its own.
    """
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    net.to(device).train()
    for i in range(0, len(images), batch_size):
        net(to_float(torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size])), device))
    net.eval()
