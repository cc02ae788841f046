"""FedPav benchmark (issue 5): FedPav, +KD, +CDW, +KD+CDW and local training on a re-ID data set.

    python benchmarks/fedpav.py [--dataset cifar100_reid] [--preset cpu] [--rounds 20] [--kd-every 2]

One `python main.py` run per method (resumable: finished runs are read back, interrupted ones
continue), evaluated every round. Writes table.md (rank-1 and mAP per client and averaged,
best and last round, wall time), table.json and rank1_rounds.png (mean rank-1 against rounds,
one line per method) under benchmarks/results/fedpav/; the runs go under --runs (default
outputs/benchmarks/fedpav, not committed).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from compare import ROOT, default_runs, run_resumable
from tables import write_results

METHODS = {
    "fedpav": ("FedPav", ["strategy=fedpav"]),
    "fedpav_kd": ("FedPav + KD", ["strategy=fedpav", "strategy.kd=true"]),
    # the distillation as written in docs/algorithms.md#knowledge-distillation-on-the-server (raw embedding, plain SGD) against this project's default
    "fedpav_kd_spec": ("FedPav + KD (kd_form=spec)", ["strategy=fedpav", "strategy.kd=true", "reid.kd_form=spec"]),
    "fedpav_cdw": ("FedPav + CDW", ["strategy=fedpav", "strategy.cdw=true"]),
    "fedpav_kd_cdw": ("FedPav + KD + CDW", ["strategy=fedpav", "strategy.kd=true", "strategy.cdw=true"]),
    "local": ("Local training", ["strategy=standalone"]),
}


def pct(x) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def row(method: str, s: dict) -> dict:
    curve = [(e["round"], e["rank1"], e["mAP"]) for e in s["retrieval"]]
    final = s["final"]
    return {
        "method": METHODS[method][0], "rank1": final["rank1"], "mAP": final["mAP"],
        "best_rank1": max(r for _, r, _ in curve), "rank5": final["rank5"], "rank10": final["rank10"],
        "per_client": {p: {"rank1": c["rank1"], "mAP": c["mAP"]} for p, c in final["per_client"].items()},
        "curve": curve, "wall_seconds": s["wall_seconds"],
        "kd_loss": [(r["round"], r["kd_loss"]) for r in s["rounds"] if "kd_loss" in r],
        "weights_last_round": {p: c.get("weight") for p, c in s["rounds"][-1]["clients"].items()},
        # convergence steadiness: mean |change| of mean rank-1 between consecutive rounds, last half
        "rank1_jitter": _jitter([r for _, r, _ in curve]),
    }


def _jitter(values: list[float]) -> float:
    tail = values[len(values) // 2:]
    return float(sum(abs(b - a) for a, b in zip(tail, tail[1:])) / max(1, len(tail) - 1))


def markdown(rows: list[dict], head: str) -> str:
    clients = sorted(rows[0]["per_client"], key=int)
    lines = [head, "",
             "| method | " + " | ".join(f"client {c} R1 / mAP" for c in clients)
             + " | mean R1 | mean mAP | R5 | R10 | best R1 | R1 jitter (last half) | wall (s) |",
             "|---|" + "---|" * (len(clients) + 7)]
    for r in rows:
        cells = [f"{pct(r['per_client'][c]['rank1'])} / {pct(r['per_client'][c]['mAP'])}" for c in clients]
        lines.append(f"| {r['method']} | " + " | ".join(cells) + f" | {pct(r['rank1'])} | {pct(r['mAP'])} | "
                     f"{pct(r['rank5'])} | {pct(r['rank10'])} | {pct(r['best_rank1'])} | "
                     f"{pct(r['rank1_jitter'])} | {r['wall_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for r in rows:
        xs = [c[0] for c in r["curve"]]
        axes[0].plot(xs, [100 * c[1] for c in r["curve"]], marker="o", label=r["method"])
        axes[1].plot(xs, [100 * c[2] for c in r["curve"]], marker="o", label=r["method"])
    for ax, name in zip(axes, ("rank-1 (%)", "mAP (%)")):
        ax.set_xlabel("round")
        ax.set_ylabel(f"mean over clients, {name}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=[m for m in METHODS if m != "fedpav_kd_spec"], choices=list(METHODS))
    p.add_argument("--dataset", default="cifar100_reid")
    p.add_argument("--num-clients", type=int, default=5)
    p.add_argument("--preset", default="cpu")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--kd-every", type=int, default=2, help="distillation every N rounds (reference: 10 of 300)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "fedpav")
    p.add_argument("--runs", type=Path, default=None, help="where the runs go (default: outputs/benchmarks/<--out's path under benchmarks/results>)")
    p.add_argument("--extra", nargs="*", default=[], help="Hydra overrides for every run")
    args = p.parse_args(argv)
    args.runs = args.runs or default_runs(args.out)
    common = [f"dataset={args.dataset}", f"num_clients={args.num_clients}", f"experiment={args.preset}",
              f"num_rounds={args.rounds}", "eval_every=1", f"seed={args.seed}", "wandb.mode=disabled", *args.extra]
    rows = []
    for m in args.methods:
        kd = [f"strategy.kd_every={args.kd_every}"] if "strategy=fedpav" in METHODS[m][1] else []
        rows.append(row(m, run_resumable(args.runs / m, [*METHODS[m][1], *kd, *common])))
    head = (f"{args.dataset}, {args.num_clients} clients, experiment={args.preset}, {args.rounds} rounds, "
            f"KD every {args.kd_every} rounds, seed {args.seed} {' '.join(args.extra)}").rstrip()
    write_results(args, rows, markdown(rows, head), plot, "rank1_rounds.png")
    return rows


if __name__ == "__main__":
    main()
