"""Why global DeepCluster with nearest-centroid assignment collapsed: the cause by experiment (issue 28).

    python benchmarks/deepcluster_collapse.py --presets smoke cpu --seeds 0 1

Global DeepCluster (`strategy=fedavg ssl=deepcluster ssl.clusters=global ssl.assign=nearest`, 5
clients, CIFAR-10 sample, `classes` partition) in four variants, one run per (variant, preset,
seed), resumable:

- `before`: the merge as it was before the fixes (commit 9030c2c): an empty cluster kept the
  weighted mean of the uploaded sums, not the round's global centroid, and the head tied to the
  clusters was never re-initialised on the server; the clients' sums are of their trained backbones'
  features. Run by this script's launcher (`--launch before`), which replaces the server's merge
  with that rule and then runs main.py unchanged.
- `fixes` (a): the code as it is (the merge keeps the round's centroids for an empty cluster; the
  head is re-initialised when the global clusters start and in the rows of repaired clusters).
- `received` (b): the merge before the fixes, and the sums of the received global backbone's
  features, the ones the client assigned (`ssl.centroid_features=received`).
- `both` (c): the fixes and the received backbone's sums.

Per round: how many of the 32 global clusters the clients' images filled (`global_clusters_filled`
in summary.json, before the server's repair), the largest cluster's share, and the fewest clusters
any one client's images filled; then the final kNN accuracy (k=200) with re-estimated BatchNorm.
Writes <out>/table.md, table.json, clusters_rounds.png and each finished cell under <out>/cells/ (committed:
a later session reruns only what is missing); the runs go under outputs/benchmarks/.
"""

from __future__ import annotations

import argparse
import json
import runpy
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.plots import pyplot, save_figure  # noqa: E402
from benchmarks.compare import completed, default_runs, run_resumable  # noqa: E402
from benchmarks.tables import fmt, mean_std, write_cells  # noqa: E402

COMMON = ["strategy=fedavg", "ssl=deepcluster", "ssl.clusters=global", "ssl.assign=nearest", "dataset=cifar10",
          "partition=classes", "num_clients=5", "wandb.mode=disabled", "progress=false"]
VARIANTS = {  # name: (label, merge rule, overrides)
    "before": ("before the fixes, trained sums", "before", ["ssl.centroid_features=trained"]),
    "fixes": ("(a) fixes, trained sums", "fixed", ["ssl.centroid_features=trained"]),
    "received": ("(b) before the fixes, received sums", "before", ["ssl.centroid_features=received"]),
    "both": ("(c) fixes, received sums", "fixed", ["ssl.centroid_features=received"]),
}
PRESETS = {"smoke": ["experiment=smoke", "num_rounds=4", "eval_every=0", "eval.linear=false"],
           "cpu": ["experiment=cpu"]}


def merge_before_fixes(layout, aggregated, updates, seed, server_round, previous, record):
    """The server's merge before the fixes: the previous centroids it was given were the weighted
    mean of the uploaded sums (the round's aggregate), and no row of the tied head was reset."""
    from strategies.cluster_merge import merge_clusters
    record["merge_rule"] = "before"
    return merge_clusters(replace(layout, cluster_heads=[]), aggregated, updates, seed, server_round,
                          previous=aggregated, record=record)


def launch_before(argv: list[str]) -> None:
    """Run main.py with `argv`, the server's merge replaced by the rule before the fixes (the
    strategy runs in this process: Flower's simulation and the deployment's ServerApp alike)."""
    import strategies.base
    strategies.base.merge_clusters = merge_before_fixes
    sys.argv = [str(ROOT / "main.py"), *argv]
    runpy.run_path(str(ROOT / "main.py"), run_name="__main__")


def cell_path(out: Path, variant: str, preset: str, seed: int) -> Path:
    """Where a finished cell is kept with the table (committed): the runs under outputs/ do not
    outlive the machine, the cells do, so a later session continues with what is missing."""
    return out / "cells" / preset / variant / f"seed{seed}.json"


