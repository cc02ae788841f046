"""main.py's own options: --help, --cfg, -m sweeps, and an unknown option refused."""

import subprocess
import sys

from app.commands import sweep
from tests.conftest import ROOT


def test_a_sweep_runs_every_combination_in_order():
    assert sweep(["strategy=fedu,fedbyol", "seed=0,1", "num_rounds=2"]) == [
        ["strategy=fedu", "seed=0", "num_rounds=2"], ["strategy=fedu", "seed=1", "num_rounds=2"],
        ["strategy=fedbyol", "seed=0", "num_rounds=2"], ["strategy=fedbyol", "seed=1", "num_rounds=2"]]
    assert sweep(["num_rounds=2"]) == [["num_rounds=2"]]


def main_py(*argv):
    return subprocess.run([sys.executable, "main.py", *argv], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_help_cfg_and_an_unknown_option():
    help_ = main_py("--help")
    assert help_.returncode == 0 and "strategy: centralised, fedavg, fedbyol, fedema, fedpav, fedu, sdr" in help_.stdout
    cfg = main_py("--cfg", "job", "strategy=fedema", "num_rounds=3")
    assert cfg.returncode == 0 and "_target_: strategies.fedema.FedEMA" in cfg.stdout and "num_rounds: 3" in cfg.stdout
    wrong = main_py("--verbose")
    assert wrong.returncode != 0 and "unknown option ['--verbose']" in wrong.stderr
