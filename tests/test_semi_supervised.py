"""Semi-supervised evaluation (docs/algorithms.md#semi-supervised-fine-tuning): class-balanced seeded label sampling and fine-tuning."""

import numpy as np
import pytest
import torch

from tasks.common.evaluate import class_balanced_fraction, finetune_accuracy
from tasks.common.models import build_backbone


def test_label_sampler_is_class_balanced_seeded_and_not_the_first_images():
    labels = np.repeat(np.arange(10), 100)
    idx = class_balanced_fraction(labels, 0.1, seed=0)
    assert np.bincount(labels[idx], minlength=10).tolist() == [10] * 10
    assert np.array_equal(idx, class_balanced_fraction(labels, 0.1, seed=0))
    assert not np.array_equal(idx, class_balanced_fraction(labels, 0.1, seed=1))
    assert not np.array_equal(idx[:10], np.arange(10))
    one = class_balanced_fraction(np.repeat(np.arange(5), 30), 0.01, seed=0)
    assert len(one) == 5  # at least one image per class


def colour_images(n, rng):
    """Class 0 = reddish, class 1 = bluish images: separable by a fine-tuned encoder."""
    y = rng.integers(0, 2, n)
    x = rng.integers(0, 80, (n, 32, 32, 3))
    x[y == 0, :, :, 0] += 170
    x[y == 1, :, :, 2] += 170
    return x.astype(np.uint8), y


@pytest.mark.parametrize("bn", ["frozen", "train"])
def test_finetuning_learns_a_separable_task_and_leaves_the_backbone_alone(bn):
    rng = np.random.default_rng(0)
    xtr, ytr = colour_images(64, rng)
    xte, yte = colour_images(64, rng)
    torch.manual_seed(0)
    backbone = build_backbone("resnet10", 0.125)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    acc = finetune_accuracy(backbone, xtr, ytr, xte, yte, 2, epochs=8, lr=0.05, head_lr=0.1, batch_size=16,
                            bn=bn, device=torch.device("cpu"), seed=0)
    assert acc >= 0.9
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())  # worked on a copy


def test_finetuning_rejects_an_unknown_bn_mode():
    with pytest.raises(ValueError, match="frozen' or 'train"):
        finetune_accuracy(build_backbone("resnet10", 0.125), np.zeros((4, 32, 32, 3), np.uint8), [0, 1, 0, 1],
                          np.zeros((2, 32, 32, 3), np.uint8), [0, 1], 2, epochs=1, lr=0.1, head_lr=0.1,
                          batch_size=2, bn="off", device=torch.device("cpu"), seed=0)


def test_evaluator_reports_semi_supervised_accuracy(make_cfg):
    from app.federation import build_layout
    from tasks.ssl.evaluator import RepresentationEvaluator
    from tasks.ssl.settings import ssl_settings

    cfg = make_cfg("eval.semi=true", "eval.semi_epochs=1", "eval.semi_fractions=[0.002]", "dataset=cifar10")
    layout, init = build_layout(cfg)
    out = RepresentationEvaluator(ssl_settings(cfg), layout)(2, {"global": init}, True)
    assert 0 <= out["semi_0.2%"] <= 1 and "linear_accuracy" in out
