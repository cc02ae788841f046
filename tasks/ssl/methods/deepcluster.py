"""DeepCluster (docs/algorithms.md#deepcluster, the survey's clustering family): k-means pseudo-labels from the client's
own features, then cross-entropy of a k-way head on augmented views (tasks/ssl/methods/pseudo_labels.py).

Labels: the backbone features of all the client's images (eval mode, L2-normalised; the reference
code also PCA-whitens to 256 dimensions, left out here: the CPU-scale backbones have 64-512
features) clustered with seeded k-means into `num_clusters` clusters; an empty cluster takes a
random non-empty centroid plus a small perturbation and splits its points (protocol/clustering.py).
At every re-clustering the head is re-initialised (its classes changed meaning), and each
sample's loss is weighted inversely to its cluster's size (mean weight 1), so that big clusters
do not dominate. Federated form `local`: the backbone is averaged; head and clusters stay on the
client. Form `global` (federated k-means, as Orchestra makes clusters globally consistent): the
centroids are the federation's (`clusters.centroids`, seeded random unit vectors at the start).
Each round a client assigns its normalised features to the nearest global centroid (its labels),
and uploads, for its own assignments, each centroid's feature sum and count (never one image's
feature: a cluster of fewer than 2 of its images is left out) in `clusters.centroids` and
`clusters.counts`; the server's new centroid is sum_k s_kj / sum_k n_kj (strategies/cluster_merge.py),
an empty one repaired as above. The first round starts the global clusters: each client runs its
own k-means and sends those clusters' sums and counts, and the server clusters the local
centroids (weighted by counts) into the global ones. The head is tied to the global clusters and
averaged; it is re-initialised on the server whenever its classes change meaning, as DeepCluster
re-initialises its head after each re-clustering (Caron et al. 2018): the whole head when the server
starts the global clusters (each client's round-1 head classified its own k-means numbering), and
the rows of the clusters the server repairs (an empty cluster refilled from a donor, and the donor)
at later merges (strategies/cluster_merge.py, declared here by `cluster_heads`). The server does it,
not the clients, because it owns the global head and alone knows which clusters it repaired: every
client then receives the same head with the round's weights, and a client never resets it once the
global clusters have started. Under `clusters=local` nothing changes: each client's own head is
re-initialised at each of its re-clusterings.

`assign` (global form only) is how a client labels its images with the global centroids: `nearest`
(DeepCluster's k-means E-step, the default) or `balanced`, Orchestra's equal-size assignment: the
cosine scores to the normalised centroids, equal-partition Sinkhorn-Knopp with `sk_lambda` (the
same solver as SeLa's): the plan gives every global cluster N/k of the mass, its argmax (SeLa's
hard labels) roughly so. Why it exists: measured at experiment=cpu, nearest assignment under the
averaged backbone filled 3-5 of 32 clusters in round 2 and one in round 3, after which one
pseudo-class left nothing to learn and the features died (docs/clustering.md);
Orchestra guards against that degenerate solution with this constraint.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from protocol.checks import Choice, ConfigError, Float, Int
from protocol.fields import ClientField
from protocol.clustering import assign, cluster_sums, kmeans
from tasks.common.clustering import balanced_sample_weights
from tasks.common.sinkhorn import sela_labels
from tasks.ssl.methods.pseudo_labels import PseudoLabelMethod


MIN_SENT = 2  # clusters=global: a cluster's sum and count leave the client only when it holds at least 2 images


class DeepCluster(PseudoLabelMethod):
    name = "deepcluster"
    CONFIG = {"num_clusters": Int(min=2), "recluster_every": Int(min=1, null=True), "kmeans_iterations": Int(min=1),
              "feature_batch_size": Int(min=1), "clusters": Choice(options=("local", "global")),
              "assign": Choice(options=("nearest", "balanced")), "sk_lambda": Float(above=0),
              "centroid_features": Choice(options=("trained", "received"))}
    CLIENT_METRICS = (*PseudoLabelMethod.CLIENT_METRICS, "cluster_repairs", "global_clusters_started")
    # k-means clusters its images left empty (each repaired from a non-empty one, docs/algorithms.md#deepcluster)
    CLIENT_FIELDS = (*PseudoLabelMethod.CLIENT_FIELDS, ClientField("cluster_repairs", "empty clusters repaired", fmt=".0f"))
    LOCAL_PARTS = ("head",)
    GLOBAL_PARTS = ("clusters",)

    def __init__(self, arch="resnet18", width=1.0, num_clusters=100, recluster_every=None, kmeans_iterations=20,
                 feature_batch_size=512, clusters="local", assign="nearest", sk_lambda=25.0,
                 centroid_features="trained"):
        super().__init__(arch, width, num_clusters, recluster_every, feature_batch_size, clusters)
        if assign == "balanced" and not self.global_clusters:
            raise ConfigError("ssl.assign=balanced assigns to the federation's centroids: it needs ssl.clusters=global "
                              "(under clusters=local each client runs its own k-means); set ssl.clusters=global or "
                              "ssl.assign=nearest")
        self.balanced, self.sk_lambda = assign == "balanced", float(sk_lambda)
        self.sums_when_received = centroid_features == "received"
        self._sums: tuple[np.ndarray, np.ndarray] | None = None  # centroid_features=received: the round's sums
        dim = self.online.backbone.out_dim
        self.head = nn.Linear(dim, self.num_clusters)
        if self.global_clusters:  # the same seeded start on every node (build_federated_method seeds torch)
            self.clusters = nn.Module()
            # random unit vectors in the non-negative orthant, where normalised ReLU features lie
            self.clusters.register_buffer("centroids", F.normalize(torch.randn(self.num_clusters, dim).abs(), dim=1))
            self.clusters.register_buffer("counts", torch.zeros(self.num_clusters))
            self.sum_merge = (("clusters.centroids", "clusters.counts"),)
            self.cluster_heads = (("clusters.centroids", ("head.weight", "head.bias")),)  # the server resets their rows
        self._images: torch.Tensor | None = None  # clusters=global: the round's images, for the upload's sums
        self.kmeans_iterations = int(kmeans_iterations)
        self._labels: torch.Tensor | None = None
        self._weights: torch.Tensor | None = None

    def relabel(self, images: torch.Tensor, generator: torch.Generator) -> np.ndarray:
        features = F.normalize(self.features(images), dim=1).cpu()
        started = self.global_clusters and float(self.clusters.counts.sum()) > 0
        if started:  # the federation's centroids give its labels (sums follow in before_upload)
            assignments = self.global_assignments(features)
            self.cluster_report = {"global_clusters_started": 1.0}
        else:
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
            result = kmeans(features, self.num_clusters, self.kmeans_iterations, seed)
            assignments = result.assignments
            with torch.no_grad():  # the head's classes changed meaning: a new head (seeded by the round's stream;
                # under clusters=global this is round 1's local head, which the server replaces in full)
                self.head.weight.copy_(0.01 * torch.randn(self.head.weight.shape, generator=generator))
                self.head.bias.zero_()
            self.cluster_report = {"cluster_repairs": int(result.repairs)}
            if self.global_clusters:  # no global clusters yet: its own k-means clusters start them
                self.cluster_report["global_clusters_started"] = 0.0
        self._images = images if self.global_clusters else None
        if self.global_clusters and self.sums_when_received and self._sums is None:
            self._sums = self.sums_to_send(features, assignments)  # the received backbone's, as assigned
        weights = balanced_sample_weights(assignments, self.num_clusters)
        self._labels = torch.from_numpy(assignments).to(images.device)
        self._weights = torch.from_numpy(np.asarray(weights, np.float32)).to(images.device)
        return assignments

    def global_assignments(self, features: torch.Tensor) -> np.ndarray:
        """Each normalised feature's global cluster: the nearest centroid, or (`assign=balanced`) the
        equal-partition plan of the cosine scores (Orchestra's rule; argmax per image, as SeLa)."""
        centroids = self.clusters.centroids.cpu()
        if not self.balanced:
            return assign(features, centroids)
        return sela_labels(features @ F.normalize(centroids, dim=1).T, self.sk_lambda).labels

    def before_upload(self) -> None:
        """clusters=global: the upload carries this client's per-centroid sums and counts (clusters:
        the round's global centroids, or in the first round its own k-means clusters). Of which
        features (`centroid_features`): `trained`, those its trained backbone gives, assigned again
        with them (closer to the next global backbone than the round's start); `received`, those the
        received global backbone gave at the round's labelling, with those labels (sums and
        assignments in one feature space)."""
        if not self.global_clusters or self._images is None:
            return
        sums = self._sums
        if sums is None:
            features = F.normalize(self.features(self._images), dim=1).cpu()
            started = float(self.clusters.counts.sum()) > 0
            sums = self.sums_to_send(features, self.global_assignments(features) if started else self.assignments)
        self.clusters.centroids.copy_(torch.from_numpy(sums[0]).float())
        self.clusters.counts.copy_(torch.from_numpy(sums[1]).float())
        self._images, self._sums = None, None

    def sums_to_send(self, features: torch.Tensor, assignments: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-cluster feature sums and counts; a cluster of fewer than MIN_SENT images is sent empty
        (a cluster of one image: its sum would be that image's feature)."""
        sums, counts = cluster_sums(features, assignments, self.num_clusters)
        lone = counts < MIN_SENT
        sums[lone], counts[lone] = 0.0, 0
        return sums, counts

    def loss(self, views, generator, index=None):
        (view,) = views
        return self.cross_entropy(self.head(self.online.backbone(view)), self._labels[index], self._weights[index])
