"""A real deployment on loopback that loses machines (issue 17): a SuperNode killed mid-round and
restarted, the server side killed and resumed through `flwr run`, refusals. Each test starts and
stops its own SuperLink and SuperNodes (only those, by process id, also when it fails)."""

import json
import time

import numpy as np
import pytest

from clients import state_store
from ops.certificates import make_tls
from ops.loopback import LocalFederation
from strategies.failures import NODE_LOST, NOT_CONNECTED
from tasks.common.checkpoint import checkpoint_models, load_checkpoint, load_file


def _summary(run_dir):
    try:
        return json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return {}


def _until(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _federation(tmp_path, data_dir, nodes=2, node_overrides=None):
    fed = LocalFederation(tmp_path / "fed")
    fed.start_superlink()
    for i in range(nodes):
        config = {"partition-id": i, "num-partitions": nodes, "data-dir": str(data_dir),
                  "state-dir": str(tmp_path / "fed" / "client_state")}
        if node_overrides and i in node_overrides:
            config["overrides"] = node_overrides[i]
        fed.start_supernode(f"supernode-{i}", config)
    fed.wait_for_nodes(nodes, timeout=180)
    return fed


def _overrides(data_dir, cache_dir, *extra):
    return ["experiment=smoke", "strategy=fedu", "num_clients=2", f"data_dir={data_dir}", f"cache_dir={cache_dir}",
            *extra]


@pytest.mark.slow
def test_a_supernode_killed_mid_round_is_recorded_and_rejoins_from_its_own_state(tmp_path, data_dir, cache_dir):
    run_dir = tmp_path / "run"
    fed = _federation(tmp_path, data_dir)
    try:
        # client 0 also sends a non-finite update in round 1 and a wrongly shaped one in round 4
        run_id = fed.submit(_overrides(data_dir, cache_dir, "num_rounds=4", f"output_dir={run_dir}",
                                       "faults.nan_update=[[0,1]]", "faults.wrong_shape_update=[[0,4]]"))
        _until(lambda: len(_summary(run_dir).get("rounds", [])) >= 1, 600, "round 1")
        assert fed.kill("supernode-1") == -9  # SIGKILL, node and ClientApp, as round 2 starts
        _until(lambda: len(_summary(run_dir).get("rounds", [])) >= 2, 300, "round 2 without supernode-1")
        fed.restart("supernode-1")  # same key, partition and state dir
        assert fed.wait_for_run(run_id, 900)["status"] == "finished:completed"
    finally:
        fed.stop()
    s = _summary(run_dir)
    assert s["status"] == "completed"
    r1, r2, r3, r4 = s["rounds"]
    # the rejection names the node that sent the update (its SuperNode id), besides the partition
    [rejected] = r1["rejected"]
    assert rejected.pop("node").isdigit()
    assert rejected == {"partition_id": 0, "round": 1, "reason": "online.backbone.conv1.weight: non-finite values"}
    assert sorted(r1["clients"]) == ["1"]
    # the round of the kill completes with the other node; the loss is recorded by client and round
    assert sorted(r2["clients"]) == ["0"] and r2["failures"] == [{"partition_id": 1, "round": 2, "error": NODE_LOST}]
    # restarted: client 1 rejoins in round 3, or in round 4 when it was not yet connected as round 3
    # began, and continues from its own state of round 1 (BYOL's target, FedU's predictor, its notes)
    rejoined = 3 if "1" in r3["clients"] else 4
    assert s["rounds"][rejoined - 1]["clients"]["1"]["state"] == "restored:1", s["rounds"]
    if rejoined == 4:
        assert r3["failures"] == [{"partition_id": 1, "round": 3, "error": NOT_CONNECTED}]
    else:
        assert r4["clients"]["1"]["state"] == "kept"
    assert r3["clients"]["0"]["state"] == "kept"
    assert r4["rejected"][0]["partition_id"] == 0 and "shape" in r4["rejected"][0]["reason"]
    kept, info = state_store.load(tmp_path / "fed" / "client_state" / "1", 4)
    assert info["last_round"] == 4 and info["rounds_trained"] == 1 + (4 - rejoined + 1)  # counted on, not anew
    assert {k.split(".")[0] for k in kept} == {"target", "predictor"}


@pytest.mark.slow
def test_the_server_killed_after_round_2_resumes_through_the_deployment_equal_to_uninterrupted(
        tmp_path, data_dir, cache_dir):
    run_dir, ref_dir = tmp_path / "run", tmp_path / "ref"
    common = _overrides(data_dir, cache_dir, "num_rounds=4", "checkpoint_every=1")

    def saved_round():
        path = run_dir / "state" / "server.pt"
        try:
            return load_file(path)["round"] if path.is_file() else 0
        except Exception:  # noqa: BLE001 - being replaced as we read
            return 0

    fed = _federation(tmp_path, data_dir)
    try:
        fed.submit(common + [f"output_dir={run_dir}"])
        _until(lambda: saved_round() >= 2, 600, "the checkpoint of round 2")
        fed.kill("superlink")  # the SuperLink and its ServerApp, at once; the SuperNodes stay up
        fed.restart("superlink")  # same port, database and certificates: the SuperNodes reconnect
        fed.wait_for_nodes(2, timeout=180, watch=["superlink"])
        resumed = fed.submit(common + [f"resume={run_dir}"])
        assert fed.wait_for_run(resumed, 900)["status"] == "finished:completed"
        reference = fed.submit(common + [f"output_dir={ref_dir}"])
        assert fed.wait_for_run(reference, 900)["status"] == "finished:completed"
    finally:
        fed.stop()
    s = _summary(run_dir)
    assert s["status"] == "completed" and [r["round"] for r in s["rounds"]] == [1, 2, 3, 4]
    (resumed_at,) = s["resumed"]
    k = resumed_at["from_round"]
    assert k >= 2
    assert all(c["state"] == f"restored:{k}" for c in s["rounds"][k]["clients"].values())
    a = checkpoint_models(load_checkpoint(run_dir / "checkpoint_final.pt"))["global"]
    b = checkpoint_models(load_checkpoint(ref_dir / "checkpoint_final.pt"))["global"]
    assert len(a) == len(b) > 0 and all(np.array_equal(x, y) for x, y in zip(a, b))  # every tensor equal


def test_a_node_with_another_upload_layout_is_refused_with_the_fingerprints(tmp_path, data_dir, cache_dir):
    run_dir = tmp_path / "run"
    fed = _federation(tmp_path, data_dir, node_overrides={1: "model.width=0.25"})  # a site with other settings
    try:
        run_id = fed.submit(_overrides(data_dir, cache_dir, "num_rounds=1", f"output_dir={run_dir}"))
        assert fed.wait_for_run(run_id, 900)["status"] == "finished:completed"
    finally:
        fed.stop()
    s = _summary(run_dir)
    (failure,) = s["rounds"][0]["failures"]
    assert failure["partition_id"] == 1 and failure["error"].startswith("LayoutMismatch: client 1, round 1: the server")
    assert "fingerprint" in failure["error"] and sorted(s["rounds"][0]["clients"]) == ["0"]


def test_a_node_that_does_not_trust_the_federations_ca_cannot_connect(tmp_path, data_dir):
    foreign = make_tls(tmp_path / "foreign", ["127.0.0.1"])  # another CA: not the one that signed the SuperLink
    fed = LocalFederation(tmp_path / "fed")
    try:
        fed.start_superlink()
        fed.start_supernode("stranger", {"partition-id": 0, "num-partitions": 1, "data-dir": str(data_dir)},
                            root_certificates=foreign["ca_cert"])
        time.sleep(15)
        assert fed.online_nodes() == 0
        log = fed.log_tail("stranger", 200)
        assert "CERTIFICATE_VERIFY_FAILED" in log or "certificate verify failed" in log.lower(), log
    finally:
        fed.stop()


def _saved_round(run_dir) -> int:
    path = run_dir / "state" / "server.pt"
    try:
        return load_file(path)["round"] if path.is_file() else 0
    except Exception:  # noqa: BLE001 - being replaced as we read
        return 0


@pytest.mark.slow
def test_a_supernode_killed_in_the_first_round_after_a_resume_is_recorded_and_the_run_completes(
        tmp_path, data_dir, cache_dir):
    """The resumed server first asks every node which partition it serves: supernode-0 is killed as that
    question reaches it, so it is lost in the resumed run's first round (before it answers, or as it
    trains); that round goes on with the other node, records the loss as any round does, and the run
    completes."""
    run_dir, log = tmp_path / "run", tmp_path / "fed" / "logs" / "supernode-0.log"
    common = _overrides(data_dir, cache_dir, "num_rounds=4", "checkpoint_every=1")
    fed = _federation(tmp_path, data_dir)
    try:
        fed.submit(common + [f"output_dir={run_dir}"])
        _until(lambda: _saved_round(run_dir) >= 2, 600, "the checkpoint of round 2")
        fed.kill("superlink")
        k = _saved_round(run_dir)  # the resumed run's first round is k + 1
        fed.restart("superlink")
        fed.wait_for_nodes(2, timeout=180, watch=["superlink"])
        start = log.stat().st_size
        resumed = fed.submit(common + [f"resume={run_dir}"])
        _until(lambda: "Receiving: get_properties message" in log.read_bytes()[start:].decode(errors="replace"),
               600, "the resumed server's first message to supernode-0")
        assert fed.kill("supernode-0") == -9
        _until(lambda: len(_summary(run_dir).get("rounds", [])) >= k + 1, 900, f"round {k + 1} without supernode-0")
        fed.restart("supernode-0")  # same key (so the same node id), partition and state dir
        assert fed.wait_for_run(resumed, 900)["status"] == "finished:completed"
    finally:
        fed.stop()
    s = _summary(run_dir)
    assert s["status"] == "completed" and [r["round"] for r in s["rounds"]] == [1, 2, 3, 4]
    assert s["resumed"][0]["from_round"] == k
    first = s["rounds"][k]
    assert first["failures"] == [{"partition_id": 0, "round": k + 1, "error": NODE_LOST}]  # as in any round
    assert first["rejected"] == [] and sorted(first["clients"]) == ["1"]
    for r in s["rounds"][k + 1:]:  # back once it is connected again, from its own saved state
        assert ("0" in r["clients"] and r["clients"]["0"]["state"].startswith("restored:")) or r["failures"] == [
            {"partition_id": 0, "round": r["round"], "error": NOT_CONNECTED}], r
