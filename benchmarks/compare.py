"""The comparison table (issues 3, 14): methods x partitions x seeds, one command, resumable.

    python benchmarks/compare.py --dataset cifar10 --partitions classes --preset cpu --seeds 0 1 2

Runs `python main.py` once per (partition, method, seed) cell, into
<runs>/<partition>/<method>/seed<k> (by default outputs/benchmarks/<out's path under
benchmarks/results>); a finished cell's summary.json is copied to
<out>/cells/<partition>/<method>/seed<k>.json, committed with the table, and a cell found there or
completed in its run folder is not rerun, so an interrupted table resumes where it stopped, in
this session or a later one (an interrupted run continues with resume=; one that stopped before
saving any round is moved aside to <cell>.stopped-<time> and run again). The "random_init" row evaluates the untrained
model of each seed (`mode=evaluate checkpoint=init`). Every column is reported as the mean and
standard deviation over the seeds finished; next to them, the standard error of one reading
(sqrt(p (1 - p) / test images) of the cell's own accuracy, averaged over its seeds), the noise of a
single kNN or probe evaluation on the test set, against which the seed spread can be read. Writes table.md, table.json (settings, the commit and
command, per-seed cells and their aggregates) and knn_rounds.png (kNN against rounds, mean with a
band of one standard deviation, one panel per partition).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.plots import pyplot, save_figure  # noqa: E402
from benchmarks.tables import commit, fmt, mean_std, write_results  # noqa: E402

# method -> (display name, Hydra overrides)
METHODS = {
    "fedu": ("FedU", ["strategy=fedu"]),
    "fedema": ("FedEMA", ["strategy=fedema"]),
    "fedbyol": ("FedBYOL", ["strategy=fedbyol"]),
    "fedsimsiam": ("FedSimSiam", ["strategy=fedavg", "ssl=simsiam"]),
    "fedsimclr": ("FedSimCLR", ["strategy=fedavg", "ssl=simclr"]),
    "fedmoco": ("FedMoCo (v2)", ["strategy=fedavg", "ssl=mocov2"]),
    "fedswav": ("FedSwAV", ["strategy=fedavg", "ssl=swav"]),
    # the clustering family (issue 15, docs/algorithms.md#clustering-based-self-supervision): clusters per client (local) or the federation's (global)
    "feddeepcluster": ("FedDeepCluster, local", ["strategy=fedavg", "ssl=deepcluster"]),
    "feddeepcluster_global": ("FedDeepCluster, global", ["strategy=fedavg", "ssl=deepcluster", "ssl.clusters=global"]),
    "feddeepcluster_balanced": ("FedDeepCluster, global, balanced", ["strategy=fedavg", "ssl=deepcluster",
                                                                      "ssl.clusters=global", "ssl.assign=balanced"]),
    "fedsela": ("FedSeLa, local", ["strategy=fedavg", "ssl=sela"]),
    "fedsela_global": ("FedSeLa, global", ["strategy=fedavg", "ssl=sela", "ssl.clusters=global"]),
    "standalone": ("Standalone", ["strategy=standalone"]),
    "centralised": ("Centralised", ["strategy=centralised"]),
    "random_init": ("Random init (no training)", ["strategy=fedu", "mode=evaluate", "checkpoint=init"]),
    # FedU's ablations (docs/algorithms.md#baselines): the predictor rule (dapu = FedU, global = FedBYOL), what is synchronised,
    # and DAPU with the scale-free divergence (issue 14)
    "fedu_predictor_local": ("FedU, predictor local", ["strategy=fedu", "strategy.predictor=local"]),
    "fedu_sync_target": ("FedU, sync target", ["strategy=fedu", "strategy.sync=target"]),
    "fedu_sync_both": ("FedU, sync both", ["strategy=fedu", "strategy.sync=both"]),
    "fedu_dapu_relative": ("FedU, DAPU relative", ["strategy=fedu", "strategy.dapu_scale=relative"]),
}
MAIN_METHODS = ["fedu", "fedema", "fedbyol", "fedsimsiam", "fedsimclr", "fedmoco", "fedswav", "standalone",
                "centralised", "random_init"]
# evaluated, not trained (app/offline.py): the baseline every trained number is compared with
EVALUATION_ONLY = {"random_init"}

# Cells whose result does not depend on the partition: strategy=centralised trains one client on
# an IID sample of everything the clients hold (app/config.centralise), random_init trains nothing.
# One run each, kept under iid/, serves the row of every partition.
PARTITION_FREE = {"centralised": "iid", "random_init": "iid"}

# the numbers a cell reports (summary.json["final"] key, or a derived one) -> table column
# The *_gain columns are paired by seed (each seed's untrained network differs): a run's kNN minus
# its own round 0, its linear probe minus the random-init row's of the same seed.
COLUMNS = {
    "knn_initial": "kNN round 0", "knn": "kNN", "knn_gain": "kNN − round 0", "knn_bn_reestimated": "kNN, BN re-est.",
    "knn_bn_reestimated_gain": "kNN, BN re-est. − round 0",
    "knn_k20_bn_reestimated": "kNN k=20, BN re-est.", "knn_k20_bn_reestimated_gain": "kNN k=20, BN re-est. − round 0",
    "linear": "linear",
    "linear_gain": "linear − random init", "linear_bn_reestimated": "linear, BN re-est.",
    "linear_bn_reestimated_gain": "linear, BN re-est. − random init", "se": "SE of one reading",
    "semi_1": "semi 1%", "semi_10": "semi 10%",
    "nmi_labels": "NMI vs labels", "nmi_previous": "NMI vs previous round",
    "wall_seconds": "wall (s)", "mb_per_round": "MB/round",
}
# the kNN histories a cell keeps (its summary's knn[] field -> cell key), and the panels of the plot
SERIES = {"knn_by_round": "accuracy", "knn_bn_reestimated_by_round": "accuracy_bn_reestimated",
          "knn_k20_bn_reestimated_by_round": "accuracy_k20_bn_reestimated"}


# (scale, digits) of the columns that are not accuracies (fmt's default: fraction -> % with 2 digits)
UNITS = {"wall_seconds": (1.0, 0), "mb_per_round": (1.0, 1), "nmi_labels": (1.0, 3), "nmi_previous": (1.0, 3)}


def _minus(a, b):
    return None if a is None or b is None else a - b


def add_gains(cells: list[dict]) -> None:
    """Each cell's paired gains: over its own round 0 (kNN), over the same seed's random init (linear)."""
    init = {c["seed"]: c for c in cells if c["key"] == "random_init"}
    for c in cells:
        c["knn_gain"] = _minus(c["knn"], c["knn_initial"])
        for key in ("knn_bn_reestimated", "knn_k20_bn_reestimated"):
            c[f"{key}_gain"] = _minus(c.get(key), dict(c.get(f"{key}_by_round", [])).get(0))
        base = init.get(c["seed"], {})
        c["linear_gain"] = _minus(c["linear"], base.get("linear"))
        c["linear_bn_reestimated_gain"] = _minus(c["linear_bn_reestimated"], base.get("linear_bn_reestimated"))


def cell_dir(runs: Path, method: str, partition: str, seed: int) -> Path:
    """Where a cell's run is written (under --runs)."""
    return runs / PARTITION_FREE.get(method, partition) / method / f"seed{seed}"


