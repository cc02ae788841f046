"""Hostile clients against the hardened server (issue 26): one command, resumable per run.

    python benchmarks/hostile_clients.py [overrides ...] [--no-deployment] [--attacks ...] [--robust ...]

Every run is the smoke federation `strategy=fedavg dataset=cifar10 experiment=smoke num_clients=5
num_rounds=3 seed=0` (BYOL, the default method) plus what its row needs; the Hydra overrides given
here are added to every run (and name the runs' folder, so runs of other settings are kept apart).

Part A, one row per attack of `faults.hostile` (clients/faults.py): client 1 is hostile in every
round (`faults.hostile=[[1,<attack>]]`; `stall` with `faults.hang_seconds=40 round_timeout=25`). The
row says what the server did (from summary.json: updates rejected with the first reason, the client
retired, the node refused, rounds without an answer, or accepted), whether the run completed, and
whether its final model equals the reference run's, in which client 1's update is excluded in every
round (`faults.client_raise=[[1,1],[1,2],[1,3]]`): every array of the global model in
checkpoint_final.pt, bit for bit. An attack survives when its run completed and, when the server
kept client 1's update out of every round, the final model equals the reference. Attacks whose
updates are accepted (valid values: the robust-aggregation attacks) survive by completing; Part B
measures them. `stall` and `steal_identity` also run in a loopback deployment (ops/local_federation:
SuperLink + 5 SuperNodes, TLS and node authentication), against a deployed reference run (stall there
with --deployment-stall, by default faults.hang_seconds=700 round_timeout=300).

Part B: sign_flip_x10, huge_count and noise x strategy.robust in none, clip, trimmed_mean, median:
the final kNN accuracy, the clean run's (no hostile client, same rule), and the relative L2 distance
of the final model to the clean run's, ||w - w_clean|| / ||w_clean|| over the floating arrays.

Runs go under outputs/hostile_clients/<settings>/ (a completed run is reused, an interrupted one
resumed, a failed one kept as a result unless --retry-failed); table.md, table.json and
distance.png under benchmarks/results/hostile_clients/. The last line is `survived: N of M`;
exit status 1 when an attack did not survive.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.plots import pyplot, save_figure  # noqa: E402
from benchmarks.compare import run_resumable  # noqa: E402
from benchmarks.tables import commit, write_results  # noqa: E402
from clients.faults import ATTACKS  # noqa: E402
from protocol.robust import RULES  # noqa: E402
from tasks.common.checkpoint import checkpoint_models, load_checkpoint  # noqa: E402

BASE = ["strategy=fedavg", "dataset=cifar10", "experiment=smoke", "num_clients=5", "num_rounds=3", "seed=0",
        "wandb.mode=disabled", "progress=false"]
HOSTILE = 1  # the hostile client's partition
REFERENCE = ["faults.client_raise=[[1,1],[1,2],[1,3]]"]  # client 1's update excluded in every round
# stall: on one Ray actor (5 clients on 2 cores run one at a time) a sleeping client holds up every client queued
# behind it past round_timeout, so it runs on two actors of one thread, against a reference run alike
ACTORS = ["client_resources.num_cpus=1"]
EXTRA = {"stall": ["faults.hang_seconds=40", "round_timeout=25", *ACTORS]}
# steal_identity: client 1 claims partition 2 on the same first contact as partition 2's own node, so neither is
# bound (strategies/intake.contested_claims) and both partitions are kept out: its reference excludes clients 1 and 2
WITHOUT_2 = ["faults.client_raise=[[1,1],[1,2],[1,3],[2,1],[2,2],[2,3]]"]
REFERENCE_OF = {"stall": ("reference-2actors", [*REFERENCE, *ACTORS]), "steal_identity": ("reference-without-2", WITHOUT_2)}
ROBUST_ATTACKS = ("sign_flip_x10", "huge_count", "noise")  # valid values: for the combination rules (Part B)
DEPLOYED = ("stall", "steal_identity")


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="Hydra overrides added to every run")
    p.add_argument("--attacks", nargs="+", default=list(ATTACKS), choices=list(ATTACKS))
    p.add_argument("--robust", nargs="+", default=list(RULES), choices=list(RULES), help="Part B's rules")
    p.add_argument("--no-deployment", action="store_true", help="skip the loopback deployment rows")
    p.add_argument("--deployment-stall", nargs="+", default=["faults.hang_seconds=700", "round_timeout=300"],
                   help="stall's overrides in the deployment: a deployed round of 5 SuperNodes took 116-163 s on 2 "
                        "shared cores (the simulated one's 25 s would time out honest clients too)")
    p.add_argument("--deployment-timeout", type=float, default=1800, help="seconds for one deployed run")
    p.add_argument("--retry-failed", action="store_true", help="run again the runs that ended failed")
    p.add_argument("--runs", type=Path, default=ROOT / "outputs" / "hostile_clients")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "hostile_clients")
    args = p.parse_args(argv)
    tag = re.sub(r"[^A-Za-z0-9_.-]+", "-", "_".join(args.overrides)) or "base"  # no '=': a path in an override
    args.runs = args.runs / tag
    return args


# ---------------------------------------------------------------- runs

def simulate(args, name: str, overrides: list[str]) -> dict:
    """One simulated run under <runs>/sim/<name> (run_resumable: reused, resumed, or run); a run that
    failed gives its summary.json (status failed) instead of stopping the table."""
    out = args.runs / "sim" / name
    summary, log = out / "summary.json", out.parent / f"{out.name}.log"  # the log: main.py ended by itself
    if summary.is_file() and log.is_file() and not args.retry_failed:
        s = json.loads(summary.read_text())
        if s.get("status") == "failed":
            print(f"{out}: failed earlier, reusing its summary.json (--retry-failed runs it again)", flush=True)
            return s
    if args.retry_failed and summary.is_file() and json.loads(summary.read_text()).get("status") == "failed":
        shutil.rmtree(out)
    try:
        return run_resumable(out, [*BASE, *overrides, *args.overrides])
    except SystemExit as err:  # main.py exited non-zero: the run's own summary says why
        print(f"{name}: {err}", flush=True)
        if summary.is_file():
            return json.loads(summary.read_text())
        return {"status": "failed", "error": f"main.py stopped before any summary (log: {out}.log)", "rounds": []}


def deploy(args, name: str, overrides: list[str]) -> dict:
    """One loopback deployment (ops/local_federation: SuperLink + one SuperNode per client, TLS and node
    authentication) under <runs>/deployment/<name>; reused when its summary.json says completed."""
    workdir = args.runs / "deployment" / name
    summary = workdir / "run" / "summary.json"
    if summary.is_file():  # benchmark.log: the deployment ended by itself (not an interrupted benchmark)
        s = json.loads(summary.read_text())
        ended = (workdir / "benchmark.log").is_file() and not args.retry_failed
        if s.get("status") == "completed" or (s.get("status") == "failed" and ended):
            print(f"{workdir}: done earlier, reusing its summary.json", flush=True)
            return s
    if workdir.exists():
        shutil.rmtree(workdir)  # an interrupted deployment starts again (its own folder only)
    nodes = next(int(o.split("=", 1)[1]) for o in BASE if o.startswith("num_clients="))
    cmd = [sys.executable, "-m", "ops.local_federation", "--nodes", str(nodes), "--workdir", str(workdir),
           "--timeout", str(args.deployment_timeout),
           *[o for o in [*BASE, *overrides, *args.overrides] if not o.startswith("num_clients=")]]
    print("running:", " ".join(cmd), flush=True)
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=args.deployment_timeout + 300)
        log = proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as err:
        log = f"{err.stdout or ''}{err.stderr or ''}\nbenchmark: timed out"
    (workdir / "benchmark.log").write_text(log if isinstance(log, str) else str(log))
    if not summary.is_file():
        return {"status": "failed", "error": f"no summary.json; log: {workdir / 'benchmark.log'}", "rounds": []}
    s = json.loads(summary.read_text())
    s["process_seconds"] = time.perf_counter() - t0
    return s


def run_dir(args, mode: str, name: str) -> Path:
    return args.runs / "sim" / name if mode == "simulation" else args.runs / "deployment" / name / "run"


def final_model(path: Path) -> list[np.ndarray] | None:
    """The global model's arrays in checkpoint_final.pt, or None where the run wrote none."""
    file = path / "checkpoint_final.pt"
    if not file.is_file():
        return None
    return checkpoint_models(load_checkpoint(file))["global"]


