"""The audit of what each round aggregated (app/audit.py): recomputed from the accepted updates by
hand-made numbers, and the ways a lost or doubled update shows."""

import json

import numpy as np
import pytest
from flwr.common import parameters_to_ndarrays

from app.audit import UpdateAudit, check
from strategies import FedEMA, FederatedAveraging, FedU
from test_strategy import make, result, upd


def _audited_run(tmp_path, cls=FederatedAveraging, rounds=2):
    strategy, cm, proxies, rec = make(cls, num_clients=3)
    strategy.hooks.audit = UpdateAudit(tmp_path)
    for rnd in range(1, rounds + 1):
        strategy.configure_fit(rnd, strategy.initial_parameters, cm)
        bad = [np.full((2, 2), np.nan, dtype=np.float32), np.zeros(3, dtype=np.float32)]
        params, _ = strategy.aggregate_fit(rnd, [result(proxies[0], upd(1.0 * rnd, 1.0), 10),
                                                 result(proxies[1], bad, 10),
                                                 result(proxies[2], upd(3.0 * rnd, 3.0), 30)], [])
        strategy.evaluate(rnd, params)
    summary = {"strategy": "fedu" if cls is FedU else "fedavg", "num_rounds": rounds, "rounds": rec.records}
    (tmp_path / "summary.json").write_text(json.dumps(summary, default=str))
    return parameters_to_ndarrays(params)


def test_each_round_is_the_weighted_mean_of_its_accepted_updates(tmp_path):
    last = _audited_run(tmp_path)
    assert np.allclose(last[0], (2.0 * 10 + 6.0 * 30) / 40)  # round 2 by hand: 5.0
    report = check(tmp_path)
    assert (report.rounds, report.aggregated, report.rejected, report.lost) == (2, 4, 2, 0)
    with np.load(tmp_path / "audit" / "round-1" / "client-1.npz") as npz:
        assert "non-finite" in str(npz["rejected"])


def test_a_doubled_or_lost_update_and_a_blank_restart_are_found(tmp_path):
    _audited_run(tmp_path)
    folder = tmp_path / "audit" / "round-2"
    with np.load(folder / "client-0.npz") as npz:  # the server averaged client 0 in twice
        doubled = {k: npz[k] for k in npz.files}
    np.savez(folder / "client-0.npz", **{**doubled, "num_examples": np.int64(20)})
    summary = json.loads((tmp_path / "summary.json").read_text())
    summary["rounds"][1]["clients"]["2"]["state"] = "new"  # client 2 restarted with nothing after round 1
    del summary["rounds"][0]["clients"]["0"]  # the summary forgot an aggregated client
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    problems = check(tmp_path).problems
    assert len(problems) == 3
    assert problems[0].startswith("round 1: summary lists clients [2], accepted updates came from [0, 2]")
    assert "round 2: layer 0 of the global model is not the weighted mean of the 2 accepted updates" in problems[1]
    assert problems[2] == "round 2: client 2 started from a blank state after it had trained"


def test_the_audit_goes_by_how_the_strategy_class_aggregates(tmp_path):
    """Each strategy class declares its server rule (`aggregates_by`); the audit reads the class the run's
    `_target_` names, never the strategy's name: FedEMA averages as FedAvg, standalone combines nothing."""
    _audited_run(tmp_path, cls=FedEMA)
    summary = json.loads((tmp_path / "summary.json").read_text())
    summary.update(strategy="fedema", config={"strategy": {"_target_": "strategies.fedema.FedEMA", "name": "fedema"}})
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    report = check(tmp_path)
    assert (report.rounds, report.aggregated, report.lost) == (2, 4, 0)
    summary.update(strategy="standalone", config={"strategy": {"_target_": "strategies.standalone.Standalone"}})
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(ValueError, match="strategy=standalone aggregates otherwise .use one of centralised, fedavg"):
        check(tmp_path)
