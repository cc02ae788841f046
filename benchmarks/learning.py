"""Evidence that the methods learn (issues 14, 25): the comparison at a CPU preset over seeds, in the
order that gives the most evidence first, then one table of everything finished.

    python benchmarks/learning.py --preset cpu_learn [--dataset cifar10]    # issue 25: 1,500 steps per client
    python benchmarks/learning.py --preset cpu                              # issue 14: 180 steps per client

experiment=cpu_learn (results under benchmarks/results/learning/cpu_learn/<dataset>/):
1. FedU, FedBYOL, standalone and random init (each seed's untrained network), seeds 0, 1, 2,
   `classes` partition, seed by seed (every row has seed 0 before any has seed 1);
2. FedU with the scale-free DAPU (strategy.dapu_scale=relative), seeds 0, 1, 2: with the paper's
   threshold every DAPU decision at this width is "global" and FedU runs exactly as FedBYOL; and FedU on the
   `iid` partition, seed 0 (the cost of 2-class clients against the cost of federation);
3. FedEMA, centralised and FedSimCLR, seeds 0, 1, 2;
with --dataset cifar100: FedU and random init, seed 0.
experiment=cpu (issue 14, results under benchmarks/results/learning/<dataset>/): every method of the
comparison with seeds 0 and 1, FedU's ablations with seed 0, then seed 2.
Every step resumes (benchmarks/compare.py: finished cells are kept under <out>/cells/ and committed,
interrupted runs continue): rerun the command to continue, in this session or a later one;
--report-only writes the table of what finished. The table's `n` column says how many seeds each
row has.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare import MAIN_METHODS, ROOT, main  # noqa: E402

ABLATIONS = ["fedu_predictor_local", "fedu_sync_target", "fedu_sync_both", "fedu_dapu_relative"]
CLAIM_ROWS = ["fedu", "fedema", "standalone", "random_init"]
COMPARED = [m for m in MAIN_METHODS if m not in ("fedmoco", "fedswav")]  # issue 14's list
LEARN_FIRST = ["random_init", "fedu", "fedbyol", "standalone"]  # issue 25: three seeds before anything else
LEARN_NEXT = ["fedema", "centralised", "fedsimclr"]


def plan(dataset: str, preset: str) -> list[tuple[list[str], list[int], str]]:
    """(methods, seeds, partition) steps, the most evidence first."""
    if preset == "cpu_learn":
        if dataset != "cifar10":
            return [(["fedu", "random_init"], [0], "classes")]
        # at this width the paper's absolute DAPU threshold (mu = 0.4) adopts the global predictor in
        # every decision, so FedU runs exactly as FedBYOL: the scale-free DAPU is the FedU that differs,
        # and comes before the other methods
        return [(LEARN_FIRST, [0, 1, 2], "classes"), (["fedu_dapu_relative"], [0, 1, 2], "classes"),
                (["fedu"], [0], "iid"), (LEARN_NEXT, [0, 1, 2], "classes")]
    if dataset != "cifar10":
        return [(["fedu", "fedbyol", "standalone", "random_init"], [0], "classes")]
    return [(COMPARED, [0, 1], "classes"), (ABLATIONS, [0], "classes"), (CLAIM_ROWS, [2], "classes"),
            ([m for m in COMPARED if m not in CLAIM_ROWS], [2], "classes")]


def default_out(dataset: str, preset: str) -> Path:
    learning = ROOT / "benchmarks" / "results" / "learning"
    return learning / "cpu_learn" / dataset if preset == "cpu_learn" else learning / dataset


def run(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--preset", default="cpu", choices=["cpu", "cpu_learn"])
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)
    out = args.out or default_out(args.dataset, args.preset)
    common = ["--dataset", args.dataset, "--preset", args.preset, "--out", str(out)]
    steps = plan(args.dataset, args.preset)
    known = [*LEARN_FIRST, *LEARN_NEXT, *COMPARED, *ABLATIONS]
    methods = [m for m in dict.fromkeys(known) if any(m in ms for ms, _, _ in steps)]
    seeds = sorted({s for _, ss, _ in steps for s in ss})
    partitions = list(dict.fromkeys(part for _, _, part in steps))
    report = [*common, "--partitions", *partitions, "--methods", *methods, "--seeds", *map(str, seeds), "--report-only"]
    if not args.report_only:
        for step_methods, step_seeds, partition in steps:
            main([*common, "--partitions", partition, "--methods", *step_methods, "--seeds", *map(str, step_seeds)])
            main(report)  # the table of every finished cell, not only this step's (a stopped runner leaves it whole)
    main(report)


if __name__ == "__main__":
    run()
