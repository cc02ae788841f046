"""The learning preset's options (issue 25) on hand-made inputs: ssl.jitter, ssl.predictor_lr_mult,
eval.knn_k with several k, and the runner's table over seeds (paired gains, spread, one reading's
standard error, cells kept with the table)."""

import json
import math
import sys

import numpy as np
import pytest
import torch

from tasks.common.task_row import KNN_HISTORY
from protocol.checks import ConfigError
from tasks.common.augment import BYOL_JITTER, REFERENCE_JITTER, augment_view, color_jitter
from tasks.common.evaluate import knn_predict, knn_predict_ks, knn_scores
from tasks.common.precision import Compute
from tasks.ssl.methods import build_method
from tasks.ssl.train import recipe_options, train_one_round
from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import compare  # noqa: E402


def test_brightness_only_jitter_scales_each_image_within_its_strength():
    x = torch.rand(64, 3, 8, 8) * 0.5 + 0.1  # no clamping at 1 for factors up to 1.4
    out = color_jitter(x, torch.Generator().manual_seed(0), strength=(0.4, 0.0, 0.0, 0.0), p=1.0)
    factor = (out / x).flatten(1)
    assert torch.allclose(factor, factor[:, :1].expand_as(factor), atol=1e-5)  # one factor per image
    assert factor.min() >= 0.6 - 1e-5 and factor.max() <= 1.4 + 1e-5
    assert factor[:, 0].max() > 1.3 and factor[:, 0].min() < 0.7  # the whole range is drawn


def test_zero_jitter_leaves_colours_and_the_strengths_change_the_views():
    x = torch.rand(8, 3, 32, 32)
    assert torch.allclose(color_jitter(x, torch.Generator().manual_seed(0), (0.0, 0.0, 0.0, 0.0), p=1.0), x, atol=1e-5)
    views = [augment_view(x, torch.Generator().manual_seed(3), jitter=j) for j in (REFERENCE_JITTER, BYOL_JITTER)]
    assert not torch.allclose(*views)
    again = augment_view(x, torch.Generator().manual_seed(3), jitter=REFERENCE_JITTER)
    assert torch.equal(views[0], again)  # the default is the reference recipe, drawn the same way


def test_the_recipe_keys_reach_training_and_are_checked(make_cfg, monkeypatch):
    cfg = make_cfg("ssl.jitter=[0.4,0.4,0.2,0.1]", "ssl.predictor_lr_mult=10")
    assert recipe_options(cfg["ssl"]) == {"jitter": BYOL_JITTER, "predictor_lr_mult": 10.0}
    assert recipe_options(make_cfg()["ssl"]) == {"jitter": REFERENCE_JITTER, "predictor_lr_mult": 1.0}
    with pytest.raises(ConfigError, match="ssl.jitter must be a list of 4 numbers"):
        build_method({**cfg["ssl"], "jitter": [0.4, 0.4]}, cfg["model"])
    with pytest.raises(ConfigError, match="ssl.predictor_lr_mult must be > 0, got 0"):
        build_method({**cfg["ssl"], "predictor_lr_mult": 0}, cfg["model"])
    import tasks.ssl.train as ssl_train
    seen = []
    real = ssl_train.make_views
    monkeypatch.setattr(ssl_train, "make_views", lambda x, recipe, g, jitter: seen.append(jitter) or real(x, recipe, g, jitter))
    m = build_method(cfg["ssl"], cfg["model"])
    m.init_local_parts({"online"})
    images = np.random.default_rng(0).integers(0, 255, (16, 32, 32, 3), dtype=np.uint8)
    train_one_round(m, images, epochs=1, batch_size=16, lr=0.1, momentum=0.0, weight_decay=0.0,
                    compute=Compute(torch.device("cpu")), generator=torch.Generator().manual_seed(0), progress_start=0.0,
                    progress_span=1.0, who="test", **recipe_options(cfg["ssl"]))
    assert seen == [BYOL_JITTER]


