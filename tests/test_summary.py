"""summary.json has one owner (app/summary.py); the console line, W&B values and closing line
derive from what each strategy and task declares, checked here on hand-made records."""

import pytest

from app.registry import TASKS
from app.summary import SummarySchema
from strategies import FedEMA, FedPav, FedU


def fedu_record():
    return {"round": 2, "train_loss": 1.5, "selected": [0, 1, 2], "bytes_sent": 2e6, "bytes_received": 1e6,
            "wall_seconds": 3.0, "failures": [], "rejected": [{"partition_id": 2, "round": 2, "reason": "nan"}],
            "clients": {"0": {"loss": 1.0, "divergence": 0.1, "predictor_next": "global", "predictor_used": "local"},
                        "1": {"loss": 2.0, "divergence": 0.3, "predictor_next": "local", "predictor_used": "global"}},
            "eval": {"knn_accuracy": 0.125, "linear_accuracy": 0.25, "final": True, "bank_size": 200}}


def test_the_console_line_shows_what_the_strategy_and_the_task_declare():
    schema = SummarySchema(TASKS["ssl"].metrics, FedU.CLIENT_FIELDS, FedU.ROUND_FIELDS)
    line = schema.progress_line(fedu_record(), 4)
    assert line == ("[round 2/4] | loss 1.5000 | clients 2/3 | next predictor global/local 1/1 | divergence "
                    "0.100-0.300 | kNN 12.50% | linear 25.00% | 3.0s | sent 2.0 MB recv 1.0 MB | REJECTED [2]")
    fedema = SummarySchema(TASKS["ssl"].metrics, FedEMA.CLIENT_FIELDS).progress_line(
        {"round": 1, "clients": {"0": {"divergence": 0.5, "mu": 0.7}, "1": {"divergence": 0.2, "mu": 1.0}}}, 4)
    assert fedema == "[round 1/4] | clients 2/0 | divergence 0.200-0.500 | EMA mu 0.70-1.00"
    reid = SummarySchema(TASKS["reid"].metrics, FedPav.CLIENT_FIELDS, FedPav.ROUND_FIELDS).progress_line(
        {"round": 3, "kd_loss": 0.01234, "clients": {"0": {"weight": 0.25}, "1": {"weight": 0.75}},
         "eval": {"rank1": 0.5, "mAP": 0.4, "rank5": 0.9}}, 3)
    assert reid == "[round 3/3] | clients 2/0 | weights 0.25-0.75 | KD loss 0.0123 | rank-1 50.00% | mAP 40.00%"


def test_the_clustering_methods_show_how_many_clusters_each_client_filled(make_cfg):
    """A client whose images fill fewer clusters than asked shows on the round's line (issue 15)."""
    from app.federation import summary_schema
    record = {"round": 2, "clients": {"0": {"clusters_filled": 5, "largest_cluster_share": 0.77, "cluster_repairs": 0},
                                      "1": {"clusters_filled": 32, "largest_cluster_share": 0.1, "cluster_repairs": 2}}}
    line = summary_schema(make_cfg("strategy=fedavg", "ssl=deepcluster")).progress_line(record, 6)
    assert line == ("[round 2/6] | clients 2/0 | clusters filled 5-32 | largest cluster share 0.10-0.77 "
                    "| empty clusters repaired 0-2")
    sela = summary_schema(make_cfg("strategy=fedavg", "ssl=sela")).progress_line(record, 6)
    assert "clusters filled 5-32" in sela and "repaired" not in sela
    assert "clusters" not in summary_schema(make_cfg("strategy=fedu")).progress_line(record, 6)


