"""FedPav's re-ID model and its torch work (SPEC §5): local training, the cosine-distance weight,
embeddings for retrieval, and server-side knowledge distillation.

Model = backbone (CIFAR ResNet of `model.arch`/`model.width`) + embedding block (Linear -> 512,
BatchNorm, Dropout 0.5) + the client's own classifier (512 -> its number of identities).
Only `backbone.*` and `embedding.*` are uploaded (`SHARED_PARTS`); `classifier.*` never leaves
the client.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from tasks.augment import to_float
from tasks.models import build_backbone
from tasks.train import sgd_step

SHARED_PARTS = ("backbone", "embedding")


class ReIDNet(nn.Module):
    def __init__(self, arch: str, width: float, embedding_dim: int = 512, dropout: float = 0.5):
        super().__init__()
        self.backbone = build_backbone(arch, width)
        self.embedding = nn.Sequential(nn.Linear(self.backbone.out_dim, embedding_dim),
                                       nn.BatchNorm1d(embedding_dim), nn.Dropout(dropout))
        self.classifier: nn.Linear | None = None  # the client's own, added by build_reid_net

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding(self.backbone(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.classifier is None:
            raise RuntimeError("this ReIDNet has no classifier (server side); use embed()")
        return self.classifier(self.embed(x))


def build_reid_net(cfg: dict, num_ids: int | None = None, partition_id: int = 0) -> ReIDNet:
    """The shared part is identical on every node (seeded by `seed`); client `partition_id`'s
    classifier (when num_ids is given) is seeded by (seed, partition_id)."""
    torch.manual_seed(int(cfg["seed"]))
    r = cfg["reid"]
    net = ReIDNet(cfg["model"]["arch"], float(cfg["model"]["width"]), int(r["embedding_dim"]), float(r["dropout"]))
    if num_ids:
        torch.manual_seed(int(np.random.SeedSequence([int(cfg["seed"]), 17, partition_id]).generate_state(1)[0]))
        net.classifier = nn.Linear(int(r["embedding_dim"]), int(num_ids))
    return net


def shared_keys(net: ReIDNet) -> list[str]:
    return [k for k in net.state_dict() if k.split(".", 1)[0] in SHARED_PARTS]


def classifier_keys(net: ReIDNet) -> list[str]:
    return [k for k in net.state_dict() if k.startswith("classifier.")]


# ---------------------------------------------------------------- augmentation
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


# ---------------------------------------------------------------- local training
def _optimizer(net: ReIDNet, r: dict) -> torch.optim.Optimizer:
    shared = [p for n, p in net.named_parameters() if not n.startswith("classifier.")]
    return torch.optim.SGD(
        [{"params": shared, "lr": float(r["lr_backbone"])},
         {"params": net.classifier.parameters(), "lr": float(r["lr_classifier"])}],
        momentum=float(r["momentum"]), weight_decay=float(r["weight_decay"]), nesterov=bool(r["nesterov"]),
    )


def train_local(net: ReIDNet, images: np.ndarray, labels: np.ndarray, r: dict, epochs: int,
                device: torch.device, generator: torch.Generator, who: str) -> dict:
    """E epochs of cross-entropy on the client's identities (SPEC §5); optimizer rebuilt each round."""
    net.to(device).train()
    opt = _optimizer(net, r)
    bs = int(r["batch_size"])
    y_all = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    losses, seen, t0 = [], 0, time.perf_counter()
    for epoch in range(epochs):
        order = torch.randperm(len(images), generator=generator).numpy()
        for step, i in enumerate(range(0, len(order) - bs + 1, bs)):
            idx = np.sort(order[i:i + bs])
            x = flip_translate(to_float(torch.from_numpy(images[idx]), device), generator)
            loss = F.cross_entropy(net(x), y_all[idx].to(device))
            sgd_step(opt, loss, who, epoch, step, "lower reid.lr_backbone / reid.lr_classifier")
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
    """d_k = mean over the batch of 1 - cos(o_before(x), o_after(x)) (SPEC §5, weight reallocation)."""
    return float((1 - F.cosine_similarity(before.float(), after.float(), dim=1)).mean())


# ---------------------------------------------------------------- embeddings and distillation
@torch.no_grad()
def embeddings(net: ReIDNet, images: np.ndarray, device: torch.device, batch_size: int = 256,
               flip: bool = True) -> torch.Tensor:
    """Retrieval features: embedding of the image plus that of its mirror image, L2-normalised."""
    net.to(device).eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = to_float(torch.from_numpy(np.ascontiguousarray(images[i:i + batch_size])), device)
        f = net.embed(x)
        if flip:
            f = f + net.embed(torch.flip(x, dims=[3]))
        out.append(F.normalize(f.float(), dim=1).cpu())
    return torch.cat(out) if out else torch.empty(0)


def distillation_target(teacher_embeddings: list[torch.Tensor]) -> torch.Tensor:
    """t(x) = mean over teachers of their L2-normalised embeddings (SPEC §5)."""
    return torch.stack([F.normalize(t.float(), dim=1) for t in teacher_embeddings]).mean(0)


def distill(student: ReIDNet, teachers: list[ReIDNet], public: np.ndarray, r: dict, device: torch.device,
            generator: torch.Generator) -> float:
    """One pass over the public set: MSE between the student's normalised embedding and t(x).

    Teachers are the clients' latest uploaded models (no classifier), in eval mode; the student
    (the aggregate) trains with SGD at reid.kd_lr. Returns the mean distillation loss.
    """
    bs = int(r["kd_batch_size"])
    target = distillation_target([embeddings(t, public, device, bs, flip=False) for t in teachers])
    student.to(device).train()
    opt = torch.optim.SGD(student.parameters(), lr=float(r["kd_lr"]), momentum=float(r["momentum"]))
    order = torch.randperm(len(public), generator=generator).numpy()
    losses = []
    for i in range(0, len(order), bs):
        idx = np.sort(order[i:i + bs])
        if len(idx) < 2:  # BatchNorm needs two samples
            continue
        x = to_float(torch.from_numpy(public[idx]), device)
        loss = F.mse_loss(F.normalize(student.embed(x), dim=1), target[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return float(np.mean(losses)) if losses else float("nan")
