"""A client across three rounds with a fake Context: what it must remember survives in
context.state, because Flower builds a new client object every round (convention 5, docs/architecture.md#conventions-and-where-they-come-from)."""

import numpy as np
import pytest
import torch
from flwr.app import Context, RecordDict

from app.federation import build_client, build_layout, make_client_fn
from app.simulation import preflight
from clients.state_store import WEIGHTS as STATE_WEIGHTS
from tasks.common.local import LayoutMismatch


def told(cfg, pid, server_round=1):
    """The fit config the run's real strategy sends client `pid` (what it is told, and nothing else)."""
    return preflight(cfg).strategy.instructions(server_round, pid).to_config()


def part(sd, prefix):
    return {k: v for k, v in sd.items() if k.startswith(prefix)}


def same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.values(), b.values()))


def perturbed(arrays, seed):
    rng = np.random.default_rng(seed)
    return [a + rng.normal(0, 0.05, a.shape).astype(a.dtype) if a.dtype.kind == "f" else a for a in arrays]


def test_target_and_local_predictor_survive_three_rounds(make_cfg, spy):
    cfg = make_cfg("strategy=fedu", "num_clients=3")
    layout, init = build_layout(cfg)
    state = RecordDict()
    conf = told(cfg, 1)
    assert conf["keep_optional"] is True  # FedU under DAPU: the client keeps its own predictor

    # round 1: first participation; target starts as a copy of the received online encoder
    out1, n1, m1 = build_client(cfg, 1, state).fit(init, {**conf, "server_round": 1, "adopt_global_predictor": True})
    assert n1 == 64 and m1["partition_id"] == 1 and np.isfinite(m1["loss"])
    start1 = spy[0]
    assert same(part(start1, "target.backbone"), {k.replace("online", "target", 1): v
                                                  for k, v in part(start1, "online.backbone").items()})
    stored = state[STATE_WEIGHTS].to_torch_state_dict()
    assert {k.split(".")[0] for k in stored} == {"target", "predictor"}  # online is never kept
    assert len(out1) == len(layout.keys)

    # round 2: a new client object; the server says keep the local predictor
    glob2 = perturbed(out1, 2)
    _, _, m2 = build_client(cfg, 1, state).fit(glob2, {**conf, "server_round": 2, "adopt_global_predictor": False})
    start2 = spy[1]
    assert same(part(start2, "target."), part(stored, "target."))  # carried over, not replaced
    assert same(part(start2, "predictor."), part(stored, "predictor."))  # local predictor kept
    glob2_sd = dict(zip(layout.keys, glob2))
    assert all(np.array_equal(start2[k].numpy(), glob2_sd[k]) for k in layout.keys if k.startswith("online."))
    assert m2["predictor_used"] == "local"
    stored2 = state[STATE_WEIGHTS].to_torch_state_dict()
    assert not same(part(stored2, "target."), part(stored, "target."))  # it trained

    # round 3: the server says adopt the global predictor
    glob3 = perturbed(out1, 3)
    _, _, m3 = build_client(cfg, 1, state).fit(glob3, {**conf, "server_round": 3, "adopt_global_predictor": True})
    glob3_sd = dict(zip(layout.keys, glob3))
    assert all(np.array_equal(spy[2][k].numpy(), glob3_sd[k]) for k in layout.keys if k.startswith("predictor."))
    assert same(part(spy[2], "target."), part(stored2, "target."))
    assert m3["predictor_used"] == "global"
    assert dict(state["fedssl.client_info"]) == {"rounds_trained": 3, "last_round": 3, "session": conf["session"]}
    assert [m1["state"], m2["state"], m3["state"]] == ["new", "kept", "kept"]


def test_a_restarted_node_continues_from_its_own_state_dir(make_cfg, spy, tmp_path):
    """A SuperNode killed after round 2 and started again (empty context.state, same state-dir)."""
    cfg = make_cfg("strategy=fedu", "num_clients=3")
    _, init = build_layout(cfg)
    conf = told(cfg, 1)
    state, node_dir = RecordDict(), tmp_path / "node1"
    out1, _, _ = build_client(cfg, 1, state, state_dir=str(node_dir)).fit(init, {**conf, "server_round": 1})
    build_client(cfg, 1, state, state_dir=str(node_dir)).fit(perturbed(out1, 2), {**conf, "server_round": 2})
    saved2 = torch.load(node_dir / "1" / "round-2.pt", weights_only=True)["arrays"]["fedssl.local_weights"]
    _, _, m3 = build_client(cfg, 1, RecordDict(), state_dir=str(node_dir)).fit(
        perturbed(out1, 3), {**conf, "server_round": 3, "adopt_global_predictor": False})
    assert m3["state"] == "restored:2"
    assert same(part(spy[2], "target."), part(saved2, "target."))  # BYOL's target: its own, not a blank copy
    assert same(part(spy[2], "predictor."), part(saved2, "predictor."))  # FedU's local predictor too
    # restarted with an empty state dir: a first participation, and it says so
    _, _, m4 = build_client(cfg, 1, RecordDict(), state_dir=str(tmp_path / "empty")).fit(
        perturbed(out1, 4), {**conf, "server_round": 4})
    assert m4["state"] == "new"
    assert same(part(spy[3], "target.backbone"), {k.replace("online", "target", 1): v
                                                  for k, v in part(spy[3], "online.backbone").items()})


def test_standalone_client_ignores_later_server_weights(make_cfg, spy):
    cfg = make_cfg("strategy=standalone", "num_clients=2")
    layout, init = build_layout(cfg)
    state = RecordDict()
    conf = told(cfg, 0)
    assert conf["keep_everything"] is True
    build_client(cfg, 0, state).fit(init, {**conf, "server_round": 1, "replace": True})
    stored = state[STATE_WEIGHTS].to_torch_state_dict()
    build_client(cfg, 0, state).fit([], {**conf, "server_round": 2, "replace": False})
    assert same(part(spy[1], "online."), part(stored, "online."))


def test_fedbyol_client_keeps_no_predictor_of_its_own(make_cfg, spy):
    """FedBYOL always takes the server's predictor, so only the target stays on the client."""
    cfg = make_cfg("strategy=fedbyol", "num_clients=2")
    layout, init = build_layout(cfg)
    state = RecordDict()
    build_client(cfg, 0, state).fit(init, told(cfg, 0))
    assert {k.split(".")[0] for k in state[STATE_WEIGHTS].to_torch_state_dict()} == {"target"}


def test_layout_mismatch_is_refused(make_cfg):
    cfg = make_cfg()
    layout, init = build_layout(cfg)
    with pytest.raises(LayoutMismatch, match="client 0, round 1"):
        build_client(cfg, 0, RecordDict()).fit(init, {"server_round": 1, "layout": "0000"})


def test_client_app_reads_partition_id_from_node_config(make_cfg):
    cfg = make_cfg("num_clients=2")
    context = Context(run_id=1, node_id=42, node_config={"partition-id": 1, "num-partitions": 2},
                      state=RecordDict(), run_config={})
    client = make_client_fn(cfg)(context)
    assert client.numpy_client.pid == 1 and client.numpy_client.state is context.state
