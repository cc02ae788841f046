"""The SDR model as federated (docs/algorithms.md#sdr): SDRnet + SimSiam heads + the clustering centroids, its
sizes from `sdr.*`, and its upload layout with the rows of every individual group (`regions`),
which the server aggregates over the clients that trained that group.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from protocol.layout import Layout
from tasks.common.arrays import get_arrays, module_layout
from tasks.common.losses import negative_cosine
from tasks.sdr.net import SDRNet, SlicedLinear, all_paths
from tasks.sdr.settings import Network, SDRSettings


class SDRSimSiam(nn.Module):
    """SDRNet + SimSiam projector (first layer sliced, so a path uses its own feature channels)
    + predictor + the clustering centroids (global weights, docs/algorithms.md#sdr)."""

    def __init__(self, net: SDRNet, proj_dim: int = 128, pred_hidden: int = 64, clusters: int | None = None):
        super().__init__()
        self.net = net
        self.proj_in = SlicedLinear(net.out_dim, proj_dim, bias=False)
        self.proj_rest = nn.Sequential(nn.BatchNorm1d(proj_dim), nn.ReLU(), nn.Linear(proj_dim, proj_dim, bias=False),
                                       nn.BatchNorm1d(proj_dim))
        self.predictor = nn.Sequential(nn.Linear(proj_dim, pred_hidden, bias=False), nn.BatchNorm1d(pred_hidden),
                                       nn.ReLU(), nn.Linear(pred_hidden, proj_dim))
        self.centroids = nn.Parameter(F.normalize(torch.randn(clusters or net.num_paths, net.out_dim), dim=1))

    def project(self, x: torch.Tensor, path: int | None) -> torch.Tensor:
        f, idx = self.net.forward_idx(x, path)
        return self.proj_rest(self.proj_in(f, idx))

    def simsiam(self, x1: torch.Tensor, x2: torch.Tensor, path: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Symmetric SimSiam loss of `path` and its predictions (p1, p2)."""
        z1, z2 = self.project(x1, path), self.project(x2, path)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        return 0.5 * negative_cosine(p1, z2) + 0.5 * negative_cosine(p2, z1), p1, p2



def _sizes(n: Network) -> dict:
    scale = lambda v: max(1, int(round(v * n.width)))  # noqa: E731
    return {"stem": scale(n.stem), "shared": tuple(scale(v) for v in n.shared),
            "group": tuple(scale(v) for v in n.group), "groups": n.groups, "strides": n.strides}


def build_sdr_model(n: Network) -> SDRSimSiam:
    """The SDRnet + SimSiam heads + centroids of the `sdr` section, identical on every node (seeded)."""
    torch.manual_seed(n.seed)
    net = SDRNet(**_sizes(n))
    return SDRSimSiam(net, n.proj_dim, n.pred_hidden)


def group_regions(model: SDRSimSiam, keys: list[str]) -> list[tuple[int, int, int, int, int]]:
    """(array index, first row, last row + 1, block, group) of every individual group's slice of
    every uploaded array: the output channels of that group in its block's convs and BatchNorms."""
    regions = []
    for i, key in enumerate(keys):
        parts = key.split(".")
        if parts[:2] != ["net", "blocks"] or parts[-1] == "num_batches_tracked":
            continue
        b = int(parts[2])
        block = model.net.blocks[b]
        for g in range(block.groups):
            start = block.shared + g * block.group
            regions.append((i, start, start + block.group, b, g))
    return regions



def sdr_layout(s: SDRSettings, options: dict) -> tuple[Layout, list[np.ndarray]]:
    """Every weight is uploaded; the layout names each individual group's rows and each path's groups."""
    model = build_sdr_model(s.network)
    keys = list(model.state_dict())
    layout = module_layout(model, keys, options=dict(options), regions=group_regions(model, keys),
                           path_groups=all_paths(model.net.groups, model.net.num_blocks))
    return layout, get_arrays(model, keys)
