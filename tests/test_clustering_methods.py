"""DeepCluster and SeLa, federated with local or global clusters (issue 15, docs/algorithms.md#clustering-based-self-supervision): pseudo-labels
from seeded k-means (DeepCluster) or equal-partition Sinkhorn-Knopp (SeLa) of the client's own
features, heads that travel only under global clusters, DeepCluster's head re-initialised at every
re-clustering and its losses weighted inversely to cluster size, global DeepCluster's sums and
counts and its balanced assignment, and NMI per client in summary.json."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from app.federation import prepare
from protocol.checks import ConfigError
from protocol.clustering import assign as assign_nearest
from protocol.clustering import kmeans as real_kmeans
from tasks.ssl.methods import build_method
from tasks.ssl.model import build_federated_method, ssl_layout
from tasks.ssl.settings import ssl_settings
from strategies import FederatedAveraging
from tasks.common.checkpoint import load_checkpoint
from tests.conftest import ROOT
from tests.test_strategy import make, result

SSL = {"name": "deepcluster", "num_clusters": 4, "recluster_every": None, "kmeans_iterations": 10,
       "feature_batch_size": 8, "lr": 0.05, "lr_schedule": "cosine", "momentum": 0.9, "weight_decay": 1e-5,
       "warmup_rounds": 0}
MODEL = {"arch": "resnet10", "width": 0.125}


def _images(n=24, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8))


def _method(**changes):
    torch.manual_seed(0)  # the same backbone every time, as build_federated_method does
    return build_method({**SSL, **changes}, MODEL)


def test_clusters_labels_weights_and_a_new_head_at_each_reclustering(monkeypatch):
    method = _method()
    images = _images()
    method.start_epoch(0, images, torch.Generator().manual_seed(1))
    first_head = method.head.weight.clone()
    a = method.assignments
    assert a.shape == (24,) and set(a.tolist()) == set(range(4))  # every cluster filled (empty ones repaired)
    counts = np.bincount(a, minlength=4)
    w = method._weights.numpy()
    assert w.mean() == pytest.approx(1.0) and w[a == np.argmax(counts)][0] == pytest.approx(24 / (4 * counts.max()))
    method.start_epoch(1, images, torch.Generator().manual_seed(2))  # recluster_every=None: only at the round's start
    assert torch.equal(method.head.weight, first_head)
    again = _method()
    again.start_epoch(0, images, torch.Generator().manual_seed(1))
    assert np.array_equal(again.assignments, a) and torch.equal(again.head.weight, first_head)  # seeded
    index = torch.tensor([0, 5, 7])
    loss = method.loss([torch.rand(3, 3, 32, 32)], None, index)
    assert torch.isfinite(loss) and loss.item() > 0
    import tasks.ssl.methods.deepcluster as module

    calls = []
    monkeypatch.setattr(module, "kmeans", lambda *a, **k: calls.append(a[1]) or real_kmeans(*a, **k))
    every = _method(recluster_every=2)
    for epoch in range(5):
        every.start_epoch(epoch, images, torch.Generator().manual_seed(epoch))
    assert calls == [4, 4, 4]  # epochs 0, 2 and 4


@pytest.mark.parametrize("ssl, head", [("deepcluster", "head.weight"), ("sela", "heads.0.weight")])
def test_the_local_heads_never_enter_the_upload(make_cfg, ssl, head):
    cfg = make_cfg("strategy=fedavg", f"ssl={ssl}")
    method, plan, keys = build_federated_method(ssl_settings(cfg))
    assert plan.uploaded == ("online",) and plan.local == (head.split(".")[0],)
    assert keys and all(k.startswith("online.") for k in keys) and head in method.state_dict()
    layout, _ = ssl_layout(ssl_settings(cfg), {})
    assert "nmi_labels" in layout.client_metrics and not any(k.startswith(plan.local[0]) for k in layout.keys)


def test_sela_labels_are_an_equal_partition_of_the_heads_predictions():
    torch.manual_seed(0)
    sela = {k: v for k, v in SSL.items() if k != "kmeans_iterations"}
    method = build_method({**sela, "name": "sela", "num_clusters": 4, "num_heads": 2, "sk_lambda": 25.0,
                           "sk_iterations": 200}, MODEL)
    with torch.no_grad():  # confident heads: without the constraint their argmax would crowd some clusters
        for h in method.heads:
            h.weight.normal_(0, 10.0)
    method.start_epoch(0, _images(), torch.Generator().manual_seed(0))
    for labels in method._labels:  # the plan's columns hold 6 images each; its rows' argmax about as many
        assert all(4 <= c <= 8 for c in np.bincount(labels.numpy(), minlength=4))
    assert np.array_equal(method.assignments, method._labels[0].numpy())
    assert method.cluster_report["sinkhorn_error"] < 1e-3
    loss = method.loss([torch.rand(3, 3, 32, 32)], None, torch.tensor([1, 2, 3]))
    assert torch.isfinite(loss)
    before = [h.weight.clone() for h in method.heads]
    method.start_epoch(0, _images(), torch.Generator().manual_seed(0))
    assert all(torch.equal(b, h.weight) for b, h in zip(before, method.heads))  # SeLa keeps its heads


@pytest.mark.parametrize("overrides, message", [
    (["ssl.num_clusters=65"], "ssl.num_clusters=65 exceeds the 64 images of the smallest client"),
    (["ssl.num_clusters=1"], "ssl.num_clusters"),
    (["strategy=fedu"], "strategy=fedu is defined for BYOL"),
    (["strategy=standalone", "ssl.clusters=global"], "strategy=standalone aggregates nothing"),
    (["ssl.clusters=both"], "ssl.clusters"),
    (["ssl.assign=balanced"], "ssl.assign=balanced .* needs ssl.clusters=global"),
    (["ssl.clusters=global", "ssl.assign=equal"], "ssl.assign"),
])
def test_bad_cluster_settings_are_refused_before_training(make_cfg, overrides, message):
    with pytest.raises(ConfigError, match=message):
        prepare(make_cfg("strategy=fedavg", "ssl=deepcluster", *overrides), "/nonexistent")


@pytest.mark.parametrize("ssl", [["ssl=deepcluster"], pytest.param(["ssl=sela"], marks=pytest.mark.slow),
                                 pytest.param(["ssl=sela", "ssl.clusters=global"], marks=pytest.mark.slow),
                                 pytest.param(["ssl=deepcluster", "ssl.clusters=global"], marks=pytest.mark.slow),
                                 pytest.param(["ssl=deepcluster", "ssl.clusters=global", "ssl.assign=balanced"],
                                              marks=pytest.mark.slow)],
                         ids=["deepcluster", "sela", "sela_global", "deepcluster_global", "deepcluster_balanced"])
def test_a_smoke_federation_records_each_clients_nmi(tmp_path, data_dir, cache_dir, ssl):
    done = subprocess.run([sys.executable, "main.py", "experiment=smoke", "strategy=fedavg", *ssl,
                           "dataset=cifar10", "num_clients=2", f"data_dir={data_dir}", f"cache_dir={cache_dir}",
                           f"output_dir={tmp_path / 'run'}"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    first, second = (r["clients"]["1"] for r in s["rounds"])
    assert 0 < first["nmi_labels"] <= 1 and "nmi_previous" not in first  # no clusters before round 1
    assert 0 < second["nmi_previous"] <= 1 and 2 <= second["clusters_filled"] <= 32
    assert (tmp_path / "run" / "nmi.png").is_file()
    weights = load_checkpoint(tmp_path / "run" / "checkpoint_final.pt")["models"]["global"]
    head = "heads.0.weight" if "ssl=sela" in ssl else "head.weight"
    assert (head in weights) == ("ssl.clusters=global" in ssl)  # the heads are the federation's only in global
    if "ssl=deepcluster" in ssl and "ssl.clusters=global" in ssl:  # round 1 started the global clusters from the clients' own
        assert [r["clients"]["1"]["global_clusters_started"] for r in s["rounds"]] == [0.0, 1.0]
        centroids = weights["clusters.centroids"]
        assert centroids.shape == (32, 64) and torch.isfinite(centroids).all()


def test_global_clusters_upload_sums_of_two_or_more_images_and_the_heads(make_cfg):
    cfg = make_cfg("strategy=fedavg", "ssl=deepcluster", "ssl.clusters=global", "ssl.num_clusters=4")
    method, plan, keys = build_federated_method(ssl_settings(cfg))
    assert plan.uploaded == ("online", "head", "clusters") and plan.local == ()
    layout, _ = ssl_layout(ssl_settings(cfg), {})
    assert layout.global_clusters and layout.sum_merge == [(keys.index("clusters.centroids"),
                                                            keys.index("clusters.counts"))]
    method.clusters.counts.fill_(1.0)  # global clusters started: assign to them
    method.clusters.centroids.copy_(torch.eye(4, 64))
    images = _images(12)
    method.start_epoch(0, images, torch.Generator().manual_seed(0))
    method.before_upload()
    features = torch.nn.functional.normalize(method.features(images), dim=1)
    a = np.argmin(torch.cdist(features, torch.eye(4, 64)).numpy(), axis=1)
    n = np.bincount(a, minlength=4)
    sent = method.clusters.counts.numpy()
    assert sent.tolist() == [c if c >= 2 else 0 for c in n]  # a lone image's cluster is not sent
    for j in np.flatnonzero(n >= 2):
        assert torch.allclose(method.clusters.centroids[j], features[a == j].sum(0), atol=1e-5)


def test_balanced_assignment_gives_every_global_cluster_an_equal_share():
    """assign=balanced (Orchestra's rule): where every feature is nearest to one centroid, the
    equal-partition assignment still spreads them by their cosine scores, N/k per cluster."""
    method = _method(clusters="global", assign="balanced")
    centroids = torch.eye(4, method.online.backbone.out_dim)
    method.clusters.centroids.copy_(2.0 * centroids)  # scale does not matter: scored against normalised centroids
    group = torch.arange(12) % 4
    features = torch.nn.functional.normalize(centroids[0] + 0.1 * centroids[group], dim=1)
    assert assign_nearest(features, method.clusters.centroids).tolist() == [0] * 12  # nearest: one cluster
    assert method.global_assignments(features).tolist() == group.tolist()  # balanced: 3 each, by their scores
    method.balanced = False
    assert method.global_assignments(features).tolist() == [0] * 12


def _merge_layout():
    from protocol.layout import Layout
    return Layout(keys=["w", "clusters.centroids", "clusters.counts"], shapes=[(2,), (2, 2), (2,)], fingerprint="g",
                  sum_merge=[(1, 2)], global_clusters=True)


def test_the_server_merges_sums_and_counts_into_a_lloyd_step_not_a_mean():
    strategy, cm, proxies, rec = make(FederatedAveraging, num_clients=2, layout=_merge_layout(),
                                      init=[np.zeros(2, np.float32), np.eye(2, dtype=np.float32),
                                            np.ones(2, np.float32)])
    strategy.configure_fit(1, strategy.initial_parameters, cm)
    up = [[np.ones(2, np.float32), np.array([[3, 0], [0, 0]], np.float32), np.array([3, 0], np.float32)],
          [np.ones(2, np.float32), np.array([[1, 1], [0, 4]], np.float32), np.array([1, 2], np.float32)]]
    res = [result(p, u, 10 * (k + 1), global_clusters_started=1.0) for k, (p, u) in enumerate(zip(proxies, up))]
    params, _ = strategy.aggregate_fit(1, res, [])
    from flwr.common import parameters_to_ndarrays
    w, c, n = parameters_to_ndarrays(params)
    assert np.allclose(c, [[1.0, 0.25], [0.0, 2.0]]) and n.tolist() == [4.0, 2.0]  # sums / counts over clients
    assert np.allclose(w, 1.0)  # the rest is averaged as usual
