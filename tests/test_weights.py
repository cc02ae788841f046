"""Divergence, DAPU and weighted aggregation on known arrays (docs/algorithms.md#the-divergence-aware-predictor-update-dapu, docs/algorithms.md#upload-and-aggregation)."""

import numpy as np
import pytest

from protocol.weights import dapu_adopts_global, layer_divergence, weighted_average
from tasks.common.models import is_divergence_weight
from tasks.ssl.methods.byol import BYOL


def test_layer_divergence_is_mean_of_per_layer_l2_distances():
    a = [np.zeros((2, 2)), np.zeros(3), np.ones((1, 4))]
    b = [np.full((2, 2), 1.5), np.ones(3) * 7, np.ones((1, 4)) * 3]
    # layer 0: sqrt(4 * 1.5^2) = 3; layer 2: sqrt(4 * 2^2) = 4; layer 1 not selected
    assert layer_divergence(a, b, [0, 2]) == pytest.approx(3.5)
    with pytest.raises(ValueError):
        layer_divergence(a, b, [])


def test_dapu_rule_on_both_sides_of_mu():
    assert dapu_adopts_global(0.39, 0.4) is True
    assert dapu_adopts_global(0.4, 0.4) is False  # d >= mu keeps the local predictor
    assert dapu_adopts_global(0.5, 0.4) is False


def test_weighted_average_by_examples():
    u1 = [np.array([1.0, 2.0], dtype=np.float32), np.array(10, dtype=np.int64)]
    u2 = [np.array([4.0, 8.0], dtype=np.float32), np.array(20, dtype=np.int64)]
    out = weighted_average([u1, u2], [100, 300])
    assert np.allclose(out[0], [0.25 * 1 + 0.75 * 4, 0.25 * 2 + 0.75 * 8])
    assert out[0].dtype == np.float32
    assert out[1] == 18 and out[1].dtype == np.int64  # 17.5 rounds to even 18
    with pytest.raises(ValueError):
        weighted_average([u1], [0])


def test_divergence_layers_are_backbone_convs_without_shortcuts():
    m = BYOL(arch="resnet18", width=0.125, proj_hidden=8, proj_dim=4, pred_hidden=8)
    chosen = [k for k in m.state_dict() if is_divergence_weight(k, "online.")]
    assert "online.backbone.conv1.weight" in chosen
    assert "online.backbone.layer1.0.conv2.weight" in chosen
    assert not any("shortcut" in k or "bn" in k or "projector" in k or "target" in k for k in chosen)
    assert len(chosen) == 1 + 8 * 2  # stem + two convs in each of 8 blocks (L = 17)
