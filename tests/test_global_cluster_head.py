"""Global DeepCluster on the server (strategies/cluster_merge.py), driven through the strategy's
aggregate_fit with fake uploads: an empty cluster keeps the global centroid the round started from
(not the mean of the uploaded sums), and the head tied to the clusters is re-initialised where its
classes changed meaning (all of it when the global clusters start, the rows of a repaired cluster
and its donor later), the same on a rerun of the round (DeepCluster, Caron et al. 2018)."""

import numpy as np
import pytest
import torch
from flwr.common import parameters_to_ndarrays

from protocol.clustering import merge_centroids
from protocol.layout import Layout
from strategies import FederatedAveraging
from strategies.cluster_merge import HEAD_STD
from tests.test_strategy import make, result

K, D = 4, 3
PREVIOUS = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0.6, 0.8, 0]], np.float32)  # the round's global centroids


def _layout():
    return Layout(keys=["w", "clusters.centroids", "clusters.counts", "head.weight", "head.bias"],
                  shapes=[(2,), (K, D), (K,), (K, D), (K,)], fingerprint="g", sum_merge=[(1, 2)],
                  global_clusters=True, cluster_heads=[(1, (3, 4))])


def _strategy(counts_started=(1.0, 1.0, 1.0, 1.0), seed=0):
    init = [np.zeros(2, np.float32), PREVIOUS.copy(), np.asarray(counts_started, np.float32),
            np.full((K, D), 0.5, np.float32), np.full(K, 0.5, np.float32)]
    return make(FederatedAveraging, num_clients=2, layout=_layout(), init=init, seed=seed)


def _upload(sums, counts, head_value):
    return [np.ones(2, np.float32), np.asarray(sums, np.float32), np.asarray(counts, np.float32),
            np.full((K, D), head_value, np.float32), np.full(K, head_value, np.float32)]


def _round(uploads, started, server_round=1, seed=0):
    strategy, cm, proxies, _ = _strategy(seed=seed)
    strategy.configure_fit(server_round, strategy.initial_parameters, cm)
    res = [result(p, u, 10, global_clusters_started=started) for p, u in zip(proxies, uploads)]
    params, _ = strategy.aggregate_fit(server_round, res, [])
    return parameters_to_ndarrays(params)


def test_an_empty_cluster_without_a_donor_keeps_the_global_centroid_the_round_started_from():
    # every cluster holds at most one image in total: no donor, so cluster 2 (nobody's) is not repaired
    uploads = [_upload([[2, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]], [1, 0, 0, 0], 1.0),
               _upload([[0, 0, 0], [0, 3, 0], [0, 0, 0], [0, 0, 4]], [0, 1, 0, 1], 3.0)]
    _, c, n, hw, hb = _round(uploads, started=1.0)
    assert n.tolist() == [1, 1, 0, 1]
    assert np.allclose(c[2], PREVIOUS[2])  # before the fix: the mean of the sums, [0, 0, 0]
    assert np.allclose(c[[0, 1, 3]], [[2, 0, 0], [0, 3, 0], [0, 0, 4]])  # sums / counts
    assert np.allclose(hw, 2.0) and np.allclose(hb, 2.0)  # nothing repaired: the head is the plain average


def test_a_repaired_cluster_and_its_donor_get_new_head_rows_and_the_others_keep_the_average():
    uploads = [_upload([[4, 0, 0], [0, 2, 0], [0, 0, 0], [0, 0, 0]], [4, 2, 0, 0], 1.0),
               _upload([[2, 0, 0], [0, 1, 0], [0, 0, 0], [0, 0, 6]], [2, 1, 0, 6], 3.0)]
    _, c, n, hw, hb = _round(uploads, started=1.0)
    sums = [u[1] for u in uploads]
    seed = int(np.random.SeedSequence([0, 1, 8]).generate_state(1)[0])
    expected = merge_centroids(sums, [u[2] for u in uploads], PREVIOUS, seed=seed)
    assert expected.refilled == (2,) and len(expected.donors) == 1
    donor = expected.donors[0]
    assert np.allclose(c, expected.centroids)  # the merge is given the round's global centroids
    changed = {2, donor}
    for j in range(K):
        if j in changed:  # DeepCluster's initialisation: small weights, zero bias
            assert not np.allclose(hw[j], 2.0) and np.abs(hw[j]).max() < 6 * HEAD_STD and hb[j] == 0
        else:
            assert np.allclose(hw[j], 2.0) and hb[j] == pytest.approx(2.0)
    again = _round(uploads, started=1.0)  # seeded by (seed, round): a resumed run repeats it
    assert np.array_equal(again[3], hw) and np.array_equal(again[4], hb)


