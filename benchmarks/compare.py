"""The comparison table (issue 3): methods x partitions, one command, resumable.

    python benchmarks/compare.py --dataset cifar100 --partitions classes iid --preset cpu

Runs `python main.py` once per (partition, method) cell; a cell whose summary.json says
"completed" is not rerun, so an interrupted table resumes where it stopped. The
"random_init" row evaluates the untrained model (`mode=evaluate checkpoint=init`). Writes
table.md, table.json and knn_rounds.png (kNN accuracy against rounds, one panel per partition).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# method -> (display name, Hydra overrides)
METHODS = {
    "fedu": ("FedU", ["strategy=fedu"]),
    "fedema": ("FedEMA", ["strategy=fedema"]),
    "fedbyol": ("FedBYOL", ["strategy=fedbyol"]),
    "fedsimsiam": ("FedSimSiam", ["strategy=fedavg", "ssl=simsiam"]),
    "fedsimclr": ("FedSimCLR", ["strategy=fedavg", "ssl=simclr"]),
    "fedmoco": ("FedMoCo (v2)", ["strategy=fedavg", "ssl=mocov2"]),
    "fedswav": ("FedSwAV", ["strategy=fedavg", "ssl=swav"]),
    "standalone": ("Standalone", ["strategy=standalone"]),
    "centralised": ("Centralised", ["strategy=centralised"]),
    "random_init": ("Random init (no training)", ["strategy=fedu", "mode=evaluate", "checkpoint=init"]),
}
# evaluated, not trained (app/offline.py): the baseline every trained number is compared with
EVALUATION_ONLY = {"random_init"}

# Cells whose result does not depend on the partition: strategy=centralised trains one client on
# an IID sample of everything the clients hold (app/config.centralise), random_init trains nothing.
# One run each, kept under iid/, serves the row of every partition.
PARTITION_FREE = {"centralised": "iid", "random_init": "iid"}


def cell_dir(out: Path, method: str, partition: str) -> Path:
    return out / PARTITION_FREE.get(method, partition) / method


def launch(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)


def completed(summary_path: Path) -> dict | None:
    if summary_path.is_file():
        s = json.loads(summary_path.read_text())
        if s.get("status") == "completed":
            return s
    return None


def launch_logged(cmd: list[str], out: Path) -> None:
    """Run one main.py command for cell `out`; its output goes to <out>.log; a failure stops the table."""
    print("running:", " ".join(cmd), flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    proc = launch(cmd)
    log = out.parent / f"{out.name}.log"
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"{out} failed (exit {proc.returncode}); log: {log}")


def run_resumable(out: Path, overrides: list[str]) -> dict:
    """One `python main.py` run into `out`: reused when completed, resumed when interrupted."""
    done = completed(out / "summary.json")
    if done is not None:
        print(f"{out}: done earlier, reusing its summary.json", flush=True)
        return done
    cmd = [sys.executable, "main.py", *overrides, f"output_dir={out}"]
    if out.exists() and (out / "state" / "server.pt").is_file():
        cmd = [sys.executable, "main.py", f"resume={out}"]  # an interrupted cell continues
    t0 = time.perf_counter()
    launch_logged(cmd, out)
    s = json.loads((out / "summary.json").read_text())
    s["process_seconds"] = time.perf_counter() - t0
    return s


def evaluation_summary(evaluation: dict) -> dict:
    """An evaluation.json (mode=evaluate) in the shape of a run's summary: round 0 only."""
    final = evaluation["final"]
    return {"status": "completed", "initial_eval": final, "final": final, "rounds": [],
            "knn": [{"round": 0, "accuracy": final["knn_accuracy"]}], "wall_seconds": 0.0}


def finished_cell(method: str, partition: str, args) -> dict | None:
    out = cell_dir(args.out, method, partition)
    if method in EVALUATION_ONLY:
        done = completed(out / "evaluation.json")
        return None if done is None else evaluation_summary(done)
    return completed(out / "summary.json")


