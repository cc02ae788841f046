"""experiment=cpu, the preset that learns at CPU scale (issue 14): it composes, and one round of it
runs end to end (its accuracy is the benchmark's, benchmarks/compare.py)."""

import json
import subprocess
import sys

from tests.conftest import ROOT


def test_the_preset_composes_with_what_it_documents(make_cfg):
    cfg = make_cfg("experiment=cpu", "dataset=cifar10")
    assert (cfg["model"]["width"], cfg["batch_size"], cfg["local_epochs"], cfg["num_rounds"]) == (0.125, 64, 2, 6)
    assert cfg["ssl"]["warmup_rounds"] == 1 and cfg["ssl"]["lr"] == 0.032  # the paper's learning rate
    assert cfg["eval"]["at_start"] and cfg["eval"]["bn"] == "both"
    text = (ROOT / "conf" / "experiment" / "cpu.yaml").read_text()
    for departure in ("model.width", "batch_size", "local_epochs", "examples_per_client", "ssl.warmup_rounds", "num_rounds 6"):
        assert departure in text, f"the preset does not list its departure {departure}"


def test_one_round_of_the_preset_runs_and_reports_both_batchnorm_evaluations(tmp_path, data_dir, cache_dir):
    out = tmp_path / "run"
    cmd = [sys.executable, "main.py", "strategy=fedu", "dataset=cifar10", "experiment=cpu", "num_rounds=1",
           "num_clients=2", "examples_per_client=256", "eval.bank_size=500", "eval.test_size=200",
           "wandb.mode=disabled", f"data_dir={data_dir}", f"cache_dir={cache_dir}", f"output_dir={out}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == "completed" and s["config"]["model"]["width"] == 0.125
    assert [k["round"] for k in s["knn"]] == [0, 1]  # the untrained network, then round 1
    assert all(0 <= k["accuracy_bn_reestimated"] <= 1 for k in s["knn"])
    assert 0 <= s["final"]["linear_accuracy"] <= 1 and 0 <= s["final"]["linear_accuracy_bn_reestimated"] <= 1
    # one step of warm-up per round's step: round 1 is the whole warm-up, its lr is the paper's 0.032
    assert all(c["lr"] == 0.032 for c in s["rounds"][0]["clients"].values())
    for name in ("accuracy.png", "loss.png", "divergence.png", "bytes.png"):
        assert (out / name).stat().st_size > 1000
