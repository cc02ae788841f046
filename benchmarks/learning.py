"""Evidence that the methods learn (issue 14): the comparison at the CPU preset over seeds, in the
order that gives the most evidence first, then one table of everything finished.

    python benchmarks/learning.py [--dataset cifar10] [--out benchmarks/results/learning/cifar10]

1. every method of the comparison with seeds 0 and 1 (FedU, FedEMA, FedBYOL, FedSimSiam,
   FedSimCLR, standalone, centralised, random init), `classes` partition;
2. FedU's ablations (predictor local, sync target, sync both, scale-free DAPU) with seed 0;
3. seed 2 of the rows the papers' claims compare (FedU, FedEMA, standalone, random init);
4. seed 2 of the other rows (FedBYOL, FedSimSiam, FedSimCLR, centralised).
Every step resumes (benchmarks/compare.py): rerun the command to continue; `--seeds` of the final
table lists what is included, and the table's `n` column how many seeds each row has.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare import MAIN_METHODS, ROOT, main  # noqa: E402

ABLATIONS = ["fedu_predictor_local", "fedu_sync_target", "fedu_sync_both", "fedu_dapu_relative"]
CLAIM_ROWS = ["fedu", "fedema", "standalone", "random_init"]
COMPARED = [m for m in MAIN_METHODS if m not in ("fedmoco", "fedswav")]  # the list


def plan(dataset: str) -> list[tuple[list[str], list[int]]]:
    if dataset != "cifar10":
        return [(["fedu", "fedbyol", "standalone", "random_init"], [0])]
    return [(COMPARED, [0, 1]), (ABLATIONS, [0]), (CLAIM_ROWS, [2]), ([m for m in COMPARED if m not in CLAIM_ROWS], [2])]


def run(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)
    out = args.out or ROOT / "benchmarks" / "results" / "learning" / args.dataset
    common = ["--dataset", args.dataset, "--partitions", "classes", "--preset", "cpu", "--out", str(out)]
    steps = plan(args.dataset)
    if not args.report_only:
        for methods, seeds in steps:
            main([*common, "--methods", *methods, "--seeds", *map(str, seeds)])
    methods = [m for m in [*COMPARED, *ABLATIONS] if any(m in ms for ms, _ in steps)]
    seeds = sorted({s for _, ss in steps for s in ss})
    main([*common, "--methods", *methods, "--seeds", *map(str, seeds), "--report-only"])


if __name__ == "__main__":
    run()
