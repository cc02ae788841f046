"""experiment=cpu, the quick CPU preset (issue 14), and experiment=cpu_learn, the CPU learning preset
(issue 25): they compose, and one round of each runs end to end (their accuracy is the benchmark's,
benchmarks/learning.py)."""

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def test_the_preset_composes_with_what_it_documents(make_cfg):
    cfg = make_cfg("experiment=cpu", "dataset=cifar10")
    assert (cfg["model"]["width"], cfg["batch_size"], cfg["local_epochs"], cfg["num_rounds"]) == (0.125, 64, 2, 6)
    assert cfg["ssl"]["warmup_rounds"] == 1 and cfg["ssl"]["lr"] == 0.032  # the paper's learning rate
    assert cfg["eval"]["at_start"] and cfg["eval"]["bn"] == "both"
    text = (ROOT / "conf" / "experiment" / "cpu.yaml").read_text()
    for departure in ("model.width", "batch_size", "local_epochs", "examples_per_client", "ssl.warmup_rounds", "num_rounds 6"):
        assert departure in text, f"the preset does not list its departure {departure}"


def test_the_learning_preset_is_sized_by_steps_and_lists_its_departures(make_cfg):
    cfg = make_cfg("experiment=cpu_learn", "dataset=cifar10")
    steps = cfg["num_rounds"] * cfg["local_epochs"] * (cfg["examples_per_client"] // cfg["batch_size"])
    assert 1000 <= steps <= 1500  # local SGD steps per client
    assert (cfg["model"]["width"], cfg["batch_size"], cfg["ssl"]["lr"]) == (0.125, 64, 0.032)
    assert cfg["eval"]["knn_k"][0] == 200 and 20 in cfg["eval"]["knn_k"]  # the reference's k first
    assert cfg["eval"]["at_start"] and cfg["eval"]["bn"] == "both" and cfg["eval"]["linear"]
    text = (ROOT / "conf" / "experiment" / "cpu_learn.yaml").read_text()
    for departure in ("model.width", "batch_size", "num_rounds 50", "examples_per_client", "ssl.warmup_rounds",
                      "ssl.jitter", "ssl.predictor_lr_mult"):
        assert departure in text, f"the preset does not list its departure {departure}"
    # the recipe applies to every method alike
    for ssl in ("byol", "simclr", "simsiam"):
        other = make_cfg("experiment=cpu_learn", f"ssl={ssl}")
        assert other["ssl"]["jitter"] == cfg["ssl"]["jitter"]
        assert other["ssl"]["predictor_lr_mult"] == cfg["ssl"]["predictor_lr_mult"]


@pytest.mark.parametrize("preset", ["cpu", "cpu_learn"])
def test_one_round_of_the_preset_runs_and_reports_both_batchnorm_evaluations(preset, tmp_path, data_dir, cache_dir):
    out = tmp_path / "run"
    cmd = [sys.executable, "main.py", "strategy=fedu", "dataset=cifar10", f"experiment={preset}", "num_rounds=1",
           "num_clients=2", "examples_per_client=256", "eval.bank_size=500", "eval.test_size=200",
           "wandb.mode=disabled", f"data_dir={data_dir}", f"cache_dir={cache_dir}", f"output_dir={out}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == "completed" and s["config"]["model"]["width"] == 0.125
    assert [k["round"] for k in s["knn"]] == [0, 1]  # the untrained network, then round 1
    assert all(0 <= k["accuracy_bn_reestimated"] <= 1 for k in s["knn"])
    if preset == "cpu_learn":  # kNN with k = 20 as well, both readings, every evaluation
        assert all(0 <= k["accuracy_k20"] <= 1 and 0 <= k["accuracy_k20_bn_reestimated"] <= 1 for k in s["knn"])
        assert "knn_accuracy_k20_bn_reestimated" in s["final"]
    assert 0 <= s["final"]["linear_accuracy"] <= 1 and 0 <= s["final"]["linear_accuracy_bn_reestimated"] <= 1
    # one step of warm-up per round's step: round 1 is the whole warm-up, its lr is the paper's 0.032
    assert all(c["lr"] == 0.032 for c in s["rounds"][0]["clients"].values())
    for name in ("accuracy.png", "loss.png", "divergence.png", "bytes.png"):
        assert (out / name).stat().st_size > 1000
