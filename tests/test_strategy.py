"""Strategies fed with hand-made client results (convention 11, docs/architecture.md#conventions-and-where-they-come-from)."""

import numpy as np
import pytest
from flwr.common import (
    Code,
    FitRes,
    GetPropertiesRes,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server.client_manager import SimpleClientManager
from flwr.server.client_proxy import ClientProxy

from protocol.hooks import RunStopped, ServerHooks
from protocol.layout import Layout
from strategies import FederatedAveraging, FedU, Standalone

SHAPES = [(2, 2), (3,)]  # layer 0 is the "conv" used for divergence, layer 1 a predictor bias
LAYOUT = Layout(keys=["online.backbone.conv1.weight", "predictor.0.bias"], shapes=SHAPES, fingerprint="f",
                divergence_layers=[0])


class FakeProxy(ClientProxy):
    def __init__(self, cid: str, pid: int):
        super().__init__(cid)
        self.pid = pid

    def get_properties(self, ins, timeout, group_id):
        return GetPropertiesRes(status=Status(Code.OK, ""), properties={"partition_id": self.pid})

    def get_parameters(self, ins, timeout, group_id):
        raise NotImplementedError

    def fit(self, ins, timeout, group_id):
        raise NotImplementedError

    def evaluate(self, ins, timeout, group_id):
        raise NotImplementedError

    def reconnect(self, ins, timeout, group_id):
        raise NotImplementedError


class Recorder:
    def __init__(self):
        self.records, self.evals = [], []

    def hooks(self):
        def evaluate(rnd, models, final):
            self.evals.append((rnd, sorted(models), final))
            return {"knn_accuracy": 0.5, "final": final}

        return ServerHooks(evaluate=evaluate, report=self.records.append, save_checkpoint=lambda m, r: "ckpt.pt")


def make(cls, num_clients=3, layout=LAYOUT, init=None, **kw):
    rec = Recorder()
    init = init if init is not None else [np.zeros(s, dtype=np.float32) for s in SHAPES]
    strategy = cls(layout=layout, hooks=rec.hooks(), initial_arrays=init, num_rounds=3,
                   num_clients=num_clients, eval_every=1, **kw)
    cm = SimpleClientManager()
    proxies = [FakeProxy(f"node-{100 - k}", k) for k in range(num_clients)]  # node ids unrelated to pids
    for p in proxies:
        cm.register(p)
    return strategy, cm, proxies, rec


def result(proxy, arrays, n, **metrics):
    metrics = {"partition_id": proxy.pid, "loss": 1.0, **metrics}
    return proxy, FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), n, metrics)


def upd(conv_value, bias_value):
    return [np.full((2, 2), conv_value, dtype=np.float32), np.full(3, bias_value, dtype=np.float32)]


def test_fedu_weights_divergence_and_per_client_decisions():
    strategy, cm, proxies, rec = make(FedU, mu=0.4)
    ins = strategy.configure_fit(1, strategy.initial_parameters, cm)
    assert [strategy.intake.pid_of[p.cid] for p, _ in ins] == [0, 1, 2]
    # first participation: everyone takes the global predictor
    assert all(fi.config["adopt_global_predictor"] for _, fi in ins)
    results = [result(proxies[0], upd(0.0, 1.0), 100), result(proxies[1], upd(0.3, 2.0), 100),
               result(proxies[2], upd(0.3, 4.0), 200)]
    payload = sum(sum(len(t) for t in r.parameters.tensors) for _, r in results)
    params, _ = strategy.aggregate_fit(1, results, [])
    agg = parameters_to_ndarrays(params)
    # weights 1/4, 1/4, 1/2: conv = 0.225, bias = 0.25 + 0.5 + 2 = 2.75
    assert np.allclose(agg[0], 0.225) and np.allclose(agg[1], 2.75)
    # divergence = ||W_k - W_g|| over the 2x2 conv = 2 * |w_k - 0.225|
    assert strategy.divergence[0] == pytest.approx(0.45)
    assert strategy.divergence[1] == pytest.approx(0.15)
    assert strategy.adopt_global == {0: False, 1: True, 2: True}
    clients = strategy.record["clients"]
    assert clients["0"]["predictor_next"] == "local" and clients["1"]["predictor_next"] == "global"
    assert strategy.record["bytes_received"] == payload
    assert all(not r.parameters.tensors for _, r in results)  # serialised copies dropped once decoded
    # next round: each client gets its own decision in its own instructions
    ins = strategy.configure_fit(2, params, cm)
    decisions = {strategy.intake.pid_of[p.cid]: fi.config["adopt_global_predictor"] for p, fi in ins}
    assert decisions == {0: False, 1: True, 2: True}


