"""What a run shows: the preset `experiment=auto` picks, and a console with the project's lines only."""

import io
import json
import logging
import re
import warnings

import pytest

from app.config import compose, preset_line, recompose, saved_command_line, to_plain
from app.console import libraries_to_log
from ops.local_federation import problem_lines
from tests.conftest import main_py

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def no_cuda(monkeypatch, present: bool = False):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: present)


def test_auto_is_the_cpu_preset_without_a_gpu_and_the_papers_with_one(monkeypatch):
    no_cuda(monkeypatch)
    cpu = to_plain(compose([]))
    assert (cpu["preset"], cpu["num_rounds"], cpu["model"]["width"]) == ("cpu", 6, 0.125)
    assert to_plain(compose(["experiment=auto"]))["preset"] == "cpu"
    paper = to_plain(compose(["experiment=paper"]))  # forced anywhere
    assert (paper["preset"], paper["num_rounds"], paper["model"]["width"]) == ("paper", 100, 1.0)
    assert to_plain(compose([], deployed=True))["preset"] == "paper"  # the server cannot see its nodes
    no_cuda(monkeypatch, present=True)
    assert to_plain(compose([]))["preset"] == "paper"
    assert to_plain(compose(["device=cpu"]))["preset"] == "cpu"  # the run's device decides, not the machine's


def test_the_first_line_says_which_preset_and_why(monkeypatch):
    no_cuda(monkeypatch)
    line = preset_line(to_plain(compose([])), [])
    assert line.startswith("preset: cpu (experiment=auto without a CUDA GPU") and "experiment=paper" in line
    assert preset_line(to_plain(compose(["experiment=smoke"])), ["experiment=smoke"]) == "preset: smoke"


def test_a_saved_run_is_rebuilt_with_its_own_preset_on_any_machine(monkeypatch):
    no_cuda(monkeypatch)
    saved = {"command_line": ["strategy=fedu", "num_clients=3"], "preset": "paper"}  # trained with a GPU
    assert recompose(saved_command_line(saved), [])["model"]["width"] == 1.0
    older = {"command_line": ["strategy=fedu"]}  # saved before `auto`: the default was the paper's protocol
    assert saved_command_line(older) == ["strategy=fedu", "experiment=paper"]
    chosen = {"command_line": ["experiment=auto"], "preset": "cpu"}
    assert saved_command_line(chosen) == ["experiment=cpu"]
    assert saved_command_line({"command_line": ["experiment=smoke"], "preset": "smoke"}) == ["experiment=smoke"]


def test_flower_and_warnings_go_to_the_log_file_and_errors_to_the_console(tmp_path):
    from flwr.common.logger import ConsoleHandler

    flower = logging.getLogger("flwr")
    console = next(h for h in flower.handlers if isinstance(h, ConsoleHandler))
    level, colored = console.level, console.colored
    shown = io.StringIO()  # Flower's console handler keeps the stream it was given (not a terminal)
    stream = console.setStream(shown)
    log_file = logging.FileHandler(tmp_path / "main.log")
    with libraries_to_log(log_file):
        flower.info("Evaluation returned no results")
        flower.debug("a debug line")
        flower.error("ServerApp raised")
        with warnings.catch_warnings():
            warnings.simplefilter("always")  # pytest's configuration ignores FutureWarning
            warnings.warn("Ray will change a default", FutureWarning)
    log_file.close()
    written = (tmp_path / "main.log").read_text()
    assert "Evaluation returned no results" in written and "Ray will change a default" in written
    assert "a debug line" not in written
    console.setStream(stream)
    err = shown.getvalue()
    assert "ServerApp raised" in err and "Evaluation returned" not in err and "Ray will change" not in err
    assert not ANSI.search(err)  # a StringIO is not a terminal
    assert (console.level, console.colored) == (level, colored)  # restored


def test_a_round_with_lost_and_rejected_clients_prints_their_reasons():
    record = {"round": 2, "failures": [{"partition_id": 1, "round": 2, "error": "node lost"}],
              "rejected": [{"partition_id": 0, "node": "123", "round": 2, "reason": "non-finite values"}]}
    assert problem_lines(record) == ["  round 2: client 1 failed: node lost",
                                     "  round 2: client 0 (node 123)'s update rejected: non-finite values"]


def test_a_smoke_run_prints_only_its_own_lines_and_main_log_keeps_the_rest(tmp_path, data_dir, cache_dir):
    out = tmp_path / "run"
    done = main_py("experiment=smoke", "num_clients=2", "wandb.mode=disabled", f"data_dir={data_dir}",
                   f"cache_dir={cache_dir}", f"output_dir={out}")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() + done.stderr.splitlines() if line.strip()]
    ours = [line for line in lines if "][fedssl][" in line]
    assert ours[0].endswith("preset: smoke") and "done: fedu" in ours[-1]
    assert lines == ours, [line for line in lines if line not in ours]  # no banner, history block, warning
    assert not ANSI.search(done.stdout + done.stderr)
    log = (out / "main.log").read_text().splitlines()
    assert "done: fedu" in log[-1]
    assert any("[flwr]" in line and "Starting Flower ServerApp" in line for line in log)
    assert json.loads((out / "summary.json").read_text())["preset"] == "smoke"


@pytest.mark.parametrize("seconds, shown", [(0.2, "<0:01"), (0, "0:00"), (14.5, "0:14"), (3725, "1:02:05")])
def test_a_tiny_estimate_is_not_shown_as_zero(seconds, shown):
    from app.progress import clock

    assert clock(seconds) == shown
