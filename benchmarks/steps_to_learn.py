"""How many SGD steps a method needs to beat the untrained network (issue 14), measured centrally.

    python benchmarks/steps_to_learn.py --dataset cifar10 --steps 1560 --every 156 [key=value ...]

One process, no federation: the method and model of `experiment=cpu` (plus any Hydra overrides)
train on the whole training set (or `--images` of it, seeded) with the preset's batch size,
learning rate (cosine over the whole run, warmed up over as many steps as one of the preset's
client rounds) and augmentations;
every `--every` steps the backbone is evaluated as the runs are (weighted kNN on the evaluation
bank and test set), with its BatchNorm statistics as trained and re-estimated on the bank. Step 0
is the untrained network. Writes table.md, table.json and knn_steps.png under
benchmarks/results/steps_to_learn/<dataset>-<name>/ and prints the table. This is the upper
bound of what the federation's clients can reach at that many steps each; the federated runs
(benchmarks/learning.py) are the result.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.config import compose, to_plain  # noqa: E402
from app.plots import pyplot, save_figure  # noqa: E402
from tables import commit, write_results  # noqa: E402
from tasks.common.evaluate import features_on, knn_score, recalibrate_batchnorm  # noqa: E402
from tasks.common.federated_data import dataset_from_cfg, evaluation_sets  # noqa: E402
from tasks.common.precision import compute_for  # noqa: E402
from tasks.common.training import resolve_device  # noqa: E402
from tasks.ssl.methods import build_method  # noqa: E402
from tasks.ssl.train import train_one_round  # noqa: E402


def knn_both(backbone, cfg: dict, sets: dict, device, compute) -> tuple[float, float]:
    """kNN accuracy with the BatchNorm statistics as they are, then re-estimated on the bank."""
    ev, bs = cfg["eval"], int(cfg["eval"]["batch_size"])
    net = copy.deepcopy(backbone)
    out = []
    for reestimate in (False, True):
        if reestimate:
            recalibrate_batchnorm(net, sets["x_bank"], device, bs)
        bank, test = features_on(net, sets, ("x_bank", "x_test"), device, bs, compute)
        out.append(knn_score(bank, test, sets["y_test"], sets, ev))
    return out[0], out[1]


def measure(cfg: dict, steps: int, every: int, images: int | None = None) -> list[dict]:
    device = resolve_device(str(cfg["device"]))
    compute = compute_for(cfg, device)
    torch.manual_seed(int(cfg["seed"]))
    method = build_method(cfg["ssl"], cfg["model"])
    method.init_local_parts({"online"})
    backbone = method.online.backbone if hasattr(method, "online") else method.encoder.backbone
    ds, sets = dataset_from_cfg(cfg), evaluation_sets(cfg)
    x = np.asarray(ds.x_train)
    if images:  # a seeded subset of the training set
        x = x[np.random.default_rng(int(cfg["seed"])).permutation(len(x))[:images]]
    ssl, bs = cfg["ssl"], int(cfg["batch_size"])
    round_images = int(cfg.get("examples_per_client") or len(x))  # one client round of the preset
    warmup_steps = int(ssl.get("warmup_rounds", 0)) * (round_images // bs) * int(cfg["local_epochs"])
    g = torch.Generator().manual_seed(int(cfg["seed"]))
    rows, t0, done = [], time.perf_counter(), 0
    knn, knn_re = knn_both(backbone, cfg, sets, device, compute)
    rows.append({"step": 0, "images_seen": 0, "knn": knn, "knn_bn_reestimated": knn_re, "loss": None, "seconds": 0.0})
    print(f"step 0: kNN {100 * knn:.2f}% (BN re-estimated {100 * knn_re:.2f}%)", flush=True)
    while done < steps:
        chunk = min(every, steps - done)
        idx = torch.randint(0, len(x), (chunk * bs,), generator=g).numpy()  # chunk steps of fresh batches
        lr = 0.5 * float(ssl["lr"]) * (1 + math.cos(math.pi * done / steps)) \
            if ssl.get("lr_schedule", "cosine") == "cosine" else float(ssl["lr"])
        stats = train_one_round(method, x[idx], epochs=1, batch_size=bs, lr=lr, momentum=float(ssl["momentum"]),
                                weight_decay=float(ssl["weight_decay"]), compute=compute, generator=g,
                                progress_start=done / steps, progress_span=chunk / steps, who="centralised",
                                warmup_until=warmup_steps / steps)
        done += chunk
        knn, knn_re = knn_both(backbone, cfg, sets, device, compute)
        rows.append({"step": done, "images_seen": done * bs, "knn": knn, "knn_bn_reestimated": knn_re,
                     "loss": stats["loss"], "seconds": time.perf_counter() - t0})
        print(f"step {done}: kNN {100 * knn:.2f}% (BN re-estimated {100 * knn_re:.2f}%), loss {stats['loss']:.3f}, "
              f"{time.perf_counter() - t0:.0f}s", flush=True)
    return rows


def markdown(rows: list[dict], head: str) -> str:
    lines = [head, "", "| step | images seen | kNN | kNN, BN re-est. | loss | seconds |", "|---|---|---|---|---|---|"]
    for r in rows:
        loss = "-" if r["loss"] is None else f"{r['loss']:.3f}"
        lines.append(f"| {r['step']} | {r['images_seen']} | {100 * r['knn']:.2f} | {100 * r['knn_bn_reestimated']:.2f} "
                     f"| {loss} | {r['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path, title: str) -> None:
    fig, ax = pyplot().subplots(figsize=(6.5, 4.2))
    steps = [r["step"] for r in rows]
    for key, label in (("knn", "kNN"), ("knn_bn_reestimated", "kNN, BN re-estimated")):
        line, = ax.plot(steps, [100 * r[key] for r in rows], "-o", markersize=3, label=label)
        ax.axhline(100 * rows[0][key], color=line.get_color(), linestyle=":", linewidth=1)
    ax.set_xlabel("SGD steps (centralised)")
    ax.set_ylabel("kNN accuracy (%); dotted: untrained")
    ax.set_title(title, fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, path)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--steps", type=int, default=1560)
    p.add_argument("--every", type=int, default=156)
    p.add_argument("--images", type=int, default=None, help="train on this many images (default: all)")
    p.add_argument("--name", default="byol", help="the results folder's suffix")
    p.add_argument("overrides", nargs="*", help="Hydra overrides on top of experiment=cpu")
    args = p.parse_args(argv)
    cfg = to_plain(compose(["experiment=cpu", f"dataset={args.dataset}", *args.overrides]))
    rows = measure(cfg, args.steps, args.every, args.images)
    args.commit = commit()
    args.command = " ".join(["python benchmarks/steps_to_learn.py", *(sys.argv[1:] if argv is None else argv)])
    args.out = ROOT / "benchmarks" / "results" / "steps_to_learn" / f"{args.dataset}-{args.name}"
    head = (f"{args.dataset}, centralised, experiment=cpu {' '.join(args.overrides)} (width {cfg['model']['width']}, "
            f"batch {cfg['batch_size']}, ssl={cfg['ssl']['name']}); commit {args.commit}; "
            f"command: `{args.command}`").strip()
    write_results(args, rows, markdown(rows, head), lambda r, path: plot(r, path, head[:140]), "knn_steps.png")
    return rows


if __name__ == "__main__":
    main()