def test_fedbyol_and_local_ablation_ignore_divergence():
    for mode, expected in (("global", True), ("local", False)):
        strategy, cm, proxies, _ = make(FedU, predictor=mode, mu=0.0)
        strategy.configure_fit(1, strategy.initial_parameters, cm)
        strategy.aggregate_fit(1, [result(p, upd(k, k), 10) for k, p in enumerate(proxies)], [])
        assert set(strategy.adopt_global.values()) == {expected}


def test_skipped_client_keeps_its_last_decision_and_sampling_is_seeded():
    strategy, cm, proxies, _ = make(FedU, num_clients=4, fraction_fit=0.5, seed=3, mu=0.4)
    chosen1 = [strategy.intake.pid_of[p.cid] for p, _ in strategy.configure_fit(1, strategy.initial_parameters, cm)]
    again, _, _, _ = make(FedU, num_clients=4, fraction_fit=0.5, seed=3, mu=0.4)
    assert [again.intake.pid_of[p.cid] for p, _ in again.configure_fit(1, again.initial_parameters, cm)] == chosen1
    assert len(chosen1) == 2
    by_pid = {p.pid: p for p in proxies}
    strategy.aggregate_fit(1, [result(by_pid[chosen1[0]], upd(5.0, 0), 10),
                               result(by_pid[chosen1[1]], upd(-5.0, 0), 10)], [])
    assert strategy.adopt_global[chosen1[0]] is False
    strategy.adopt_global[chosen1[0]] = False
    for rnd in range(2, 12):
        for p, fi in strategy.configure_fit(rnd, strategy.initial_parameters, cm):
            pid = strategy.intake.pid_of[p.cid]
            assert fi.config["adopt_global_predictor"] == strategy.adopt_global.get(pid, True)


def test_invalid_updates_are_rejected_and_failures_recorded():
    strategy, cm, proxies, rec = make(FederatedAveraging, min_fit_clients=1)
    strategy.configure_fit(1, strategy.initial_parameters, cm)
    nan = upd(1.0, 1.0)
    nan[0][0, 0] = np.nan
    wrong = [np.zeros((3, 3), dtype=np.float32), np.zeros(3, dtype=np.float32)]
    results = [result(proxies[0], upd(2.0, 2.0), 10), result(proxies[1], nan, 10), result(proxies[2], wrong, 10)]
    params, _ = strategy.aggregate_fit(1, results, [RuntimeError("client crashed")])
    assert np.allclose(parameters_to_ndarrays(params)[0], 2.0)  # only the valid update
    reasons = {r["partition_id"]: r["reason"] for r in strategy.record["rejected"]}
    assert "non-finite" in reasons[1] and "shape (3, 3)" in reasons[2]
    assert strategy.record["failures"][0]["error"] == "RuntimeError: client crashed"


def test_too_few_valid_updates_stops_the_run_with_the_reason():
    strategy, cm, proxies, rec = make(FederatedAveraging, min_fit_clients=2)
    strategy.configure_fit(1, strategy.initial_parameters, cm)
    with pytest.raises(RunStopped, match="only 1 valid updates"):
        strategy.aggregate_fit(1, [result(proxies[0], upd(1, 1), 10)], [RuntimeError("boom")])
    assert "fatal_error" in rec.records[-1]


def test_a_clients_fatal_error_ends_its_participation_not_the_run():
    strategy, cm, proxies, _ = make(FederatedAveraging)
    strategy.configure_fit(1, strategy.initial_parameters, cm)
    bad = result(proxies[1], [], 0, fatal_error="client 1, round 1: non-finite loss (nan)")
    params, _ = strategy.aggregate_fit(1, [result(proxies[0], upd(1, 1), 10), bad, result(proxies[2], upd(3, 3), 10)], [])
    assert np.allclose(parameters_to_ndarrays(params)[0], 2.0)  # the round goes on with the others
    assert strategy.record["failures"] == [{"partition_id": 1, "round": 1,
                                            "error": "left the federation: client 1, round 1: non-finite loss (nan)"}]
    ins = strategy.configure_fit(2, params, cm)  # not asked again, recorded as failed
    assert sorted(strategy.intake.pid_of[c.cid] for c, _ in ins) == [0, 2]
    assert "left the federation" in strategy.record["failures"][0]["error"]
    assert strategy.state_dict()["retired"] == {"1": "round 1: client 1, round 1: non-finite loss (nan)"}


