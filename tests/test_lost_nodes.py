"""A node lost in any round, the first of a run and the first after a resume included, is that round's
failure and never the end of the run while enough clients remain (issue 17): Flower's own ServerApp
loop (`start_grid`, its GridClientProxy) driven in-process by a fake Grid, whose reply to a message
for a lost node is the SuperLink's own Node Unavailable error, as in a deployment."""

from types import SimpleNamespace

import numpy as np
import pytest
from flwr.app import Error, Message
from flwr.common import Code, FitRes, GetPropertiesRes, Status, ndarrays_to_parameters
from flwr.common.constant import ErrorCode
from flwr.compat.common import recorddict_compat as compat
from flwr.server import ServerConfig
from flwr.server.client_manager import SimpleClientManager
from flwr.server.compat import start_grid
from flwr.server.superlink.linkstate.utils import NODE_UNAVAILABLE_ERROR_REASON

from protocol.hooks import RunStopped
from strategies import FederatedAveraging
from strategies.failures import NODE_LOST
from tests.test_strategy import LAYOUT, SHAPES, Recorder, upd

NODES = {101: 0, 102: 1, 103: 2}  # SuperNode id -> the partition it serves (ids unrelated to partitions)


class FakeGrid:
    """The SuperLink as the ServerApp sees it: `lose(node, message_type, group)` says whether a message
    finds its node gone (each True is used once); every other node answers as an honest client."""

    def __init__(self, lose=lambda node, kind, group: False):
        self.run, self.lose, self.sent = SimpleNamespace(run_id=7), lose, []

    def get_node_ids(self):
        return list(NODES)

    def send_and_receive(self, messages, timeout=None):
        replies = []
        for m in messages:
            node, kind, group = m.metadata.dst_node_id, m.metadata.message_type, m.metadata.group_id
            self.sent.append((node, kind, group))
            if self.lose(node, kind, group):
                error = Error(code=ErrorCode.NODE_UNAVAILABLE, reason=NODE_UNAVAILABLE_ERROR_REASON)
                replies.append(Message(error, reply_to=m))
                continue
            pid = NODES[node]
            if kind == "get_properties":
                content = compat.getpropertiesres_to_recorddict(
                    GetPropertiesRes(Status(Code.OK, ""), {"partition_id": pid}))
            else:
                content = compat.fitres_to_recorddict(FitRes(Status(Code.OK, ""), ndarrays_to_parameters(
                    upd(pid + 1, pid + 1)), 10, {"partition_id": pid, "loss": 1.0}), keep_input=False)
            replies.append(Message(content, reply_to=m))
        return replies


class NodesNow(SimpleClientManager):
    """Flower's client manager, but the first round need not wait for the 5 s poll of the grid's nodes."""

    def wait_for(self, num_clients: int, timeout: int = 86400) -> bool:
        self.num_available()  # start_grid wraps it: it registers the grid's nodes first
        return super().wait_for(num_clients, timeout)


def once(*wanted):
    """A `lose` that loses each (node, message type, group) in `wanted` the first time only."""
    pending = list(wanted)

    def lose(node, kind, group):
        if (node, kind, group) in pending:
            pending.remove((node, kind, group))
            return True
        return False

    return lose


def run(num_rounds, lose=None, resume_from=None, **kw):
    """The rounds a ServerApp runs (all of them, or those left after `resume_from`) over FakeGrid:
    the strategy, its round records (each with the global model it made, under "model") and the grid."""
    rec = Recorder()
    hooks = rec.hooks()
    hooks.save_state = lambda rnd, arrays, state: rec.records[-1].update(model=arrays)  # after the round's report
    strategy = FederatedAveraging(layout=LAYOUT, hooks=hooks, initial_arrays=[np.zeros(s, dtype=np.float32) for s in SHAPES],
                      num_rounds=num_rounds, num_clients=len(NODES), eval_every=0, checkpoint_every=1,
                      resume_from=resume_from, **kw)
    done = resume_from["round"] if resume_from else 0
    grid = FakeGrid(lose or (lambda *a: False))
    start_grid(grid=grid, strategy=strategy, config=ServerConfig(num_rounds=num_rounds - done),
               client_manager=NodesNow())
    return strategy, rec.records, grid


