"""Loss pieces several tasks share: SimSiam's negative cosine and Sinkhorn-Knopp's equal partition
(SwAV's codes, docs/algorithms.md#the-other-local-methods; SDR's balanced clusters, docs/algorithms.md#sdr)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """D(p, z) = -cos(p, sg(z)), averaged over the batch (SimSiam)."""
    return -F.cosine_similarity(p, z.detach(), dim=-1).mean()


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """Equal-partition codes: rows (samples) sum to 1, columns (prototypes) to B/K."""
    q = torch.exp(scores / epsilon).T  # K x B
    q /= q.sum()
    k, b = q.shape
    for _ in range(iterations):
        q /= q.sum(dim=1, keepdim=True)
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= b
    return (q * b).T  # B x K, each row sums to 1