def test_the_server_stops_the_run_when_every_client_has_left_naming_their_error():
    strategy, cm, proxies, _ = make(FederatedAveraging)
    strategy.configure_fit(1, strategy.initial_parameters, cm)
    bad = [result(p, [], 0, fatal_error=f"client {p.pid}, round 1: non-finite loss (nan)") for p in proxies]
    with pytest.raises(RunStopped, match="^client 0, round 1: non-finite loss .*only 0 valid updates"):
        strategy.aggregate_fit(1, bad, [])


def test_standalone_sends_weights_once_and_evaluates_each_client():
    strategy, cm, proxies, rec = make(Standalone)
    ins = strategy.configure_fit(1, strategy.initial_parameters, cm)
    assert all(fi.parameters.tensors and fi.config["replace"] for _, fi in ins)
    params, _ = strategy.aggregate_fit(1, [result(p, upd(k, k), 10) for k, p in enumerate(proxies)], [])
    assert np.allclose(parameters_to_ndarrays(params)[0], 0.0)  # nothing aggregated
    ins = strategy.configure_fit(2, params, cm)
    assert all(not fi.parameters.tensors and not fi.config["replace"] for _, fi in ins)
    assert strategy.record["bytes_sent"] == 0
    strategy.evaluate(2, params)
    assert rec.evals[-1] == (2, ["0", "1", "2"], False)


def test_reference_divergence_uses_what_each_client_measured():
    strategy, cm, proxies, _ = make(FedU, mu=0.4, divergence="reference")
    strategy.configure_fit(1, strategy.initial_parameters, cm)
    results = [result(p, upd(0, 0), 10, divergence_reference=d) for p, d in zip(proxies, (0.1, 0.4, 0.9))]
    strategy.aggregate_fit(1, results, [])
    assert strategy.divergence == {0: 0.1, 1: 0.4, 2: 0.9}
    assert strategy.adopt_global == {0: True, 1: False, 2: False}


def test_relative_dapu_divides_each_layer_distance_by_the_aggregate_norm():
    """dapu_scale=relative (issue 14): d_k^rel = ||W_k - W_g|| / ||W_g|| per layer, against mu_relative;
    the absolute divergence is still recorded, and decides nothing."""
    strategy, cm, proxies, _ = make(FedU, dapu_scale="relative", mu_relative=0.1, mu=100.0)
    strategy.configure_fit(1, strategy.initial_parameters, cm)
    # conv values 1.0, 1.2, 0.9 with weights 1/4, 1/4, 1/2 -> aggregate 1.0 (norm 2 over the 2x2 conv)
    results = [result(proxies[0], upd(1.0, 0), 100), result(proxies[1], upd(1.2, 0), 100),
               result(proxies[2], upd(0.9, 0), 200)]
    params, _ = strategy.aggregate_fit(1, results, [])
    assert np.allclose(parameters_to_ndarrays(params)[0], 1.0)
    clients = strategy.record["clients"]
    # absolute: 2 * |w - 1| = 0, 0.4, 0.2; relative: that over ||W_g|| = 2 -> 0, 0.2, 0.1
    assert [clients[str(k)]["divergence"] for k in range(3)] == pytest.approx([0.0, 0.4, 0.2])
    assert [clients[str(k)]["divergence_relative"] for k in range(3)] == pytest.approx([0.0, 0.2, 0.1])
    # 0 < 0.1 -> global; 0.2 >= 0.1 -> local; exactly at the threshold (0.1) -> local, as the paper's d_k < mu
    assert strategy.adopt_global == {0: True, 1: False, 2: False}
    # the same divergences under the paper's absolute rule with mu = 0.3: 0 and 0.2 below, 0.4 above
    absolute, cm2, proxies2, _ = make(FedU, mu=0.3, mu_relative=0.0)
    absolute.configure_fit(1, absolute.initial_parameters, cm2)
    absolute.aggregate_fit(1, [result(proxies2[0], upd(1.0, 0), 100), result(proxies2[1], upd(1.2, 0), 100),
                               result(proxies2[2], upd(0.9, 0), 200)], [])
    assert absolute.adopt_global == {0: True, 1: False, 2: True}


def test_relative_dapu_refuses_an_unknown_scale():
    from protocol.checks import ConfigError

    with pytest.raises(ConfigError, match="strategy.dapu_scale"):
        make(FedU, dapu_scale="weights")