def one_step_changes(cfg: dict, mult: float) -> tuple[dict, dict]:
    """The change of every parameter after one plain SGD step (no momentum, no decay) from seed 0."""
    torch.manual_seed(0)
    m = build_method(cfg["ssl"], cfg["model"])
    m.init_local_parts({"online"})
    before = {k: v.detach().clone() for k, v in m.named_parameters()}
    images = np.random.default_rng(0).integers(0, 255, (16, 32, 32, 3), dtype=np.uint8)
    train_one_round(m, images, epochs=1, batch_size=16, lr=0.05, momentum=0.0, weight_decay=0.0,
                    compute=Compute(torch.device("cpu")), generator=torch.Generator().manual_seed(0), progress_start=0.0,
                    progress_span=1.0, who="test", predictor_lr_mult=mult)
    return {k: v.detach() - before[k] for k, v in m.named_parameters() if k.startswith(("online.", "predictor."))}


def test_the_predictor_steps_by_its_multiple_of_the_learning_rate_and_nothing_else_changes(make_cfg):
    cfg = make_cfg()  # BYOL
    base, fast = one_step_changes(cfg, 1.0), one_step_changes(cfg, 10.0)
    moved = [k for k in base if k.startswith("predictor.") and base[k].abs().max() > 0]
    assert moved
    for k in moved:  # same gradient (same weights, batch and views), ten times the step
        assert torch.allclose(fast[k], 10 * base[k], rtol=1e-3, atol=1e-6), (k, (fast[k] - 10 * base[k]).abs().max())
    for k in (k for k in base if k.startswith("online.")):
        assert torch.equal(fast[k], base[k]), k
    groups = build_method(cfg["ssl"], cfg["model"]).parameter_groups(10.0)
    assert [g["lr_mult"] for g in groups] == [1.0, 10.0]
    simclr = make_cfg("ssl=simclr")  # no predictor: one group whatever the multiple
    assert len(build_method(simclr["ssl"], simclr["model"]).parameter_groups(10.0)) == 1


def test_knn_with_several_k_by_hand():
    bank = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.8, 0.6], [0.7, 0.7]])  # cos to query 0: 1, .6, .8, .71
    labels = torch.tensor([0, 1, 1, 1])
    query = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # query 0, T = 1: k=1 keeps class 0 (cos 1) -> 0; k=4: e^1 against e^.6 + e^.8 + e^.707 -> 1
    preds = knn_predict_ks(bank, labels, query, 2, ks=(1, 4), temperature=1.0)
    assert preds[1][0].item() == 0 and preds[4][0].item() == 1
    for k in (1, 2, 3, 4, 9):  # one search gives what a search per k gives
        assert torch.equal(knn_predict_ks(bank, labels, query, 2, ks=(9, k), temperature=1.0)[k],
                           knn_predict(bank, labels, query, 2, k=k, temperature=1.0))
    sets = {"y_bank": labels, "num_classes": 2}
    scores = knn_scores(bank, query, [1, 1], sets, (4, 1), 1.0)
    assert scores == {"knn_accuracy": 1.0, "knn_accuracy_k1": 0.5}  # the first k is the headline's
    assert knn_scores(bank, query, [1, 1], sets, (4,), 1.0) == {"knn_accuracy": 1.0}


def test_the_knn_history_keeps_every_k_and_both_batchnorm_readings():
    results = {"knn_accuracy": 0.3, "knn_accuracy_k20": 0.35, "knn_accuracy_bn_reestimated": 0.31,
               "knn_accuracy_k20_bn_reestimated": 0.36, "linear_accuracy": 0.4, "final": False}
    assert KNN_HISTORY.entry(5, results) == {"round": 5, "accuracy": 0.3, "accuracy_k20": 0.35,
                                             "accuracy_bn_reestimated": 0.31, "accuracy_k20_bn_reestimated": 0.36}


def learn_summary(start: float, end: float, start20: float, end20: float, linear: float, test_size: int = 1000):
    return {"status": "completed", "initial_eval": {"knn_accuracy": start - 0.02},
            "final": {"knn_accuracy": end - 0.01, "knn_accuracy_bn_reestimated": end,
                      "knn_accuracy_k20_bn_reestimated": end20, "linear_accuracy": linear,
                      "linear_accuracy_bn_reestimated": linear, "test_size": test_size},
            "rounds": [{"bytes_sent": 1e6, "bytes_received": 1e6}],
            "knn": [{"round": 0, "accuracy": start - 0.02, "accuracy_bn_reestimated": start,
                     "accuracy_k20_bn_reestimated": start20},
                    {"round": 50, "accuracy": end - 0.01, "accuracy_bn_reestimated": end,
                     "accuracy_k20_bn_reestimated": end20}], "wall_seconds": 1500.0}