def equal_models(a, b) -> bool | None:
    if a is None or b is None:
        return None
    return len(a) == len(b) and all(x.dtype == y.dtype and np.array_equal(x, y) for x, y in zip(a, b))


def distance(a, b) -> float | None:
    """||a - b|| / ||b|| over the floating arrays."""
    if a is None or b is None:
        return None
    num = sum(float(np.sum((x.astype(np.float64) - y.astype(np.float64)) ** 2)) for x, y in zip(a, b) if x.dtype.kind == "f")
    den = sum(float(np.sum(y.astype(np.float64) ** 2)) for y in b if y.dtype.kind == "f")
    return float(np.sqrt(num / den))


# ---------------------------------------------------------------- what the server did

def server_action(s: dict) -> tuple[str, bool]:
    """(what the server did with client 1, whether client 1's update was kept out of every round)."""
    rounds = s.get("rounds", [])
    accepted = [r["round"] for r in rounds if str(HOSTILE) in (r.get("clients") or {})]
    rejected = [x for r in rounds for x in r.get("rejected", []) if x.get("partition_id") == HOSTILE]
    refused = [x for r in rounds for x in r.get("rejected", []) if x.get("partition_id") is None]  # node refused
    others = [x for r in rounds for x in r.get("rejected", []) if x.get("partition_id") not in (HOSTILE, None)]
    failures = [f for r in rounds for f in r.get("failures", []) if f.get("partition_id") == HOSTILE]
    retired = [f for f in failures if str(f.get("error", "")).startswith("left the federation")]
    capped = [r["round"] for r in rounds if HOSTILE in (r.get("capped") or [])]
    parts = []
    if rejected:
        parts.append(f"rejected {len(rejected)} updates ({rejected[0]['reason']})")
    if refused:
        parts.append(f"refused the node {len(refused)} times ({refused[0]['reason']})")
    if retired:
        parts.append(f"retired the client in round {retired[0]['round']} ({retired[0]['error']}), "
                     f"{len(failures)} rounds without it")
    elif failures:
        parts.append(f"{len(failures)} rounds without it ({failures[0]['error']})")
    if others:
        parts.append(f"ALSO rejected other clients: {len(others)} ({others[0]['partition_id']}: {others[0]['reason']})")
    if accepted:
        parts.append(f"accepted (valid values) in rounds {accepted}" + (f", weight capped in {capped}" if capped else ""))
    if not parts:
        parts.append("nothing recorded" + (f" (stopped: {s.get('error')})" if s.get("error") else ""))
    kept_out = bool(rounds) and not accepted
    return "; ".join(parts), kept_out


