"""The comparison runner resumes: finished cells (<partition>/<method>/seed<k>) are read back, never rerun."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import compare  # noqa: E402


def fake_summary(knn):
    return {"status": "completed", "initial_eval": {"knn_accuracy": 0.05},
            "final": {"knn_accuracy": knn, "linear_accuracy": knn + 0.01, "semi_1%": 0.02, "semi_10%": 0.04},
            "rounds": [{"bytes_sent": 2e6, "bytes_received": 2e6}, {"bytes_sent": 2e6, "bytes_received": 2e6}],
            "knn": [{"round": 1, "accuracy": knn - 0.01}, {"round": 2, "accuracy": knn}], "wall_seconds": 12.0}


def fake_launcher(calls: list, file: str, content: dict):
    """Stands in for `python main.py ...`: records the command, writes `file` into its output folder."""
    def launch(cmd):
        calls.append(cmd)
        out = Path(next(c.split("=", 1)[1] for c in cmd if c.startswith(("output_dir=", "resume="))))
        out.mkdir(parents=True, exist_ok=True)
        (out / file).write_text(json.dumps(content))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    return launch


def test_finished_cells_are_not_rerun_and_the_table_is_written(tmp_path, monkeypatch):
    for part, method, knn in (("classes", "fedu", 0.10), ("classes", "fedema", 0.12), ("iid", "fedu", 0.2),
                              ("iid", "fedema", 0.22)):
        cell = tmp_path / part / method / "seed0"
        cell.mkdir(parents=True)
        (cell / "summary.json").write_text(json.dumps(fake_summary(knn)))

    def refuse(*a, **k):
        raise AssertionError("a finished cell was run again")

    monkeypatch.setattr(compare, "launch", refuse)
    rows = compare.main(["--methods", "fedu", "fedema", "--partitions", "classes", "iid", "--out", str(tmp_path)])
    assert [(r["partition"], r["method"], r["knn"]) for r in rows] == [
        ("classes", "FedU", 0.10), ("classes", "FedEMA", 0.12), ("iid", "FedU", 0.2), ("iid", "FedEMA", 0.22)]
    table = (tmp_path / "table.md").read_text()
    assert "| classes | FedEMA | 1 | 5.00 | 12.00 | 7.00 | 13.00 | 2.00 | 4.00 | 12 | 4.0 |" in table
    assert json.loads((tmp_path / "table.json").read_text())["rows"][0]["mb_per_round"] == pytest.approx(4.0)
    assert (tmp_path / "knn_rounds.png").stat().st_size > 1000


def test_an_unfinished_cell_is_run_and_an_interrupted_one_resumed(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(compare, "launch", fake_launcher(calls, "summary.json", fake_summary(0.1)))
    interrupted = tmp_path / "classes" / "fedbyol" / "seed0"
    (interrupted / "state").mkdir(parents=True)
    (interrupted / "state" / "server.pt").write_bytes(b"x")
    (interrupted / "summary.json").write_text(json.dumps({"status": "running"}))
    compare.main(["--methods", "fedu", "fedbyol", "--partitions", "classes", "--out", str(tmp_path)])
    assert "strategy=fedu" in calls[0] and f"output_dir={tmp_path / 'classes' / 'fedu' / 'seed0'}" in calls[0]
    assert calls[1][2:] == [f"resume={interrupted}"]


def test_report_only_tables_the_finished_cells_and_runs_nothing(tmp_path, monkeypatch, capsys):
    cell = tmp_path / "classes" / "fedu" / "seed0"
    cell.mkdir(parents=True)
    (cell / "summary.json").write_text(json.dumps(fake_summary(0.1)))
    monkeypatch.setattr(compare, "launch", lambda cmd: (_ for _ in ()).throw(AssertionError("ran a cell")))
    rows = compare.main(["--methods", "fedu", "fedema", "--partitions", "classes", "--out", str(tmp_path), "--report-only"])
    assert [r["method"] for r in rows] == ["FedU"]
    assert "not finished yet: classes/fedema/seed0" in capsys.readouterr().out
    assert "| classes | FedU | 1 |" in (tmp_path / "table.md").read_text()


def test_centralised_runs_once_for_every_partition(tmp_path, monkeypatch):
    """Centralised training ignores the partition (one client, IID sample): one run, one row per partition."""
    calls = []
    monkeypatch.setattr(compare, "launch", fake_launcher(calls, "summary.json", fake_summary(0.3)))
    rows = compare.main(["--methods", "centralised", "--partitions", "classes", "iid", "--out", str(tmp_path)])
    assert len(calls) == 1 and "partition=iid" in calls[0] and f"output_dir={tmp_path / 'iid' / 'centralised' / 'seed0'}" in calls[0]
    assert [(r["partition"], r["method"], r["knn"]) for r in rows] == [("classes", "Centralised", 0.3), ("iid", "Centralised", 0.3)]


def test_random_init_row_is_evaluated_once_without_training(tmp_path, monkeypatch):
    calls = []
    final = {"knn_accuracy": 0.081, "linear_accuracy": 0.12, "semi_1%": 0.03, "semi_10%": 0.12}
    monkeypatch.setattr(compare, "launch", fake_launcher(calls, "evaluation.json", {"status": "completed", "final": final}))
    rows = compare.main(["--methods", "random_init", "--partitions", "classes", "iid", "--out", str(tmp_path)])
    assert len(calls) == 1 and "mode=evaluate" in calls[0] and "checkpoint=init" in calls[0]
    assert [(r["partition"], r["knn_initial"], r["knn"], r["linear"], r["mb_per_round"]) for r in rows] == [
        ("classes", 0.081, 0.081, 0.12, 0.0), ("iid", 0.081, 0.081, 0.12, 0.0)]
    monkeypatch.setattr(compare, "launch", lambda cmd: (_ for _ in ()).throw(AssertionError("evaluated again")))
    again = compare.main(["--methods", "random_init", "--partitions", "iid", "--out", str(tmp_path), "--report-only"])
    assert again[0]["semi_10"] == 0.12


def test_clustering_rows_report_the_clients_mean_nmi_of_the_last_round(tmp_path, monkeypatch):
    """NMI columns: the clients' mean in the last round that reports it; "-" for methods without clusters."""
    clustered = fake_summary(0.1)
    clustered["rounds"] = [
        {"bytes_sent": 1e6, "clients": {"0": {"nmi_labels": 0.1, "nmi_previous": 0.2}}},
        {"bytes_sent": 1e6, "clients": {"0": {"nmi_labels": 0.4, "nmi_previous": 0.9},
                                        "1": {"nmi_labels": 0.6, "nmi_previous": 0.7}}},
        {"bytes_sent": 1e6, "clients": {"0": {"loss": 1.0}}},  # a round without clustering reports
    ]
    for method, summary in (("feddeepcluster", clustered), ("fedu", fake_summary(0.2))):
        cell = tmp_path / "classes" / method / "seed0"
        cell.mkdir(parents=True)
        (cell / "summary.json").write_text(json.dumps(summary))
    rows = compare.main(["--methods", "feddeepcluster", "fedu", "--partitions", "classes", "--out", str(tmp_path),
                         "--report-only"])
    assert rows[0]["nmi_labels"] == pytest.approx(0.5) and rows[0]["nmi_previous"] == pytest.approx(0.8)
    assert rows[1]["nmi_labels"] is None
    table = (tmp_path / "table.md").read_text()
    assert "NMI vs labels | NMI vs previous round" in table
    assert "| 0.500 | 0.800 |" in table and "| FedU | 1 |" in table
