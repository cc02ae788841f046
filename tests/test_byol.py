"""BYOL loss, EMA and schedules against hand-computed values (docs/algorithms.md#byol)."""

import math

import pytest
import torch

from tasks.common.training import round_lr
from tasks.ssl.methods.base import momentum_update
from tasks.ssl.methods.byol import BYOL, regression_loss, tau_at


def test_regression_loss_matches_hand_computation():
    p = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    z = torch.tensor([[0.0, 2.0], [2.0, 2.0]])
    # cos = 0 for the first pair, 1 for the second: (2 - 0 + 2 - 2) / 2 = 1
    assert regression_loss(p, z).item() == pytest.approx(1.0)
    p = torch.tensor([[3.0, 4.0]])
    z = torch.tensor([[4.0, 3.0]])  # cos = 24/25
    assert regression_loss(p, z).item() == pytest.approx(2 - 2 * 24 / 25)


def test_byol_loss_is_symmetric_sum_and_stops_gradient_at_target():
    torch.manual_seed(0)
    m = BYOL(arch="resnet10", width=0.125, proj_hidden=8, proj_dim=4, pred_hidden=8)
    m.train()
    v1, v2 = torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32)
    loss = m.loss([v1, v2], torch.Generator())
    p1, p2 = m.predictor(m.online(v1)), m.predictor(m.online(v2))
    with torch.no_grad():
        z1, z2 = m.target(v1), m.target(v2)
    def l(p, z):
        return (2 - 2 * (p * z).sum(1) / (p.norm(dim=1) * z.norm(dim=1))).mean()
    # BN in train mode sees the same batches, so recomputing gives the same numbers
    assert loss.item() == pytest.approx((l(p1, z2) + l(p2, z1)).item(), rel=1e-5)
    loss.backward()
    assert all(p.grad is None for p in m.target.parameters())
    assert any(p.grad is not None for p in m.online.parameters())


def test_ema_update_matches_hand_computation():
    online, target = torch.nn.Linear(2, 1, bias=False), torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        online.weight.copy_(torch.tensor([[1.0, 2.0]]))
        target.weight.copy_(torch.tensor([[3.0, -1.0]]))
    momentum_update(target, online, 0.99)
    # 0.99 * [3, -1] + 0.01 * [1, 2] = [2.98, -0.97]
    assert torch.allclose(target.weight, torch.tensor([[2.98, -0.97]]))


def test_tau_schedule_and_round_lr():
    assert tau_at(0.99, 0.3, "constant") == 0.99
    assert tau_at(0.99, 0.0, "cosine") == pytest.approx(0.99)
    assert tau_at(0.99, 1.0, "cosine") == pytest.approx(1.0)
    assert round_lr(0.032, 1, 100) == pytest.approx(0.032)
    assert round_lr(0.032, 51, 100) == pytest.approx(0.016)
    assert round_lr(0.032, 26, 100) == pytest.approx(0.5 * 0.032 * (1 + math.cos(math.pi / 4)))


def test_first_participation_copies_online_into_target_without_aliasing():
    m = BYOL(arch="resnet10", width=0.125, proj_hidden=8, proj_dim=4, pred_hidden=8)
    with torch.no_grad():
        for p in m.online.parameters():
            p.add_(1.0)
    m.init_local_parts({"online", "predictor"})
    for a, b in zip(m.online.parameters(), m.target.parameters()):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()