def test_wandb_values_and_final_summary_come_from_the_same_declarations():
    schema = SummarySchema(TASKS["ssl"].metrics, FedU.CLIENT_FIELDS, FedU.ROUND_FIELDS)
    flat = schema.wandb_values(fedu_record())
    assert flat["client/0/predictor_next"] == 1.0 and flat["client/1/predictor_next"] == 0.0
    assert flat["client/0/predictor_used"] == 0.0 and flat["client/1/divergence"] == 0.3
    assert flat["eval/knn_accuracy"] == 0.125 and "eval/final" not in flat  # a flag, not a number
    assert (flat["train_loss"], flat["rejected"], flat["failures"]) == (1.5, 1, 0)
    final = schema.wandb_final({"final": {"knn_accuracy": 0.1, "linear_accuracy": float("nan"), "semi_1%": 0.05}})
    assert final == {"final/knn_accuracy": 0.1, "final/semi_1%": 0.05}


def test_the_document_keeps_the_history_the_task_declares_and_completes_on_the_last_checkpoint():
    cfg = {"strategy": {"name": "fedpav"}, "ssl": {"name": "byol"}, "dataset": {"name": "cifar100_reid"},
           "partition": {"name": "classes"}, "num_clients": 2, "num_rounds": 2, "wandb": {"mode": "disabled"}}
    schema = SummarySchema(TASKS["reid"].metrics, FedPav.CLIENT_FIELDS, FedPav.ROUND_FIELDS)
    s = schema.new(cfg, "reid", "out")
    assert s["retrieval"] == [] and "knn" not in s and s["task"] == "reid"
    ev = {"rank1": 0.5, "mAP": 0.25, "per_client": {"0": {"rank1": 1.0, "mAP": 0.5, "rank5": 1.0}}}
    schema.add(s, {"round": 1, "eval": ev, "failures": [], "rejected": []}, 2)
    assert s["retrieval"] == [{"round": 1, "rank1": 0.5, "mAP": 0.25, "per_client": {"0": {"rank1": 1.0, "mAP": 0.5}}}]
    assert s["status"] == "running"
    schema.add(s, {"round": 2, "eval": dict(ev, final=True), "checkpoint": "c.pt", "failures": [], "rejected": []}, 2)
    assert s["status"] == "completed" and s["final"]["final"] and [r["round"] for r in s["rounds"]] == [1, 2]
    s["wall_seconds"] = 12.4
    assert schema.closing_line(s) == ("done: fedpav on cifar100_reid, 2 clients, 2 rounds | rank-1 50.00% | "
                                      "mAP 25.00% | 12s | out/summary.json")
    resumed = schema.resumed(s, dict(cfg, num_rounds=4), "out", 1)
    assert [e["round"] for e in resumed["retrieval"]] == [1] and resumed["status"] == "running"
    assert resumed["resumed"][0]["from_round"] == 1


def test_issue_14_series_reach_the_history_and_wandb():
    """BN-re-estimated kNN joins the kNN history; relative divergence and SDR's per-path kNN go to W&B."""
    schema = SummarySchema(TASKS["ssl"].metrics, FedU.CLIENT_FIELDS, FedU.ROUND_FIELDS)
    record = fedu_record()
    record["clients"]["0"]["divergence_relative"] = 0.02
    record["eval"].update(knn_accuracy_bn_reestimated=0.15, path_knn={"0": 0.2, "1": 0.3})
    flat = schema.wandb_values(record)
    assert flat["client/0/divergence_relative"] == 0.02 and flat["eval/knn_accuracy_bn_reestimated"] == 0.15
    assert (flat["eval/path_knn/0"], flat["eval/path_knn/1"]) == (0.2, 0.3)
    assert "kNN (BN re-estimated) 15.00%" in schema.progress_line(record, 4)
    entry = TASKS["ssl"].metrics.series.entry(2, record["eval"])
    assert entry == {"round": 2, "accuracy": 0.125, "accuracy_bn_reestimated": 0.15}
    assert TASKS["ssl"].metrics.series.entry(3, {"knn_accuracy": 0.1}) == {"round": 3, "accuracy": 0.1}


@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_task_declares_its_headline_and_history(task):
    metrics = TASKS[task].metrics
    assert metrics.headline and metrics.series.name and all(m.label for m in metrics.headline + metrics.final)
