"""A run's plots come from its summary: which files, and none from an empty one."""

from app.plots import client_series, write_plots


def fedema_summary():
    rounds = [{"round": r, "train_loss": 2.0 - 0.1 * r, "bytes_sent": 4e6, "bytes_received": 4e6,
               "clients": {str(k): {"loss": 2.0 - 0.1 * r + 0.01 * k, "divergence": 0.1 * r + k,
                                    "mu": min(1.0, 0.2 * r + 0.1 * k)} for k in range(3)}}
              for r in (1, 2, 3)]
    return {"strategy": "fedema", "ssl": "byol", "dataset": "cifar10", "partition": "classes", "num_clients": 3,
            "config": {"strategy": {"name": "fedema"}}, "rounds": rounds,
            "knn": [{"round": 0, "accuracy": 0.2}, {"round": 3, "accuracy": 0.3, "accuracy_bn_reestimated": 0.31}],
            "final": {"knn_accuracy": 0.3, "linear_accuracy": 0.4}}


def test_fedema_run_gets_accuracy_loss_divergence_with_mu_and_bytes(tmp_path):
    written = write_plots(fedema_summary(), tmp_path)
    assert sorted(p.name for p in written) == ["accuracy.png", "bytes.png", "divergence.png", "loss.png"]
    assert all(p.stat().st_size > 1000 for p in written)


def test_client_series_follow_each_client_over_the_rounds_it_trained():
    rounds = [{"round": 1, "clients": {"0": {"divergence": 0.5}, "1": {"divergence": 0.7}}},
              {"round": 2, "clients": {"1": {"divergence": 0.6, "predictor_next": "global"}}}]
    assert client_series(rounds, "divergence") == {"0": [(1, 0.5)], "1": [(1, 0.7), (2, 0.6)]}
    assert client_series(rounds, "predictor_next") == {"1": [(2, "global")]}


def test_a_run_that_stopped_before_any_round_draws_nothing(tmp_path):
    assert write_plots({"rounds": [], "knn": [], "final": {}}, tmp_path) == []
    assert list(tmp_path.iterdir()) == []
