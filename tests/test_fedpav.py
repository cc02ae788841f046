"""FedPav (docs/algorithms.md#fedpav): retrieval metrics by hand, Market-1501 names, the client's classifier,
cosine-distance weights, distillation targets, and the proxy's identity split."""

import json
import math

import numpy as np
import pytest
import torch
from flwr.app import RecordDict
from flwr.common import parameters_to_ndarrays
from PIL import Image

import tasks.reid.local as reid_local
from app.federation import build_client, build_layout
from protocol.hooks import ServerHooks
from strategies import FedPav
from tasks.common.data import DataError
from tasks.reid.data import client_eval, client_train, num_identities, parse_market_name, proxy_plan, read_market_split
from tasks.reid.distill import distill, distillation_target
from tasks.reid.model import build_reid_net, classifier_keys, embeddings
from tasks.reid.retrieval import retrieval_metrics
from tasks.reid.settings import reid_settings
from tasks.reid.train import cosine_distance_weight
from tests.test_end_to_end import run_main
from tests.test_strategy import FakeProxy, result



def net_of(cfg):
    """The shared part of the re-ID model the run's config builds (no classifier)."""
    return build_reid_net(reid_settings(cfg).network)

def _at(*degrees):
    return torch.tensor([[math.cos(math.radians(d)), math.sin(math.radians(d))] for d in degrees])


def test_map_and_cmc_match_a_hand_worked_example_with_junk_and_camera_exclusion():
    # gallery ordered by angle to query 0 (at 0 degrees): g0 .. g5
    gallery = _at(0, 10, 20, 30, 40, 50)
    g_ids = [1, 0, 2, 1, -1, 1]   # g1 junk (0000), g4 distractor (-1)
    g_cams = [1, 1, 2, 2, 1, 3]
    query = _at(0, 100, 20)
    q_ids, q_cams = [1, 3, 2], [1, 1, 1]
    m = retrieval_metrics(query, q_ids, q_cams, gallery, g_ids, g_cams)
    # query 0: g0 same id + same camera -> removed, g1 junk -> removed; ranked: g2 (neg), g3 (hit),
    #          g4 (distractor, neg), g5 (hit): AP = (1/2 + 2/4) / 2 = 0.5, first hit at rank 2
    # query 1: identity 3 has no gallery image -> not scored
    # query 2: nearest is g2 (id 2, camera 2): AP = 1, rank-1 hit
    assert m["num_queries"] == 2 and m["num_skipped"] == 1
    assert m["mAP"] == pytest.approx((0.5 + 1.0) / 2)
    assert m["rank1"] == pytest.approx(0.5) and m["rank5"] == 1.0 and m["rank10"] == 1.0
    # cameras unknown: g0 is a true match again: AP = (1/1 + 2/3 + 3/5) / 3
    m = retrieval_metrics(query[:1], [1], [-1], gallery, g_ids, [-1] * 6)
    assert m["mAP"] == pytest.approx((1 + 2 / 3 + 3 / 5) / 3) and m["rank1"] == 1.0


def _market_folder(root, names, size=(16, 8)):
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for n in names:
        Image.fromarray(rng.integers(0, 256, (size[0], size[1], 3), dtype=np.uint8)).save(root / n)


def test_market1501_names_are_parsed_and_junk_and_distractors_handled(tmp_path, make_cfg):
    assert parse_market_name("0002_c1s1_000451_03.jpg") == (2, 1)
    assert parse_market_name("-1_c3s2_012345_01.jpg") == (-1, 3)
    assert parse_market_name("0000_c6s4_001234_00.jpg") == (0, 6)
    assert parse_market_name("Thumbs.db") is None
    root = tmp_path / "market"
    _market_folder(root / "bounding_box_train", ["0002_c1s1_000451_03.jpg", "0002_c2s1_000551_01.jpg",
                                                 "0007_c1s1_000001_01.jpg", "0000_c1s1_000002_01.jpg",
                                                 "-1_c1s1_000003_01.jpg"])
    _market_folder(root / "query", ["0003_c1s1_000010_00.jpg"])
    _market_folder(root / "bounding_box_test", ["0003_c2s1_000011_01.jpg", "0000_c1s1_000012_01.jpg",
                                                "-1_c2s1_000013_01.jpg"])
    x, ids, cams = read_market_split(str(root / "query"), (32, 16))
    assert x.shape == (1, 32, 16, 3) and ids.tolist() == [3] and cams.tolist() == [1]
    cfg = make_cfg("strategy=fedpav", "dataset=reid_folders", "num_clients=1", f"dataset.roots=[{root}]",
                   "dataset.image_size=[32,16]")
    ids = reid_settings(cfg).identities
    assert num_identities(ids, 0) == 2  # 0002 and 0007; junk and distractors are never trained on
    x, y = client_train(ids, 0)
    assert len(x) == 3 and y.tolist() == [0, 0, 1]
    ev = client_eval(ids, 0)
    assert ev.gallery_ids.tolist() == [-1, 0, 3] and ev.gallery_cams.tolist() == [2, 1, 2]
    (root / "query" / "query_notes.jpg").write_bytes(b"")
    with pytest.raises(DataError, match="do not follow <id>_c<camera>"):
        read_market_split(str(root / "query"), (8, 8))
    with pytest.raises(DataError, match="dataset.roots lists 1 folders but num_clients=2"):
        client_train(reid_settings(dict(cfg, num_clients=2)).identities, 0)