def attack_row(args, attack: str, mode: str, s: dict, reference_model, reference_name: str) -> dict:
    """An attack meant to be kept out (all but ROBUST_ATTACKS) survives when the run completed with the
    reference's final model; a robust-aggregation attack, when the run completed."""
    action, kept_out = server_action(s)
    completed = s.get("status") == "completed"
    model = final_model(run_dir(args, mode, run_name(attack)))
    same = equal_models(model, reference_model) if (kept_out or attack not in ROBUST_ATTACKS) else None
    survived = completed and (attack in ROBUST_ATTACKS or same is True)
    return {"attack": attack, "mode": mode, "server": action, "status": s.get("status"),
            "error": s.get("error"), "excluded": kept_out, "equals_reference": same, "reference": reference_name,
            "knn": (s.get("final") or {}).get("knn_accuracy"), "survived": survived}


def run_name(attack: str | None, robust: str = "none") -> str:
    return f"{attack or 'clean'}-{robust}"


# ---------------------------------------------------------------- tables

def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def markdown(args, rows_a: list[dict], rows_b: list[dict], survived: int, total: int) -> str:
    lines = [f"Hostile clients (issue 26): FedAvg of BYOL, CIFAR-10, smoke preset, 5 clients, 3 rounds, seed 0, client 1 "
             f"hostile in every round{' + ' + ' '.join(args.overrides) if args.overrides else ''} (commit {commit()})", "",
             "Part A: what the server did. The reference run excludes client 1 in every round "
             "(faults.client_raise); equal = every array of the final global model (checkpoint_final.pt) "
             "identical to the reference run's (reference-2actors: the same with client_resources.num_cpus=1, as "
             "the stall row runs; reference-without-2: clients 1 and 2 excluded, since a stolen claim refuses both "
             "claimants; deployed rows: the reference deployed, or the simulated one where the deployed reference "
             "equals the simulated reference bit for bit). An attack survives when its run completed "
             "and, except for the robust-aggregation attacks (sign_flip_x10, huge_count, noise: valid values, "
             "Part B), its final model equals the reference.", "",
             "| attack | mode | what the server did | run | final model equals reference | kNN | survived |",
             "|---|---|---|---|---|---|---|"]
    for r in rows_a:
        run = r["status"] + (f" ({r['error']})" if r["status"] != "completed" and r.get("error") else "")
        same = {True: "yes", False: "NO", None: "-"}[r["equals_reference"]]
        same += f" ({r['reference']})" if r["reference"] != "reference" else ""
        lines.append(f"| {r['attack']} | {r['mode']} | {r['server']} | {run} | {same} | {_pct(r['knn'])} | "
                     f"{'yes' if r['survived'] else 'NO'} |")
    lines += ["", "Part B: the attacks whose updates are valid values, against each combination rule "
              "(strategy.robust). distance to clean = ||w - w_clean|| / ||w_clean|| of the final global model "
              "(floating arrays), w_clean the run with no hostile client and the same rule.", "",
              "| attack | robust | kNN | clean kNN | distance to clean | what the server did |", "|---|---|---|---|---|---|"]
    for r in rows_b:
        d = "-" if r["distance"] is None else f"{r['distance']:.4f}"
        lines.append(f"| {r['attack']} | {r['robust']} | {_pct(r['knn'])} | {_pct(r['clean_knn'])} | {d} | {r['server']} |")
    if getattr(args, "deployed_equals_simulated", None) is not None:
        lines += ["", f"The deployed reference's final model equals the simulated reference's bit for bit: "
                      f"{'yes' if args.deployed_equals_simulated else 'NO'}."]
    lines += ["", f"survived: {survived} of {total}", ""]
    return "\n".join(lines)


