"""FedPav's re-ID model (docs/algorithms.md#fedpav) and its retrieval embeddings.

Model = backbone (CIFAR ResNet of `model.arch`/`model.width`) + embedding block (Linear -> 512,
BatchNorm, Dropout 0.5) + the client's own classifier (512 -> its number of identities).
Only `backbone.*` and `embedding.*` are uploaded (`SHARED_PARTS`); `classifier.*` never leaves
the client. Dropout draws its masks from the generator it is given (the client's
per-(seed, round, client) stream), never from torch's global one.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from protocol.layout import Layout
from tasks.common.arrays import get_arrays, module_layout
from tasks.common.augment import to_float
from tasks.common.models import build_backbone
from tasks.reid.settings import Network, ReIDSettings

SHARED_PARTS = ("backbone", "embedding")


class SeededDropout(nn.Module):
    """Dropout whose masks come from `generator` when one is set (`ReIDNet.use_generator`).

    nn.Dropout draws from torch's global generator, which `build_reid_net` re-seeds for identical
    initial weights on every node: every round of every client would repeat the same masks.
    Without a generator (e.g. a user's own script) it falls back to F.dropout. No state: the
    state_dict is the same as with nn.Dropout.
    """

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self.generator: torch.Generator | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if self.generator is None:
            return F.dropout(x, self.p, training=True)
        keep = torch.rand(x.shape, generator=self.generator, device=self.generator.device) >= self.p
        return x * keep.to(x.device, x.dtype) / (1 - self.p)


class ReIDNet(nn.Module):
    def __init__(self, arch: str, width: float, embedding_dim: int = 512, dropout: float = 0.5):
        super().__init__()
        self.backbone = build_backbone(arch, width)
        self.embedding = nn.Sequential(nn.Linear(self.backbone.out_dim, embedding_dim),
                                       nn.BatchNorm1d(embedding_dim), SeededDropout(dropout))
        self.classifier: nn.Linear | None = None  # the client's own, added by build_reid_net

    def use_generator(self, generator: torch.Generator | None) -> None:
        """Draw dropout masks from `generator` from now on."""
        for m in self.modules():
            if isinstance(m, SeededDropout):
                m.generator = generator

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding(self.backbone(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.classifier is None:
            raise RuntimeError("this ReIDNet has no classifier (server side); use embed()")
        return self.classifier(self.embed(x))


def build_reid_net(n: Network, num_ids: int | None = None, partition_id: int = 0) -> ReIDNet:
    """The shared part is identical on every node (seeded by the run's `seed`); client `partition_id`'s
    classifier (when num_ids is given) is seeded by (seed, partition_id)."""
    torch.manual_seed(n.seed)
    net = ReIDNet(n.arch, n.width, n.embedding_dim, n.dropout)
    if num_ids:
        torch.manual_seed(int(np.random.SeedSequence([n.seed, 17, partition_id]).generate_state(1)[0]))
        net.classifier = nn.Linear(n.embedding_dim, int(num_ids))
    return net


def shared_keys(net: ReIDNet) -> list[str]:
    return [k for k in net.state_dict() if k.split(".", 1)[0] in SHARED_PARTS]


def classifier_keys(net: ReIDNet) -> list[str]:
    return [k for k in net.state_dict() if k.startswith("classifier.")]


def reid_layout(s: ReIDSettings, options: dict) -> tuple[Layout, list[np.ndarray]]:
    """FedPav uploads backbone + embedding block; the classifiers stay on the clients."""
    net = build_reid_net(s.network)
    keys = shared_keys(net)
    return module_layout(net, keys, options=dict(options)), get_arrays(net, keys)


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