def kept_cell(out: Path, method: str, partition: str, seed: int) -> Path:
    """Where a finished cell's summary is kept with the table (under --out/cells, committed)."""
    return out / "cells" / PARTITION_FREE.get(method, partition) / method / f"seed{seed}.json"


def default_runs(out: Path) -> Path:
    """Runs of a table under benchmarks/results/X go to outputs/benchmarks/X (not committed); any other
    --out keeps its runs beside the table, as before."""
    results = ROOT / "benchmarks" / "results"
    try:
        return ROOT / "outputs" / "benchmarks" / out.resolve().relative_to(results)
    except ValueError:
        return out


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


def set_aside(out: Path) -> None:
    """A run folder that cannot be resumed (stopped before its first saved round) is moved to
    `<out>.stopped-<time>` so that the cell starts again in `out` (main.py never writes over a run)."""
    if out.exists() and any(out.iterdir()):
        aside = out.with_name(f"{out.name}.stopped-{time.strftime('%Y%m%d-%H%M%S')}")
        out.rename(aside)
        print(f"{out}: stopped before saving a round; moved to {aside}, starting it again", flush=True)


def run_resumable(out: Path, overrides: list[str], program: tuple[str, ...] = ("main.py",)) -> dict:
    """One `python main.py` run into `out`: reused when completed, resumed when interrupted, started
    again (the old folder set aside) when it stopped before saving any round. `program`: what runs
    in place of main.py (a launcher that runs main.py with a change of its own)."""
    done = completed(out / "summary.json")
    if done is not None:
        print(f"{out}: done earlier, reusing its summary.json", flush=True)
        return done
    cmd = [sys.executable, *program, *overrides, f"output_dir={out}"]
    if out.exists() and (out / "state" / "server.pt").is_file():
        cmd = [sys.executable, *program, f"resume={out}"]  # an interrupted cell continues
    else:
        set_aside(out)
    t0 = time.perf_counter()
    launch_logged(cmd, out)
    s = json.loads((out / "summary.json").read_text())
    s["process_seconds"] = time.perf_counter() - t0
    return s