def test_fedpav_runs_on_market1501_folders_one_per_client(tmp_path, data_dir, cache_dir):
    roots = []
    for k in range(2):
        root = tmp_path / f"site{k}"
        train = [f"{i:04d}_c{c}s1_{j:06d}_01.jpg" for i in (1 + 10 * k, 2 + 10 * k, 3 + 10 * k)
                 for c in (1, 2) for j in range(3)]
        _market_folder(root / "bounding_box_train", train)
        _market_folder(root / "query", [f"{i:04d}_c1s1_000100_00.jpg" for i in (5, 6)])
        _market_folder(root / "bounding_box_test", [f"{i:04d}_c2s1_00010{j}_01.jpg" for i in (5, 6) for j in range(3)]
                       + ["0000_c1s1_000200_01.jpg", "-1_c3s1_000201_01.jpg"])
        roots.append(str(root))
    _market_folder(tmp_path / "public", [f"p{i}.jpg" for i in range(20)])
    s = run_main(tmp_path, data_dir, cache_dir, "strategy=fedpav", "dataset=reid_folders", "num_clients=2",
                 f"dataset.roots=[{','.join(roots)}]", f"dataset.public_root={tmp_path / 'public'}",
                 "dataset.image_size=[32,16]", "strategy.kd=true", "strategy.kd_every=1", "strategy.cdw=true",
                 "reid.batch_size=8", "examples_per_client=null")
    assert s["status"] == "completed" and s["final"]["num_queries"] == 4
    assert set(s["final"]["per_client"]) == {"0", "1"} and 0 <= s["final"]["mAP"] <= 1
    assert all("kd_loss" in r and set(r["clients"]) == {"0", "1"} for r in s["rounds"])


def test_the_classifier_never_leaves_the_client_and_survives_rounds(make_cfg, monkeypatch):
    cfg = make_cfg("strategy=fedpav", "dataset=cifar100_reid", "num_clients=3")
    layout, initial = build_layout(cfg)
    assert not [k for k in layout.keys if k.startswith("classifier")]
    seen = []
    real = reid_local.train_local

    def spy(net, *args, **kw):
        seen.append(net.classifier.weight.detach().clone())
        return real(net, *args, **kw)

    monkeypatch.setattr(reid_local, "train_local", spy)
    state = RecordDict()
    client = build_client(cfg, 1, state)
    config = {"server_round": 1, "layout": layout.fingerprint, "replace": True, "cdw": True}
    arrays, n, metrics = client.fit(initial, config)
    assert [a.shape for a in arrays] == [tuple(s) for s in layout.shapes]  # the shared part only
    settings = reid_settings(cfg)
    assert metrics["num_identities"] == num_identities(settings.identities, 1) and 0 <= metrics["cdw"] <= 2
    kept = state["fedssl.local_weights"].to_torch_state_dict()
    assert sorted(kept) == ["classifier.bias", "classifier.weight"]
    assert kept["classifier.weight"].shape == (num_identities(settings.identities, 1), int(cfg["reid"]["embedding_dim"]))
    trained = kept["classifier.weight"].clone()
    assert not torch.equal(trained, seen[0])  # it trained
    other = [a + 0.01 for a in arrays]  # a new global model arrives ...
    build_client(cfg, 1, state).fit(other, dict(config, server_round=2))
    assert torch.equal(seen[1], trained)  # ... and the client re-attaches its own classifier to it
    # another client has its own classifier size and initialisation
    other_net = build_reid_net(settings.network, num_identities(settings.identities, 2), 2)
    assert classifier_keys(other_net) == ["classifier.weight", "classifier.bias"]


