"""The comparison methods (docs/algorithms.md#the-other-local-methods): losses by hand, what each uploads, one real step each."""

import math

import numpy as np
import pytest
import torch

from tasks.common.losses import negative_cosine
from tasks.common.sinkhorn import sinkhorn
from tasks.common.precision import Compute
from tasks.ssl.methods import build_method
from tasks.ssl.methods.moco import MoCo, moco_infonce
from tasks.ssl.methods.simclr import nt_xent
from tasks.ssl.model import kept_keys, upload_keys
from tasks.ssl.train import train_one_round

TINY = {"arch": "resnet10", "width": 0.125}


def test_negative_cosine_by_hand():
    p = torch.tensor([[1.0, 0.0], [3.0, 4.0]])
    z = torch.tensor([[0.0, 1.0], [3.0, 4.0]])
    assert negative_cosine(p, z).item() == pytest.approx(-0.5)  # (0 + -1) / 2


def test_nt_xent_by_hand():
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    z1, z2 = torch.stack([e1, e2]), torch.stack([e1, e2])
    # each view: positive cos 1, negatives cos 0 and 0 (itself excluded): -log(e / (e + 2))
    assert nt_xent(z1, z2, 1.0).item() == pytest.approx(math.log((math.e + 2) / math.e))
    assert nt_xent(z1, z2, 0.5).item() == pytest.approx(math.log((math.e ** 2 + 2) / math.e ** 2))


def test_moco_infonce_by_hand():
    q, k = torch.tensor([[2.0, 0.0]]), torch.tensor([[1.0, 0.0]])
    queue = torch.tensor([[0.0, 1.0], [1.0, 0.0]])  # two negatives: (0, 1) and (1, 0)
    expected = -math.log(math.e / (math.e + 1 + math.e))
    assert moco_infonce(q, k, queue, 1.0).item() == pytest.approx(expected)


def test_sinkhorn_marginals():
    torch.manual_seed(0)
    scores = torch.randn(12, 4)
    q = sinkhorn(scores, epsilon=0.5, iterations=100)
    assert torch.allclose(q.sum(1), torch.ones(12), atol=1e-4)  # each sample: a distribution
    assert torch.allclose(q.sum(0), torch.full((4,), 12 / 4), atol=1e-3)  # equal partition
    q3 = sinkhorn(scores)  # SwAV's setting: 3 iterations, eps 0.05; sample marginals exact
    assert torch.allclose(q3.sum(1), torch.ones(12), atol=1e-4)