def evaluation_summary(evaluation: dict) -> dict:
    """An evaluation.json (mode=evaluate) in the shape of a run's summary: round 0 only."""
    final = evaluation["final"]
    entry = {"round": 0, **{k.replace("knn_", "", 1): v for k, v in final.items()
                            if k.startswith("knn_accuracy") and isinstance(v, (int, float))}}
    return {"status": "completed", "initial_eval": final, "final": final, "rounds": [], "knn": [entry],
            "wall_seconds": 0.0}


def finished_cell(method: str, partition: str, seed: int, args) -> dict | None:
    """A finished cell's summary: kept with the table, or completed in its run folder (then kept)."""
    kept = kept_cell(args.out, method, partition, seed)
    if kept.is_file():
        return json.loads(kept.read_text())
    out = cell_dir(args.runs, method, partition, seed)
    if method in EVALUATION_ONLY:
        done = completed(out / "evaluation.json")
        done = None if done is None else evaluation_summary(done)
    else:
        done = completed(out / "summary.json")
    if done is not None:
        kept.parent.mkdir(parents=True, exist_ok=True)
        tmp = kept.with_suffix(".tmp")
        tmp.write_text(json.dumps(done))
        tmp.replace(kept)
    return done


def run_cell(method: str, partition: str, seed: int, args) -> dict:
    if (done := finished_cell(method, partition, seed, args)) is not None:
        print(f"{partition}/{method}/seed{seed}: done earlier, reusing it", flush=True)
        return done
    out = cell_dir(args.runs, method, partition, seed)
    common = [*METHODS[method][1], f"dataset={args.dataset}", f"num_clients={args.num_clients}",
              f"experiment={args.preset}", f"seed={seed}", "wandb.mode=disabled", "progress=false", *args.extra]
    if method not in EVALUATION_ONLY:
        run_resumable(out, [*common, f"partition={out.parent.parent.name}"])
    else:  # evaluated once, then read back
        launch_logged([sys.executable, "main.py", *common, f"output_dir={out}"], out)
    return finished_cell(method, partition, seed, args)


def last_round_client_mean(rounds: list[dict], key: str) -> float | None:
    """The clients' mean of a per-client value (clustering methods' NMI) in the last round that reports it."""
    for rec in reversed(rounds):
        values = [c[key] for c in (rec.get("clients") or {}).values() if c.get(key) is not None]
        if values:
            return sum(values) / len(values)
    return None


def cell(method: str, partition: str, seed: int, s: dict) -> dict:
    """One run's numbers (fractions; None where the run did not report it)."""
    final, rounds = s["final"], s["rounds"]
    return {
        "method": METHODS[method][0], "key": method, "partition": partition, "seed": seed,
        "knn_initial": (s.get("initial_eval") or {}).get("knn_accuracy"),
        "knn": final.get("knn_accuracy"), "knn_bn_reestimated": final.get("knn_accuracy_bn_reestimated"),
        "knn_k20_bn_reestimated": final.get("knn_accuracy_k20_bn_reestimated"),
        "linear": final.get("linear_accuracy"), "linear_bn_reestimated": final.get("linear_accuracy_bn_reestimated"),
        "se": one_reading_se(final),
        "semi_1": final.get("semi_1%"), "semi_10": final.get("semi_10%"),
        "nmi_labels": last_round_client_mean(rounds, "nmi_labels"),
        "nmi_previous": last_round_client_mean(rounds, "nmi_previous"),
        "wall_seconds": s["wall_seconds"],
        "mb_per_round": sum(r["bytes_sent"] + r.get("bytes_received", 0) for r in rounds) / max(1, len(rounds)) / 1e6,
        **{series: [(k["round"], k[field]) for k in s["knn"] if field in k] for series, field in SERIES.items()},
    }


def one_reading_se(final: dict) -> float | None:
    """Standard error of one accuracy reading on the test set: sqrt(p (1 - p) / n), at the run's kNN
    accuracy (BatchNorm re-estimated where reported); None without the test set's size."""
    p = final.get("knn_accuracy_bn_reestimated", final.get("knn_accuracy"))
    n = final.get("test_size")
    if p is None or not n:
        return None
    return (p * (1 - p) / n) ** 0.5


def aggregate(cells: list[dict]) -> dict:
    """The row of one (partition, method): every column's mean and std over its seeds, and the
    kNN curve's mean and std per round (rounds every seed reported)."""
    first = cells[0]
    row = {"method": first["method"], "key": first["key"], "partition": first["partition"],
           "seeds": [c["seed"] for c in cells]}
    for col in COLUMNS:
        row[col], row[f"{col}_std"] = mean_std([c.get(col) for c in cells])
    for series in SERIES:
        by_seed = [dict(c.get(series, [])) for c in cells]
        rounds = sorted(set.intersection(*(set(b) for b in by_seed)))
        row[series] = [(r, *mean_std([b[r] for b in by_seed])) for r in rounds]
    return row