def test_cosine_distance_weight_and_fedpav_aggregation_by_hand():
    before = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    after = torch.tensor([[2.0, 0.0], [1.0, 0.0]])  # cos 1 and 0 -> distances 0 and 1
    assert cosine_distance_weight(before, after) == pytest.approx(0.5)

    def make(cdw):
        records = []
        hooks = ServerHooks(evaluate=lambda r, m, f: {"final": f}, report=records.append,
                            save_checkpoint=lambda m, r: "c")
        from protocol.layout import Layout

        layout = Layout(keys=["backbone.w"], shapes=[(2,)], fingerprint="f")
        return FedPav(layout=layout, hooks=hooks, initial_arrays=[np.zeros(2, np.float32)], num_rounds=2,
                      num_clients=2, cdw=cdw)

    from flwr.server.client_manager import SimpleClientManager

    for cdw, expected, weights in ((False, 1 * 0.75 + 3 * 0.25, [0.75, 0.25]), (True, 1 * 0.25 + 3 * 0.75, [0.25, 0.75])):
        strategy = make(cdw)
        cm = SimpleClientManager()
        proxies = [FakeProxy("a", 0), FakeProxy("b", 1)]
        for p in proxies:
            cm.register(p)
        ins = strategy.configure_fit(1, strategy.initial_parameters, cm)
        assert all(fi.config["cdw"] is cdw for _, fi in ins)
        res = [result(proxies[0], [np.full(2, 1.0, np.float32)], 300, cdw=0.1),
               result(proxies[1], [np.full(2, 3.0, np.float32)], 100, cdw=0.3)]
        params, _ = strategy.aggregate_fit(1, res, [])
        assert np.allclose(parameters_to_ndarrays(params)[0], expected)
        assert [strategy.record["clients"][p]["weight"] for p in ("0", "1")] == pytest.approx(weights)


def test_distillation_target_is_the_mean_of_normalised_teacher_embeddings(make_cfg):
    t = distillation_target([torch.tensor([[3.0, 4.0]]), torch.tensor([[0.0, 2.0]])])
    assert torch.allclose(t, torch.tensor([[0.3, 0.9]]))  # mean of (0.6, 0.8) and (0, 1)
    cfg = make_cfg("strategy=fedpav", "dataset=cifar100_reid", "reid.kd_lr=0.05", "reid.kd_batch_size=16")
    student, teachers = net_of(cfg), [net_of(dict(cfg, seed=seed)) for seed in (1, 2)]
    public = np.random.default_rng(0).integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    cpu = torch.device("cpu")
    target = distillation_target([embeddings(t, public, cpu, flip=False) for t in teachers])

    def gap():  # eval mode: the embedding the student will be judged by
        return float(((embeddings(student, public, cpu, flip=False) - target) ** 2).mean())

    before = gap()
    for _ in range(5):
        distill(student, teachers, public, reid_settings(cfg).distillation, cpu, torch.Generator().manual_seed(0))
    assert gap() < 0.95 * before  # the student moved towards the teachers' mean embedding


def test_the_proxy_gives_disjoint_identity_sets_of_different_sizes():
    plan = proxy_plan(num_clients=5, num_classes=100, public=10, eval_fraction=0.3, ratio=3.0, seed=0)
    train_sizes = [len(c) for c in plan.train_classes]
    everyone = [set(c) for c in plan.train_classes] + [set(c) for c in plan.eval_classes] + [set(plan.public_classes)]
    assert sum(len(s) for s in everyone) == len(set().union(*everyone)) == 100  # disjoint, all used
    assert max(train_sizes) >= 2.5 * min(train_sizes)
    assert all(len(e) >= 2 for e in plan.eval_classes)
    with pytest.raises(DataError, match="need at least 4 identities each"):
        proxy_plan(num_clients=30, num_classes=100, public=10, eval_fraction=0.3, ratio=3.0, seed=0)


