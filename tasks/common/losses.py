"""Loss pieces several tasks share: SimSiam's negative cosine (SimSiam, SDR's SiamKD); the
equal-partition codes of SwAV and SDR are tasks/common/sinkhorn.py."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """D(p, z) = -cos(p, sg(z)), averaged over the batch (SimSiam)."""
    return -F.cosine_similarity(p, z.detach(), dim=-1).mean()
