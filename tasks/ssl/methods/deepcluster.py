"""DeepCluster (SPEC §8, the survey's clustering family): k-means pseudo-labels from the client's
own features, then cross-entropy of a k-way head on augmented views.

At the start of a round (and every `recluster_every` local epochs within it when set) the client
extracts the backbone features of all its images without augmentation (eval mode, L2-normalised;
the reference code also PCA-whitens to 256 dimensions, left out here: the CPU-scale backbones have
64-512 features), clusters them with seeded k-means into `num_clusters` clusters (an empty cluster
takes a random non-empty centroid plus a small perturbation and splits its points:
tasks/common/clustering.py), re-initialises the head (its classes changed meaning) and trains
backbone + head on one augmented view per image, each sample's loss weighted inversely to its
cluster's size (so that big clusters do not dominate; mean weight 1).

Federated form `local` (this module): the backbone (`online`) is averaged, the head and the
clusters are the client's own and never leave it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from protocol.checks import Int
from tasks.common.augment import View, to_float
from tasks.common.clustering import balanced_sample_weights, kmeans
from tasks.common.models import Encoder, build_backbone
from tasks.ssl.methods.base import SSLMethod, SyncPlan, one_encoder


class DeepCluster(SSLMethod):
    name = "deepcluster"
    CONFIG = {"num_clusters": Int(min=2), "recluster_every": Int(min=1, null=True), "kmeans_iterations": Int(min=1),
              "feature_batch_size": Int(min=1)}
    views = (View(),)  # one augmented view per image
    needs_index = True
    CLIENT_METRICS = ("nmi_labels", "nmi_previous", "clusters_filled", "cluster_repairs", "largest_cluster_share")

    def __init__(self, arch="resnet18", width=1.0, num_clusters=100, recluster_every=None, kmeans_iterations=20,
                 feature_batch_size=512):
        super().__init__()
        self.online = Encoder(build_backbone(arch, width), nn.Identity())
        self.head = nn.Linear(self.online.backbone.out_dim, num_clusters)
        self.num_clusters, self.recluster_every = int(num_clusters), recluster_every
        self.kmeans_iterations, self.feature_batch_size = int(kmeans_iterations), int(feature_batch_size)
        self.assignments: np.ndarray | None = None  # the latest pseudo-labels of the client's images
        self.cluster_report: dict = {}
        self._labels: torch.Tensor | None = None
        self._weights: torch.Tensor | None = None

    def sync_plan(self, sync: str = "online") -> SyncPlan:
        one_encoder(sync)
        return SyncPlan(uploaded=("online",), local=("head",))

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised backbone features of uint8 NHWC `images`, no augmentation, eval mode."""
        was_training = self.training
        self.online.eval()
        out = [F.normalize(self.online.backbone(to_float(images[i:i + self.feature_batch_size], images.device)).float(),
                           dim=1) for i in range(0, len(images), self.feature_batch_size)]
        self.online.train(was_training)
        return torch.cat(out)

    def start_epoch(self, epoch: int, images: torch.Tensor, generator: torch.Generator) -> None:
        """Re-cluster at the round's first epoch and every `recluster_every` epochs after it."""
        if epoch > 0 and (self.recluster_every is None or epoch % self.recluster_every):
            return
        if len(images) < self.num_clusters:
            raise ValueError(f"ssl.num_clusters={self.num_clusters} exceeds this client's {len(images)} images; "
                             f"lower ssl.num_clusters")
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        result = kmeans(self.features(images).cpu(), self.num_clusters, self.kmeans_iterations, seed)
        self.assignments = result.assignments
        weights = balanced_sample_weights(result.assignments, self.num_clusters)
        device = images.device
        self._labels = torch.from_numpy(result.assignments).to(device)
        self._weights = torch.from_numpy(np.asarray(weights, np.float32)).to(device)
        with torch.no_grad():  # the head's classes changed meaning: a new head (seeded by the round's stream)
            self.head.weight.copy_(0.01 * torch.randn(self.head.weight.shape, generator=generator))
            self.head.bias.zero_()
        self.cluster_report = {"clusters_filled": int((result.counts > 0).sum()), "cluster_repairs": int(result.repairs),
                               "largest_cluster_share": float(result.counts.max() / len(images))}

    def loss(self, views, generator, index=None):
        (view,) = views
        logits = self.head(self.online.backbone(view)).float()
        per_sample = F.cross_entropy(logits, self._labels[index], reduction="none")
        return (per_sample * self._weights[index]).mean()