def resumed_after_round_2(lose):
    """Rounds 1-2, the server gone, then rounds 3-4 resumed from its state: the nodes keep their ids
    (a SuperNode's id is bound to its key), so the binding of partitions survives the resume."""
    first, _, _ = run(2)
    return run(4, lose, resume_from={"round": 2, "strategy_state": first.state_dict()})


def test_a_node_lost_as_the_resumed_run_first_asks_its_partition_is_that_rounds_failure():
    # node 101 is gone when the resumed ServerApp asks every node which partition it serves
    strategy, records, grid = resumed_after_round_2(once((101, "get_properties", "")))
    assert [r["round"] for r in records] == [3, 4]  # the run completes
    r3, r4 = records
    assert r3["failures"] == [{"partition_id": 0, "round": 3, "error": NODE_LOST}]  # as in any other round
    assert r3["rejected"] == [] and "identity" not in r3  # a lost node is no refused claim
    assert sorted(r3["clients"]) == ["1", "2"] and r3["selected"] == [0, 1, 2]
    # back (same id): asked again at round 4, still bound to its partition, and trains
    assert [k for n, k, g in grid.sent if n == 101] == ["get_properties", "get_properties", "train"]
    assert sorted(r4["clients"]) == ["0", "1", "2"] and r4["failures"] == []
    assert strategy.intake.identity.node_of == {0: "101", 1: "102", 2: "103"}


def test_a_node_lost_while_training_in_the_first_round_after_a_resume_is_that_rounds_failure():
    _, records, _ = resumed_after_round_2(once((101, "train", "1")))  # Flower counts the resumed rounds from 1
    r3, r4 = records
    assert r3["failures"] == [{"partition_id": 0, "round": 3, "error": NODE_LOST}]
    assert sorted(r3["clients"]) == ["1", "2"] and sorted(r4["clients"]) == ["0", "1", "2"]
    assert r4["failures"] == []
    # each round's model is the mean of the updates that arrived (partition p sends p + 1, 10 examples each)
    assert np.allclose(r3["model"][0], 2.5) and np.allclose(r4["model"][0], 2.0)


def test_a_node_lost_in_the_first_round_of_a_run_is_that_rounds_failure():
    # while training in round 1, and, in another run, before it ever said which partition it serves
    _, records, _ = run(2, once((102, "train", "1")))
    assert records[0]["failures"] == [{"partition_id": 1, "round": 1, "error": NODE_LOST}]
    assert sorted(records[1]["clients"]) == ["0", "1", "2"]
    strategy, records, _ = run(2, once((102, "get_properties", "")))
    r1, r2 = records
    # its partition is bound to no node yet: the failure says which node was lost instead
    assert r1["failures"] == [{"partition_id": 1, "round": 1,
                               "error": "no node bound to it (node 102 lost before saying which partition it serves)"}]
    assert r1["rejected"] == [] and sorted(r1["clients"]) == ["0", "2"]
    assert sorted(r2["clients"]) == ["0", "1", "2"] and strategy.intake.identity.node_of[1] == "102"


def test_a_bound_node_that_cannot_say_its_partition_after_a_resume_is_its_partitions_failure():
    def mute(node, kind, group):
        if node == 101 and kind == "get_properties" and not mute.done:
            mute.done = True
            raise TimeoutError("no answer")
        return False

    mute.done = False
    _, records, _ = resumed_after_round_2(mute)
    r3 = records[0]
    assert r3["failures"] == [{"partition_id": 0, "round": 3, "error": "its node 101 did not say which partition it "
                                                                       "serves (TimeoutError: no answer)"}]
    assert r3["rejected"] == [] and sorted(records[1]["clients"]) == ["0", "1", "2"]


def test_the_run_stops_with_the_reason_only_when_too_few_clients_remain():
    # min_fit_clients=3: the loss leaves 2 valid updates in the first round after the resume
    state = run(2)[0].state_dict()
    with pytest.raises(RunStopped, match="round 3: only 2 valid updates, min_fit_clients is 3") as stopped:
        run(4, once((101, "train", "1")), resume_from={"round": 2, "strategy_state": state}, min_fit_clients=3)
    assert "node lost during the round" in str(stopped.value)
    # every chosen client lost as the server asks: Flower would skip the round; the run stops, saying why
    lose_all = once(*((n, "get_properties", "") for n in NODES))
    with pytest.raises(RunStopped, match="round 1: only 0 valid updates") as stopped:
        run(2, lose_all)
    assert "lost before saying which partition it serves" in str(stopped.value)
