"""Evaluation by the clients (Layout.evaluated_by == "clients", issue 16): the server sends the
global weights to every connected client after an evaluation round and reports the merged figures
only once they have answered; the merge checked by hand."""

import dataclasses

import numpy as np
import pytest
from flwr.common import Code, EvaluateRes, Status

from strategies import FederatedAveraging
from strategies.failures import ClientFailed
from strategies.site_evaluation import merge_site_reports
from tests.test_strategy import LAYOUT, make, result, upd


def test_merge_weights_figures_by_test_images_and_sums_counts():
    reports = {1: (30, {"map": 0.2, "map_50": 0.5, "detections": 70, "state": "kept", "partition_id": 1}),
               0: (10, {"map": 0.6, "map_50": -1.0, "detections": 30, "partition_id": 0})}
    ev = merge_site_reports(reports, [{"partition_id": 2, "error": "boom"}], final=True)
    assert ev["map"] == pytest.approx((10 * 0.6 + 30 * 0.2) / 40)  # 0.3
    assert ev["map_50"] == pytest.approx(0.5)  # COCO's -1 (no such objects) is left out of the mean
    assert ev["detections"] == 100 and ev["images"] == 40
    assert list(ev["per_client"]) == ["0", "1"] and "state" not in ev["per_client"]["1"]
    assert ev["per_client"]["1"] == {"map": 0.2, "map_50": 0.5, "detections": 70, "images": 30}
    assert ev["evaluation_failures"] == [{"partition_id": 2, "error": "boom"}] and ev["final"] is True


def _answer(proxy, n, **figures):
    return proxy, EvaluateRes(Status(Code.OK, ""), 0.0, n, {"partition_id": proxy.pid, **figures})


def test_clients_evaluate_after_aggregation_and_the_round_is_reported_once_they_answer():
    layout = dataclasses.replace(LAYOUT, evaluated_by="clients")
    strategy, cm, proxies, rec = make(FederatedAveraging, layout=layout)
    assert strategy.evaluate(0, None) is None and rec.records == []  # no round 0: clients evaluate after rounds
    strategy.configure_fit(1, strategy.initial_parameters, cm)
    params, _ = strategy.aggregate_fit(1, [result(p, upd(1.0, 1.0), 10) for p in proxies], [])
    assert strategy.evaluate(1, params) is None and rec.records == [] and rec.evals == []  # not the server's hook
    sent = strategy.configure_evaluate(1, params, cm)
    assert sorted(c.partition_id for c, _ in sent) == [0, 1, 2]  # every connected client, not only the sampled
    assert all(ins.config["server_round"] == 1 and ins.parameters.tensors for _, ins in sent)
    answers = [_answer(proxies[0], 10, map=0.1), _answer(proxies[1], 30, map=0.5)]
    loss, figures = strategy.aggregate_evaluate(1, answers, [ClientFailed(2, RuntimeError("no test images"))])
    assert figures["map"] == pytest.approx(0.4) and len(rec.records) == 1
    ev = rec.records[0]["eval"]
    assert ev["per_client"]["1"]["map"] == 0.5 and ev["evaluated_by"] == "clients"
    assert ev["evaluation_failures"] == [{"partition_id": 2, "error": "no test images"}]
    assert strategy.configure_evaluate(2, params, cm) == []  # nothing pending


def test_a_server_evaluated_layout_sends_nothing_to_the_clients():
    strategy, cm, proxies, rec = make(FederatedAveraging)
    strategy.configure_fit(1, strategy.initial_parameters, cm)
    params, _ = strategy.aggregate_fit(1, [result(p, upd(1.0, 1.0), 10) for p in proxies], [])
    assert strategy.evaluate(1, params)[1]["knn_accuracy"] == 0.5 and len(rec.records) == 1
    assert strategy.configure_evaluate(1, params, cm) == []
    assert np.isfinite(rec.records[0]["wall_seconds"])
