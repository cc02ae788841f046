"""SDR: scalable dynamic routing (AAAI 2022), SPEC §6 — the network, its paths and its training.

An SDR block is a residual block whose output channels are split into `shared` channels and
G individual groups of `group` channels. A path chooses one individual group per block; its
sub-network is the stem, every shared channel and the chosen groups. The forward of a path
computes *only* its channels (weights, BatchNorm parameters and statistics are sliced), so a
path's output depends on exactly its groups and only they receive gradients; `path=None` runs
the full SDRnet (all groups). With B blocks there are G^B paths, numbered in base G with the
last block as the lowest digit.

Training (one local step, `sdr_step`): SimSiam on the full SDRnet with a batch of all data, plus
SimSiam on one path with a batch of its cluster's data and SiamKD: the path's prediction must
match the stop-gradient projection of the full SDRnet (negative cosine). Clusters come from
learnable centroids with Sinkhorn-Knopp balanced assignments (`cluster_scores`, `centroid_loss`);
cluster i trains path i. Progressive stages (`path_in_stage`): stage 0 trains the full network
only; stage s lets the last s blocks vary (the earlier ones use group 0), until stage B.
"""

from __future__ import annotations

import itertools
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from tasks.augment import byol_view, to_float
from tasks.methods.contrastive import negative_cosine, sinkhorn
from tasks.train import sgd_step


# ---------------------------------------------------------------- sliced layers
class SlicedConv(nn.Conv2d):
    def forward(self, x: torch.Tensor, out_idx: torch.Tensor, in_idx: torch.Tensor) -> torch.Tensor:  # noqa: D102
        w = self.weight.index_select(0, out_idx).index_select(1, in_idx)
        return F.conv2d(x, w, None, self.stride, self.padding)


