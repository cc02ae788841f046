"""What scale needs (issue 13): half-precision weights on the wire, client state on disk instead of
in the simulation's memory, the cores plan, and the live progress line."""

import io

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, RecordDict
from flwr.common import parameters_to_ndarrays

from app.federation import build_client, build_layout, plan_cores
from app.progress import Progress, clock, enabled
from clients.state_store import INFO as STATE_INFO
from protocol.layout import Layout
from protocol.transfer import bf16_bits, decode, encode, from_bf16_bits
from strategies import FederatedAveraging
from tests.test_client_state import told
from tests.test_strategy import make, result

SHAPES = [(2, 2), (3,), ()]
LAYOUT = Layout(keys=["online.backbone.conv1.weight", "predictor.0.bias", "online.backbone.bn1.num_batches_tracked"],
                shapes=SHAPES, fingerprint="f", dtypes=["float32", "float32", "int64"])


def test_bf16_bits_round_to_nearest_even_like_torch():
    x = np.random.default_rng(0).normal(0, 1, 10_000).astype(np.float32) * np.float32(1e3)
    x[:3] = [1.00390625, 1.01171875, -0.0]  # ties: round to even (1.0) and up (1.015625)
    ours = from_bf16_bits(bf16_bits(x))
    assert np.array_equal(ours, torch.from_numpy(x).bfloat16().float().numpy())
    assert ours[0] == 1.0 and ours[1] == 1.015625


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_transfer_round_trips_every_key_of_a_real_layout(make_cfg, dtype):
    layout, arrays = build_layout(make_cfg("strategy=fedu"))
    sent = encode(arrays, dtype)
    assert sum(a.nbytes for a in sent) < 0.51 * sum(a.nbytes for a in arrays)
    back = decode(sent, layout.wire_dtypes(), dtype)
    for key, a, b in zip(layout.keys, arrays, back):
        assert b.dtype == a.dtype and b.shape == a.shape, key
        if a.dtype != np.float32:
            assert np.array_equal(a, b), key  # num_batches_tracked travels exactly
        else:
            assert np.allclose(a, b, rtol=1e-2 if dtype == "bfloat16" else 1e-3, atol=1e-4), key
    assert any(a.dtype == np.int64 for a in arrays)
    assert layout.check(back) is None


def test_a_half_precision_upload_that_is_not_what_the_run_said_is_refused_by_name():
    with pytest.raises(ValueError, match="a float32 array arrived as float16, but transfer_dtype is bfloat16"):
        decode([np.zeros(2, np.float16)], ["float32"], "bfloat16")


def test_the_server_sends_half_and_aggregates_the_decoded_updates_in_fp32():
    init = [np.full((2, 2), 1.0, np.float32), np.full(3, 0.1, np.float32), np.array(4, np.int64)]
    strategy, cm, proxies, rec = make(FederatedAveraging, layout=LAYOUT, init=init, transfer_dtype="float16")
    ins = strategy.configure_fit(1, strategy.initial_parameters, cm)
    wire = parameters_to_ndarrays(ins[0][1].parameters)
    assert [a.dtype for a in wire] == [np.float16, np.float16, np.int64]
    assert ins[0][1].config["transfer_dtype"] == "float16"
    ups = [[np.full((2, 2), v, np.float32), np.full(3, v / 10, np.float32), np.array(5 + i, np.int64)]
           for i, v in enumerate((1.0, 2.0, 3.3))]
    results = [result(p, encode(u, "float16"), n) for p, u, n in zip(proxies, ups, (100, 100, 200))]
    params, _ = strategy.aggregate_fit(1, results, [])
    out = parameters_to_ndarrays(params)
    assert [a.dtype for a in out] == [np.float32, np.float32, np.int64]
    halves = [float(np.float16(v)) for v in (1.0, 2.0, 3.3)]  # what arrived, averaged in fp32
    assert out[0][0, 0] == pytest.approx((halves[0] + halves[1] + 2 * halves[2]) / 4, rel=1e-6)
    assert int(out[2]) == round((5 + 6 + 2 * 7) / 4)
    assert strategy.record["bytes_sent"] == sum(len(t) for _, fit in ins for t in fit.parameters.tensors)


