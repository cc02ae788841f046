"""SDR (docs/algorithms.md#sdr): Sinkhorn marginals, paths that use exactly their groups, group-wise
aggregation, progressive stages, the exported backbone, and the two commands end to end."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from flwr.common import parameters_to_ndarrays
from flwr.server.client_manager import SimpleClientManager

from protocol.hooks import ServerHooks
from protocol.layout import Layout
from strategies import FedSDR
from tasks.common.sinkhorn import sinkhorn
from tasks.common.precision import Compute
from tasks.sdr.model import SDRSimSiam
from tasks.sdr.net import SDRNet, all_paths, export_path, load_backbone, save_backbone
from tasks.sdr.train import centroid_loss, path_in_stage, stage_of_round, train_sdr_round
from tests.conftest import ROOT
from tests.test_strategy import FakeProxy, result


def small_net():
    torch.manual_seed(0)
    return SDRNet(stem=4, shared=(4, 6, 8), group=(2, 3, 4), groups=2, strides=(1, 2, 2))


def test_sinkhorn_assignments_have_the_required_marginals_and_train_the_centroids():
    torch.manual_seed(0)  # was unseeded: about half of all draws need more than 50 iterations at eps 0.05
    scores = torch.rand(12, 4) * 2 - 1  # cosine similarities, as cluster_scores gives
    u = sinkhorn(scores, epsilon=0.05, iterations=1000)
    assert torch.allclose(u.sum(1), torch.ones(12), atol=1e-5)  # each sample: one unit of assignment
    assert torch.allclose(u.sum(0), torch.full((4,), 3.0), atol=1e-2)  # equal-size clusters: N/K each
    feats = torch.randn(64, 8)
    centroids = torch.nn.Parameter(torch.randn(4, 8))
    opt = torch.optim.SGD([centroids], lr=0.5)
    first = None
    for _ in range(30):
        loss = centroid_loss(feats, centroids)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first


def test_paths_are_enumerated_and_a_path_uses_exactly_its_groups():
    net = small_net().eval()
    assert net.num_paths == 8 and all_paths(2, 3)[5] == (1, 0, 1) and net.path_groups(5) == (1, 0, 1)
    with pytest.raises(ValueError, match="path 8 does not exist"):
        net.path_groups(8)
    x = torch.rand(3, 3, 16, 16)
    assert net(x, 5).shape == (3, 8 + 4) and net(x).shape == (3, 8 + 2 * 4)
    before = net(x, 5)
    block = net.blocks[1]  # path 5 uses group 0 in block 1: group 1's filters must not matter
    with torch.no_grad():
        block.conv1.weight[6 + 3:] += 1.0
        block.bn2.weight[6 + 3:] *= 3
    assert torch.allclose(net(x, 5), before)
    with torch.no_grad():
        block.conv1.weight[6:6 + 3] += 1.0  # its own group does
    assert not torch.allclose(net(x, 5), before)
    # gradients reach only the path's channels
    net.train()
    net.zero_grad()
    net(x, 5).sum().backward()
    g = net.blocks[1].conv2.weight.grad
    assert g[6 + 3:].abs().sum() == 0 and g[:, 6 + 3:].abs().sum() == 0 and g[:6 + 3, :6 + 3].abs().sum() > 0


def test_an_individual_group_is_averaged_only_over_the_clients_that_routed_to_it():
    # arrays: [shared weight (2,), block-0 conv rows: 1 shared row + group 0 row + group 1 row]
    layout = Layout(keys=["heads.w", "net.blocks.0.conv1.weight"], shapes=[(2,), (3, 1)], fingerprint="f",
                    regions=[(1, 1, 2, 0, 0), (1, 2, 3, 0, 1)], path_groups=[(0,), (1,)])
    hooks = ServerHooks(evaluate=lambda r, m, f: {"final": f}, report=lambda rec: None, save_checkpoint=lambda m, r: "")
    strategy = FedSDR(layout=layout, hooks=hooks, initial_arrays=[np.zeros(2, np.float32), np.zeros((3, 1), np.float32)],
                      num_rounds=2, num_clients=3)
    cm = SimpleClientManager()
    proxies = [FakeProxy(f"n{k}", k) for k in range(3)]
    for p in proxies:
        cm.register(p)
    strategy.configure_fit(1, strategy.initial_parameters, cm)
    res = [result(proxies[0], [np.full(2, 1.0, np.float32), np.full((3, 1), 1.0, np.float32)], 100, routed_0=30),
           result(proxies[1], [np.full(2, 2.0, np.float32), np.full((3, 1), 2.0, np.float32)], 100, routed_0=10, routed_1=90),
           result(proxies[2], [np.full(2, 4.0, np.float32), np.full((3, 1), 4.0, np.float32)], 200)]
    params, _ = strategy.aggregate_fit(1, res, [])
    heads, conv = parameters_to_ndarrays(params)
    assert np.allclose(heads, (1 * 100 + 2 * 100 + 4 * 200) / 400)  # shared: every client, by examples
    assert conv[0, 0] == pytest.approx(2.75)  # shared row of the block, by examples
    assert conv[1, 0] == pytest.approx((1 * 30 + 2 * 10) / 40)  # group 0: clients 0 and 1, by routed samples
    assert conv[2, 0] == pytest.approx(2.0)  # group 1: client 1 only
    assert strategy.record["groups"]["0.1"] == {"clients": [1], "samples": 90}


def test_progressive_stages_grow_the_path_space_from_the_last_block():
    assert [stage_of_round(r, 8, 3) for r in range(1, 9)] == [0, 0, 1, 1, 2, 2, 3, 3]
    # cluster 7 = groups (1, 1, 1): stage 1 keeps the last block's choice, stage 2 the last two
    assert [path_in_stage(7, s, 2, 3) for s in range(4)] == [None, 1, 3, 7]
    assert {path_in_stage(c, 1, 2, 3) for c in range(8)} == {0, 1}
    model = SDRSimSiam(small_net(), proj_dim=8, pred_hidden=4)
    images = np.random.default_rng(0).integers(0, 256, (32, 16, 16, 3), dtype=np.uint8)
    clusters = np.arange(32) % 8
    stats = train_sdr_round(model, images, clusters, 1, epochs=1, batch_size=8, lr=0.01, momentum=0.9,
                            weight_decay=0.0, kd_weight=1.0, compute=Compute(torch.device("cpu")),
                            generator=torch.Generator().manual_seed(0), who="test")
    # stage 1: clusters 0..7 fall on paths 0 and 1 (16 samples each); 4 steps, each trains one of them
    assert set(stats["path_steps"]) <= {0, 1} and sum(stats["path_steps"].values()) == 4
    assert stats["routed"] == {p: 16 for p in stats["path_steps"]}
    stats = train_sdr_round(model, images, clusters, 0, epochs=1, batch_size=8, lr=0.01, momentum=0.9,
                            weight_decay=0.0, kd_weight=1.0, compute=Compute(torch.device("cpu")),
                            generator=torch.Generator().manual_seed(0), who="test")
    assert stats["routed"] == {} and stats["path_steps"] == {}  # stage 0: the full network only


def test_the_exported_backbone_gives_the_features_of_its_path(tmp_path):
    net = small_net()
    net.train()
    for _ in range(3):  # non-trivial BatchNorm statistics
        net(torch.rand(4, 3, 16, 16), 6)
    net.eval()
    x = torch.rand(5, 3, 16, 16)
    path = save_backbone(tmp_path / "b.pt", export_path(net, 6), {"path": 6})
    backbone = load_backbone(path)
    assert backbone.groups == 1 and backbone.num_paths == 1
    assert torch.allclose(backbone(x), net(x, 6), atol=1e-5)
    (tmp_path / "bad.pt").write_bytes(b"truncated")
    from tasks.common.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="corrupt or not a checkpoint"):
        load_backbone(tmp_path / "bad.pt")


def test_sdr_pretraining_and_routing_commands(tmp_path, data_dir, cache_dir):
    base = [sys.executable, "main.py", f"data_dir={data_dir}", f"cache_dir={cache_dir}"]
    train = subprocess.run(base + ["strategy=sdr", "dataset=cifar100", "num_clients=2", "experiment=smoke",
                                   "num_rounds=4", f"output_dir={tmp_path / 'sdr'}"],
                           cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert train.returncode == 0, train.stderr[-3000:]
    s = json.loads((tmp_path / "sdr" / "summary.json").read_text())
    assert s["status"] == "completed" and [c["stage"] for c in (r["clients"]["0"] for r in s["rounds"])] == [0, 1, 2, 3]
    assert len(s["final"]["path_knn"]) == 8
    for name in ("accuracy.png", "loss.png", "bytes.png"):  # accuracy.png: kNN curve and each path's kNN
        assert (tmp_path / "sdr" / name).stat().st_size > 1000, name
    route = subprocess.run(base + ["mode=route", f"checkpoint={tmp_path / 'sdr' / 'checkpoint_final.pt'}",
                                   "dataset=cifar100", "route.superclasses=[fish,flowers]", "route.bank_size=200",
                                   "route.val_size=100", "route.test_size=100", "route.linear_epochs=5",
                                   f"output_dir={tmp_path / 'route'}"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert route.returncode == 0, route.stderr[-3000:]
    report = json.loads((tmp_path / "route" / "route.json").read_text())
    assert report["num_classes"] == 10 and len(report["ranked"]) == 8
    assert report["ranked"][0]["val_knn"] >= report["ranked"][-1]["val_knn"]
    assert (tmp_path / "route" / f"backbone_path{report['chosen']['path']}.pt").is_file()
    assert "| 1 |" in route.stdout
    wrong = subprocess.run(base + ["mode=route", f"checkpoint={tmp_path / 'missing.pt'}", "dataset=cifar10"],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert wrong.returncode != 0 and "does not exist" in wrong.stderr