def test_a_node_offline_at_the_start_of_a_round_is_recorded_and_the_round_goes_on():
    strategy, cm, proxies, rec = make(FederatedAveraging, num_clients=3)
    strategy.configure_fit(1, strategy.initial_parameters, cm)  # round 1: everyone connected
    strategy.aggregate_fit(1, [result(p, upd(k, k), 10) for k, p in enumerate(proxies)], [])
    cm.unregister(proxies[1])  # its SuperNode went down between rounds
    ins = strategy.configure_fit(2, strategy.initial_parameters, cm)
    assert [strategy.intake.pid_of[p.cid] for p, _ in ins] == [0, 2]
    assert strategy.record["selected"] == [0, 1, 2]  # the seeded choice does not depend on who is up
    assert strategy.record["failures"] == [{"partition_id": 1, "round": 2,
                                            "error": "not connected at the start of the round (its node is offline)"}]
    params, _ = strategy.aggregate_fit(2, [result(proxies[0], upd(1.0, 1.0), 10),
                                           result(proxies[2], upd(3.0, 3.0), 30)], [])
    assert np.allclose(parameters_to_ndarrays(params)[0], 2.5)  # (1*10 + 3*30) / 40: only who answered
    # back with its own node id (a SuperNode keeps its id: Flower binds it to the node's key)
    cm.register(proxies[1])
    ins = strategy.configure_fit(3, strategy.initial_parameters, cm)
    assert [p.cid for p, _ in ins] == ["node-100", "node-99", "node-98"] and not strategy.record["failures"]


def test_a_partition_is_bound_to_the_node_that_first_claimed_it():
    """Identity (issue 26): a second node claiming a served partition, a node changing its claim, a claim
    outside the partitions and a node that cannot say are refused by name; a partition whose node is
    gone passes to the node that claims it (recorded), and the binding survives a resume."""
    strategy, cm, proxies, rec = make(FederatedAveraging, num_clients=3)
    strategy.configure_fit(1, strategy.initial_parameters, cm)
    thief, negative, mute = FakeProxy("node-7", 1), FakeProxy("node-6", -1), FakeProxy("node-5", 0)
    mute.get_properties = lambda ins, timeout, group_id: (_ for _ in ()).throw(TimeoutError("no answer"))
    for p in (thief, negative, mute):
        cm.register(p)
    ins = strategy.configure_fit(2, strategy.initial_parameters, cm)
    assert [p.cid for p, _ in ins] == ["node-100", "node-99", "node-98"]
    reasons = {r["node"]: r["reason"] for r in strategy.record["rejected"]}
    assert reasons["node-7"] == "node node-7 claims partition 1, which node node-99 serves"
    assert reasons["node-6"] == "node node-6 claims partition -1, outside 0-2"
    assert reasons["node-5"].startswith("node node-5 did not say which partition it serves (TimeoutError: no answer")
    # the bound node answers under another partition's id: its update is refused, the others are used
    params, _ = strategy.aggregate_fit(2, [result(proxies[0], upd(1, 1), 10),
                                           (proxies[1], result(proxies[2], upd(9, 9), 10)[1]),
                                           result(proxies[2], upd(3, 3), 10)], [])
    assert np.allclose(parameters_to_ndarrays(params)[0], 2.0)
    assert strategy.record["rejected"][-1]["reason"] == "reports partition 2, but its node serves partition 1"
    # its node is gone: the partition passes to the node that claims it, and the binding is saved
    for p in (proxies[1], negative, mute):
        cm.unregister(p)
    ins = strategy.configure_fit(3, strategy.initial_parameters, cm)
    assert [p.cid for p, _ in ins] == ["node-100", "node-7", "node-98"]
    assert strategy.record["identity"][0]["note"] == "partition 1 passed from node node-99 (gone) to node node-7"
    saved = strategy.state_dict()["identity"]
    assert saved == {"0": "node-100", "1": "node-7", "2": "node-98"}
    # resumed: node-100, node-99 (back, claiming partition 1 again) and node-98 connect, beside node-7
    resumed, cm2, _, _ = make(FederatedAveraging, num_clients=3, resume_from={"round": 3, "strategy_state": strategy.state_dict()})
    cm2.register(thief)
    resumed.configure_fit(1, resumed.initial_parameters, cm2)
    assert {r["node"]: r["reason"] for r in resumed.record["rejected"]} == {
        "node-99": "node node-99 claims partition 1, which node node-7 serves"}