def plot(rows_b: list[dict], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    rules = list(dict.fromkeys(r["robust"] for r in rows_b))
    attacks = list(dict.fromkeys(r["attack"] for r in rows_b))
    width = 0.8 / max(1, len(rules))
    for i, rule in enumerate(rules):
        ys = [next((r["distance"] or 0.0 for r in rows_b if r["attack"] == a and r["robust"] == rule), 0.0) for a in attacks]
        ax.bar(np.arange(len(attacks)) + i * width, [max(y, 1e-9) for y in ys], width, label=rule)
    ax.set_xticks(np.arange(len(attacks)) + width * (len(rules) - 1) / 2, attacks)
    ax.set_yscale("log")
    ax.set_ylabel("distance to clean (relative L2)")
    ax.set_title("final model vs the clean run, one hostile client of 5")
    ax.legend(title="strategy.robust", fontsize=8)
    save_figure(fig, path)


# ---------------------------------------------------------------- main

def main(argv=None) -> int:
    args = parse(argv)
    t0 = time.perf_counter()
    reference = simulate(args, "reference", REFERENCE)
    references = {}  # reference run name -> its final model
    rows_a = []
    for attack in args.attacks:
        ref_name, ref_overrides = REFERENCE_OF.get(attack, ("reference", REFERENCE))
        if ref_name not in references:
            ref = reference if ref_name == "reference" else simulate(args, ref_name, ref_overrides)
            references[ref_name] = final_model(run_dir(args, "simulation", ref_name)) if ref.get("status") == "completed" else None
        s = simulate(args, run_name(attack), [f"faults.hostile=[[{HOSTILE},{attack}]]", *EXTRA.get(attack, [])])
        rows_a.append(attack_row(args, attack, "simulation", s, references[ref_name], ref_name))
        print(f"  {attack}: {rows_a[-1]['server']} | {rows_a[-1]['status']} | equals reference: "
              f"{rows_a[-1]['equals_reference']}", flush=True)
    rows_b = []
    for rule in args.robust:
        extra = [] if rule == "none" else [f"strategy.robust={rule}"]
        clean = simulate(args, run_name(None, rule), extra)
        clean_model = final_model(run_dir(args, "simulation", run_name(None, rule)))
        for attack in [a for a in ROBUST_ATTACKS if a in args.attacks]:
            s = simulate(args, run_name(attack, rule), [f"faults.hostile=[[{HOSTILE},{attack}]]", *extra])
            model = final_model(run_dir(args, "simulation", run_name(attack, rule)))
            rows_b.append({"attack": attack, "robust": rule, "status": s.get("status"),
                           "knn": (s.get("final") or {}).get("knn_accuracy"),
                           "clean_knn": (clean.get("final") or {}).get("knn_accuracy"),
                           "distance": distance(model, clean_model), "server": server_action(s)[0]})
    if not args.no_deployment and any(a in args.attacks for a in DEPLOYED):
        dep_ref = deploy(args, "reference", REFERENCE)
        dep_ref_model = final_model(run_dir(args, "deployment", "reference"))
        args.deployed_equals_simulated = equal_models(dep_ref_model, final_model(run_dir(args, "simulation", "reference")))
        print(f"  deployed reference: {dep_ref.get('status')}; equals the simulated reference: "
              f"{args.deployed_equals_simulated}", flush=True)
        for attack in [a for a in DEPLOYED if a in args.attacks]:
            extra = args.deployment_stall if attack == "stall" else []
            s = deploy(args, run_name(attack), [f"faults.hostile=[[{HOSTILE},{attack}]]", *extra])
            if attack == "steal_identity":  # against the simulated run without 1 and 2 (deployed = simulated, above)
                ref_name = REFERENCE_OF[attack][0]
                row = attack_row(args, attack, "deployment", s, references.get(ref_name), f"{ref_name}, simulated")
            else:
                row = attack_row(args, attack, "deployment", s, dep_ref_model, "deployed reference")
            if dep_ref.get("status") != "completed":
                row["survived"], row["reference"] = False, f"deployed reference {dep_ref.get('status')}"
            rows_a.append(row)
            print(f"  {attack} (deployment): {row['server']} | {row['status']} | equals reference: "
                  f"{row['equals_reference']}", flush=True)
    rows_b.sort(key=lambda r: (ROBUST_ATTACKS.index(r["attack"]), RULES.index(r["robust"])))
    survived = sum(r["survived"] for r in rows_a)
    if reference.get("status") != "completed":
        print(f"the reference run did not complete: {reference.get('error')}", flush=True)
    args.seconds = round(time.perf_counter() - t0)
    table = markdown(args, rows_a, rows_b, survived, len(rows_a))
    write_results(args, [*rows_a, *({"part": "B", **r} for r in rows_b)], table,
                  lambda rows, path: plot(rows_b, path), "distance.png")
    print(f"survived: {survived} of {len(rows_a)}")
    return 0 if survived == len(rows_a) and reference.get("status") == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())
