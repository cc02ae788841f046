"""Hostile clients on the client side (`faults.hostile`, clients/faults.py): each attack changes exactly
what it says, on a TaskClient whose local round is a stub (no Ray, no training), with hand-checked values."""

import time

import numpy as np
import pytest
import torch
from flwr.app import RecordDict

from app.schema import RUN
from clients import faults
from clients.task_client import TaskClient
from protocol.checks import ConfigError
from protocol.instructions import Instructions
from tasks.common.local import LocalResult

RECEIVED = [np.ones((2, 2), np.float32), np.array([7], np.int64)]  # a weight and a BatchNorm step counter


def trained_round(r):
    """The stub local round: every floating weight moves by +0.5, integers by +1; 10 examples, loss 0.25."""
    upload = [a + 0.5 if a.dtype.kind == "f" else a + 1 for a in r.received]
    return LocalResult(upload=upload, num_examples=10, metrics={"loss": 0.25}, kept={"w": torch.zeros(1)})


def client(attack=None, pid=1, num_clients=5, **more):
    cfg = {"num_clients": num_clients, "faults": {"hostile": [[pid, attack]] if attack else [], **more}}
    return TaskClient(trained_round, cfg, pid, RecordDict(), settings=None)  # the stub round reads no section


def fit(c, rnd=1, transfer="float32"):
    config = Instructions(server_round=rnd, transfer_dtype=transfer).to_config()
    return c.fit([a.copy() for a in RECEIVED], config)


def test_an_honest_client_sends_its_trained_weights():
    arrays, n, metrics = fit(client())
    assert np.allclose(arrays[0], 1.5) and arrays[0].dtype == np.float32 and arrays[1].tolist() == [8]
    assert n == 10 and metrics["loss"] == 0.25 and metrics["partition_id"] == 1
    assert client().get_properties({}) == {"partition_id": 1}


def test_sign_flip_x10_sends_received_minus_ten_times_the_update_on_floating_arrays_only():
    arrays, n, metrics = fit(client("sign_flip_x10"))
    assert np.allclose(arrays[0], 1.0 - 10 * (1.5 - 1.0)) and np.allclose(arrays[0], -4.0)
    assert arrays[0].dtype == np.float32 and arrays[1].tolist() == [8]  # the integer array as trained
    assert n == 10 and metrics["loss"] == 0.25 and metrics["partition_id"] == 1


def test_sign_flip_x10_by_hand_and_an_array_without_a_received_twin_untouched():
    out = faults.sign_flip_x10([np.array([1.5, 0.0], np.float32), np.array([3.0], np.float32)],
                               [np.array([1.0, 2.0], np.float32)])
    assert out[0].tolist() == [-4.0, 22.0] and out[1].tolist() == [3.0]


def test_huge_count_changes_only_the_example_count():
    arrays, n, metrics = fit(client("huge_count"))
    assert n == 10**12 and np.allclose(arrays[0], 1.5) and metrics["loss"] == 0.25


def test_noise_has_the_arrays_own_mean_and_std_and_is_seeded_by_partition_and_round():
    w = np.arange(10000, dtype=np.float32).reshape(100, 100) / 1000.0  # mean 4.9995, std 2.8867
    ints = np.array([3], np.int64)
    out = faults.noise([w, ints], 1, 2)
    assert out[0].dtype == np.float32 and out[0].shape == (100, 100) and out[1] is ints
    assert abs(out[0].mean() - 4.9995) < 0.1 and abs(out[0].std() - 2.8867) < 0.1
    assert np.array_equal(out[0], faults.noise([w, ints], 1, 2)[0])  # same partition and round: same noise
    assert not np.array_equal(out[0], faults.noise([w, ints], 1, 3)[0])
    assert not np.array_equal(out[0], faults.noise([w, ints], 2, 2)[0])
    arrays, n, _ = fit(client("noise"))  # a constant array (std 0) stays at its mean
    assert np.allclose(arrays[0], 1.5) and arrays[1].tolist() == [8] and n == 10


def test_text_metric_and_claim_partition_change_one_metric():
    _, _, metrics = fit(client("text_metric"))
    assert metrics["loss"] == "x" and metrics["partition_id"] == 1
    _, _, metrics = fit(client("claim_partition"))
    assert metrics["partition_id"] == 2 and metrics["loss"] == 0.25
    _, _, metrics = fit(client("claim_partition", pid=4))
    assert metrics["partition_id"] == 0  # (4 + 1) % 5


@pytest.mark.parametrize("transfer", ["float32", "bfloat16"])
def test_dtype_attacks_change_the_floating_arrays_as_they_travel(transfer):
    arrays, n, _ = fit(client("wrong_dtype"), transfer=transfer)
    assert arrays[0].dtype == np.uint8 and arrays[0].tolist() == [[1, 1], [1, 1]] and arrays[1].dtype == np.int64
    arrays, _, _ = fit(client("float64_huge"), transfer=transfer)
    assert arrays[0].dtype == np.float64 and np.all(arrays[0] == 1e300) and arrays[1].tolist() == [8]
    arrays, _, _ = fit(client("complex"), transfer=transfer)
    assert arrays[0].dtype == np.complex64 and np.allclose(arrays[0], 1.5 + 0j) and arrays[1].dtype == np.int64


def test_identity_attacks_answer_another_partition_or_minus_one():
    assert client("steal_identity").get_properties({}) == {"partition_id": 2}
    assert client("steal_identity", pid=4).get_properties({}) == {"partition_id": 0}
    assert client("negative_identity").get_properties({}) == {"partition_id": -1}
    _, _, metrics = fit(client("steal_identity"))
    assert metrics["partition_id"] == 1  # fit itself stays honest


def test_fatal_error_answers_without_training():
    called = []
    c = client("fatal_error")
    c.local_round = lambda r: called.append(r)
    assert fit(c) == ([], 0, {"partition_id": 1, "fatal_error": "injected fatal error"})
    assert not called


def test_stall_sleeps_hang_seconds_before_training():
    t0 = time.perf_counter()
    arrays, _, _ = fit(client("stall", hang_seconds=0.3))
    assert time.perf_counter() - t0 >= 0.3 and np.allclose(arrays[0], 1.5)


def test_an_attack_hits_only_its_partition():
    c = client("sign_flip_x10", pid=1)
    c.pid = 0
    arrays, _, _ = fit(c)
    assert np.allclose(arrays[0], 1.5)


def test_the_config_names_the_attacks():
    spec = RUN["faults.hostile"]
    assert spec.check([[1, "noise"], [0, "stall"]], "faults.hostile")
    for bad in ([[1, "nosie"]], [["1", "noise"]], [[1]], [[-1, "noise"]], "noise"):
        with pytest.raises(ConfigError, match=r"faults.hostile must be a list of \[partition_id, attack\] pairs"):
            spec.check(bad, "faults.hostile")
