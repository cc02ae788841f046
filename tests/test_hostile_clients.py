"""One bad site cannot stop or steer a federation (issue 26): every attack that was tried against the
strategy, as hand-made client results fed to it the way Flower delivers them (no Ray), and the
robust aggregation rules against hand-computed results."""

import math

import numpy as np
import pytest
from flwr.common import Code, EvaluateRes, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays

from protocol.checks import ConfigError
from protocol.hooks import RunStopped
from protocol.robust import clipped_mean, combine, coordinate_median, trimmed_mean
from strategies import FederatedAveraging, FedU, Standalone
from strategies.trust import ExampleLimits
from tests.test_strategy import FakeProxy, make, result, upd


def round_with(strategy, cm, proxies, bad_result):
    """Round 1 with clients 0 and 2 honest (weights 1 and 3, 10 examples each) and client 1's `bad_result`."""
    strategy.configure_fit(1, strategy.initial_parameters, cm)
    params, _ = strategy.aggregate_fit(1, [result(proxies[0], upd(1, 1), 10), bad_result,
                                           result(proxies[2], upd(3, 3), 10)], [])
    return parameters_to_ndarrays(params), strategy.record


def raw(proxy, arrays, n, metrics):
    return proxy, FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), n, metrics)


ATTACKS = {  # name -> (client 1's result builder, words the recorded reason contains)
    "partition id as text": (lambda p: raw(p, upd(9, 9), 10, {"partition_id": "x", "loss": 1.0}),
                             "metric 'partition_id' must be a number"),
    "loss as text": (lambda p: raw(p, upd(9, 9), 10, {"partition_id": 1, "loss": "x"}), "metric 'loss' must be a number"),
    "infinite metric": (lambda p: raw(p, upd(9, 9), 10, {"partition_id": 1, "loss": math.inf}), "'loss' is infinite"),
    "text divergence": (lambda p: raw(p, upd(9, 9), 10, {"partition_id": 1, "divergence_reference": "far"}),
                        "metric 'divergence_reference' must be a number"),
    "negative divergence": (lambda p: raw(p, upd(9, 9), 10, {"partition_id": 1, "divergence_reference": -1.0}),
                            "must be in [0, inf]"),
    "long text": (lambda p: raw(p, upd(9, 9), 10, {"partition_id": 1, "state": "x" * 10_000}), "at most 500 characters"),
    "complex arrays": (lambda p: raw(p, [a.astype(np.complex64) for a in upd(9, 9)], 10, {"partition_id": 1}),
                       "dtype complex64, expected float32"),
    "uint8 arrays": (lambda p: raw(p, [a.astype(np.uint8) for a in upd(9, 9)], 10, {"partition_id": 1}),
                     "dtype uint8, expected float32"),
    "bool arrays": (lambda p: raw(p, [a > 0 for a in upd(9, 9)], 10, {"partition_id": 1}), "dtype bool, expected float32"),
    "float64 of 1e300": (lambda p: raw(p, [np.full(a.shape, 1e300) for a in upd(9, 9)], 10, {"partition_id": 1}),
                         "dtype float64, expected float32"),
    "NaN weights": (lambda p: raw(p, [np.full(a.shape, np.nan, dtype=np.float32) for a in upd(9, 9)], 10,
                                  {"partition_id": 1}), "non-finite values"),
    "huge example count": (lambda p: raw(p, upd(9, 9), 10**12, {"partition_id": 1}),
                           "num_examples = 1000000000000 exceeds the 10 examples this client can hold"),
    "another partition's id": (lambda p: raw(p, upd(9, 9), 10, {"partition_id": 2}),
                               "reports partition 2, but its node serves partition 1"),
    "negative id": (lambda p: raw(p, upd(9, 9), 10, {"partition_id": -1}), "reports partition -1"),
    "undecodable bytes": (lambda p: (p, FitRes(Status(Code.OK, ""), ndarrays_to_parameters([]), 10, {"partition_id": 1})),
                          "expected 2 arrays, got 0"),
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_a_bad_update_is_rejected_and_recorded_and_the_round_goes_on(attack):
    build, words = ATTACKS[attack]
    strategy, cm, proxies, _ = make(FederatedAveraging, example_limits=ExampleLimits(per_partition={0: 10, 1: 10, 2: 10}))
    aggregated, record = round_with(strategy, cm, proxies, build(proxies[1]))
    assert np.allclose(aggregated[0], 2.0) and np.allclose(aggregated[1], 2.0)  # the honest clients' mean
    assert [r["partition_id"] for r in record["rejected"]] == [1]
    assert words in record["rejected"][0]["reason"]
    assert record["rejected"][0]["round"] == 1 and sorted(record["clients"]) == ["0", "2"]


def test_a_float_example_count_is_refused_and_an_unknown_site_is_capped_by_the_median():
    strategy, cm, proxies, _ = make(FederatedAveraging)
    _, record = round_with(strategy, cm, proxies, raw(proxies[1], upd(9, 9), 1e300, {"partition_id": 1}))
    assert "num_examples must be an integer, got 1e+300" in record["rejected"][0]["reason"]
    # no known maximum: a claim of 10**12 counts as 4 x the median claim (10) = 40
    strategy, cm, proxies, _ = make(FederatedAveraging)
    aggregated, record = round_with(strategy, cm, proxies, raw(proxies[1], upd(9, 9), 10**12, {"partition_id": 1}))
    assert np.allclose(aggregated[0], (1 * 10 + 9 * 40 + 3 * 10) / 60) and record["capped"] == [1]


def test_the_aggregate_is_checked_before_it_becomes_the_global_model():
    strategy, cm, proxies, rec = make(FederatedAveraging)
    strategy.aggregate_updates = lambda rnd, updates: [np.full((2, 2), np.inf, np.float32), np.zeros(3, np.float32)]
    with pytest.raises(RunStopped, match="the aggregate is not a valid model"):
        round_with(strategy, cm, proxies, result(proxies[1], upd(2, 2), 10))
    assert np.allclose(strategy.global_arrays[0], 0.0)  # the global model stays the previous one


def test_norm_bound_bounds_the_update_not_the_weights():
    """A sign-flipped model has the same weight norm as the honest one; its change is twice as large."""
    strategy, cm, proxies, _ = make(FederatedAveraging, init=upd(1, 1), norm_bound=1.0)
    strategy.configure_fit(1, strategy.initial_parameters, cm)
    honest = [a + 0.1 for a in upd(1, 1)]  # change norm 0.1 * sqrt(7) = 0.26
    flipped = [-a for a in honest]  # weight norm equal to honest's, change norm ~5.5
    params, _ = strategy.aggregate_fit(1, [result(proxies[0], honest, 10), result(proxies[1], flipped, 10),
                                           result(proxies[2], honest, 10)], [])
    assert np.allclose(parameters_to_ndarrays(params)[0], 1.1)
    assert "change from the global model" in strategy.record["rejected"][0]["reason"]


def test_a_node_without_a_partition_id_or_whose_properties_fail_is_left_out():
    strategy, cm, proxies, _ = make(FederatedAveraging, num_clients=3)
    silent = FakeProxy("node-9", None)
    silent.get_properties = lambda ins, timeout, group_id: type("R", (), {"properties": {}})()
    asked = []
    real = proxies[0].get_properties
    proxies[0].get_properties = lambda ins, timeout, group_id: asked.append(timeout) or real(ins, timeout, group_id)
    cm.register(silent)
    ins = strategy.configure_fit(1, strategy.initial_parameters, cm)
    assert [p.cid for p, _ in ins] == ["node-100", "node-99", "node-98"]
    assert strategy.record["rejected"] == [{"node": "node-9", "partition_id": None, "round": 1,
                                            "reason": "node node-9 claims partition None, not an integer"}]
    assert asked == [600.0]  # get_properties has a timeout (trust.client_timeout)


def test_two_new_nodes_claiming_one_partition_are_both_left_out_until_one_alone_claims_it():
    """First contact cannot tell a site from an impostor: neither is bound while both claim partition 1;
    the round goes on with the others, and the console line names the refused nodes."""
    from app.registry import TASKS
    from app.summary import SummarySchema

    strategy, cm, proxies, _ = make(FederatedAveraging, num_clients=3)
    cm.register(FakeProxy("node-7", 1))  # claims the partition node-99 serves, on the same first contact
    ins = strategy.configure_fit(1, strategy.initial_parameters, cm)
    assert sorted(strategy.intake.pid_of[p.cid] for p, _ in ins) == [0, 2]
    refused = strategy.record["rejected"]
    assert [(r["node"], r["partition_id"]) for r in refused] == [("node-99", None), ("node-7", None)]
    assert "nodes node-7, node-99 all claim partition 1" in refused[0]["reason"]
    assert strategy.record["failures"][0]["partition_id"] == 1
    assert strategy.record["failures"][0]["error"].startswith("no node bound to it (nodes node-7, node-99 all claim")
    strategy.aggregate_fit(1, [result(proxies[0], upd(1, 1), 10), result(proxies[2], upd(3, 3), 10)], [])
    line = SummarySchema(TASKS["ssl"].metrics).progress_line(strategy.record, 3)
    assert "REJECTED ['node node-99', 'node node-7']" in line
    cm.unregister(next(c for c in cm.all().values() if c.cid == "node-7"))  # the impostor goes
    ins = strategy.configure_fit(2, strategy.initial_parameters, cm)
    assert sorted(strategy.intake.pid_of[p.cid] for p, _ in ins) == [0, 1, 2] and strategy.intake.pid_of["node-99"] == 1


def test_metrics_arrive_as_flowers_config_record_and_are_still_checked():
    """Flower 1.41 hands metrics over as a ConfigRecord (a Mapping, not a dict): they are read and screened."""
    from flwr.common import ConfigRecord

    strategy, cm, proxies, _ = make(FederatedAveraging)
    strategy.configure_fit(1, strategy.initial_parameters, cm)
    answers = []
    for p, v, loss in [(proxies[0], 1, 2.0), (proxies[1], 9, 1.0), (proxies[2], 3, 4.0)]:
        metrics = ConfigRecord({"partition_id": p.pid, "loss": loss, **({"divergence_reference": -1.0} if v == 9 else {})})
        answers.append((p, FitRes(Status(Code.OK, ""), ndarrays_to_parameters(upd(v, v)), 10, metrics)))
    strategy.aggregate_fit(1, answers, [])
    assert strategy.record["train_loss"] == pytest.approx(3.0)  # clients 0 and 2 (loss read, not NaN)
    assert "must be in [0, inf]" in strategy.record["rejected"][0]["reason"]


@pytest.mark.parametrize("rule", ["none", "clip", "trimmed_mean", "median"])
def test_every_rule_keeps_a_0d_counter_an_array(rule):
    """BatchNorm's num_batches_tracked is a 0-d int64 array: every rule returns it as one (NumPy's 0-d
    arithmetic gives scalars, which the aggregate check refuses)."""
    g = [np.zeros(2, np.float32), np.array(4, np.int64)]
    ups = [[np.full(2, v, np.float32), np.array(n, np.int64)] for v, n in [(1, 5), (2, 6), (3, 9)]]
    out, _ = combine(rule, ups, [1, 1, 1], g, trim_fraction=0.2)
    assert isinstance(out[1], np.ndarray) and out[1].shape == () and out[1].dtype == np.int64
    assert int(out[1]) == {"none": 7, "clip": 7, "trimmed_mean": 7, "median": 6}[rule]
    assert isinstance(out[0], np.ndarray) and out[0].dtype == np.float32


def test_fedpav_distances_out_of_range_are_refused():
    from strategies import FedPav

    strategy, cm, proxies, _ = make(FedPav, cdw=True)
    aggregated, record = round_with(strategy, cm, proxies, raw(proxies[1], upd(9, 9), 10, {"partition_id": 1, "cdw": 1e9}))
    assert "metric 'cdw' must be in [0, 2]" in record["rejected"][0]["reason"]


def test_site_evaluation_reports_are_checked():
    from tests.test_strategy import LAYOUT
    import dataclasses

    strategy, cm, proxies, _ = make(FederatedAveraging, layout=dataclasses.replace(LAYOUT, evaluated_by="clients"))
    strategy.configure_fit(1, strategy.initial_parameters, cm)
    strategy.aggregate_fit(1, [result(p, upd(1, 1), 10) for p in proxies], [])
    strategy.evaluate(1, strategy.initial_parameters)

    def report(p, n, **m):
        return p, EvaluateRes(Status(Code.OK, ""), 0.0, n, {"partition_id": p.pid, **m})

    _, out = strategy.aggregate_evaluate(1, [report(proxies[0], 20, map=0.5), report(proxies[1], 20, map="high"),
                                             (proxies[2], report(proxies[0], 20, map=0.9)[1])], [])
    ev = strategy.record["eval"] if "eval" in strategy.record else None
    assert out["map"] == pytest.approx(0.5)  # only client 0's report counts
    lost = {f["partition_id"]: f["error"] for f in ev["evaluation_failures"]}
    assert "metric 'map' must be a number" in lost[1] and "reports partition 0" in lost[2]


def test_robust_rules_by_hand():
    g = [np.zeros(2, np.float32)]
    ups = [[np.array([1.0, 0.0], np.float32)], [np.array([0.0, 2.0], np.float32)], [np.array([30.0, 40.0], np.float32)]]
    # clip: update norms 1, 2, 50; bound = median = 2; the third is scaled to [1.2, 1.6]; equal weights
    out, info = clipped_mean(ups, [1, 1, 1], g)
    assert info["clip_bound"] == 2.0 and info["clip_scales"] == [1.0, 1.0, pytest.approx(0.04)]
    assert np.allclose(out[0], [(1 + 0 + 1.2) / 3, (0 + 2 + 1.6) / 3])
    out, _ = clipped_mean(ups, [1, 1, 2], g, clip_norm=1.0)  # every update cut to norm 1, weights 1:1:2
    assert np.allclose(out[0], [(1 + 0 + 2 * 0.6) / 4, (0 + 1 + 2 * 0.8) / 4])
    # coordinate-wise median and trimmed mean (one value dropped at each end of 5)
    five = [[np.array([v, -v], np.float32)] for v in (1.0, 2.0, 3.0, 4.0, 100.0)]
    assert np.allclose(coordinate_median(five)[0], [3.0, -3.0])
    assert np.allclose(trimmed_mean(five, 0.2)[0], [3.0, -3.0])  # mean of 2, 3, 4
    assert np.allclose(trimmed_mean(five, 0.0)[0], [22.0, -22.0])
    ints = [[np.array([1], np.int64)], [np.array([2], np.int64)], [np.array([4], np.int64)]]
    assert coordinate_median(ints)[0].dtype == np.int64 and coordinate_median(ints)[0][0] == 2
    with pytest.raises(ValueError, match="drops all"):
        trimmed_mean(five[:2], 0.49 + 0.01)
    assert np.allclose(combine("none", ups, [1, 1, 2], g)[0][0], [(1 + 0 + 60) / 4, (0 + 2 + 80) / 4])


@pytest.mark.parametrize("rule", ["clip", "trimmed_mean", "median"])
def test_a_hostile_scaled_update_barely_moves_the_robust_aggregate(rule):
    """One of five clients sends ten times its sign-flipped update: FedAvg follows it to -1.2; clipping cuts
    it, and the honest 1.1, to the median norm (its pull is one honest client's, reversed: 2.9 / 5); the median and the
    trimmed mean drop it (1.0 and 0.97)."""
    honest = [[np.full(3, v, np.float32)] for v in (0.9, 1.0, 1.1, 1.0)]
    hostile = [np.full(3, -10.0, np.float32)]
    fedavg, _ = combine("none", [*honest, hostile], [1] * 5, [np.zeros(3, np.float32)])
    robust, _ = combine(rule, [*honest, hostile], [1] * 5, [np.zeros(3, np.float32)])
    assert fedavg[0][0] == pytest.approx(-1.2)
    assert robust[0][0] == pytest.approx({"clip": 0.58, "trimmed_mean": 2.9 / 3, "median": 1.0}[rule])


def test_every_averaging_strategy_takes_the_robust_option_and_standalone_refuses_it():
    strategy, cm, proxies, _ = make(FedU, robust="median")
    aggregated, record = round_with(strategy, cm, proxies, result(proxies[1], upd(100, 100), 10))
    assert np.allclose(aggregated[0], 3.0)  # the median of 1, 100, 3
    with pytest.raises(ConfigError, match="strategy.robust"):
        make(FederatedAveraging, robust="mean")
    with pytest.raises(ConfigError, match="strategy=standalone combines nothing"):
        make(Standalone, robust="median")


def test_the_server_knows_each_partitions_size_in_simulation_and_caps_claims_in_a_deployment(make_cfg):
    from app.federation import DEPLOYMENT_ROUND_TIMEOUT, example_limits, server_config
    from app.registry import task_of
    from tasks.common.federated_data import partitions

    cfg = make_cfg("num_clients=3")
    from tasks.common.sections import images_of

    sizes = {pid: len(p) for pid, p in enumerate(partitions(images_of(cfg)))}
    limits = example_limits(cfg, task_of(cfg), deployed=False)
    assert limits.per_partition == sizes and limits.problem(0, sizes[0]) is None
    assert "exceeds" in limits.problem(0, sizes[0] + 1)
    deployed = example_limits(cfg, task_of(cfg), deployed=True)  # sites may hold their own data
    assert deployed.per_partition == {} and deployed.problem(0, 10**9) is None
    assert deployed.weights([0, 1, 2], [10, 10, 10**9]) == ([10.0, 10.0, 40.0], [2])
    fixed = example_limits(make_cfg("num_clients=3", "trust.max_examples=500"), task_of(cfg), deployed=True)
    assert "exceeds the 500" in fixed.problem(1, 501)
    assert server_config(cfg, deployed=True).round_timeout == DEPLOYMENT_ROUND_TIMEOUT
    assert server_config(cfg).round_timeout is None
