"""The comparison runner's seed aggregation: mean and standard deviation by hand on made-up cells."""

import json
import math
import sys

import pytest

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import compare  # noqa: E402


def made_up(seed, knn, linear, rounds):
    return {"method": "FedU", "key": "fedu", "partition": "classes", "seed": seed, "knn_initial": 0.2, "knn": knn,
            "knn_bn_reestimated": None, "linear": linear, "linear_bn_reestimated": None, "semi_1": None,
            "semi_10": None, "wall_seconds": 100.0 + seed, "mb_per_round": 4.0, "knn_by_round": rounds}


def test_mean_and_sample_std_over_seeds_by_hand():
    cells = [made_up(0, 0.30, 0.40, [(0, 0.2), (2, 0.25), (4, 0.30)]),
             made_up(1, 0.34, 0.44, [(0, 0.2), (2, 0.27), (4, 0.34)]),
             made_up(2, 0.32, 0.45, [(0, 0.2), (2, 0.29)])]  # seed 2 stopped after round 2
    row = compare.aggregate(cells)
    assert row["seeds"] == [0, 1, 2]
    # kNN: mean 0.32, deviations -0.02, 0.02, 0 -> sample variance 0.0008 / 2 = 0.0004, std 0.02
    assert row["knn"] == pytest.approx(0.32) and row["knn_std"] == pytest.approx(0.02)
    # linear: mean 0.43; deviations -0.03, 0.01, 0.02 -> (0.0009 + 0.0001 + 0.0004) / 2 = 0.0007
    assert row["linear"] == pytest.approx(0.43) and row["linear_std"] == pytest.approx(math.sqrt(0.0007))
    assert row["knn_initial_std"] == pytest.approx(0.0)
    assert row["knn_bn_reestimated"] is None and row["knn_bn_reestimated_std"] is None  # not reported
    # the curve keeps the rounds every seed reported: round 2 mean 0.27, std 0.02
    assert [r for r, _, _ in row["knn_by_round"]] == [0, 2]
    assert row["knn_by_round"][1][1] == pytest.approx(0.27) and row["knn_by_round"][1][2] == pytest.approx(0.02)


def test_one_seed_has_no_spread_and_the_table_says_how_many_seeds():
    row = compare.aggregate([made_up(0, 0.30, 0.40, [(0, 0.2)])])
    assert row["knn"] == pytest.approx(0.30) and row["knn_std"] is None
    assert compare.fmt(row["knn"], row["knn_std"]) == "30.00"
    assert compare.fmt(0.32, 0.02) == "32.00 ± 2.00"


def test_runner_writes_mean_and_std_per_row_with_commit_and_command(tmp_path, monkeypatch):
    for seed, knn in ((0, 0.30), (1, 0.34), (2, 0.32)):
        cell = tmp_path / "classes" / "fedu" / f"seed{seed}"
        cell.mkdir(parents=True)
        (cell / "summary.json").write_text(json.dumps({
            "status": "completed", "initial_eval": {"knn_accuracy": 0.2},
            "final": {"knn_accuracy": knn, "linear_accuracy": knn + 0.1, "knn_accuracy_bn_reestimated": knn + 0.01},
            "rounds": [{"bytes_sent": 2e6, "bytes_received": 2e6}],
            "knn": [{"round": 0, "accuracy": 0.2}, {"round": 1, "accuracy": knn, "accuracy_bn_reestimated": knn + 0.01}],
            "wall_seconds": 60.0}))
    monkeypatch.setattr(compare, "launch", lambda cmd: (_ for _ in ()).throw(AssertionError("ran a cell")))
    rows = compare.main(["--methods", "fedu", "--partitions", "classes", "--seeds", "0", "1", "2",
                         "--out", str(tmp_path)])
    assert len(rows) == 1 and rows[0]["knn"] == pytest.approx(0.32)
    (rnd, mean, std), = rows[0]["knn_bn_reestimated_by_round"]  # the re-estimated curve: round 1 only
    assert rnd == 1 and mean == pytest.approx(0.33) and std == pytest.approx(0.02)
    table = (tmp_path / "table.md").read_text()
    # kNN round 0, kNN, kNN - round 0 (12 ± 2), kNN BN re-est., linear; columns nobody reported are left out
    assert "| classes | FedU | 3 | 20.00 ± 0.00 | 32.00 ± 2.00 | 12.00 ± 2.00 | 33.00 ± 2.00 | 42.00 ± 2.00 |" in table
    assert "commit " in table and "--seeds 0 1 2" in table
    doc = json.loads((tmp_path / "table.json").read_text())
    assert len(doc["cells"]) == 3 and doc["rows"][0]["knn_std"] == pytest.approx(0.02)
    assert (tmp_path / "knn_rounds.png").stat().st_size > 1000


def test_gains_are_paired_with_the_same_seeds_untrained_network():
    def with_curve(c, re0, re_final, linear_re):
        c.update(knn_bn_reestimated=re_final, linear_bn_reestimated=linear_re,
                 knn_bn_reestimated_by_round=[(0, re0), (4, re_final)])
        return c

    runs = [with_curve(made_up(0, 0.30, 0.40, []), 0.25, 0.27, 0.30), with_curve(made_up(1, 0.20, 0.38, []), 0.22, 0.21, 0.31)]
    runs[1]["knn_initial"] = 0.26
    inits = [with_curve(dict(made_up(s, k, lin, []), key="random_init", method="Random init"), re, re, lr)
             for s, k, lin, re, lr in ((0, 0.2, 0.35, 0.25, 0.28), (1, 0.26, 0.30, 0.22, 0.27))]
    compare.add_gains(runs + inits)
    # kNN against each run's own round 0: 0.30 - 0.2 and 0.20 - 0.26; re-estimated: 0.27 - 0.25, 0.21 - 0.22
    assert [c["knn_gain"] for c in runs] == pytest.approx([0.10, -0.06])
    assert [c["knn_bn_reestimated_gain"] for c in runs] == pytest.approx([0.02, -0.01])
    # linear against the same seed's random init: 0.40 - 0.35, 0.38 - 0.30; re-estimated 0.30 - 0.28, 0.31 - 0.27
    assert [c["linear_gain"] for c in runs] == pytest.approx([0.05, 0.08])
    assert [c["linear_bn_reestimated_gain"] for c in runs] == pytest.approx([0.02, 0.04])
    row = compare.aggregate(runs)
    assert row["knn_gain"] == pytest.approx(0.02) and row["knn_gain_std"] == pytest.approx(math.sqrt(2) * 0.08)
