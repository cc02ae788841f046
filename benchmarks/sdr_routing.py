"""SDR benchmark (issue 6): federated pre-training, then routing of several downstream sets.

    python benchmarks/sdr_routing.py [--preset cpu] [--num-clients 5]

Pre-trains `strategy=sdr` on CIFAR-100 (resumable: a finished run is reused), then runs
`mode=route` for each downstream set: the CIFAR-10 sample, MNIST and CIFAR-100 superclass
subsets. For each it reports the routed path's test kNN accuracy (path chosen on a validation
split of the downstream training set), the full SDRnet's, the mean over paths and the best path
in hindsight. Writes table.md and table.json under benchmarks/results/sdr/; the pre-training run
and the routings go under --runs (default outputs/benchmarks/sdr, not committed; a finished
routing is reused).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from compare import ROOT, default_runs, run_resumable

DOWNSTREAM = {
    "cifar10": ["dataset=cifar10"],
    "mnist": ["dataset=mnist"],
    "cifar100: fish + flowers": ["dataset=cifar100", "route.superclasses=[fish,flowers]"],
    "cifar100: vehicles 1 + 2": ["dataset=cifar100", "route.superclasses=[vehicles_1,vehicles_2]"],
    "cifar100: insects + reptiles + invertebrates": [
        "dataset=cifar100", "route.superclasses=[insects,reptiles,non-insect_invertebrates]"],
}


def pct(x: float) -> str:
    return f"{100 * x:.2f}"


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cpu")
    p.add_argument("--num-clients", type=int, default=5)
    p.add_argument("--partition", default="classes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "sdr")
    p.add_argument("--runs", type=Path, default=None, help="where the runs go (default: outputs/benchmarks/<--out's path under benchmarks/results>)")
    p.add_argument("--extra", nargs="*", default=[], help="Hydra overrides for the pre-training run")
    args = p.parse_args(argv)
    args.runs = args.runs or default_runs(args.out)
    pre = run_resumable(args.runs / "pretrain", [
        "strategy=sdr", "dataset=cifar100", f"partition={args.partition}", f"num_clients={args.num_clients}",
        f"experiment={args.preset}", f"seed={args.seed}", "wandb.mode=disabled", *args.extra])
    rows = []
    for name, overrides in DOWNSTREAM.items():
        folder = args.runs / "route" / name.replace(":", "").replace(" + ", "-").replace(" ", "_")
        cmd = [sys.executable, "main.py", "mode=route", f"checkpoint={pre['checkpoint']}", *overrides,
               f"seed={args.seed}", f"output_dir={folder}"]
        if (folder / "route.json").is_file():  # routed earlier (mode=route never writes over a route.json)
            print(f"{folder}: done earlier, reusing its route.json", flush=True)
        else:
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"routing {name} failed:\n{proc.stderr[-3000:]}")
        r = json.loads((folder / "route.json").read_text())
        tests = [x["test_knn"] for x in r["ranked"]]
        rows.append({"downstream": name, "classes": r["num_classes"], "chosen_path": r["chosen"]["path"],
                     "chosen_groups": r["chosen"]["groups"], "routed_test_knn": r["chosen"]["test_knn"],
                     "full_test_knn": r["full"]["test_knn"], "mean_path_test_knn": r["mean_path_test_knn"],
                     "best_path_test_knn": max(tests), "worst_path_test_knn": min(tests),
                     "routed_rank_on_test": 1 + sorted(tests, reverse=True).index(r["chosen"]["test_knn"]),
                     "exported_linear": r["exported_linear_accuracy"], "paths": len(tests)})
    lines = [f"SDR pre-trained on cifar100 ({args.partition}, {args.num_clients} clients, experiment={args.preset}); "
             f"pre-training kNN (full net) {pct(pre['final']['knn_accuracy'])}%, mean over paths "
             f"{pct(pre['final']['mean_path_knn'])}%, {pre['wall_seconds']:.0f} s", "",
             "| downstream | classes | routed path | routed kNN | full SDRnet kNN | mean over paths | best / worst path | "
             "routed path's rank on test | linear (exported) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['downstream']} | {r['classes']} | {r['chosen_path']} {r['chosen_groups']} | "
                     f"{pct(r['routed_test_knn'])} | {pct(r['full_test_knn'])} | {pct(r['mean_path_test_knn'])} | "
                     f"{pct(r['best_path_test_knn'])} / {pct(r['worst_path_test_knn'])} | {r['routed_rank_on_test']} of {r['paths']} | "
                     f"{pct(r['exported_linear'])} |")
    table = "\n".join(lines) + "\n"
    print(table)
    (args.out / "table.md").write_text(table)
    (args.out / "table.json").write_text(json.dumps({"pretrain": {k: pre[k] for k in ("final", "wall_seconds")},
                                                     "rows": rows}, indent=2))
    return rows


if __name__ == "__main__":
    main()
