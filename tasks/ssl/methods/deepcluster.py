"""DeepCluster (SPEC §8, the survey's clustering family): k-means pseudo-labels from the client's
own features, then cross-entropy of a k-way head on augmented views (tasks/ssl/methods/pseudo_labels.py).

Labels: the backbone features of all the client's images (eval mode, L2-normalised; the reference
code also PCA-whitens to 256 dimensions, left out here: the CPU-scale backbones have 64-512
features) clustered with seeded k-means into `num_clusters` clusters; an empty cluster takes a
random non-empty centroid plus a small perturbation and splits its points (tasks/common/clustering.py).
At every re-clustering the head is re-initialised (its classes changed meaning), and each
sample's loss is weighted inversely to its cluster's size (mean weight 1), so that big clusters
do not dominate. Federated form `local`: the backbone is averaged; head and clusters stay on the
client.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from protocol.checks import Int
from tasks.common.clustering import balanced_sample_weights, kmeans
from tasks.ssl.methods.pseudo_labels import PseudoLabelMethod


class DeepCluster(PseudoLabelMethod):
    name = "deepcluster"
    CONFIG = {"num_clusters": Int(min=2), "recluster_every": Int(min=1, null=True), "kmeans_iterations": Int(min=1),
              "feature_batch_size": Int(min=1)}
    CLIENT_METRICS = (*PseudoLabelMethod.CLIENT_METRICS, "cluster_repairs")
    LOCAL_PARTS = ("head",)

    def __init__(self, arch="resnet18", width=1.0, num_clusters=100, recluster_every=None, kmeans_iterations=20,
                 feature_batch_size=512):
        super().__init__(arch, width, num_clusters, recluster_every, feature_batch_size)
        self.head = nn.Linear(self.online.backbone.out_dim, self.num_clusters)
        self.kmeans_iterations = int(kmeans_iterations)
        self._labels: torch.Tensor | None = None
        self._weights: torch.Tensor | None = None

    def relabel(self, images: torch.Tensor, generator: torch.Generator) -> np.ndarray:
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        result = kmeans(F.normalize(self.features(images), dim=1).cpu(), self.num_clusters, self.kmeans_iterations, seed)
        weights = balanced_sample_weights(result.assignments, self.num_clusters)
        self._labels = torch.from_numpy(result.assignments).to(images.device)
        self._weights = torch.from_numpy(np.asarray(weights, np.float32)).to(images.device)
        with torch.no_grad():  # the head's classes changed meaning: a new head (seeded by the round's stream)
            self.head.weight.copy_(0.01 * torch.randn(self.head.weight.shape, generator=generator))
            self.head.bias.zero_()
        self.cluster_report = {"cluster_repairs": int(result.repairs)}
        return result.assignments

    def loss(self, views, generator, index=None):
        (view,) = views
        return self.cross_entropy(self.head(self.online.backbone(view)), self._labels[index], self._weights[index])
