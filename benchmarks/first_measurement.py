"""First measurement (issue 2): FedU vs FedBYOL vs standalone, CPU preset, CIFAR-100.

Runs `python main.py` once per method (5 clients, `classes` partition, experiment=cpu by
default), then prints a table of kNN / linear accuracy and wall time and writes it as JSON
and Markdown. Finished runs (summary.json with status "completed") are not rerun.

    python benchmarks/first_measurement.py                      # all three methods
    python benchmarks/first_measurement.py --methods fedu --extra num_rounds=20
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = {"fedu": "FedU", "fedbyol": "FedBYOL", "standalone": "Standalone"}


def run_one(method: str, out: Path, args) -> dict:
    summary = out / "summary.json"
    if summary.exists() and json.loads(summary.read_text()).get("status") == "completed":
        print(f"{method}: already done, reusing {summary}", flush=True)
        return json.loads(summary.read_text())
    cmd = [sys.executable, "main.py", f"strategy={method}", f"dataset={args.dataset}",
           f"num_clients={args.num_clients}", f"partition={args.partition}", f"experiment={args.preset}",
           f"seed={args.seed}", f"output_dir={out}", "wandb.mode=disabled", *args.extra]
    print("running:", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    (out.parent / f"{method}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"{method} failed (exit {proc.returncode}); log: {out.parent / f'{method}.log'}")
    s = json.loads(summary.read_text())
    s["process_seconds"] = time.perf_counter() - t0
    return s


def row(method: str, s: dict) -> dict:
    final, start = s["final"], s.get("initial_eval") or {}
    decisions = [c.get("predictor_next") for r in s["rounds"] for c in r["clients"].values()]
    return {
        "method": METHODS.get(method, method),
        "knn_initial": start.get("knn_accuracy"),
        "knn": final.get("knn_accuracy"),
        "linear": final.get("linear_accuracy"),
        "wall_seconds": s["wall_seconds"],
        "mb_per_round": sum(r["bytes_sent"] + r.get("bytes_received", 0) for r in s["rounds"]) / len(s["rounds"]) / 1e6,
        "global_predictor_share": (decisions.count("global") / len(decisions)) if any(decisions) else None,
    }


def pct(x) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def markdown(rows: list[dict], args) -> str:
    lines = [
        f"CIFAR-100, {args.num_clients} clients, partition={args.partition}, experiment={args.preset}, "
        f"seed={args.seed} {' '.join(args.extra)}".rstrip(),
        "",
        "| method | kNN round 0 (%) | kNN final (%) | linear (%) | wall (s) | MB/round | global predictor share |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        share = "-" if r["global_predictor_share"] is None else f"{r['global_predictor_share']:.2f}"
        lines.append(f"| {r['method']} | {pct(r['knn_initial'])} | {pct(r['knn'])} | {pct(r['linear'])} | "
                     f"{r['wall_seconds']:.0f} | {r['mb_per_round']:.1f} | {share} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--dataset", default="cifar100")
    p.add_argument("--partition", default="classes")
    p.add_argument("--num-clients", type=int, default=5)
    p.add_argument("--preset", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "first_measurement")
    p.add_argument("--extra", nargs="*", default=[], help="more Hydra overrides for every run")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [row(m, run_one(m, args.out / m, args)) for m in args.methods]
    table = markdown(rows, args)
    print(table)
    (args.out / "table.md").write_text(table)
    (args.out / "table.json").write_text(json.dumps({"settings": vars(args) | {"out": str(args.out)}, "rows": rows},
                                                    indent=2, default=str))
    print(f"written: {args.out / 'table.md'}, {args.out / 'table.json'}")


if __name__ == "__main__":
    main()