def markdown(rows: list[dict], args) -> str:
    cols = [c for c in COLUMNS if any(r.get(c) is not None for r in rows)]
    head = (f"{args.dataset}, {args.num_clients} clients, experiment={args.preset}, seeds {' '.join(map(str, args.seeds))} "
            f"{' '.join(args.extra)}").rstrip()
    lines = [head, "", f"commit {args.commit}; command: `{args.command}`", "",
             "Mean ± standard deviation over the seeds (n = number of seeds finished); accuracies in %. "
             "kNN/linear: BatchNorm statistics as aggregated (the reference code's); BN re-est.: re-estimated "
             "on the evaluation bank's images.", "",
             "| partition | method | n | " + " | ".join(COLUMNS[c] for c in cols) + " |",
             "|---|---|---|" + "---|" * len(cols)]
    for r in rows:
        cells = [fmt(r.get(c), r.get(f"{c}_std"), *UNITS.get(c, ())) for c in cols]
        lines.append(f"| {r['partition']} | {r['method']} | {len(r['seeds'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    plt = pyplot()
    partitions = sorted({r["partition"] for r in rows})
    panels = [(series, part) for series in SERIES if any(r.get(series) for r in rows) for part in partitions]
    fig, axes = plt.subplots(len(panels) // len(partitions), len(partitions), squeeze=False,
                             figsize=(7 * len(partitions), 4.5 * len(panels) // len(partitions)))
    for ax, (series, part) in zip(axes.flat, panels):
        for r in (r for r in rows if r["partition"] == part):
            pts = r.get(series) or []
            if not pts:
                continue
            xs = [p[0] for p in pts]
            mean = [100 * p[1] for p in pts]
            std = [100 * (p[2] or 0.0) for p in pts]
            label = f"{r['method']} (n={len(r['seeds'])})"
            if xs == [0]:  # not trained (random init): a level to compare with, its spread as a band
                ax.axhline(mean[0], color="black", linestyle="--", linewidth=1, label=label)
                ax.axhspan(mean[0] - std[0], mean[0] + std[0], color="black", alpha=0.08)
                continue
            line, = ax.plot(xs, mean, marker="o", markersize=3, label=label)
            ax.fill_between(xs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                            color=line.get_color(), alpha=0.15)
        bn = "BatchNorm re-estimated" if "bn_reestimated" in series else "BatchNorm as aggregated"
        k = "kNN k=20" if "k20" in series else "kNN"
        ax.set_title(f"partition={part}, {k}, {bn} (mean ± 1 std over seeds)", fontsize=10)
        ax.set_xlabel("round")
        ax.set_ylabel("kNN accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save_figure(fig, path, dpi=120)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", nargs="+", default=MAIN_METHODS, choices=list(METHODS))
    p.add_argument("--partitions", nargs="+", default=["classes", "iid"])
    p.add_argument("--dataset", default="cifar100")
    p.add_argument("--num-clients", type=int, default=5)
    p.add_argument("--preset", default="cpu")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="every cell runs once per seed")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "compare")
    p.add_argument("--runs", type=Path, default=None, help="where the runs go (default: outputs/benchmarks/...)")
    p.add_argument("--extra", nargs="*", default=[], help="Hydra overrides for every cell")
    p.add_argument("--report-only", action="store_true", help="write the table of the finished cells, run nothing")
    args = p.parse_args(argv)
    args.runs = args.runs or default_runs(args.out)
    args.commit = commit()
    args.command = " ".join(["python benchmarks/compare.py", *(sys.argv[1:] if argv is None else argv)])
    return args


def main(argv=None) -> list[dict]:
    args = parse(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    cells, missing = [], []
    for seed in args.seeds:  # seed by seed: an interrupted table has every method at the first seeds
        for part in args.partitions:
            for m in args.methods:
                s = finished_cell(m, part, seed, args) if args.report_only else run_cell(m, part, seed, args)
                if s is None:
                    missing.append(f"{part}/{m}/seed{seed}")
                else:
                    cells.append(cell(m, part, seed, s))
    if missing:
        print(f"not finished yet: {', '.join(missing)}")
    add_gains(cells)
    groups: dict[tuple, list] = {}
    for part in args.partitions:  # rows in the order of the partitions and methods asked for
        for m in args.methods:
            found = [c for c in cells if c["partition"] == part and c["key"] == m]
            if found:
                groups[(part, m)] = found
    rows = [aggregate(g) for g in groups.values()]
    if rows:
        write_results(args, rows, markdown(rows, args), plot, "knn_rounds.png", cells=cells)
    return rows


if __name__ == "__main__":
    main()
