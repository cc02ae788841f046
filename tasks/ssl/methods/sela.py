"""SeLa, self-labelling (docs/algorithms.md#sela, Asano et al. ICLR 2020): pseudo-labels that agree with the heads'
own predictions under an equal-partition constraint, then cross-entropy on them
(tasks/ssl/methods/pseudo_labels.py).

Labels: for each of `num_heads` heads, the predictions P = softmax(head(features)) of all the
client's images (no augmentation, eval mode) give the transport plan Q = diag(α) P^λ diag(β) whose
rows sum to 1/N and columns to 1/K (each of K clusters gets N/K images), found by Sinkhorn-Knopp
(`sk_lambda` λ, at most `sk_iterations` rounds of row/column normalisation; log domain:
tasks/common/sinkhorn.sela_labels); an image's label is its row's argmax. Training: the mean over
heads of each head's cross-entropy on its labels. Unlike DeepCluster's, the heads are not
re-initialised: their predictions are what the next labels follow. Head 0's labels are the
client's `assignments` (NMI). Federated form `local`: backbone averaged, heads stay on the client.
Form `global`: the heads are the federation's prototypes, averaged with the backbone; each client
labels its images by the equal partition of the global heads' predictions on them.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from protocol.checks import Choice, Float, Int
from tasks.common.sinkhorn import sela_labels
from tasks.ssl.methods.pseudo_labels import PseudoLabelMethod


class SeLa(PseudoLabelMethod):
    name = "sela"
    CONFIG = {"num_clusters": Int(min=2), "num_heads": Int(min=1), "sk_lambda": Float(above=0),
              "sk_iterations": Int(min=1), "recluster_every": Int(min=1, null=True), "feature_batch_size": Int(min=1),
              "clusters": Choice(options=("local", "global"))}
    CLIENT_METRICS = (*PseudoLabelMethod.CLIENT_METRICS, "sinkhorn_error")
    LOCAL_PARTS = ("heads",)

    def __init__(self, arch="resnet18", width=1.0, num_clusters=128, num_heads=1, sk_lambda=25.0, sk_iterations=100,
                 recluster_every=None, feature_batch_size=512, clusters="local"):
        super().__init__(arch, width, num_clusters, recluster_every, feature_batch_size, clusters)
        dim = self.online.backbone.out_dim
        self.heads = nn.ModuleList(nn.Linear(dim, self.num_clusters) for _ in range(int(num_heads)))
        self.sk_lambda, self.sk_iterations = float(sk_lambda), int(sk_iterations)
        self._labels: list[torch.Tensor] = []

    @torch.no_grad()
    def relabel(self, images: torch.Tensor, generator: torch.Generator) -> np.ndarray:
        features = self.features(images)
        results = [sela_labels(F.linear(features, h.weight.float(), h.bias.float()).cpu(), self.sk_lambda,
                               self.sk_iterations) for h in self.heads]
        self._labels = [torch.from_numpy(r.labels).to(images.device) for r in results]
        self.cluster_report = {"sinkhorn_error": float(max(r.error for r in results))}
        return results[0].labels

    def loss(self, views, generator, index=None):
        (view,) = views
        z = self.online.backbone(view)
        return torch.stack([self.cross_entropy(h(z), labels[index]) for h, labels in zip(self.heads, self._labels)]).mean()
