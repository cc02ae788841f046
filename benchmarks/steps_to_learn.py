"""How many SGD steps a method needs to beat the untrained network, measured centrally (issues 14, 25).

    python benchmarks/steps_to_learn.py --preset cpu_learn --seeds 0 1 --steps 1500 --every 100 \
        --variants reference jitter predictor both [--jobs 2] [-- key=value ...]

One process per cell (variant x seed), no federation: the method and model of the preset (plus
the variant's and any Hydra overrides) train on the whole training set (or `--images` of it,
seeded) with the preset's batch size, learning rate (cosine over the whole run, warmed up over as
many steps as the preset's warm-up rounds of one client) and augmentations. Every `--every` steps
the backbone is evaluated as the runs are (weighted kNN with every k of eval.knn_k on the
evaluation bank and test set), with its BatchNorm statistics as trained and re-estimated on the
bank. Step 0 is the untrained network.

The variants are the shared recipe options (the same choice then applies to every method):
reference (the reference code's colour jitter 0.8/0.8/0.8/0.2, predictor at the base learning
rate), jitter (the BYOL paper's 0.4/0.4/0.2/0.1), predictor (ssl.predictor_lr_mult=10), both.
Each finished cell is written to <out>/cells/<variant>-seed<k>.json and not rerun (the command
resumes); table.md, table.json and knn_steps.png (mean over seeds per variant) come last. A cell's
log goes to outputs/benchmarks/<out's path under benchmarks/results>/<variant>-seed<k>.log.
This is the upper bound of what one client can reach at that many steps; the federated runs
(benchmarks/learning.py) are the result.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.config import compose, to_plain  # noqa: E402
from app.plots import pyplot, save_figure  # noqa: E402
from benchmarks.compare import default_runs  # noqa: E402
from benchmarks.tables import commit, fmt, mean_std, write_results  # noqa: E402
from tasks.common.evaluate import features_on, knn_scores, recalibrate_batchnorm  # noqa: E402
from tasks.common.federated_data import dataset_of, evaluation_sets  # noqa: E402
from tasks.common.sections import evaluation_of, images_of  # noqa: E402
from tasks.common.precision import compute_for  # noqa: E402
from tasks.common.training import resolve_device  # noqa: E402
from tasks.ssl.methods import build_method  # noqa: E402
from tasks.ssl.train import recipe_options, train_one_round  # noqa: E402

VARIANTS = {
    "reference": [],
    "jitter": ["ssl.jitter=[0.4,0.4,0.2,0.1]"],
    "predictor": ["ssl.predictor_lr_mult=10"],
    "both": ["ssl.jitter=[0.4,0.4,0.2,0.1]", "ssl.predictor_lr_mult=10"],
}


def knn_both(backbone, cfg: dict, sets: dict, device, compute) -> dict:
    """kNN accuracies (every k) with the BatchNorm statistics as they are, then re-estimated on the
    bank: {"knn": .., "knn_k20": .., "knn_bn_reestimated": .., "knn_k20_bn_reestimated": ..}."""
    ev = evaluation_of(cfg)
    bs = ev.batch_size
    net = copy.deepcopy(backbone)
    out = {}
    for suffix in ("", "_bn_reestimated"):
        if suffix:
            recalibrate_batchnorm(net, sets["x_bank"], device, bs)
        bank, test = features_on(net, sets, ("x_bank", "x_test"), device, bs, compute)
        for key, value in knn_scores(bank, test, sets["y_test"], sets, ev.knn_k, ev.knn_temperature).items():
            out[key.replace("_accuracy", "") + suffix] = value
    return out


def measure(cfg: dict, steps: int, every: int, images: int | None = None) -> list[dict]:
    device = resolve_device(str(cfg["device"]))
    compute = compute_for(cfg, device)
    torch.manual_seed(int(cfg["seed"]))
    method = build_method(cfg["ssl"], cfg["model"])
    method.init_local_parts({"online"})
    backbone = method.online.backbone if hasattr(method, "online") else method.encoder.backbone
    ds, sets = dataset_of(images_of(cfg)), evaluation_sets(images_of(cfg), evaluation_of(cfg))
    x = np.asarray(ds.x_train)
    if images:  # a seeded subset of the training set
        x = x[np.random.default_rng(int(cfg["seed"])).permutation(len(x))[:images]]
    ssl, bs = cfg["ssl"], int(cfg["batch_size"])
    round_images = int(cfg.get("examples_per_client") or len(x))  # one client round of the preset
    warmup_steps = int(ssl.get("warmup_rounds", 0)) * (round_images // bs) * int(cfg["local_epochs"])
    g = torch.Generator().manual_seed(int(cfg["seed"]))
    rows, t0, done = [], time.perf_counter(), 0
    rows.append({"step": 0, "images_seen": 0, **knn_both(backbone, cfg, sets, device, compute), "loss": None,
                 "seconds": 0.0})
    print(f"step 0: {rows[-1]}", flush=True)
    while done < steps:
        chunk = min(every, steps - done)
        idx = torch.randint(0, len(x), (chunk * bs,), generator=g).numpy()  # chunk steps of fresh batches
        lr = 0.5 * float(ssl["lr"]) * (1 + math.cos(math.pi * done / steps)) \
            if ssl.get("lr_schedule", "cosine") == "cosine" else float(ssl["lr"])
        stats = train_one_round(method, x[idx], epochs=1, batch_size=bs, lr=lr, momentum=float(ssl["momentum"]),
                                weight_decay=float(ssl["weight_decay"]), compute=compute, generator=g,
                                progress_start=done / steps, progress_span=chunk / steps, who="centralised",
                                warmup_until=warmup_steps / steps, **recipe_options(ssl))
        done += chunk
        rows.append({"step": done, "images_seen": done * bs, **knn_both(backbone, cfg, sets, device, compute),
                     "loss": stats["loss"], "seconds": time.perf_counter() - t0})
        print(f"step {done}: kNN {100 * rows[-1]['knn']:.2f}% (BN re-estimated {100 * rows[-1]['knn_bn_reestimated']:.2f}%)"
              f", loss {stats['loss']:.3f}, {time.perf_counter() - t0:.0f}s", flush=True)
    return rows


def cell_path(out: Path, variant: str, seed: int) -> Path:
    return out / "cells" / f"{variant}-seed{seed}.json"


def run_cell(args, variant: str, seed: int) -> None:
    """Measure one (variant, seed) curve in this process and write its cell file."""
    overrides = [f"experiment={args.preset}", f"dataset={args.dataset}", f"seed={seed}", *VARIANTS[variant],
                 *args.overrides]
    cfg = to_plain(compose(overrides))
    rows = measure(cfg, args.steps, args.every, args.images)
    path = cell_path(args.out, variant, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"variant": variant, "seed": seed, "overrides": overrides, "commit": commit(),
           "threads": torch.get_num_threads(), "rows": rows}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(path)


def run_cells(args, todo: list[tuple[str, int]]) -> None:
    """The unfinished cells, `--jobs` at a time, each a subprocess with its share of the cores."""
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    running: list[tuple[subprocess.Popen, str]] = []
    queue = list(todo)
    while queue or running:
        while queue and len(running) < args.jobs:
            variant, seed = queue.pop(0)
            log = default_runs(args.out) / f"{variant}-seed{seed}.log"  # under outputs/, not with the table
            log.parent.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, __file__, "--cell", variant, str(seed), *forwarded(args)]
            print("running:", " ".join(cmd[1:]), f"({threads} threads; log {log})", flush=True)
            running.append((subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT),
                            f"{variant}-seed{seed}"))
        time.sleep(2)
        for proc, name in list(running):
            if proc.poll() is not None:
                running.remove((proc, name))
                print(f"{name}: {'done' if proc.returncode == 0 else f'failed (exit {proc.returncode})'}", flush=True)


def forwarded(args) -> list[str]:
    return ["--dataset", args.dataset, "--preset", args.preset, "--steps", str(args.steps), "--every",
            str(args.every), "--out", str(args.out), *(["--images", str(args.images)] if args.images else []),
            "--", *args.overrides]


# the curve's columns: (key, label)
CURVES = (("knn_bn_reestimated", "kNN k=200, BN re-est."), ("knn_k20_bn_reestimated", "kNN k=20, BN re-est."),
          ("knn", "kNN k=200, BN as trained"), ("knn_k20", "kNN k=20, BN as trained"))


def summarise(cells: list[dict]) -> list[dict]:
    """One row per variant: at every step, the mean and std over seeds of each curve and of its gain
    over the same seed's step 0."""
    rows = []
    for variant in VARIANTS:
        found = [c for c in cells if c["variant"] == variant]
        if not found:
            continue
        steps = sorted(set.intersection(*({r["step"] for r in c["rows"]} for c in found)))
        points = []
        for step in steps:
            at = [next(r for r in c["rows"] if r["step"] == step) for c in found]
            start = [c["rows"][0] for c in found]
            point = {"step": step}
            for key, _ in CURVES:
                if all(key in a for a in at):
                    point[key] = mean_std([a[key] for a in at])
                    point[f"{key}_gain"] = mean_std([a[key] - s[key] for a, s in zip(at, start)])
            points.append(point)
        rows.append({"variant": variant, "overrides": VARIANTS[variant], "seeds": [c["seed"] for c in found],
                     "points": points})
    return rows