def test_a_client_keeps_its_weights_on_disk_not_in_the_simulations_memory(make_cfg, tmp_path, spy):
    cfg = make_cfg("strategy=fedu", "num_clients=3")
    layout, init = build_layout(cfg)
    state = RecordDict()
    conf = {**told(cfg, 1), "checkpoint_every": 0}
    build_client(cfg, 1, state, state_dir=str(tmp_path)).fit(init, {**conf, "server_round": 1})
    arrays_in_memory = sum(len(r) for r in state.values() if isinstance(r, ArrayRecord))
    assert arrays_in_memory == 0 and list(state.keys()) == [STATE_INFO]
    assert dict(state[STATE_INFO])["state_round"] == 1
    assert sorted(p.name for p in (tmp_path / "1").iterdir()) == ["round-1.pt", "session.json"]  # + whose files
    saved = torch.load(tmp_path / "1" / "round-1.pt", weights_only=True)["arrays"]["fedssl.local_weights"]
    # its next round restores exactly what it saved (target and local predictor), then the file moves on
    build_client(cfg, 1, state, state_dir=str(tmp_path)).fit(init, {**conf, "server_round": 2,
                                                                     "adopt_global_predictor": False})
    assert all(torch.equal(spy[1][k], v) for k, v in saved.items())
    assert sorted(p.name for p in (tmp_path / "1").iterdir()) == ["round-2.pt", "session.json"]  # newest only


def test_a_fresh_run_in_a_reused_state_dir_ignores_the_files_of_another_run(make_cfg, tmp_path, spy):
    cfg = make_cfg("strategy=fedu", "num_clients=3")
    _, init = build_layout(cfg)
    (tmp_path / "0").mkdir()
    torch.save({"stale": True}, tmp_path / "0" / "round-1.pt")
    build_client(cfg, 0, RecordDict(), state_dir=str(tmp_path)).fit(init, told(cfg, 0))
    assert torch.load(tmp_path / "0" / "round-1.pt", weights_only=True)["configs"]["fedssl.client_info"]["rounds_trained"] == 1


@pytest.mark.parametrize(("per_round", "cores", "plan"),
                         [(5, 2, (1, 2)), (10, 2, (2, 1)), (1, 2, (1, 2)), (4, 2, (2, 1)), (5, 16, (5, 3)), (3, 1, (1, 1))])
def test_the_cores_plan_leaves_no_core_idle_in_a_last_wave(per_round, cores, plan):
    assert plan_cores(per_round, cores) == plan


def test_progress_estimates_by_hand_and_stays_quiet_off_a_terminal():
    assert not enabled("auto", io.StringIO()) and enabled(True, io.StringIO()) and not enabled(False, None)
    p = Progress(num_rounds=10, parallel=2, show=False)
    p.round_started(1, 5)
    p.client_done(1000)
    p.client_done(1000)
    p.started, p.last_done_at = 100.0, 110.0  # both answers 10 s into the round
    # 2 of 5 clients in 10 s, 2 at a time: 3 waves of 10 s -> 20 s left; 9 more rounds of 30 s
    assert p.round_left(110.0) == pytest.approx(20.0)
    assert p.run_left(110.0) == pytest.approx(20.0 + 9 * 30.0)
    assert p.line(110.0) == "round 1/10: 2/5 clients, 200 img/s, round ~0:20 left, run ~4:50 left"
    assert p.round_left(115.0) == pytest.approx(15.0)  # no new answer: it counts down, not up
    p.round_finished(31.0)
    p.round_started(2, 5)
    assert p.run_left(p.started + 1.0) == pytest.approx(30.0 + 8 * 31.0)
    assert clock(3725) == "1:02:05"


def test_progress_draws_on_a_terminal_and_clears_before_the_round_line():
    out = io.StringIO()
    p = Progress(num_rounds=2, parallel=1, show=True, stream=out, refresh=60, first_round_estimate=100.0)
    p.round_started(1, 2)
    p.render()
    assert "round 1/2: 0/2 clients, training, round ~1:40 left, run ~3:20 left" in out.getvalue()
    p.client_done(500)
    assert "round 1/2: 1/2 clients" in out.getvalue().rsplit("\r", 1)[-1]
    p.client_done(500)  # the last one: the line is cleared before Flower logs the aggregation
    assert out.getvalue().endswith("\r")
    p.round_finished(90.0)
    p.close()


def test_three_real_training_steps_give_the_first_rounds_estimate(make_cfg):
    from app.calibrate import first_round_estimate
    from app.registry import task_of

    cfg = make_cfg("num_clients=4", "local_epochs=2")
    layout, init = build_layout(cfg)
    threads = torch.get_num_threads()
    estimate = first_round_estimate(cfg, task_of(cfg), layout, init, parallel=2, threads=1)
    # 4 clients of 64 images, 2 epochs, 2 at a time: two waves of 128 images at the measured rate
    assert estimate is not None and 0 < estimate < 60
    assert torch.get_num_threads() == threads  # the server's threads are given back after the steps


def test_a_rounds_estimate_is_waves_times_a_clients_images_times_epochs_by_hand(make_cfg):
    from app.progress import round_estimate

    cfg = make_cfg("num_clients=5", "local_epochs=2")
    assert round_estimate(0.01, 64, cfg, parallel=2) == pytest.approx(3 * 64 * 2 * 0.01)  # waves 2 + 2 + 1
    assert round_estimate(0.01, 64, cfg, parallel=1) == pytest.approx(5 * 64 * 2 * 0.01)
