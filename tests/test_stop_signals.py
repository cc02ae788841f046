"""A run stopped by SIGTERM or SIGHUP is recorded as failed with the signal, not left `running`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from app.signals import Stopped, signals_stop_run, stop_of, stopped_text
from tests.conftest import ROOT, main_py


def test_sigterm_inside_the_block_raises_stopped_and_the_handler_is_restored_after():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Stopped) as caught:
        with signals_stop_run():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler runs at the next bytecode; never reached
    assert caught.value.name == "SIGTERM" and caught.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before


def test_the_stops_are_told_apart_from_other_exits():
    assert stop_of(SystemExit(signal.SIGTERM)).name == "SIGTERM"  # Ray's handler: sys.exit(signum)
    assert stop_of(Stopped("SIGHUP")).name == "SIGHUP"
    assert stop_of(KeyboardInterrupt()).name == "SIGINT"
    assert stop_of(SystemExit(1)) is None and stop_of(SystemExit("error: x")) is None
    assert stop_of(RuntimeError("boom")) is None
    summary = {"rounds": [{"round": 1}, {"round": 2}], "num_rounds": 6}
    assert stopped_text(Stopped("SIGTERM"), summary) == "stopped by SIGTERM after 2 of 6 rounds"
    assert stopped_text(Stopped("SIGINT"), summary) == "stopped by Ctrl-C (SIGINT) after 2 of 6 rounds"


@pytest.mark.slow
def test_a_run_stopped_by_sigterm_says_so_exits_143_and_resumes(tmp_path, data_dir, cache_dir):
    out = tmp_path / "run"
    cmd = [sys.executable, "main.py", "experiment=smoke", "num_rounds=3", f"data_dir={data_dir}",
           f"cache_dir={cache_dir}", f"output_dir={out}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:  # stop it once its first round is saved
        lines.append(line)
        if "[round 1/3]" in line:
            proc.send_signal(signal.SIGTERM)
            break
    rest, _ = proc.communicate(timeout=300)
    text = "".join(lines) + rest
    assert proc.returncode == 128 + signal.SIGTERM, text[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert summary["error"] == "stopped by SIGTERM after 1 of 3 rounds"
    assert "error: run failed: stopped by SIGTERM after 1 of 3 rounds" in text
    assert f"resume={out}" in text
    done = main_py(f"resume={out}")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and [r["round"] for r in summary["rounds"]] == [1, 2, 3]
