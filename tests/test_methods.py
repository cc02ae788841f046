"""The comparison methods (SPEC §1.2): losses by hand, what each uploads, one real step each."""

import math

import numpy as np
import pytest
import torch

from tasks.methods import build_method
from tasks.methods.contrastive import MoCo, moco_infonce, negative_cosine, nt_xent, sinkhorn
from tasks.train import train_one_round
from tasks.wire import kept_keys, upload_keys

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
                            device=torch.device("cpu"), generator=torch.Generator().manual_seed(0),
                            progress_start=0, progress_span=1, who="test")
    assert math.isfinite(stats["loss"]) and stats["steps"] == 2
    assert not torch.equal(before["online.backbone.conv1.weight"], m.state_dict()["online.backbone.conv1.weight"])
    if name.startswith("moco"):
        assert int(m.queue.ptr) == 2 * 2 * 16 % 64  # two steps of 2 x 16 keys
        assert not torch.equal(before["key.backbone.conv1.weight"], m.state_dict()["key.backbone.conv1.weight"])


def test_fedu_refuses_a_method_other_than_byol():
    from app.config import ConfigError, compose, to_plain, validate

    with pytest.raises(ConfigError, match="strategy=fedu is defined for BYOL"):
        validate(to_plain(compose(["ssl=simclr"])))
