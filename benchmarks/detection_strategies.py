"""Federated detection on the synthetic sites by strategy (issue 16): what to expect on a CPU.

    python benchmarks/detection_strategies.py --seeds 0 1

FedAvg of the whole detector (FedVision), FedAvg with each site's own BatchNorm (`strategy.bn=local`,
FedBN), partial averaging (`strategy=fedpav`: heads local), partial averaging with local BatchNorm,
and the bounds (standalone, centralised), from random init at `experiment=cpu`, 3 sites, one run
per (strategy, seed), resumable. How each is scored differs and the table says so: the server
scores a global detector on all sites' test images pooled into one COCO evaluation; where parts
stay on the sites each site scores its own detector and the figure is the mean over sites weighted
by test images (`evaluated_by`). The per-site mean is reported for every row, so rows compare on it.
Writes <out>/table.md, table.json and map_rounds.png; the runs go under --runs (default
outputs/benchmarks/detection_strategies, not committed).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from statistics import mean

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.plots import pyplot, save_figure  # noqa: E402
from benchmarks.compare import default_runs, run_resumable  # noqa: E402
from benchmarks.detection_transfer import UNITS, site_mean  # noqa: E402
from benchmarks.tables import fmt, mean_std, write_cells  # noqa: E402

STRATEGIES = {
    "fedavg": ("FedAvg (FedVision)", ["strategy=fedavg"]),
    "fedbn": ("FedAvg, BatchNorm local (FedBN)", ["strategy=fedavg", "strategy.bn=local"]),
    "fedpav": ("Partial averaging (heads local)", ["strategy=fedpav"]),
    "fedpav_bn": ("Partial averaging, BatchNorm local", ["strategy=fedpav", "+strategy.bn=local"]),
    "standalone": ("Standalone (each site alone)", ["strategy=standalone"]),
    "centralised": ("Centralised (all images on one client)", ["strategy=centralised"]),
}
COLUMNS = {"map": "mAP", "map_50": "mAP@0.5", "site_map": "mAP, mean of sites", "site_map_50": "mAP@0.5, mean of sites",
           "wall_seconds": "wall (s)"}


def run(name: str, seed: int, args) -> dict:
    overrides = [*STRATEGIES[name][1], "dataset=synthetic_detection", f"num_clients={args.sites}", "experiment=cpu",
                 f"seed={seed}", "wandb.mode=disabled", "progress=false", *args.extra]
    s = run_resumable(args.runs / name / f"seed{seed}", overrides)
    final = s["final"]
    return {"strategy": name, "seed": seed, "map": final["map"], "map_50": final["map_50"],
            "site_map": site_mean(final, "map"), "site_map_50": site_mean(final, "map_50"),
            "evaluated_by": final.get("evaluated_by", "server"),
            "per_site_map_50": {k: v["map_50"] for k, v in final["per_client"].items()},
            "map_50_by_round": [(e["round"], e["map_50"]) for e in s["detection"]], "wall_seconds": s["wall_seconds"]}


def table(cells: list[dict]) -> str:
    lines = ["| strategy | scored by | " + " | ".join(COLUMNS.values()) + " | seeds |", "|" + "---|" * (len(COLUMNS) + 3)]
    for name in dict.fromkeys(c["strategy"] for c in cells):
        mine = [c for c in cells if c["strategy"] == name]
        parts = [fmt(*mean_std([c[key] for c in mine]), *UNITS.get(key, ())) for key in COLUMNS]
        scored = "server (pooled)" if mine[0]["evaluated_by"] == "server" else "sites"
        lines.append(f"| {STRATEGIES[name][0]} | {scored} | " + " | ".join(parts)
                     + f" | {', '.join(str(c['seed']) for c in mine)} |")
    return "\n".join(lines) + "\n"


def plot(cells: list[dict], path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name in dict.fromkeys(c["strategy"] for c in cells):
        series = [dict(c["map_50_by_round"]) for c in cells if c["strategy"] == name]
        rounds = sorted(set.intersection(*(set(s) for s in series)))
        ax.plot(rounds, [100 * mean(s[r] for s in series) for r in rounds], "-o", markersize=3,
                label=STRATEGIES[name][0])
    ax.set_xlabel("round")
    ax.set_ylabel("mAP@0.5 (%), as each row is scored")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("Detection on the synthetic sites (3 sites, experiment=cpu), mean over seeds", fontsize=9)
    return save_figure(fig, path)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--sites", type=int, default=3)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/detection_strategies")
    p.add_argument("--runs", type=Path, default=None, help="where the runs go (default: outputs/benchmarks/<--out's path under benchmarks/results>)")
    p.add_argument("--extra", nargs="*", default=[], help="Hydra overrides for every run")
    args = p.parse_args(argv)
    args.runs = args.runs or default_runs(args.out)
    cells = [run(name, seed, args) for seed in args.seeds for name in args.strategies]
    text = table(cells)
    write_cells(args.out, "detection_strategies.py", argv if argv is not None else sys.argv[1:], text, cells, plot,
                "map_rounds.png", "; mean ± std over seeds")
    return cells


if __name__ == "__main__":
    main()