def run_cell(method: str, partition: str, args) -> dict:
    out = cell_dir(args.out, method, partition)
    common = [*METHODS[method][1], f"dataset={args.dataset}", f"num_clients={args.num_clients}",
              f"experiment={args.preset}", f"seed={args.seed}", "wandb.mode=disabled", *args.extra]
    if method not in EVALUATION_ONLY:
        return run_resumable(out, [*common, f"partition={out.parent.name}"])
    if finished_cell(method, partition, args) is None:  # evaluated once, then read back
        launch_logged([sys.executable, "main.py", *common, f"output_dir={out}"], out)
    return finished_cell(method, partition, args)


def row(method: str, partition: str, s: dict) -> dict:
    final = s["final"]
    rounds = s["rounds"]
    return {
        "method": METHODS[method][0], "partition": partition,
        "knn_initial": (s.get("initial_eval") or {}).get("knn_accuracy"),
        "knn": final.get("knn_accuracy"), "linear": final.get("linear_accuracy"),
        "semi_1": final.get("semi_1%"), "semi_10": final.get("semi_10%"),
        "wall_seconds": s["wall_seconds"],
        "mb_per_round": sum(r["bytes_sent"] + r.get("bytes_received", 0) for r in rounds) / max(1, len(rounds)) / 1e6,
        "knn_by_round": [(k["round"], k["accuracy"]) for k in s["knn"]],
    }


def pct(x) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def markdown(rows: list[dict], args) -> str:
    head = (f"{args.dataset}, {args.num_clients} clients, experiment={args.preset}, seed={args.seed} "
            f"{' '.join(args.extra)}").rstrip()
    lines = [head, "", "| partition | method | kNN round 0 | kNN | linear | semi 1% | semi 10% | wall (s) | MB/round |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['partition']} | {r['method']} | {pct(r['knn_initial'])} | {pct(r['knn'])} | "
                     f"{pct(r['linear'])} | {pct(r['semi_1'])} | {pct(r['semi_10'])} | {r['wall_seconds']:.0f} | "
                     f"{r['mb_per_round']:.1f} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    partitions = sorted({r["partition"] for r in rows})
    fig, axes = plt.subplots(1, len(partitions), figsize=(6 * len(partitions), 4), squeeze=False)
    for ax, part in zip(axes[0], partitions):
        for r in (r for r in rows if r["partition"] == part):
            xs, ys = zip(*r["knn_by_round"]) if r["knn_by_round"] else ((), ())
            if xs == (0,):  # not trained (random init): a level to compare with
                ax.axhline(100 * ys[0], color="black", linestyle="--", linewidth=1, label=r["method"])
                continue
            ax.plot(xs, [100 * y for y in ys], marker="o", label=r["method"])
        ax.set_title(f"partition={part}")
        ax.set_xlabel("round")
        ax.set_ylabel("kNN accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--partitions", nargs="+", default=["classes", "iid"])
    p.add_argument("--dataset", default="cifar100")
    p.add_argument("--num-clients", type=int, default=5)
    p.add_argument("--preset", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "compare")
    p.add_argument("--extra", nargs="*", default=["eval.semi=true"], help="Hydra overrides for every cell")
    p.add_argument("--report-only", action="store_true", help="write the table of the finished cells, run nothing")
    return p.parse_args(argv)


def main(argv=None) -> list[dict]:
    args = parse(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.report_only:  # the table of the cells finished so far; nothing is run
        done = [(m, part, finished_cell(m, part, args)) for part in args.partitions for m in args.methods]
        missing = [f"{part}/{m}" for m, part, s in done if s is None]
        rows = [row(m, part, s) for m, part, s in done if s is not None]
        if missing:
            print(f"not finished yet: {', '.join(missing)}")
        if not rows:
            return rows
    else:
        rows = [row(m, part, run_cell(m, part, args)) for part in args.partitions for m in args.methods]
    write_results(args, rows, markdown(rows, args), plot, "knn_rounds.png")
    return rows


def write_results(args, rows: list[dict], table: str, plot_fn, png: str) -> None:
    """Print the table; write table.md, table.json (settings + rows) and the plot into args.out."""
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text(table)
    (args.out / "table.json").write_text(json.dumps({"settings": {k: str(v) for k, v in vars(args).items()},
                                                     "rows": rows}, indent=2))
    plot_fn(rows, args.out / png)
    print(f"written: {args.out}/table.md, table.json, {png}")


if __name__ == "__main__":
    main()
