"""FedPav's local training (docs/algorithms.md#fedpav): cross-entropy on the client's identities with flip-and-shift
augmentation, and the cosine-distance weight a client reports for weight reallocation."""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from tasks.common.augment import to_float
from tasks.common.precision import Compute
from tasks.common.training import sgd_step
from tasks.reid.model import ReIDNet
from tasks.reid.settings import Training


def flip_translate(x: torch.Tensor, g: torch.Generator, max_shift: float = 0.125) -> torch.Tensor:
    """Random horizontal flip and a random translation of up to `max_shift` of the size (zero padded),
    the usual re-ID training augmentation (flip + pad-and-crop), batched."""
    n = x.shape[0]
    flip = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    shift = (torch.rand(n, 2, generator=g) * 2 - 1) * 2 * max_shift  # grid units: 2 = whole image
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1], theta[:, :, 2] = flip, 1.0, shift
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _optimizer(net: ReIDNet, t: Training) -> torch.optim.Optimizer:
    shared = [p for n, p in net.named_parameters() if not n.startswith("classifier.")]
    return torch.optim.SGD(
        [{"params": shared, "lr": t.lr_backbone}, {"params": net.classifier.parameters(), "lr": t.lr_classifier}],
        momentum=t.momentum, weight_decay=t.weight_decay, nesterov=t.nesterov,
    )


def train_local(net: ReIDNet, images: np.ndarray, labels: np.ndarray, t: Training, epochs: int,
                compute: Compute, generator: torch.Generator, who: str) -> dict:
    """E epochs of cross-entropy on the client's identities (docs/algorithms.md#fedpav); optimizer rebuilt each round.
    Batch order, augmentation and dropout all draw from `generator`; the forward runs in
    `compute`'s precision, the cross-entropy in fp32."""
    device = compute.device
    compute.prepare(net).train()
    scaler = compute.scaler()
    net.use_generator(generator)
    opt = _optimizer(net, t)
    bs = t.batch_size
    y_all = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    losses, seen, t0 = [], 0, time.perf_counter()
    for epoch in range(epochs):
        order = torch.randperm(len(images), generator=generator).numpy()
        for step, i in enumerate(range(0, len(order) - bs + 1, bs)):
            idx = np.sort(order[i:i + bs])
            x = compute.images(flip_translate(to_float(torch.from_numpy(images[idx]), device), generator))
            loss = F.cross_entropy(net(x), y_all[idx].to(device))
            sgd_step(opt, loss, who, epoch, step, "lower reid.lr_backbone / reid.lr_classifier", scaler)
            losses.append(loss.item())
            seen += bs
    seconds = time.perf_counter() - t0
    return {"loss": float(np.mean(losses)) if losses else float("nan"), "train_seconds": seconds,
            "images_per_second": seen / seconds if seconds > 0 else 0.0}


@torch.no_grad()
def classifier_outputs(net: ReIDNet, images: np.ndarray, device: torch.device) -> torch.Tensor:
    net.to(device).eval()
    return net(to_float(torch.from_numpy(np.ascontiguousarray(images)), device)).cpu()


def cosine_distance_weight(before: torch.Tensor, after: torch.Tensor) -> float:
    """d_k = mean over the batch of 1 - cos(o_before(x), o_after(x)) (docs/algorithms.md#cosine-distance-weight-reallocation)."""
    return float((1 - F.cosine_similarity(before.float(), after.float(), dim=1)).mean())
