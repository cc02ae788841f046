"""SDR: scalable dynamic routing (AAAI 2022), docs/algorithms.md#sdr — the SDRnet, its paths and exported paths.

An SDR block is a residual block whose output channels are split into `shared` channels and
G individual groups of `group` channels. A path chooses one individual group per block; its
sub-network is the stem, every shared channel and the chosen groups. The forward of a path
computes *only* its channels (weights, BatchNorm parameters and statistics are sliced), so a
path's output depends on exactly its groups and only they receive gradients; `path=None` runs
the full SDRnet (all groups). With B blocks there are G^B paths, numbered in base G with the
last block as the lowest digit. `export_path` turns one path into a standalone network.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn as nn
import torch.nn.functional as F

from tasks.common.checkpoint import CheckpointError, UntrustedFileError, load_file, plain, save_atomic


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
    """Tensors and plain values only (loads with weights_only=True), written atomically."""
    sizes = {k: list(v) if isinstance(v, tuple) else v for k, v in net.sizes.items()}
    payload = {"format": BACKBONE_FORMAT, "kind": "sdrnet", "sizes": sizes, "state_dict": dict(net.state_dict()),
               **meta}
    return str(save_atomic(plain(payload, f"backbone {path}"), path))


def load_backbone(path) -> SDRNet:
    """A backbone exported by `save_backbone` (e.g. the routed sub-network): features = net(x)."""
    try:
        payload = load_file(path, "backbone")
    except UntrustedFileError:
        raise
    except Exception as err:  # noqa: BLE001 - truncated or not a torch file
        raise CheckpointError(f"backbone {path} is corrupt or not a checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(payload, dict) or payload.get("format") != BACKBONE_FORMAT:
        raise CheckpointError(f"{path} is not a {BACKBONE_FORMAT} file")
    net = SDRNet(**{k: tuple(v) if isinstance(v, list) else v for k, v in payload["sizes"].items()})
    net.load_state_dict(payload["state_dict"])
    return net.eval()
