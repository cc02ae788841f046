"""The user's command, tiny: a real Flower simulation on Ray, 2 rounds, 3 clients."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.common.checkpoint import load_checkpoint
from tests.conftest import ROOT


def launch(tmp_path: Path, data_dir, cache_dir, *overrides) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "main.py", "dataset=cifar100", "num_clients=3", "experiment=smoke",
           f"data_dir={data_dir}", f"cache_dir={cache_dir}", f"output_dir={tmp_path / 'run'}", *overrides]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


def run_main(tmp_path: Path, data_dir, cache_dir, *overrides) -> dict:
    out = tmp_path / "run"
    proc = launch(tmp_path, data_dir, cache_dir, *overrides)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "[round 2/2]" in proc.stdout + proc.stderr
    return json.loads((out / "summary.json").read_text())


def test_fedu_simulation_writes_a_complete_summary(tmp_path, data_dir, cache_dir):
    s = run_main(tmp_path, data_dir, cache_dir, "strategy=fedu", "wandb.mode=offline")
    assert s["status"] == "completed" and s["error"] is None
    assert s["strategy"] == "fedu" and s["config"]["num_clients"] == 3
    assert [r["round"] for r in s["rounds"]] == [1, 2]
    for r in s["rounds"]:
        assert sorted(r["clients"]) == ["0", "1", "2"]
        assert r["bytes_sent"] > 0 and r["bytes_received"] > 0 and r["wall_seconds"] > 0
        for c in r["clients"].values():
            assert c["num_examples"] == 64 and c["loss"] > 0
            assert c["divergence"] > 0 and c["predictor_next"] in ("global", "local")
    # the decision made after round 1 is the one each client used in round 2
    for pid, c in s["rounds"][1]["clients"].items():
        assert c["predictor_used"] == s["rounds"][0]["clients"][pid]["predictor_next"]
    assert [k["round"] for k in s["knn"]] == [1, 2]
    assert 0 <= s["final"]["knn_accuracy"] <= 1 and 0 <= s["final"]["linear_accuracy"] <= 1
    ckpt = load_checkpoint(s["checkpoint"])
    assert ckpt["config"]["strategy"]["name"] == "fedu" and ckpt["round"] == 2
    assert not any(k.startswith("target.") for k in ckpt["models"]["global"])
    assert any(k.startswith("predictor.") for k in ckpt["models"]["global"])
    runs = list(Path(s["wandb"]["dir"]).parent.glob("run-*.wandb")) + list(
        (tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert s["wandb"]["run_id"] and runs, "no offline W&B run written"
    for name in ("accuracy.png", "loss.png", "divergence.png", "bytes.png"):  # the run's plots
        assert (tmp_path / "run" / name).stat().st_size > 1000, name
    assert all(c["divergence_relative"] > 0 for r in s["rounds"] for c in r["clients"].values())


def test_standalone_simulation_evaluates_every_client(tmp_path, data_dir, cache_dir):
    s = run_main(tmp_path, data_dir, cache_dir, "strategy=standalone", "partition=iid")
    per_client = s["final"]["per_client"]
    assert sorted(per_client) == ["0", "1", "2"]
    mean = sum(c["knn_accuracy"] for c in per_client.values()) / 3
    assert s["final"]["knn_accuracy"] == pytest.approx(mean)
    assert s["rounds"][1]["bytes_sent"] == 0  # nothing is sent after the first round
    assert sorted(load_checkpoint(s["checkpoint"])["models"]) == ["0", "1", "2"]
    # mode=evaluate on the checkpoint reproduces the run's final evaluation, client by client
    ev_dir = tmp_path / "evaluated"
    proc = launch(tmp_path, data_dir, cache_dir, "mode=evaluate", f"checkpoint={s['checkpoint']}", f"output_dir={ev_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ev = json.loads((ev_dir / "evaluation.json").read_text())["final"]
    assert ev["per_client"] == {pid: {k: c[k] for k in ev["per_client"][pid]} for pid, c in per_client.items()}
    assert ev["knn_accuracy"] == s["final"]["knn_accuracy"] and ev["linear_accuracy"] == s["final"]["linear_accuracy"]


def test_non_finite_loss_stops_the_run_naming_client_and_round(tmp_path, data_dir, cache_dir):
    proc = launch(tmp_path, data_dir, cache_dir, "ssl.lr=1e30")
    assert proc.returncode != 0
    assert "error: client" in proc.stderr and "round 1: non-finite loss" in proc.stderr
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["status"] == "failed" and "non-finite loss" in s["error"]
