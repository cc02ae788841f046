"""The simulation attached to an existing Ray cluster (`ray.address=`), here a head started by
the test on this machine; the test stops that head (and only it: `ray stop` would also end
every other Ray session on the machine), also when the run fails."""

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ops.processes import free_port, stop_processes
from tests.conftest import ROOT

RAY = str(Path(sys.executable).with_name("ray"))


def test_simulation_runs_on_an_existing_ray_head(tmp_path, data_dir, cache_dir):
    port = free_port()
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
    head = [RAY, "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
            "--disable-usage-stats", f"--temp-dir={temp}", "--block"]
    log = tmp_path / "ray-head.log"
    with open(log, "w") as out:
        ray_head = subprocess.Popen(head, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not _listening(port):
            assert ray_head.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.5)
        cmd = [sys.executable, "main.py", "experiment=smoke", "num_clients=3", f"ray.address=127.0.0.1:{port}",
               "client_resources.num_cpus=1", f"data_dir={data_dir}", f"cache_dir={cache_dir}",
               f"output_dir={tmp_path / 'run'}"]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        s = json.loads((tmp_path / "run" / "summary.json").read_text())
        assert s["status"] == "completed" and len(s["rounds"]) == 2
        # the clients ran as actors of *that* cluster: its session logs name them
        logs = Path(temp, "session_latest", "logs")
        assert any("ClientAppActor" in p.read_text(errors="ignore") for p in logs.glob("worker-*.out"))
    finally:
        stop_processes([ray_head])
        shutil.rmtree(temp, ignore_errors=True)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0