def test_the_runner_pairs_every_seed_with_its_own_untrained_network(tmp_path, monkeypatch):
    """Three seeds: gains are each seed's run minus that seed's own round 0 / random init, then mean and
    sample std over seeds; the standard error of one reading is sqrt(p (1 - p) / n) of each cell."""
    runs = tmp_path / "runs"
    fedu = {0: (0.25, 0.30, 0.24, 0.31, 0.33), 1: (0.19, 0.26, 0.20, 0.25, 0.24), 2: (0.22, 0.25, 0.21, 0.26, 0.30)}
    init_linear = {0: 0.28, 1: 0.20, 2: 0.27}
    for seed, values in fedu.items():
        cell = runs / "classes" / "fedu" / f"seed{seed}"
        cell.mkdir(parents=True)
        (cell / "summary.json").write_text(json.dumps(learn_summary(*values)))
        init = runs / "iid" / "random_init" / f"seed{seed}"
        init.mkdir(parents=True)
        final = {"knn_accuracy": values[0] - 0.02, "knn_accuracy_bn_reestimated": values[0],
                 "knn_accuracy_k20_bn_reestimated": values[2], "linear_accuracy": 0.3,
                 "linear_accuracy_bn_reestimated": init_linear[seed], "test_size": 1000}
        (init / "evaluation.json").write_text(json.dumps({"status": "completed", "final": final}))
    monkeypatch.setattr(compare, "launch", lambda cmd: (_ for _ in ()).throw(AssertionError("ran a cell")))
    args = ["--methods", "fedu", "random_init", "--partitions", "classes", "--seeds", "0", "1", "2",
            "--out", str(tmp_path / "table"), "--runs", str(runs), "--report-only"]
    rows = compare.main(args)
    fedu_row = rows[0]
    gains = [0.05, 0.07, 0.03]  # kNN re-estimated minus round 0, per seed
    mean = sum(gains) / 3
    assert fedu_row["knn_bn_reestimated_gain"] == pytest.approx(mean)
    assert fedu_row["knn_bn_reestimated_gain_std"] == pytest.approx(math.sqrt(sum((g - mean) ** 2 for g in gains) / 2))
    assert fedu_row["knn_k20_bn_reestimated_gain"] == pytest.approx((0.07 + 0.05 + 0.05) / 3)
    assert fedu_row["linear_bn_reestimated_gain"] == pytest.approx((0.05 + 0.04 + 0.03) / 3)
    ses = [math.sqrt(p * (1 - p) / 1000) for p in (0.30, 0.26, 0.25)]
    assert fedu_row["se"] == pytest.approx(sum(ses) / 3)
    assert rows[1]["knn_bn_reestimated_gain"] == 0.0 and len(rows[1]["seeds"]) == 3
    table = (tmp_path / "table" / "table.md").read_text()
    assert "SE of one reading" in table and "kNN k=20, BN re-est. − round 0" in table
    # finished cells are kept with the table: the table is rebuilt without the run folders
    kept = sorted(p.relative_to(tmp_path / "table").as_posix() for p in (tmp_path / "table" / "cells").rglob("*.json"))
    assert kept == [f"cells/classes/fedu/seed{s}.json" for s in range(3)] + \
        [f"cells/iid/random_init/seed{s}.json" for s in range(3)]
    import shutil
    shutil.rmtree(runs)
    again = compare.main(args)
    assert again[0]["knn_bn_reestimated_gain"] == pytest.approx(mean) and again[0]["se"] == pytest.approx(fedu_row["se"])


def test_runs_of_a_committed_table_go_under_outputs():
    out = ROOT / "benchmarks" / "results" / "learning" / "cpu_learn" / "cifar10"
    assert compare.default_runs(out) == ROOT / "outputs" / "benchmarks" / "learning" / "cpu_learn" / "cifar10"