def test_fedpav_command_writes_retrieval_results_per_client(tmp_path, data_dir, cache_dir):
    s = run_main(tmp_path, data_dir, cache_dir, "strategy=fedpav", "dataset=cifar100_reid", "num_clients=3",
                 "strategy.cdw=true", "strategy.kd=true", "strategy.kd_every=2")
    assert s["status"] == "completed"
    assert [r["round"] for r in s["retrieval"]] == [1, 2] and set(s["retrieval"][-1]["per_client"]) == {"0", "1", "2"}
    weights = [c["weight"] for c in s["rounds"][0]["clients"].values()]
    assert sum(weights) == pytest.approx(1.0)
    assert "kd_loss" not in s["rounds"][0] and s["rounds"][1]["kd_teachers"] == [0, 1, 2]
    ckpt = torch.load(tmp_path / "run" / "checkpoint_final.pt", weights_only=True)
    assert not [k for k in ckpt["keys"] if k.startswith("classifier")]
    json.dumps(s)  # plain JSON
    # the run's plots: rank-1/mAP curves, loss, bytes; no divergence (FedPav measures none)
    for name in ("accuracy.png", "loss.png", "bytes.png"):
        assert (tmp_path / "run" / name).stat().st_size > 1000, name
    assert not (tmp_path / "run" / "divergence.png").exists()


def test_re_id_config_mistakes_are_refused_before_training(make_cfg):
    from app.config import ConfigError
    from app.simulation import preflight

    with pytest.raises(ConfigError, match="Use strategy=fedpav or strategy=standalone"):
        preflight(make_cfg("strategy=fedu", "dataset=cifar100_reid"))
    with pytest.raises(ConfigError, match="Use dataset=cifar100_reid"):
        preflight(make_cfg("strategy=fedpav", "dataset=cifar100"))
    with pytest.raises(DataError, match="fewer than reid.batch_size=100"):
        preflight(make_cfg("strategy=fedpav", "dataset=cifar100_reid", "reid.batch_size=100"))
    with pytest.raises(ConfigError, match="strategy.kd_every must be an integer >= 1"):
        preflight(make_cfg("strategy=fedpav", "dataset=cifar100_reid", "strategy.kd_every=0"))
    with pytest.raises(DataError, match="re-ID folder /nonexistent/bounding_box_train does not exist"):
        preflight(make_cfg("strategy=fedpav", "dataset=reid_folders", "num_clients=1", "dataset.roots=[/nonexistent]"))


def test_dropout_masks_follow_the_client_round_stream_not_the_reseeded_global_generator(make_cfg):
    """build_reid_net re-seeds torch's global generator for identical weights on every node; the
    dropout masks must still change from round to round (they come from the client's generator)."""
    from tasks.common.training import client_generator

    cfg = make_cfg("strategy=fedpav", "dataset=cifar100_reid")
    x = torch.ones(16, int(cfg["reid"]["embedding_dim"]))

    def mask(server_round, pid=1):
        net = net_of(cfg).train()  # re-seeds the global generator, as every fit does
        net.use_generator(client_generator(int(cfg["seed"]), server_round, pid))
        return net.embedding[2](x)

    assert torch.equal(mask(1), mask(1))  # reproducible
    assert not torch.equal(mask(1), mask(2)) and not torch.equal(mask(1), mask(1, pid=2))
    assert set(mask(1).unique().tolist()) <= {0.0, 1 / (1 - float(cfg["reid"]["dropout"]))}


def test_the_spec_form_of_distillation_trains_the_raw_embedding(make_cfg):
    """reid.kd_form=spec: MSE(student(x), t(x)) on the raw embedding (the rule as written in docs/algorithms.md#knowledge-distillation-on-the-server), plain SGD;
    the default compares the L2-normalised embedding. Each form's loss falls pass after pass, and the
    raw form's is on the raw embedding's scale (a unit-variance BatchNorm output against t(x) of norm <= 1)."""
    public = np.random.default_rng(0).integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    losses = {}
    for form in ("spec", "normalised"):
        cfg = make_cfg("strategy=fedpav", "dataset=cifar100_reid", "reid.kd_lr=0.05", "reid.kd_batch_size=16",
                       f"reid.kd_form={form}")
        student, teachers = net_of(cfg), [net_of(dict(cfg, seed=seed)) for seed in (1, 2)]
        losses[form] = [distill(student, teachers, public, reid_settings(cfg).distillation, torch.device("cpu"),
                                torch.Generator().manual_seed(0)) for _ in range(4)]
        assert losses[form][-1] < losses[form][0]
    assert losses["spec"][0] > 10 * losses["normalised"][0]
