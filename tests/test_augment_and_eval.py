"""Augmentations match torchvision's maths; kNN and linear probe on hand-made features."""

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from tasks.common.augment import _hsv_to_rgb, _rgb_to_hsv, byol_view, color_jitter, crop_boxes
from tasks.common.evaluate import knn_predict, linear_probe


def test_hue_shift_matches_torchvision():
    torch.manual_seed(0)
    x = torch.rand(4, 3, 8, 8)
    ours = _hsv_to_rgb(_rgb_to_hsv(x))
    assert torch.allclose(ours, x, atol=1e-5)
    hsv = _rgb_to_hsv(x)
    shifted = _hsv_to_rgb(torch.stack((torch.remainder(hsv[:, 0] + 0.1, 1.0), hsv[:, 1], hsv[:, 2]), 1))
    assert torch.allclose(shifted, TF.adjust_hue(x, 0.1), atol=1e-4)


def test_crop_boxes_lie_inside_the_image_with_the_requested_area():
    g = torch.Generator().manual_seed(0)
    top, left, h, w = crop_boxes(2000, (32, 32), g=g)
    assert torch.all(top >= 0) and torch.all(left >= 0)
    assert torch.all(top + h <= 32) and torch.all(left + w <= 32)
    area = h * w / 1024
    assert area.min() >= 0.05 and area.max() <= 1.0  # 0.08..1 up to rounding of sides
    assert 0.45 < area.mean() < 0.65  # E[U(0.08, 1)] = 0.54


def test_views_are_reproducible_from_the_generator_and_differ_between_draws():
    x = torch.rand(8, 3, 32, 32)
    a = byol_view(x, torch.Generator().manual_seed(1))
    b = byol_view(x, torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)
    c, d = byol_view(x, g), byol_view(x, g)
    assert torch.equal(a, b) and not torch.equal(c, d)
    assert a.shape == (8, 3, 32, 32) and a.min() >= 0 and a.max() <= 1


def test_jitter_with_probability_zero_is_identity():
    x = torch.rand(4, 3, 8, 8)
    assert torch.allclose(color_jitter(x, torch.Generator().manual_seed(0), p=0.0), x, atol=1e-5)


def test_weighted_knn_by_hand():
    bank = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.8, 0.6]])  # cos to the query: 1, 0.6, 0.8
    labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[2.0, 0.0]])  # normalised inside
    # T = 0.1: class 0 gets e^10 = 22026, class 1 e^6 + e^8 = 3384 -> 0
    assert knn_predict(bank, labels, query, 2, k=3, temperature=0.1).item() == 0
    # T = 1: class 0 gets e^1 = 2.72, class 1 e^0.6 + e^0.8 = 4.05 -> 1
    assert knn_predict(bank, labels, query, 2, k=3, temperature=1.0).item() == 1
    # k = 2 keeps cos 1 (class 0) and cos 0.8 (class 1): e^1 > e^0.8 -> 0
    assert knn_predict(bank, labels, query, 2, k=2, temperature=1.0).item() == 0


def test_linear_probe_separates_separable_features():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(200) % 4
    centers = torch.eye(4) * 5
    f = centers[y] + 0.3 * torch.randn(200, 4, generator=g)
    assert linear_probe(f[:150], y[:150], f[150:], y[150:], 4, epochs=50, lr=0.05) == pytest.approx(1.0)
