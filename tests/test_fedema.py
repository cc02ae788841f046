"""FedEMA (docs/algorithms.md#fedema): the mixing rule by hand, the autoscaler, and partial participation."""

import numpy as np
import pytest
import torch
from flwr.app import RecordDict

from app.federation import build_client, build_layout
from app.simulation import preflight
from strategies import FedEMA
from tasks.common.arrays import get_arrays
from tasks.ssl.fedema import ema_mix
from tasks.ssl.methods.byol import BYOL
from tasks.ssl.model import divergence_layers, upload_keys
from tests.test_strategy import make, result, upd


def test_mixing_rule_and_autoscaler_by_hand():
    m = BYOL(arch="resnet10", width=0.125, proj_hidden=8, proj_dim=4, pred_hidden=8)
    plan = m.sync_plan("online")
    keys = upload_keys(m, plan)
    idx = divergence_layers(keys, plan)
    local = get_arrays(m, keys)
    glob = [a + 0.1 if a.dtype.kind == "f" else a for a in local]
    d = float(np.mean([0.1 * np.sqrt(local[i].size) for i in idx]))
    out = ema_mix(m, keys, glob, idx, tau=0.7, lam=None)
    assert out["divergence"] == pytest.approx(d, rel=1e-5)
    assert out["lambda"] == pytest.approx(0.7 / d, rel=1e-5) and out["mu"] == pytest.approx(0.7)
    mixed = get_arrays(m, keys)
    assert np.allclose(mixed[0], local[0] + 0.3 * 0.1, atol=1e-6)  # 0.7 * local + 0.3 * global
    # second mixing: lambda stays; twice the divergence gives mu = min(1.4, 1) = 1 -> keep local
    glob2 = [a + 0.2 if a.dtype.kind == "f" else a for a in mixed]
    out2 = ema_mix(m, keys, glob2, idx, tau=0.7, lam=out["lambda"])
    assert out2["mu"] == 1.0 and np.allclose(get_arrays(m, keys)[0], mixed[0])


def test_client_mixes_resets_after_skipping_and_keeps_lambda(make_cfg, spy):
    seen = spy
    cfg = make_cfg("strategy=fedema", "num_clients=2", "num_rounds=10")
    layout, init = build_layout(cfg)
    state = RecordDict()
    conf = preflight(cfg).strategy.instructions(1, 0).to_config()  # what FedEMA tells its clients
    assert (conf["mix"], conf["mix_tau"], conf["keep_everything"]) == ("ema", 0.7, True)
    out1, _, m1 = build_client(cfg, 0, state).fit(init, {**conf, "server_round": 1})
    assert "ema_mu" not in m1  # first participation: takes the global model
    # skipped round 2: round 3 takes the global model and resets the target to it
    glob = [a * 0.5 if a.dtype.kind == "f" else a for a in out1]
    _, _, m3 = build_client(cfg, 0, state).fit(glob, {**conf, "server_round": 3})
    assert m3["ema_mixing"] == "reset"
    start = seen[-1]
    for k, g in zip(layout.keys, glob):
        if k.startswith("online."):
            assert np.array_equal(start[k].numpy(), g)
            assert torch.equal(start[k.replace("online.", "target.", 1)], start[k])
    # round 4 right after: the first real mixing gets mu = tau, and lambda is remembered
    _, _, m4 = build_client(cfg, 0, state).fit(glob, {**conf, "server_round": 4})
    assert m4["ema_mu"] == pytest.approx(0.7) and m4["ema_lambda"] > 0
    assert dict(state["fedssl.client_info"])["ema_lambda"] == pytest.approx(m4["ema_lambda"])
    _, _, m5 = build_client(cfg, 0, state).fit(glob, {**conf, "server_round": 5})
    assert m5["ema_lambda"] == pytest.approx(m4["ema_lambda"])
    assert m5["ema_mu"] == pytest.approx(min(m5["ema_lambda"] * m5["ema_divergence"], 1.0))


def test_fedema_strategy_records_mu_lambda_and_divergence():
    strategy, cm, proxies, _ = make(FedEMA)
    strategy.configure_fit(1, strategy.initial_parameters, cm)
    strategy.aggregate_fit(1, [
        result(proxies[0], upd(0, 0), 10, ema_divergence=0.5, ema_lambda=1.4, ema_mu=0.7),
        result(proxies[1], upd(0, 0), 10, ema_mixing="reset"),
        result(proxies[2], upd(0, 0), 10),
    ], [])
    c = strategy.record["clients"]
    assert (c["0"]["divergence"], c["0"]["lambda"], c["0"]["mu"], c["0"]["mixing"]) == (0.5, 1.4, 0.7, "mixed")
    assert c["1"]["mixing"] == "reset" and c["2"]["mixing"] == "first"
