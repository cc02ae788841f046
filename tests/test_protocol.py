"""What a client is told each round is written by the strategy into its fit config, and only there
(convention 2, docs/architecture.md#conventions-and-where-they-come-from): every strategy's instructions, read back the way the client reads them."""

import numpy as np
import pytest

from protocol.instructions import Instructions
from protocol.layout import Layout
from strategies import FedEMA, FedPav, FederatedAveraging, FedU, Standalone
from tests.test_strategy import make, result, upd


def test_instructions_survive_the_fit_config_and_absent_keys_take_defaults():
    ins = Instructions(server_round=3, layout="abc", layout_options={"sync": "target", "bn": "local"}, replace=False,
                       mix="ema", mix_tau=0.7, mix_lambda=None, keep_everything=True, cdw=True, resume_round=2)
    config = ins.to_config()
    assert all(isinstance(v, (int, float, str, bool)) for v in config.values())  # Flower config scalars
    assert "mix_lambda" not in config and config["layout_sync"] == "target"
    assert Instructions.from_config(config) == ins
    assert Instructions.from_config({"server_round": 1}) == Instructions(server_round=1)


def told(strategy, cm, pid, server_round=1):
    ins = {strategy.intake.pid_of[p.cid]: Instructions.from_config(fi.config)
           for p, fi in strategy.configure_fit(server_round, strategy.initial_parameters, cm)}
    return ins[pid]


def test_each_strategy_tells_its_clients_what_to_do_with_the_weights():
    fedavg, cm, _, _ = make(FederatedAveraging)
    ins = told(fedavg, cm, 0)
    assert (ins.replace, ins.mix, ins.keep_optional, ins.keep_everything, ins.adopt_global_predictor) == (
        True, "", False, False, True)
    assert ins.layout == "f" and ins.server_round == 1
    fedu, cm, _, _ = make(FedU)
    assert told(fedu, cm, 0).keep_optional is True  # DAPU: the client keeps its own predictor
    fedbyol, cm, _, _ = make(FedU, predictor="global")
    assert told(fedbyol, cm, 0).keep_optional is False  # FedBYOL: always the server's predictor
    fedema, cm, _, _ = make(FedEMA, ema_tau=0.5, ema_lambda=2.0)
    ins = told(fedema, cm, 1)
    assert (ins.mix, ins.mix_tau, ins.mix_lambda, ins.keep_everything) == ("ema", 0.5, 2.0, True)
    standalone, cm, proxies, _ = make(Standalone)
    assert (told(standalone, cm, 2).replace, told(standalone, cm, 2).keep_everything) == (True, True)
    standalone.aggregate_fit(1, [result(p, upd(0, 0), 10) for p in proxies], [])
    assert told(standalone, cm, 2, server_round=2).replace is False  # it trains on from its own model


def test_the_layout_options_travel_to_every_client():
    layout = Layout(keys=["online.backbone.conv1.weight", "predictor.0.bias"], shapes=[(2, 2), (3,)], fingerprint="g",
                    options={"sync": "both", "bn": "local"}, divergence_layers=[0])
    strategy, cm, _, _ = make(FedU, layout=layout)
    assert told(strategy, cm, 1).layout_options == {"sync": "both", "bn": "local"}


def test_fedpav_asks_for_the_cosine_distance_only_when_it_weights_by_it():
    layout = Layout(keys=["backbone.w"], shapes=[(2,)], fingerprint="f")
    for cdw in (False, True):
        strategy, cm, _, _ = make(FedPav, layout=layout, init=[np.zeros(2, np.float32)], cdw=cdw)
        assert told(strategy, cm, 0).cdw is cdw


def test_pooled_clients_count_no_network_traffic():
    """strategy=centralised: one client holds everything; nothing would cross a network."""
    for pool, traffic in ((False, True), (True, False)):
        strategy, cm, proxies, _ = make(FederatedAveraging, pool_clients=pool)
        strategy.configure_fit(1, strategy.initial_parameters, cm)
        strategy.aggregate_fit(1, [result(p, upd(1, 1), 10) for p in proxies], [])
        assert (strategy.record["bytes_sent"] > 0, strategy.record["bytes_received"] > 0) == (traffic, traffic)


@pytest.mark.parametrize("cls, key, value, message", [
    (FedU, "mu", "x", "strategy.mu must be a number >= 0, got 'x'"),
    (FedU, "predictor", "both", "strategy.predictor='both' is not valid"),
    (FedU, "divergence", 1, "strategy.divergence=1 is not valid"),
    (FedEMA, "ema_tau", 0, "strategy.ema_tau must be > 0, got 0"),
    (FedEMA, "ema_lambda", "auto", "strategy.ema_lambda must be null or a number >= 0, got 'auto'"),
    (FedPav, "kd_every", 0, "strategy.kd_every must be an integer >= 1, got 0"),
    (FedPav, "cdw", "yes", "strategy.cdw must be true or false, got 'yes'"),
    (FederatedAveraging, "pool_clients", 1, "strategy.pool_clients must be true or false, got 1"),
])
def test_a_strategy_refuses_a_wrong_argument_naming_its_key(cls, key, value, message):
    from protocol.checks import ConfigError

    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make(cls, **{key: value})
