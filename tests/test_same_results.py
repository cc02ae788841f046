"""Seeded smoke runs give the results they gave before a refactor: FedU, FedPav, SDR, detection.

A change that only moves code (issue 29: the round's bookkeeping, task rows, typed sections, one
k-means and one Sinkhorn) must not change what a run computes. Each case runs a seeded
`experiment=smoke` federation at fp32 and compares every round's training loss, every client's
loss and the final scores with tests/reference/smoke_results.json, recorded on the code before the
refactor. The tolerances cover float reordering between machines (thread counts), not a changed
rule: a different sampling, a lost update or a changed loss moves these far more. A change that
is meant to alter results rewrites the file on purpose:

    FEDSSL_WRITE_REFERENCE=1 .venv/bin/python -m pytest tests/test_same_results.py
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from tests.conftest import smoke_run

REFERENCE = Path(__file__).parent / "reference" / "smoke_results.json"
WRITE = os.environ.get("FEDSSL_WRITE_REFERENCE") == "1"
CASES = {
    "fedu": ["strategy=fedu", "dataset=cifar100", "num_clients=3"],
    "fedpav": ["strategy=fedpav", "dataset=cifar100_reid", "num_clients=3"],
    "sdr": ["strategy=sdr", "dataset=cifar100", "num_clients=2", "num_rounds=3"],
    "detection": ["strategy=fedavg", "dataset=synthetic_detection", "num_clients=3"],
}
LOSS_RTOL = 2e-3  # relative, per loss: fp32 sums in another order drift ~1e-6 per step
SCORE_ATOL = 0.02  # a final score (a share): one or two test images that flip between machines


def results(summary: dict) -> dict:
    """What a run computed: per round its loss and each client's; the final numeric scores."""
    rounds = [{"round": r["round"], "train_loss": r.get("train_loss"),
               "clients": {pid: c.get("loss") for pid, c in sorted(r.get("clients", {}).items())}}
              for r in summary["rounds"]]
    final = {k: v for k, v in (summary.get("final") or {}).items()
             if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("bank_size", "test_size")}
    return {"rounds": rounds, "final": final}


def close(a, b, rtol: float) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(float(a), float(b), rel_tol=rtol, abs_tol=1e-6)


@pytest.mark.parametrize("case", list(CASES))
def test_a_seeded_smoke_run_gives_the_recorded_results(case, tmp_path, data_dir, cache_dir):
    run = smoke_run(tmp_path / case, data_dir, cache_dir, *CASES[case], "precision=fp32", "seed=0",
                    "wandb.mode=disabled", "progress=false")
    got = results(json.loads((run / "summary.json").read_text()))
    if WRITE:
        recorded = json.loads(REFERENCE.read_text()) if REFERENCE.is_file() else {}
        recorded[case] = got
        REFERENCE.parent.mkdir(parents=True, exist_ok=True)
        REFERENCE.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")
        return
    want = json.loads(REFERENCE.read_text())[case]
    assert [r["round"] for r in got["rounds"]] == [r["round"] for r in want["rounds"]]
    for g, w in zip(got["rounds"], want["rounds"]):
        assert close(g["train_loss"], w["train_loss"], LOSS_RTOL), (case, g, w)
        assert g["clients"].keys() == w["clients"].keys(), (case, g, w)
        for pid in w["clients"]:
            assert close(g["clients"][pid], w["clients"][pid], LOSS_RTOL), (case, pid, g, w)
    assert got["final"].keys() == want["final"].keys(), case
    for key, value in want["final"].items():
        assert abs(got["final"][key] - value) <= SCORE_ATOL, (case, key, got["final"][key], value)
    print(f"\n{case}: {deviations(got, want)}")  # what a refactor's note reports (pytest -s)


def deviations(got: dict, want: dict) -> str:
    """The largest differences from the recorded results: relative, over every loss; absolute, over the scores."""
    losses = [(g["train_loss"], w["train_loss"]) for g, w in zip(got["rounds"], want["rounds"])] + [
        (g["clients"][pid], w["clients"][pid]) for g, w in zip(got["rounds"], want["rounds"]) for pid in w["clients"]]
    rel = max((abs(float(a) - float(b)) / max(abs(float(b)), 1e-12) for a, b in losses if b is not None), default=0.0)
    score = max((abs(got["final"][k] - v) for k, v in want["final"].items()), default=0.0)
    return f"{len(losses)} losses, largest relative difference {rel:.1e}; {len(want['final'])} scores, largest difference {score:.4f}"