def test_the_whole_head_is_reinitialised_when_the_server_starts_the_global_clusters():
    uploads = [_upload([[4, 0, 0], [0, 2, 0], [0, 0, 2], [0, 0, 0]], [4, 2, 2, 0], 1.0),
               _upload([[2, 2, 0], [0, 0, 0], [0, 0, 0], [0, 0, 6]], [2, 0, 0, 6], 3.0)]
    _, c, n, hw, hb = _round(uploads, started=0.0)
    assert n.sum() == 16 and np.isfinite(c).all()
    assert np.abs(hw - 2.0).min() > 0.5 and np.abs(hw).max() < 6 * HEAD_STD and np.all(hb == 0)
    assert np.array_equal(_round(uploads, started=0.0)[3], hw)  # the same on every rerun of the round
    assert not np.array_equal(_round(uploads, started=0.0, server_round=2)[3], hw)  # a new draw each round


def test_global_deepcluster_declares_its_head_rows_and_local_does_not(make_cfg):
    from tasks.ssl.model import build_federated_method, ssl_layout
    from tasks.ssl.settings import ssl_settings

    cfg = make_cfg("strategy=fedavg", "ssl=deepcluster", "ssl.clusters=global", "ssl.num_clusters=4")
    _, _, keys = build_federated_method(ssl_settings(cfg))
    layout, _ = ssl_layout(ssl_settings(cfg), {})
    assert layout.cluster_heads == [(keys.index("clusters.centroids"),
                                     (keys.index("head.weight"), keys.index("head.bias")))]
    local, _ = ssl_layout(ssl_settings(make_cfg("strategy=fedavg", "ssl=deepcluster", "ssl.num_clusters=4")), {})
    assert local.cluster_heads == [] and local.sum_merge == []


def test_a_client_does_not_reset_the_global_head_once_the_global_clusters_have_started():
    from tests.test_clustering_methods import _images, _method

    method = _method(clusters="global")
    method.clusters.counts.fill_(1.0)
    with torch.no_grad():
        method.head.weight.fill_(0.25)
    method.start_epoch(0, _images(12), torch.Generator().manual_seed(0))
    assert torch.all(method.head.weight == 0.25)  # the server's head is the federation's


def test_global_deepcluster_at_smoke_size_keeps_a_quarter_of_its_clusters_filled_in_round_3(tmp_path, data_dir,
                                                                                             cache_dir):
    """The regression guard for the collapse (benchmarks/deepcluster_collapse.py): with the merge's
    fixes and the trained backbone's sums, every client's images still fill at least a quarter of
    the 32 clusters in round 3 (a collapse leaves 1-2), and the round records the global count."""
    import json

    from tests.conftest import smoke_run

    run = smoke_run(tmp_path / "dc", data_dir, cache_dir, "strategy=fedavg", "ssl=deepcluster", "ssl.clusters=global",
                    "dataset=cifar10", "partition=classes", "num_clients=5", "num_rounds=3", "eval_every=0",
                    "eval.linear=false", "seed=0", "wandb.mode=disabled", "progress=false")
    rounds = json.loads((run / "summary.json").read_text())["rounds"]
    third = rounds[2]
    assert min(c["clusters_filled"] for c in third["clients"].values()) >= 32 // 4, third["clients"]
    assert third["global_clusters_filled"] >= 32 // 8 and 0 < third["global_largest_share"] < 1, third
    assert [r["global_clusters_filled"] for r in rounds][0] > 16  # round 1: the start from the local clusters
