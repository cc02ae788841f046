"""SDR training (docs/algorithms.md#sdr): balanced clusters from learnable centroids, progressive stages, and one
client's local epochs of SimSiam on the full SDRnet plus SimSiam + SiamKD on the paths.

Training (one local step): SimSiam on the full SDRnet with a batch of all data, plus SimSiam on
one path with a batch of its cluster's data and SiamKD: the path's prediction must match the
stop-gradient projection of the full SDRnet (negative cosine). Clusters come from learnable
centroids with Sinkhorn-Knopp balanced assignments (`cluster_scores`, `centroid_loss`); cluster i
trains path i. Progressive stages (`path_in_stage`): stage 0 trains the full network only;
stage s lets the last s blocks vary (the earlier ones use group 0), until stage B.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from tasks.common.augment import byol_view, to_float
from tasks.common.losses import negative_cosine
from tasks.common.sinkhorn import sinkhorn
from tasks.common.precision import Compute
from tasks.common.training import sgd_step
from tasks.sdr.model import SDRSimSiam


def path_in_stage(path: int, stage: int, groups: int, blocks: int) -> int | None:
    """The path that trains the data of cluster `path` in progressive stage `stage` (docs/algorithms.md#progressive-training-and-siamkd).

    Stage 0: none (full network only). Stage s: the last s blocks keep the cluster's groups,
    the earlier ones use group 0; stage B: every path is its own.
    """
    if stage <= 0:
        return None
    keep = min(stage, blocks)
    return path % (groups ** keep)  # earlier digits -> 0


def stage_of_round(server_round: int, num_rounds: int, blocks: int) -> int:
    """Rounds split evenly into B + 1 stages: 0 (full network only), 1, ..., B."""
    return min(blocks, (server_round - 1) * (blocks + 1) // max(1, num_rounds))


def cluster_scores(features: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """S = cos(F, C): L2-normalised features against L2-normalised centroids (N x K)."""
    return F.normalize(features, dim=1) @ F.normalize(centroids, dim=1).T


def centroid_loss(features: torch.Tensor, centroids: torch.Tensor, temperature: float = 0.1,
                  epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """Cross-entropy between the Sinkhorn-Knopp equal-size assignments U of S (no gradient)
    and softmax(S / T); minimised over the centroids (docs/algorithms.md#data-clusters)."""
    s = cluster_scores(features.detach(), centroids)
    with torch.no_grad():
        u = sinkhorn(s, epsilon, iterations)  # rows sum to 1, every cluster gets N/K in total
    return -(u * F.log_softmax(s / temperature, dim=1)).sum(dim=1).mean()


def siam_kd(prediction: torch.Tensor, full_projection: torch.Tensor) -> torch.Tensor:
    """SiamKD: the sub-network's prediction against the full SDRnet's stop-gradient projection."""
    return negative_cosine(prediction, full_projection)


def assign_clusters(features: torch.Tensor, centroids: torch.Tensor) -> np.ndarray:
    """Cluster (= path) of every sample: argmax of S."""
    with torch.no_grad():
        return cluster_scores(features, centroids.detach().cpu()).argmax(1).numpy()


def update_centroids(model: SDRSimSiam, features: torch.Tensor, steps: int, lr: float, temperature: float,
                     epsilon: float) -> float:
    """`steps` full-batch SGD steps on the centroids with the client's features; returns the last loss."""
    opt = torch.optim.SGD([model.centroids], lr=lr, momentum=0.9)
    feats = features.to(model.centroids.device)
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        loss = centroid_loss(feats, model.centroids, temperature, epsilon)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return loss.item()


def train_sdr_round(model: SDRSimSiam, images: np.ndarray, clusters: np.ndarray, stage: int, *, epochs: int,
                    batch_size: int, lr: float, momentum: float, weight_decay: float, kd_weight: float,
                    compute: Compute, generator: torch.Generator, who: str) -> dict:
    """E epochs: every step SimSiam on the full SDRnet (batch of all data) and, from stage 1 on,
    SimSiam + SiamKD on one path of the stage (batch of the data routed to it). Returns the loss,
    the samples routed to each path it trained (stage mapping) and the path batches trained."""
    net = model.net
    # path_in_stage for every sample at once: the cluster's last `stage` digits, -1 in stage 0
    routed = np.asarray(clusters) % (net.groups ** min(stage, net.num_blocks)) if stage > 0 else np.full(len(clusters), -1)
    by_path = {int(p): np.flatnonzero(routed == p) for p in np.unique(routed) if p >= 0}
    trainable = {p: idx for p, idx in by_path.items() if len(idx) >= 2}  # BatchNorm needs two samples
    params = [p for n, p in model.named_parameters() if n != "centroids"]
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    device = compute.device
    compute.prepare(model).train()
    scaler = compute.scaler()
    data = torch.from_numpy(np.ascontiguousarray(images))
    steps = len(images) // batch_size
    if steps == 0:
        raise ValueError(f"{who}: {len(images)} examples is fewer than batch_size={batch_size}")
    losses, path_steps, t0 = [], {}, time.perf_counter()
    paths = sorted(trainable)
    for epoch in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for step in range(steps):
            x = to_float(data[order[step * batch_size:(step + 1) * batch_size]], device)
            with compute.autocast():  # SDRnet's routed forward is not a forward(); its heads cast back to fp32
                loss, _, _ = model.simsiam(byol_view(x, generator), byol_view(x, generator), None)
                if paths:
                    p = paths[int(torch.randint(len(paths), (1,), generator=generator))]
                    idx = trainable[p]
                    pick = idx[torch.randperm(len(idx), generator=generator)[:batch_size].numpy()]
                    y = to_float(data[np.sort(pick)], device)
                    y1, y2 = byol_view(y, generator), byol_view(y, generator)
                    lp, p1, p2 = model.simsiam(y1, y2, p)
                    with torch.no_grad():
                        z1, z2 = model.project(y1, None), model.project(y2, None)
                    loss = loss + lp + kd_weight * 0.5 * (siam_kd(p1, z1) + siam_kd(p2, z2))
                    path_steps[p] = path_steps.get(p, 0) + 1
            sgd_step(opt, loss, who, epoch, step, "lower sdr.lr", scaler)
            losses.append(loss.detach())
    seconds = time.perf_counter() - t0
    return {"loss": float(torch.stack(losses).mean()), "train_seconds": seconds,
            "images_per_second": epochs * steps * batch_size / max(seconds, 1e-9),
            # samples of the paths this client actually trained (a group's aggregation weight)
            "routed": {p: len(by_path[p]) for p in sorted(path_steps)}, "path_steps": path_steps}

