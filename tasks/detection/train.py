"""A site's local detection training and the detector's predictions (issue 16, docs/algorithms.md#federated-object-detection-fedvision).

Local training is FedVision's: the detector's own losses (FCOS: focal classification, GIoU box
regression, centre-ness, summed as torchvision returns them) with SGD on the site's images for
`detection.local_epochs`, the learning rate following the cosine over rounds of every task here.
Augmentation: a horizontal flip with its boxes (the usual detection recipe). Batch order and flips
draw from the client's per-(seed, round, client) generator. Under bf16/fp16 the backbone's and the
head's forwards run under autocast with fp32 outputs, so the losses are computed in fp32.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torchvision.models.detection import FCOS

from tasks.common.precision import Compute
from tasks.common.training import sgd_step
from tasks.detection.data import DetectionSet
from tasks.detection.settings import Training


def prepare(net: FCOS, compute: Compute) -> FCOS:
    """The detector on the device; its backbone and head in the run's precision (fp32 outputs)."""
    net.to(compute.device)
    compute.prepare(net.backbone)
    compute.prepare(net.head)
    return net


def to_tensor(image: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image)).to(device).permute(2, 0, 1).float().div_(255.0)


def batch(data: DetectionSet, idx, device: torch.device, flips: torch.Tensor | None = None):
    """Images (float CHW in [0, 1]) and targets of rows `idx`, mirrored where `flips` says."""
    images, targets = [], []
    for j, i in enumerate(idx):
        x = to_tensor(data.images[i], device)
        boxes = torch.from_numpy(np.asarray(data.boxes[i], np.float32)).reshape(-1, 4)
        if flips is not None and bool(flips[j]):
            x = torch.flip(x, dims=[2])
            w = float(x.shape[2])
            boxes = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], dim=1)
        images.append(x)
        targets.append({"boxes": boxes.to(device), "labels": torch.from_numpy(np.asarray(data.labels[i])).to(device)})
    return images, targets


def train_local(net: FCOS, data: DetectionSet, t: Training, lr: float, compute: Compute, generator: torch.Generator,
                who: str) -> dict:
    """`detection.local_epochs` epochs of the detector's losses on the site's images; the last
    incomplete batch is dropped (a site smaller than a batch trains on one batch of all it has)."""
    prepare(net, compute).train()
    scaler = compute.scaler()
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=t.momentum, weight_decay=t.weight_decay)
    bs = min(t.batch_size, len(data))
    parts: dict[str, list[float]] = {}
    losses, seen, t0 = [], 0, time.perf_counter()
    for epoch in range(t.local_epochs):
        order = torch.randperm(len(data), generator=generator).numpy()
        for step, i in enumerate(range(0, len(order) - bs + 1, bs)):
            idx = np.sort(order[i:i + bs])
            flips = torch.rand(len(idx), generator=generator) < 0.5 if t.flip else None
            images, targets = batch(data, idx, compute.device, flips)
            with compute.step():
                terms = net(images, targets)
            loss = sum(terms.values())
            sgd_step(opt, loss, who, epoch, step, "lower detection.lr", scaler)
            losses.append(loss.item())
            for name, value in terms.items():
                parts.setdefault(name, []).append(float(value.detach()))
            seen += len(idx)
    seconds = time.perf_counter() - t0
    return {"loss": float(np.mean(losses)) if losses else float("nan"), "train_seconds": seconds,
            "images_per_second": seen / seconds if seconds > 0 else 0.0,
            **{name: float(np.mean(v)) for name, v in parts.items()}}


@torch.no_grad()
def predict(net: FCOS, data: DetectionSet, device: torch.device, batch_size: int) -> list[dict]:
    """The detector's boxes, scores and labels for every image (eval mode, fp32), on the CPU."""
    net.to(device).eval()
    out = []
    for i in range(0, len(data), batch_size):
        images, _ = batch(data, range(i, min(i + batch_size, len(data))), device)
        out.extend({k: v.detach().cpu() for k, v in p.items()} for p in net(images))
    return out
