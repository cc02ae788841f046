"""What the clustering methods share (docs/algorithms.md#clustering-based-self-supervision: DeepCluster, SeLa): a backbone whose features of the
client's own images, without augmentation, are turned into pseudo-labels before an epoch, and
heads trained with cross-entropy on those labels for one augmented view per image.

A subclass says how labels are made (`relabel`: k-means for DeepCluster, equal-partition
Sinkhorn-Knopp for SeLa). Pseudo-labels are made at the start of each round and every
`recluster_every` local epochs within it when set. Federated forms (`clusters`): `local`, the
backbone (`online`) is averaged and the heads stay on the client (they classify into its own
clusters); `global`, the heads are averaged too, tied to clusters that are the federation's
(each method says how). `assignments` (one cluster per image) is what NMI measures
(tasks/ssl/local.py).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from protocol.fields import ClientField
from tasks.common.augment import View, to_float
from tasks.common.models import Encoder, build_backbone
from tasks.ssl.methods.base import SSLMethod, SyncPlan, one_encoder


class PseudoLabelMethod(SSLMethod):
    views = (View(),)  # one augmented view per image
    needs_index = True
    CLIENT_METRICS = ("nmi_labels", "nmi_previous", "clusters_filled", "largest_cluster_share")
    # on the round's console line: a client whose images fill fewer clusters than asked shows at once
    CLIENT_FIELDS = (ClientField("clusters_filled", "clusters filled", fmt=".0f"),
                     ClientField("largest_cluster_share", "largest cluster share", fmt=".2f"))
    LOCAL_PARTS: tuple[str, ...] = ()  # the heads: the client's own under clusters=local, averaged under global
    GLOBAL_PARTS: tuple[str, ...] = ()  # parts that exist only under clusters=global (DeepCluster's centroids)

    def __init__(self, arch: str, width: float, num_clusters: int, recluster_every: int | None, feature_batch_size: int,
                 clusters: str = "local"):
        super().__init__()
        if clusters not in ("local", "global"):
            raise ValueError(f"ssl.clusters must be local or global, got {clusters!r}")
        self.global_clusters = clusters == "global"
        self.online = Encoder(build_backbone(arch, width), nn.Identity())
        self.num_clusters, self.recluster_every = int(num_clusters), recluster_every
        self.feature_batch_size = int(feature_batch_size)
        self.assignments: np.ndarray | None = None
        self.cluster_report: dict = {}

    def sync_plan(self, sync: str = "online") -> SyncPlan:
        one_encoder(sync)
        if self.global_clusters:
            return SyncPlan(uploaded=("online", *self.LOCAL_PARTS, *self.GLOBAL_PARTS), local=())
        return SyncPlan(uploaded=("online",), local=self.LOCAL_PARTS)

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Backbone features of uint8 NHWC `images`, no augmentation, eval mode, fp32."""
        was_training = self.training
        self.eval()
        out = [self.online.backbone(to_float(images[i:i + self.feature_batch_size], images.device)).float()
               for i in range(0, len(images), self.feature_batch_size)]
        self.train(was_training)
        return torch.cat(out)

    def start_epoch(self, epoch: int, images: torch.Tensor, generator: torch.Generator) -> None:
        """New pseudo-labels at the round's first epoch and every `recluster_every` epochs after it."""
        if epoch > 0 and (self.recluster_every is None or epoch % self.recluster_every):
            return
        if len(images) < self.num_clusters:
            raise ValueError(f"ssl.num_clusters={self.num_clusters} exceeds this client's {len(images)} images; "
                             f"lower ssl.num_clusters")
        self.assignments = self.relabel(images, generator)
        counts = np.bincount(self.assignments, minlength=self.num_clusters)
        self.cluster_report = {**self.cluster_report, "clusters_filled": int((counts > 0).sum()),
                               "largest_cluster_share": float(counts.max() / len(images))}

    def relabel(self, images: torch.Tensor, generator: torch.Generator) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    @staticmethod
    def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        per_sample = F.cross_entropy(logits.float(), labels, reduction="none")
        return (per_sample * weights).mean() if weights is not None else per_sample.mean()