def test_moco_queue_is_fifo_and_wraps():
    m = MoCo(**TINY, proj_dim=2, queue_size=3)
    m.queue.push(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    m.queue.push(torch.tensor([[-1.0, 0.0], [0.0, -1.0]]))
    assert int(m.queue.ptr) == 1
    assert torch.equal(m.queue.keys.T, torch.tensor([[0.0, -1.0], [0.0, 1.0], [-1.0, 0.0]]))


@pytest.mark.parametrize("name, uploaded, local", [
    ("simsiam", {"online", "predictor"}, set()),
    ("simclr", {"online"}, set()),
    ("moco", {"online"}, {"key", "queue"}),
    ("mocov2", {"online"}, {"key", "queue"}),
    ("swav", {"online", "prototypes"}, set()),
])
def test_each_method_declares_what_it_uploads_and_keeps(name, uploaded, local):
    from app.config import compose, to_plain

    cfg = to_plain(compose(["experiment=smoke", f"ssl={name}", "strategy=fedavg"]))
    m = build_method(cfg["ssl"], cfg["model"])
    plan = m.sync_plan("online")
    keys = upload_keys(m, plan)
    assert {k.split(".")[0] for k in keys} == uploaded
    kept = kept_keys(m, plan, keys, keep_everything=False, keep_optional=False)
    assert {k.split(".")[0] for k in kept} == local
    with pytest.raises(ValueError, match="BYOL only"):
        m.sync_plan("target")


@pytest.mark.parametrize("name", ["simsiam", "simclr", "moco", "mocov2", "swav"])
def test_each_method_trains_one_round(name):
    from app.config import compose, to_plain

    cfg = to_plain(compose(["experiment=smoke", f"ssl={name}", "strategy=fedavg", "ssl.proj_dim=16"]
                           + (["ssl.queue_size=64"] if name.startswith("moco") else [])
                           + (["ssl.num_prototypes=10"] if name == "swav" else [])))
    torch.manual_seed(0)
    m = build_method(cfg["ssl"], cfg["model"])
    m.init_local_parts({"online"})
    before = {k: v.clone() for k, v in m.state_dict().items()}
    images = np.random.default_rng(0).integers(0, 255, (32, 32, 32, 3), dtype=np.uint8)
    stats = train_one_round(m, images, epochs=1, batch_size=16, lr=0.05, momentum=0.9, weight_decay=5e-4,
                            compute=Compute(torch.device("cpu")), generator=torch.Generator().manual_seed(0),
                            progress_start=0, progress_span=1, who="test")
    assert math.isfinite(stats["loss"]) and stats["steps"] == 2
    assert not torch.equal(before["online.backbone.conv1.weight"], m.state_dict()["online.backbone.conv1.weight"])
    if name.startswith("moco"):
        assert int(m.queue.ptr) == 2 * 2 * 16 % 64  # two steps of 2 x 16 keys
        assert not torch.equal(before["key.backbone.conv1.weight"], m.state_dict()["key.backbone.conv1.weight"])


def test_fedu_refuses_a_method_other_than_byol(make_cfg):
    from app.config import ConfigError
    from app.simulation import preflight

    with pytest.raises(ConfigError, match="strategy=fedu is defined for BYOL"):
        preflight(make_cfg("ssl=simclr"))


def test_shuffling_bn_normalises_keys_with_other_samples_than_their_queries():
    """MoCo's shuffling BN on one device (docs/algorithms.md#the-other-local-methods): with a BatchNorm-only encoder, queries are
    normalised per sub-batch of the batch's order, keys per sub-batch of a shuffled order (by hand)."""
    from tasks.ssl.methods.moco import shuffled_forward, split_forward

    bn = torch.nn.BatchNorm1d(1, affine=False).train()
    x = torch.arange(8, dtype=torch.float32).view(8, 1)

    def normalised(v):
        return (v - v.mean()) / torch.sqrt(v.var(unbiased=False) + bn.eps)

    queries = split_forward(bn, x, 2)
    assert torch.allclose(queries, torch.cat([normalised(x[:4]), normalised(x[4:])]))
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(3))
    keys = shuffled_forward(bn, x, 2, torch.Generator().manual_seed(3))
    halves = [perm[:4], perm[4:]]
    for i in range(8):
        mine = next(h for h in halves if i in h)
        assert torch.allclose(keys[i], normalised(x[mine])[(mine == i).nonzero()[0, 0]])
    assert not torch.allclose(keys, queries)  # a key's statistics come from other samples than its query's
    assert torch.equal(split_forward(bn, x, 1), bn(x)) and torch.equal(shuffled_forward(bn, x, 1, None), bn(x))


def test_moco_with_one_split_is_plain_batchnorm_and_with_two_depends_on_the_shuffle():
    torch.manual_seed(0)
    m = MoCo(**TINY, proj_dim=8, queue_size=32, shuffle_bn_splits=1)
    m.init_local_parts({"online"})
    views = [torch.rand(8, 3, 32, 32), torch.rand(8, 3, 32, 32)]
    one = m.loss(views, torch.Generator().manual_seed(0))
    assert one.item() == pytest.approx(m.loss(views, torch.Generator().manual_seed(1)).item())
    m.splits = 2
    a, b = (m.loss(views, torch.Generator().manual_seed(s)).item() for s in (0, 1))
    assert a != pytest.approx(b) and a != pytest.approx(one.item())


def test_learning_rate_warm_up_rises_linearly_over_its_share_of_the_run(monkeypatch):
    """ssl.warmup_rounds (issue 14): step s of the run's first rounds trains at lr * s / warm-up steps."""
    import tasks.ssl.train as ssl_train
    from app.config import compose, to_plain

    cfg = to_plain(compose(["experiment=smoke", "strategy=fedavg", "ssl=simsiam", "ssl.proj_dim=16"]))
    m = build_method(cfg["ssl"], cfg["model"])
    m.init_local_parts({"online"})
    seen = []
    real = ssl_train.sgd_step

    def record(opt, *a, **k):
        seen.append(opt.param_groups[0]["lr"])
        return real(opt, *a, **k)

    monkeypatch.setattr(ssl_train, "sgd_step", record)
    images = np.random.default_rng(0).integers(0, 255, (64, 32, 32, 3), dtype=np.uint8)
    kw = dict(epochs=1, batch_size=16, lr=0.1, momentum=0.9, weight_decay=0.0, compute=Compute(torch.device("cpu")),
              who="test", warmup_until=0.5)
    # a run of 2 rounds of 4 steps, warm-up over its first half: round 1 climbs, round 2 is at lr
    ssl_train.train_one_round(m, images, generator=torch.Generator().manual_seed(0), progress_start=0.0,
                              progress_span=0.5, **kw)
    ssl_train.train_one_round(m, images, generator=torch.Generator().manual_seed(1), progress_start=0.5,
                              progress_span=0.5, **kw)
    assert seen == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1, 0.1, 0.1, 0.1])
