"""Federated detection from federated SSL encoders (issue 16, part 5): the downstream comparison
the SSL papers make, here in a federation. One command, resumable:

    python benchmarks/detection_transfer.py --seeds 0 1

For each init (random, or the SSL run of a method in the learning table: FedU, FedBYOL, FedSimCLR,
standalone, centralised) and seed, FedAvg detection (FedVision; `--strategy fedpav`: partial
averaging) on the synthetic set (3 sites, `experiment=cpu`) starts from that encoder
(`detection.backbone_init`). The SSL checkpoints are
the learning table's cells (benchmarks/compare.py, CIFAR-10 sample, `classes`, 5 clients,
`experiment=cpu`, same seed); a missing one is trained first by the same runner. Gains are paired
by seed (the synthetic sites, the detector's heads and the SSL run all follow the seed).
Writes <out>/table.md, table.json and map_rounds.png; the runs go under --runs (default
outputs/benchmarks/detection_transfer, not committed).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from statistics import mean

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.plots import pyplot, save_figure  # noqa: E402
from benchmarks.compare import METHODS, cell_dir, default_runs, run_cell, run_resumable  # noqa: E402
from benchmarks.tables import commit, fmt, mean_std  # noqa: E402

INITS = ["random", "fedu", "fedbyol", "fedsimclr", "standalone", "centralised"]
COLUMNS = {"map": "mAP", "map_50": "mAP@0.5", "map_gain": "mAP − random init", "map_50_gain": "mAP@0.5 − random init",
           "site_map_50": "mAP@0.5, mean of sites", "site_map_50_gain": "mean of sites − random init",
           "wall_seconds": "wall (s)"}
UNITS = {"wall_seconds": (1.0, 0)}  # (scale, digits) where not a fraction shown in %


def site_mean(final: dict, key: str) -> float:
    """The sites' own figures averaged, weighted by their test images (COCO's -1 left out)."""
    sites = [c for c in final["per_client"].values() if c.get(key, -1) >= 0]
    return sum(c["images"] * c[key] for c in sites) / sum(c["images"] for c in sites)


def ssl_checkpoint(init: str, seed: int, args) -> Path:
    """The learning table's checkpoint of `init` for `seed` (trained now when missing)."""
    learning = argparse.Namespace(out=args.ssl_out, runs=default_runs(args.ssl_out), dataset="cifar10",
                                  num_clients=5, preset="cpu", extra=[])
    path = cell_dir(learning.runs, init, "classes", seed) / "checkpoint_final.pt"
    if not path.is_file():
        run_cell(init, "classes", seed, learning)
    return path


def run(init: str, seed: int, args) -> dict:
    source = "random" if init == "random" else str(ssl_checkpoint(init, seed, args))
    overrides = [f"strategy={args.strategy}", "dataset=synthetic_detection", f"num_clients={args.sites}", "experiment=cpu",
                 f"seed={seed}", "wandb.mode=disabled", "progress=false", f"detection.backbone_init={source}",
                 *args.extra]
    s = run_resumable(args.runs / init / f"seed{seed}", overrides)
    return {"init": init, "seed": seed, "strategy": args.strategy, "map": s["final"]["map"], "map_50": s["final"]["map_50"],
            "site_map_50": site_mean(s["final"], "map_50"),
            "per_site": {k: v["map_50"] for k, v in s["final"]["per_client"].items()},
            "map_by_round": [(e["round"], e["map"]) for e in s["detection"]],
            "map_50_by_round": [(e["round"], e["map_50"]) for e in s["detection"]],
            "wall_seconds": s["wall_seconds"], "backbone_init": source}


def aggregate(cells: list[dict]) -> dict:
    base = {c["seed"]: c for c in cells if c["init"] == "random"}
    for c in cells:
        for key in ("map", "map_50", "site_map_50"):
            c[f"{key}_gain"] = c[key] - base[c["seed"]][key] if c["seed"] in base else None
    rows = {}
    for init in dict.fromkeys(c["init"] for c in cells):
        mine = [c for c in cells if c["init"] == init]
        rows[init] = {}
        for key in COLUMNS:
            rows[init][key] = mean_std([c.get(key) for c in mine])
        rows[init]["seeds"] = [c["seed"] for c in mine]
    return rows


def table(rows: dict, args) -> str:
    names = {"random": "Random init", **{k: METHODS[k][0] for k in METHODS}}
    head = "| backbone init | " + " | ".join(COLUMNS.values()) + " | seeds |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 2)]
    for init, row in rows.items():
        lines.append(f"| {names.get(init, init)} | " + " | ".join(fmt(*row[k], *UNITS.get(k, ())) for k in COLUMNS)
                     + f" | {', '.join(map(str, row['seeds']))} |")
    return "\n".join(lines) + "\n"


def plot(cells: list[dict], path: Path) -> Path:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in ((axes[0], "map_by_round", "mAP@[.5:.95] (%)"), (axes[1], "map_50_by_round", "mAP@0.5 (%)")):
        for init in dict.fromkeys(c["init"] for c in cells):
            series = [dict(c[key]) for c in cells if c["init"] == init]
            rounds = sorted(set.intersection(*(set(s) for s in series)))
            ax.plot(rounds, [100 * mean(s[r] for s in series) for r in rounds], "-o", markersize=3,
                    label=f"{init} ({len(series)} seeds)")
        ax.set_xlabel("round")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{cells[0]['strategy']} detection (synthetic, experiment=cpu) by backbone init, mean over seeds",
                 fontsize=9)
    return save_figure(fig, path)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--inits", nargs="+", default=INITS, choices=["random", *[m for m in METHODS if m != "random_init"]])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--sites", type=int, default=3)
    p.add_argument("--strategy", default="fedavg", help="fedavg (FedVision, default) or fedpav (heads local)")
    p.add_argument("--ssl-out", type=Path, default=ROOT / "benchmarks/results/learning/cifar10")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/detection_transfer")
    p.add_argument("--runs", type=Path, default=None, help="where the runs go (default: outputs/benchmarks/<--out's path under benchmarks/results>)")
    p.add_argument("--extra", nargs="*", default=[], help="Hydra overrides for every detection run")
    args = p.parse_args(argv)
    args.runs = args.runs or default_runs(args.out)
    return args


def main(argv=None) -> dict:
    args = parse(argv)
    cells = [run(init, seed, args) for seed in args.seeds for init in args.inits]
    rows = aggregate(cells)
    text = table(rows, args)
    at = commit()
    command = "python benchmarks/detection_transfer.py " + " ".join(argv if argv is not None else sys.argv[1:])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text(f"{text}\n`{command}` (commit {at}); mean ± std over seeds, "
                                       f"gains paired by seed.\n")
    report = {"settings": {k: str(v) for k, v in vars(args).items()}, "commit": at, "command": command,
              "rows": rows, "cells": cells}
    (args.out / "table.json").write_text(json.dumps(report, indent=2))
    plot(cells, args.out / "map_rounds.png")
    print(text)
    return report


if __name__ == "__main__":
    main()
