"""First measurement (issue 2): FedU vs FedBYOL vs standalone, CPU preset, CIFAR-100, `classes`.

A preset of benchmarks/compare.py (same resumable runner, table, JSON and plot); arguments are
extra Hydra overrides for every run:

    python benchmarks/first_measurement.py [num_rounds=20 ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare import ROOT, main  # noqa: E402

if __name__ == "__main__":
    main(["--methods", "fedu", "fedbyol", "standalone", "--partitions", "classes",
          "--out", str(ROOT / "benchmarks" / "results" / "first_measurement"), "--extra", *sys.argv[1:]])
