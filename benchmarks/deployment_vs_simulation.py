"""Wall time per round of the same tiny run in simulation (Ray) and in a real deployment
(SuperLink + SuperNodes on loopback, TLS and node authentication on), issue 4 part 8.

    python benchmarks/deployment_vs_simulation.py [--nodes 2] [--rounds 3] [overrides ...]

Both runs use the same config; each prints a table per round: the server's wall time for the
fit phase, the slowest client's own training time inside it, the rest (transport, process start,
imports, model build, data loading) and evaluation. Writes table.md and table.json under --out
(default benchmarks/results/deployment_vs_simulation); the two runs, the deployment's working
folder (SuperLink database, the app copied under flwr-home/, logs) and their logs go under --runs
(default outputs/benchmarks/deployment_vs_simulation/<date-time>, not committed).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(cmd: list[str], log: Path) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {proc.returncode}); log: {log}")
    return time.perf_counter() - t0


# What a deployed SuperNode does for every message: a fresh ClientApp process imports the app,
# composes the config, reads its partition and builds the model before training starts.
COLD_START = """
import shlex, sys, time
t0 = time.perf_counter()
from app import deployment
from tasks.common.federated_data import client_images
from tasks.ssl.model import build_federated_method
from tasks.ssl.settings import ssl_settings
t1 = time.perf_counter()
cfg = deployment.config_from_overrides(shlex.join(sys.argv[1:]))
settings = ssl_settings(cfg)
client_images(settings.images, 0)
build_federated_method(settings)
print(t1 - t0, time.perf_counter() - t1)
"""


def cold_start(overrides: list[str], repeats: int = 3) -> dict:
    """Seconds for a new Python process to import the ClientApp and get ready to train (median)."""
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", COLD_START, *overrides], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
        runs.append((time.perf_counter() - t0, float(out[0]), float(out[1])))
    total, imports, setup = sorted(runs)[len(runs) // 2]
    return {"process_seconds": total, "import_seconds": imports, "setup_seconds": setup}


def per_round(summary: dict) -> list[dict]:
    rows = []
    for r in summary["rounds"]:
        train = max(c.get("train_seconds", 0.0) for c in r["clients"].values())
        rows.append({"round": r["round"], "round_seconds": r["wall_seconds"], "fit_seconds": r["fit_seconds"],
                     "client_train_seconds": train, "fit_overhead_seconds": r["fit_seconds"] - train,
                     "eval_seconds": r.get("eval_seconds", 0.0)})
    return rows


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "deployment_vs_simulation")
    p.add_argument("--runs", type=Path, default=None,
                   help="a new folder for the runs (default: outputs/benchmarks/deployment_vs_simulation/<date-time>)")
    p.add_argument("overrides", nargs="*", default=[])
    args = p.parse_args(argv)
    runs = args.runs or ROOT / "outputs" / "benchmarks" / "deployment_vs_simulation" / time.strftime("%Y%m%d-%H%M%S")
    runs.mkdir(parents=True, exist_ok=True)
    common = ["experiment=smoke", f"num_rounds={args.rounds}", "wandb.mode=disabled", *args.overrides]
    sim_dir, dep_dir = runs / "simulation", runs / "deployment"
    results = {"runs": str(runs)}
    seconds = timed([sys.executable, "main.py", *common, f"num_clients={args.nodes}", f"output_dir={sim_dir}"],
                    runs / "simulation.log")
    results["simulation"] = {"process_seconds": seconds}
    seconds = timed([sys.executable, "-m", "ops.local_federation", "--nodes", str(args.nodes), "--workdir",
                     str(dep_dir), *common], runs / "deployment.log")
    results["deployment"] = {"process_seconds": seconds}
    for mode, folder in (("simulation", sim_dir), ("deployment", dep_dir / "run")):
        summary = json.loads((folder / "summary.json").read_text())
        results[mode].update(rounds=per_round(summary), run_seconds=summary["wall_seconds"])

    lines = [f"{args.nodes} clients, {args.rounds} rounds, experiment=smoke {' '.join(args.overrides)}".rstrip(), "",
             "| mode | round | round (s) | fit (s) | slowest client training (s) | fit minus training (s) | eval (s) |",
             "|---|---|---|---|---|---|---|"]
    for mode in ("simulation", "deployment"):
        for r in results[mode]["rounds"]:
            lines.append(f"| {mode} | {r['round']} | {r['round_seconds']:.1f} | {r['fit_seconds']:.1f} | "
                         f"{r['client_train_seconds']:.2f} | {r['fit_overhead_seconds']:.1f} | {r['eval_seconds']:.1f} |")
    print("\n".join(lines))
    results["clientapp_cold_start"] = cold_start([*common, f"num_clients={args.nodes}"])
    cs = results["clientapp_cold_start"]
    print(f"cold start of one ClientApp process: {cs['process_seconds']:.1f} s "
          f"(imports {cs['import_seconds']:.1f} s, config + data + model {cs['setup_seconds']:.1f} s)")
    for mode in ("simulation", "deployment"):
        res = results[mode]
        print(f"{mode}: whole command {res['process_seconds']:.0f} s, federation {res['run_seconds']:.0f} s")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text("\n".join(lines) + "\n")
    (args.out / "table.json").write_text(json.dumps(results, indent=2))
    print(f"written: {args.out / 'table.md'}, {args.out / 'table.json'} (runs and logs: {runs})")
    return results


if __name__ == "__main__":
    main()