def markdown(rows: list[dict], args) -> str:
    lines = [f"{args.dataset}, centralised, experiment={args.preset} {' '.join(args.overrides)}".rstrip(), "",
             f"commit {args.commit}; command: `{args.command}`", "",
             "Gain of kNN accuracy over the same seed's untrained network (step 0), in points, mean ± std over "
             "the seeds; BN re-est.: BatchNorm statistics re-estimated on the bank's images.", ""]
    for key, label in CURVES:
        steps = sorted({p["step"] for r in rows for p in r["points"]})
        lines += [f"**{label}** (step 0 level in the first column)", "",
                  "| variant | seeds | step 0 | " + " | ".join(str(s) for s in steps[1:]) + " |",
                  "|---|---|---|" + "---|" * (len(steps) - 1)]
        for r in rows:
            by = {p["step"]: p for p in r["points"]}
            cells = [fmt(*by[s][f"{key}_gain"]) if s in by and f"{key}_gain" in by[s] else "-" for s in steps[1:]]
            start = fmt(*by[0][key]) if 0 in by and key in by[0] else "-"
            lines.append(f"| {r['variant']} | {' '.join(map(str, r['seeds']))} | {start} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    fig, axes = pyplot().subplots(2, 2, figsize=(11, 7.5), squeeze=False)
    for ax, (key, label) in zip(axes.flat, CURVES):
        for r in rows:
            pts = [p for p in r["points"] if f"{key}_gain" in p]
            xs = [p["step"] for p in pts]
            mean = [100 * p[f"{key}_gain"][0] for p in pts]
            std = [100 * (p[f"{key}_gain"][1] or 0.0) for p in pts]
            line, = ax.plot(xs, mean, "-o", markersize=3, label=f"{r['variant']} (n={len(r['seeds'])})")
            ax.fill_between(xs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                            color=line.get_color(), alpha=0.12)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("SGD steps (centralised)")
        ax.set_ylabel("gain over step 0 (points)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save_figure(fig, path)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--preset", default="cpu_learn")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--every", type=int, default=100)
    p.add_argument("--images", type=int, default=None, help="train on this many images (default: all)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--jobs", type=int, default=1, help="cells measured at once, each with cores / jobs threads")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--cell", nargs=2, metavar=("VARIANT", "SEED"), help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help="Hydra overrides on top of the preset (after --)")
    args = p.parse_args(argv)
    args.out = args.out or ROOT / "benchmarks" / "results" / "steps_to_learn" / f"{args.dataset}-{args.preset}"
    args.commit = commit()
    args.command = " ".join(["python benchmarks/steps_to_learn.py", *(sys.argv[1:] if argv is None else argv)])
    return args


def main(argv=None) -> list[dict]:
    args = parse(argv)
    if args.cell:
        run_cell(args, args.cell[0], int(args.cell[1]))
        return []
    wanted = [(v, s) for s in args.seeds for v in args.variants]
    if not args.report_only:
        run_cells(args, [(v, s) for v, s in wanted if not cell_path(args.out, v, s).is_file()])
    cells = [json.loads(cell_path(args.out, v, s).read_text()) for v, s in wanted if cell_path(args.out, v, s).is_file()]
    missing = [f"{v}-seed{s}" for v, s in wanted if not cell_path(args.out, v, s).is_file()]
    if missing:
        print(f"not finished yet: {', '.join(missing)}")
    rows = summarise(cells)
    if rows:
        write_results(args, rows, markdown(rows, args), plot, "knn_steps.png")
    return rows


if __name__ == "__main__":
    main()