def run(variant: str, preset: str, seed: int, args) -> dict | None:
    """One cell: kept from an earlier run, or its run made or resumed (with --report-only: None
    when it is not finished)."""
    kept = cell_path(args.out, variant, preset, seed)
    if kept.is_file():
        return json.loads(kept.read_text())
    label, rule, overrides = VARIANTS[variant]
    program = ("main.py",) if rule == "fixed" else (str(Path(__file__).resolve()), "--launch", "before")
    out = args.runs / preset / variant / f"seed{seed}"
    if args.report_only:
        s = completed(out / "summary.json")
        if s is None:
            return None
    else:
        s = run_resumable(out, [*COMMON, *PRESETS[preset], *overrides, f"data_dir={args.data_dir}", f"seed={seed}"],
                          program)
    rounds = [r for r in s["rounds"] if "global_clusters_filled" in r]
    if rule == "before" and any(r.get("merge_rule") != "before" for r in rounds[1:]):
        raise SystemExit(f"{variant}/{preset}/seed{seed}: the merge before the fixes did not run on the server")
    final = s.get("final") or {}
    knn = final.get("knn_accuracy_bn_reestimated", final.get("knn_accuracy"))
    cell = {"variant": variant, "preset": preset, "seed": seed,
            "filled": [r["global_clusters_filled"] for r in rounds],
            "largest": [r["global_largest_share"] for r in rounds],
            "client_min": [min(c["clusters_filled"] for c in r["clients"].values()) for r in rounds],
            "knn": knn, "wall_seconds": s.get("wall_seconds")}
    kept.parent.mkdir(parents=True, exist_ok=True)
    kept.write_text(json.dumps(cell, indent=1) + "\n")
    return cell


def table(cells: list[dict]) -> str:
    lines = []
    for preset in dict.fromkeys(c["preset"] for c in cells):
        mine = [c for c in cells if c["preset"] == preset]
        n = max(len(c["filled"]) for c in mine)
        lines += [f"**{preset}** (32 clusters; per round: global clusters filled / largest share / fewest any client filled)", "",
                  "| variant | seed | " + " | ".join(f"round {r + 1}" for r in range(n)) + " | kNN (%) |",
                  "|" + "---|" * (n + 3)]
        for c in mine:
            per = [f"{f} / {s:.2f} / {m}" for f, s, m in zip(c["filled"], c["largest"], c["client_min"])]
            knn = "-" if c["knn"] is None else f"{100 * c['knn']:.1f}"
            lines.append(f"| {VARIANTS[c['variant']][0]} | {c['seed']} | " + " | ".join(per) + f" | {knn} |")
        lines += ["", "| variant | round 3: fewest clusters any client's images filled | round 3: global clusters "
                  "filled | final kNN (%) | seeds |", "|---|---|---|---|---|"]
        for v in dict.fromkeys(c["variant"] for c in mine):
            vs = [c for c in mine if c["variant"] == v]
            third = [c for c in vs if len(c["filled"]) > 2]
            lines.append(f"| {VARIANTS[v][0]} | {fmt(*mean_std([c['client_min'][2] for c in third]), scale=1, digits=1)} | "
                         f"{fmt(*mean_std([c['filled'][2] for c in third]), scale=1, digits=1)} | "
                         f"{fmt(*mean_std([c['knn'] for c in vs]), digits=1)} | {', '.join(str(c['seed']) for c in vs)} |")
        lines.append("")
    return "\n".join(lines)


def plot(cells: list[dict], path: Path) -> Path:
    plt = pyplot()
    presets = list(dict.fromkeys(c["preset"] for c in cells))
    fig, axes = plt.subplots(1, len(presets), figsize=(5.5 * len(presets), 4), squeeze=False)
    for ax, preset in zip(axes[0], presets):
        for i, v in enumerate(VARIANTS):
            for c in (c for c in cells if c["preset"] == preset and c["variant"] == v):
                ax.plot(range(1, len(c["filled"]) + 1), c["filled"], "-o", color=f"C{i}", markersize=3, alpha=0.8,
                        label=VARIANTS[v][0] if c["seed"] == min(x["seed"] for x in cells) else None)
        ax.set_title(f"experiment={preset}", fontsize=9)
        ax.set_xlabel("round")
        ax.set_ylabel("global clusters filled (of 32)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return save_figure(fig, path)


def main(argv=None) -> list[dict]:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:2] == ["--launch", "before"]:
        launch_before(argv[2:])
        return []
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/deepcluster_collapse")
    p.add_argument("--report-only", action="store_true", help="the table of the cells completed so far; runs nothing")
    args = p.parse_args(argv)
    args.runs = default_runs(args.out)
    cells = [run(v, preset, seed, args) for preset in args.presets for seed in args.seeds for v in args.variants]
    cells = [c for c in cells if c is not None]
    write_cells(args.out, "deepcluster_collapse.py", argv, table(cells), cells, plot, "clusters_rounds.png")
    return cells


if __name__ == "__main__":
    main()
