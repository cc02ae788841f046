"""benchmarks/speed.py's arithmetic, checked by hand: a round's images/s and the tables' ratios."""

import sys

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT))
from benchmarks.speed import round_rates  # noqa: E402
from benchmarks.speed_table import accuracy_rows, busy_rows, bytes_rows  # noqa: E402


def test_round_rates_count_the_images_each_client_trained_over_fit_time_after_round_one():
    def client(rate, seconds):
        return {"images_per_second": rate, "train_seconds": seconds, "num_examples": 999}

    summary = {"rounds": [
        {"round": 1, "fit_seconds": 100.0, "clients": {"0": client(100.0, 10.0)}},  # warm-up: skipped
        {"round": 2, "fit_seconds": 20.0, "clients": {"0": client(200.0, 8.0), "1": client(100.0, 5.0)}},
        {"round": 3, "fit_seconds": 10.0, "clients": {"2": client(300.0, 2.0)}}]}
    r = round_rates(summary)
    assert r["images"] == 1600 + 500 + 600 and r["fit_seconds"] == 30.0 and r["rounds"] == [2, 3]
    assert r["images_per_second"] == 2700 / 30


def test_tables_state_the_ratios():
    busy = {"5_clients": {"federated": {"images_per_second": 380.0, "rounds": [2, 3]},
                          "centralised": {"images_per_second": 400.0}, "ratio": 0.95}}
    assert busy_rows(busy)[-1] == "| 5 clients | 380.0 | 400.0 | 0.950 | [2, 3] |"
    per = {"float32": {"bytes_sent": 4e6, "bytes_received": 4e6}, "float16": {"bytes_sent": 2e6, "bytes_received": 2e6}}
    assert bytes_rows({"m": per})[-1] == "| m | float16 | 2.00 | 2.00 | 0.500 |"
    acc = {"fp32": {"0": {"knn": 0.10, "fit_seconds": 100, "bytes_per_round": 8e6},
                    "1": {"knn": 0.12, "fit_seconds": 100, "bytes_per_round": 8e6}},
           "bf16": {"0": {"knn": 0.105, "fit_seconds": 50, "bytes_per_round": 8e6},
                    "1": {"knn": 0.12, "fit_seconds": 50, "bytes_per_round": 8e6}}}
    assert accuracy_rows(acc)[-1] == "| bf16 | 10.50 | 12.00 | 11.25 | +0.25 | 50 | 8.0 |"
