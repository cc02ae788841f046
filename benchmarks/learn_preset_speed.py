"""What makes experiment=cpu_learn's rounds fastest on this machine, measured in real rounds (issue 25).

    python benchmarks/learn_preset_speed.py [--rounds 4] [--redo]

FedU on the CIFAR-10 sample, 5 clients, experiment=cpu_learn's model, batch and round (2 local
epochs of 1,000 images), no evaluation, for `--rounds` rounds, in four forms:
- one client at a time on every core (client_resources.num_cpus=<cores>) or clients in parallel
  on one thread each (client_resources.num_cpus=1): the core plan;
- compile=false or true (the model is rebuilt every round, so compilation is paid again unless
  torch's caches hold).
Reports each form's fit seconds per round and the images/s of the rounds after the first (the
first pays Ray's start and compilation), and the ratio to the preset as it was first written
(one client at a time, no compile). Runs go under outputs/learn_preset_speed/; table.md, table.json
and the plot under benchmarks/results/learning/cpu_learn/preset_speed/. Each form is reused once
finished (--redo measures again). Nothing else should run on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.plots import pyplot, save_figure  # noqa: E402
from benchmarks.compare import run_resumable  # noqa: E402
from benchmarks.speed import round_rates  # noqa: E402
from benchmarks.tables import commit, write_results  # noqa: E402

CORES = os.cpu_count() or 1
FORMS = {  # name -> overrides
    "sequential": [f"client_resources.num_cpus={CORES}", "compile=false"],
    "parallel": ["client_resources.num_cpus=1", "compile=false"],
    "sequential+compile": [f"client_resources.num_cpus={CORES}", "compile=true"],
    "parallel+compile": ["client_resources.num_cpus=1", "compile=true"],
}


def measure(args) -> list[dict]:
    quick = ["experiment=cpu_learn", "strategy=fedu", "dataset=cifar10", "num_clients=5", f"num_rounds={args.rounds}",
             "eval_every=0", "eval.at_start=false", "eval.linear=false", "checkpoint_every=0", "wandb.mode=disabled",
             "progress=false"]
    rows = []
    for name, overrides in FORMS.items():
        out = args.runs / name
        if args.redo and out.exists():
            shutil.rmtree(out)
        s = run_resumable(out, [*quick, *overrides])
        rates = round_rates(s)
        rows.append({"form": name, "overrides": overrides, "parallel_clients": s["compute"]["parallel_clients"],
                     "threads_per_client": s["compute"]["threads_per_client"],
                     "round_fit_seconds": [r["fit_seconds"] for r in s["rounds"]], **rates})
        print(f"{name}: {rates['images_per_second']:.1f} img/s after round 1, fit seconds per round "
              f"{', '.join(f'{x:.1f}' for x in rows[-1]['round_fit_seconds'])}", flush=True)
    base = rows[0]["images_per_second"]
    for r in rows:
        r["ratio"] = r["images_per_second"] / base
    return rows


def markdown(rows: list[dict], args) -> str:
    lines = [f"experiment=cpu_learn rounds, FedU, CIFAR-10 sample, 5 clients, {args.rounds} rounds, {CORES} cores", "",
             f"commit {args.commit}; command: `{args.command}`", "",
             "| form | clients in parallel x threads | fit s per round | img/s (rounds 2+) | x sequential |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['form']} | {r['parallel_clients']} x {r['threads_per_client']} | "
                     f"{', '.join(f'{x:.1f}' for x in r['round_fit_seconds'])} | {r['images_per_second']:.1f} | "
                     f"{r['ratio']:.2f} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    fig, ax = pyplot().subplots(figsize=(6.5, 4))
    for r in rows:
        ax.plot(range(1, len(r["round_fit_seconds"]) + 1), r["round_fit_seconds"], "-o", label=r["form"])
    ax.set_xlabel("round")
    ax.set_ylabel("fit seconds")
    ax.set_title("experiment=cpu_learn rounds (FedU, 5 clients)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, path)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--redo", action="store_true")
    p.add_argument("--runs", type=Path, default=ROOT / "outputs" / "learn_preset_speed")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "learning" / "cpu_learn" / "preset_speed")
    args = p.parse_args(argv)
    args.commit = commit()
    args.command = " ".join(["python benchmarks/learn_preset_speed.py", *(sys.argv[1:] if argv is None else argv)])
    rows = measure(args)
    write_results(args, rows, markdown(rows, args), plot, "fit_seconds.png")
    return rows


if __name__ == "__main__":
    main()