class SlicedBatchNorm(nn.BatchNorm2d):
    def forward(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:  # noqa: D102
        mean, var = self.running_mean[idx].clone(), self.running_var[idx].clone()
        y = F.batch_norm(x, mean, var, self.weight[idx], self.bias[idx], self.training, self.momentum, self.eps)
        if self.training:  # the statistics of the channels this path used, nothing else
            with torch.no_grad():
                self.running_mean[idx] = mean
                self.running_var[idx] = var
                self.num_batches_tracked += 1
        return y


class SDRBlock(nn.Module):
    """Residual block (two 3x3 convs) with shared + G individual output channel groups."""

    def __init__(self, in_channels: int, shared: int, group: int, groups: int, stride: int):
        super().__init__()
        self.shared, self.group, self.groups = shared, group, groups
        out = shared + groups * group
        self.conv1 = SlicedConv(in_channels, out, 3, stride, 1, bias=False)
        self.bn1 = SlicedBatchNorm(out)
        self.conv2 = SlicedConv(out, out, 3, 1, 1, bias=False)
        self.bn2 = SlicedBatchNorm(out)
        self.proj = SlicedConv(in_channels, out, 1, stride, 0, bias=False)
        self.bn_proj = SlicedBatchNorm(out)

    def channels(self, g: int | None) -> torch.Tensor:
        """Indices of the shared channels plus group g (all channels when g is None)."""
        if g is None:
            return torch.arange(self.shared + self.groups * self.group)
        start = self.shared + g * self.group
        return torch.cat([torch.arange(self.shared), torch.arange(start, start + self.group)])

    def forward(self, x: torch.Tensor, in_idx: torch.Tensor, g: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        out_idx = self.channels(g).to(x.device)
        y = F.relu(self.bn1(self.conv1(x, out_idx, in_idx), out_idx))
        y = self.bn2(self.conv2(y, out_idx, out_idx), out_idx)
        y = F.relu(y + self.bn_proj(self.proj(x, out_idx, in_idx), out_idx))
        return y, out_idx


class SlicedLinear(nn.Linear):
    def forward(self, x: torch.Tensor, in_idx: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return F.linear(x, self.weight.index_select(1, in_idx), self.bias)


class SDRNet(nn.Module):
    """Stem + B SDR blocks; `forward(x, path)` gives pooled features of the path (or full net)."""

    def __init__(self, stem: int = 16, shared=(16, 32, 64), group=(8, 16, 32), groups: int = 2, strides=(1, 2, 2)):
        super().__init__()
        if not (len(shared) == len(group) == len(strides)) or groups < 1:
            raise ValueError(f"SDRNet: shared {shared}, group {group}, strides {strides} need one entry per "
                             f"block and groups >= 1 (got {groups})")
        self.groups, self.num_blocks = groups, len(shared)
        self.sizes = {"stem": stem, "shared": tuple(shared), "group": tuple(group), "groups": groups,
                      "strides": tuple(strides)}  # the constructor's arguments: export and save reuse them
        self.stem = nn.Sequential(nn.Conv2d(3, stem, 3, 1, 1, bias=False), nn.BatchNorm2d(stem), nn.ReLU())
        blocks, in_ch = [], stem
        for s, c, st in zip(shared, group, strides):
            blocks.append(SDRBlock(in_ch, s, c, groups, st))
            in_ch = s + groups * c
        self.blocks = nn.ModuleList(blocks)
        self.out_dim = in_ch  # full network; a path has shared[-1] + group[-1]

    @property
    def num_paths(self) -> int:
        return self.groups ** self.num_blocks

    def path_groups(self, path: int) -> tuple[int, ...]:
        """Group per block of path `path` (base G digits, last block lowest)."""
        return path_digits(path, self.groups, self.num_blocks)

    def forward_idx(self, x: torch.Tensor, path: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.stem(x)
        idx = torch.arange(x.shape[1], device=x.device)
        choice = (None,) * self.num_blocks if path is None else self.path_groups(path)
        for block, g in zip(self.blocks, choice):
            x, idx = block(x, idx, g)
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1), idx

    def forward(self, x: torch.Tensor, path: int | None = None) -> torch.Tensor:
        return self.forward_idx(x, path)[0]


def path_digits(path: int, groups: int, blocks: int) -> tuple[int, ...]:
    if not 0 <= path < groups ** blocks:
        raise ValueError(f"path {path} does not exist: {groups}^{blocks} = {groups ** blocks} paths (0..{groups ** blocks - 1})")
    digits = []
    for _ in range(blocks):
        digits.append(path % groups)
        path //= groups
    return tuple(reversed(digits))


def all_paths(groups: int, blocks: int) -> list[tuple[int, ...]]:
    """Every path as its group per block, in path-number order (G^B of them)."""
    return [tuple(p) for p in itertools.product(range(groups), repeat=blocks)]


def path_in_stage(path: int, stage: int, groups: int, blocks: int) -> int | None:
    """The path that trains the data of cluster `path` in progressive stage `stage` (SPEC §6).

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


# ---------------------------------------------------------------- SimSiam heads, clustering
class SDRSimSiam(nn.Module):
    """SDRNet + SimSiam projector (first layer sliced, so a path uses its own feature channels)
    + predictor + the clustering centroids (global weights, SPEC §6)."""

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


def cluster_scores(features: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """S = cos(F, C): L2-normalised features against L2-normalised centroids (N x K)."""
    return F.normalize(features, dim=1) @ F.normalize(centroids, dim=1).T


def centroid_loss(features: torch.Tensor, centroids: torch.Tensor, temperature: float = 0.1,
                  epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """Cross-entropy between the Sinkhorn-Knopp equal-size assignments U of S (no gradient)
    and softmax(S / T); minimised over the centroids (SPEC §6)."""
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
                    device: torch.device, generator: torch.Generator, who: str) -> dict:
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
    model.to(device).train()
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
            sgd_step(opt, loss, who, epoch, step, "lower sdr.lr")
            losses.append(loss.detach())
    seconds = time.perf_counter() - t0
    return {"loss": float(torch.stack(losses).mean()), "train_seconds": seconds,
            "images_per_second": epochs * steps * batch_size / max(seconds, 1e-9),
            # samples of the paths this client actually trained (a group's aggregation weight)
            "routed": {p: len(by_path[p]) for p in sorted(path_steps)}, "path_steps": path_steps}


# ---------------------------------------------------------------- building, groups, export
def _sizes(s: dict) -> dict:
    w = float(s["width"])
    scale = lambda v: max(1, int(round(v * w)))  # noqa: E731
    return {"stem": scale(s["stem"]), "shared": tuple(scale(v) for v in s["shared"]),
            "group": tuple(scale(v) for v in s["group"]), "groups": int(s["groups"]), "strides": tuple(s["strides"])}


def build_sdr_model(cfg: dict) -> SDRSimSiam:
    """The SDRnet + SimSiam heads + centroids of `cfg["sdr"]`, identical on every node (seeded)."""
    torch.manual_seed(int(cfg["seed"]))
    s = cfg["sdr"]
    net = SDRNet(**_sizes(s))
    return SDRSimSiam(net, int(s["proj_dim"]), int(s["pred_hidden"]))


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


def export_path(net: SDRNet, path: int) -> SDRNet:
    """Path `path` as a standalone network (one group per block): its full forward equals the path's."""
    sizes = dict(net.sizes, groups=1)
    out = SDRNet(**sizes)
    out.stem.load_state_dict(net.stem.state_dict())
    in_idx = torch.arange(sizes["stem"])
    for src, dst, g in zip(net.blocks, out.blocks, net.path_groups(path)):
        idx = src.channels(g)
        for name in ("conv1", "proj"):
            getattr(dst, name).weight.data.copy_(getattr(src, name).weight.data[idx][:, in_idx])
        dst.conv2.weight.data.copy_(src.conv2.weight.data[idx][:, idx])
        for name in ("bn1", "bn2", "bn_proj"):
            s, d = getattr(src, name), getattr(dst, name)
            for attr in ("weight", "bias", "running_mean", "running_var"):
                getattr(d, attr).data.copy_(getattr(s, attr).data[idx])
            d.num_batches_tracked.copy_(s.num_batches_tracked)
        in_idx = idx
    return out


BACKBONE_FORMAT = "fedssl-backbone-v1"


def save_backbone(path, net: SDRNet, meta: dict) -> str:
    sizes = {k: list(v) if isinstance(v, tuple) else v for k, v in net.sizes.items()}
    torch.save({"format": BACKBONE_FORMAT, "kind": "sdrnet", "sizes": sizes, "state_dict": net.state_dict(),
                **meta}, path)
    return str(path)


def load_backbone(path) -> SDRNet:
    """A backbone exported by `save_backbone` (e.g. the routed sub-network): features = net(x)."""
    from tasks.checkpoint import CheckpointError

    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - truncated or not a torch file
        raise CheckpointError(f"backbone {path} is corrupt or not a checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(payload, dict) or payload.get("format") != BACKBONE_FORMAT:
        raise CheckpointError(f"{path} is not a {BACKBONE_FORMAT} file")
    net = SDRNet(**{k: tuple(v) if isinstance(v, list) else v for k, v in payload["sizes"].items()})
    net.load_state_dict(payload["state_dict"])
    return net.eval()
