"""FedAvg's detector with BatchNorm statistics re-estimated on each site (issue 28): how much the averaged statistics cost.

    python benchmarks/detection_bn.py --seeds 0 1

For each seed, the FedAvg (FedVision) run of benchmarks/detection_strategies.py (same overrides,
same folder: outputs/benchmarks/detection_strategies/fedavg/seed<N>; reused when completed, run
when missing). Its final checkpoint (checkpoint_final.pt: round 6 of experiment=cpu, not round 3
as the in-process check docs/detection.md first quoted) is loaded as `mode=evaluate` loads it
(app/offline.evaluation_setup: the run's own config), and on every site the global detector is
scored on the site's own test images (tasks/detection/evaluator.site_scores: COCO mAP and mAP@0.5)
(1) as aggregated, with the BatchNorm running statistics the server averaged, and (2) after
re-estimating those statistics on the site's own training images (the images it trained on, clean:
no flip; BatchNorm layers alone in train mode, cumulative average, no gradient, no weight changed),
each site from the checkpoint's statistics. The pooled server score the run reports is shown for
reference. The sites are named by their synthetic background (tasks/detection/synthetic.py:
site s gets BACKGROUNDS[s % 4], and objects from large at site 0 to small at the last).
Writes <out>/table.md, table.json and bn_sites.png; the runs stay under --runs (not committed).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.offline import evaluation_setup  # noqa: E402
from app.plots import pyplot, save_figure  # noqa: E402
from benchmarks.compare import default_runs  # noqa: E402
from benchmarks.detection_strategies import STRATEGIES, run  # noqa: E402
from benchmarks.detection_transfer import site_mean  # noqa: E402
from benchmarks.tables import fmt, mean_std, write_cells  # noqa: E402
from tasks.common.checkpoint import load_checkpoint  # noqa: E402
from tasks.common.training import resolve_device  # noqa: E402
from tasks.detection.data import client_train  # noqa: E402
from tasks.detection.evaluator import DetectionEvaluator, site_scores  # noqa: E402
from tasks.detection.settings import detection_settings  # noqa: E402
from tasks.detection.synthetic import site_profile  # noqa: E402
from tasks.detection.train import batch  # noqa: E402

STRATEGY = "fedavg"  # detection_strategies.py's FedAvg (FedVision) row: the whole detector averaged, BatchNorm too
VARIANTS = {"aggregated": "aggregated BN", "reestimated": "re-estimated BN"}
MEAN = "mean"  # the sites' mean, weighted by test images (detection_transfer.site_mean, as detection_strategies)


def batchnorms(net: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def reestimate_batchnorm(net: nn.Module, data, device: torch.device, batch_size: int) -> nn.Module:
    """A copy of the detector `net` with its BatchNorm running statistics re-estimated on `data`'s
    images (cumulative average over batches, momentum=None); `net` is left as it was.

    Not tasks/common/evaluate.recalibrate_batchnorm: that one puts the whole network in train mode
    and feeds it one NCHW tensor of uint8 NHWC arrays, and FCOS in train mode wants targets and
    returns losses; its inputs are a list of CHW images that its own transform resizes, normalises
    and pads. Here the detector stays in eval mode (its transform at the fixed evaluation size),
    its BatchNorm layers alone normalise with batch statistics, and the images go through the
    transform and the backbone, as FCOS.forward sends them (the head has GroupNorm only)."""
    net = copy.deepcopy(net).to(device).eval()
    for m in batchnorms(net):
        m.reset_running_stats()
        m.momentum = None
        m.train()
    for i in range(0, len(data), batch_size):
        images, _ = batch(data, range(i, min(i + batch_size, len(data))), device)  # no flips: clean
        net.backbone(net.transform(images)[0].tensors)
    return net.eval()


def site_name(cfg: dict, site: int) -> str:
    """"field, objects 25-40 px" for a synthetic site (its background kind and object sides)."""
    d = cfg["dataset"]
    if d["name"] != "synthetic_detection":
        return f"site {site}"
    p = site_profile(site, detection_settings(cfg).sites.count, int(d["num_classes"]), int(d["classes_per_site"]), int(d["min_object"]),
                     int(d["max_object"]), int(cfg["seed"]))
    return f"{p.background}, objects {p.size_range[0]}-{p.size_range[1]} px"


def site_bn_scores(net: nn.Module, cfg: dict, evaluator: DetectionEvaluator, site: int, device: torch.device) -> dict:
    """One site: the global detector `net` scored on the site's test images with the aggregated
    BatchNorm statistics and with them re-estimated on the site's training images (`net` untouched)."""
    bs = evaluator.settings.eval_batch_size
    test, train = evaluator.test_set(site), client_train(evaluator.settings.sites, site)
    aggregated, _ = site_scores(net, test, device, bs)
    reestimated, _ = site_scores(reestimate_batchnorm(net, train, device, bs), test, device, bs)
    return {"site": site, "name": site_name(cfg, site), "train_images": len(train),
            "aggregated": aggregated, "reestimated": reestimated}


def checkpoint_bn_scores(checkpoint: Path, overrides: list[str] = ()) -> dict:
    """Every site of a detection checkpoint (global model), as `site_bn_scores`; `overrides` are
    this machine's (data_dir=, cache_dir=, device=), as mode=evaluate takes them."""
    setup = evaluation_setup(["mode=evaluate", f"checkpoint={checkpoint}", *overrides])
    cfg, evaluator = setup.cfg, DetectionEvaluator(setup.settings, setup.layout)
    net = evaluator.load(setup.models["global"])
    device = resolve_device(str(cfg["device"]))
    sites = [site_bn_scores(net, cfg, evaluator, site, device) for site in range(evaluator.settings.sites.count)]
    means = {v: {k: site_mean({"per_client": {str(s["site"]): s[v] for s in sites}}, k) for k in ("map", "map_50")}
             for v in VARIANTS}
    return {"round": int(load_checkpoint(checkpoint)["round"]), "sites": sites, MEAN: means}


def cell(seed: int, args) -> dict:
    """One seed: detection_strategies.py's FedAvg run (made when missing), its final checkpoint per site."""
    reported = run(STRATEGY, seed, args)
    folder = args.runs / STRATEGY / f"seed{seed}"
    scores = checkpoint_bn_scores(folder / "checkpoint_final.pt")
    summary = json.loads((folder / "summary.json").read_text())
    for s in scores["sites"]:  # the run's own score of the same model and images: equal, or something differs
        s["run_map_50"] = summary["final"]["per_client"][str(s["site"])]["map_50"]
    return {"seed": seed, "run": str(folder), "pooled": {"map": reported["map"], "map_50": reported["map_50"]}, **scores}


def rows(cells: list[dict]) -> list[tuple[str, dict]]:
    """(row label, {variant: [{map, map_50} per seed]}): each site, the sites' mean."""
    out = []
    for i, s in enumerate(cells[0]["sites"]):
        out.append((f"{s['site']} ({s['name']})", {v: [c["sites"][i][v] for c in cells] for v in VARIANTS}))
    out.append(("mean of sites", {v: [c[MEAN][v] for c in cells] for v in VARIANTS}))
    return out


def arrow(values: list[dict], key: str) -> str:
    a, r = (fmt(*mean_std([x[key] for x in values[v]])) for v in VARIANTS)
    return f"{a} → {r}"


def table(cells: list[dict]) -> str:
    seeds = ", ".join(str(c["seed"]) for c in cells)
    lines = ["| site | mAP@0.5: aggregated BN → re-estimated BN | mAP: aggregated BN → re-estimated BN | seeds |",
             "|---|---|---|---|"]
    for label, values in rows(cells):
        lines.append(f"| {label} | {arrow(values, 'map_50')} | {arrow(values, 'map')} | {seeds} |")
    pooled = [c["pooled"] for c in cells]
    lines.append(f"| pooled, as the run reports it (server, aggregated BN) | {fmt(*mean_std([p['map_50'] for p in pooled]))} "
                 f"| {fmt(*mean_std([p['map'] for p in pooled]))} | {seeds} |")
    lines += ["", "Per seed (mAP@0.5, aggregated BN → re-estimated BN):", "",
              "| seed | " + " | ".join(f"site {s['site']} ({s['name'].split(',')[0]})" for s in cells[0]["sites"])
              + " | mean of sites |", "|" + "---|" * (len(cells[0]["sites"]) + 2)]
    for c in cells:
        parts = [f"{fmt(s['aggregated']['map_50'], None)} → {fmt(s['reestimated']['map_50'], None)}" for s in c["sites"]]
        parts.append(f"{fmt(c[MEAN]['aggregated']['map_50'], None)} → {fmt(c[MEAN]['reestimated']['map_50'], None)}")
        lines.append(f"| {c['seed']} | " + " | ".join(parts) + " |")
    return "\n".join(lines) + "\n"


def plot(cells: list[dict], path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    labelled = rows(cells)
    width = 0.38
    for j, (variant, name) in enumerate(VARIANTS.items()):
        stats = [mean_std([x["map_50"] for x in values[variant]]) for _, values in labelled]
        ax.bar([i + (j - 0.5) * width for i in range(len(labelled))], [100 * m for m, _ in stats], width,
               yerr=[100 * (s or 0.0) for _, s in stats], capsize=3, label=name)
    ticks = [f"site {s['site']}\n" + s["name"].replace(", objects ", "\n") for s in cells[0]["sites"]] + ["mean of\nsites"]
    ax.set_xticks(range(len(labelled)), ticks, fontsize=7)
    ax.set_ylabel("mAP@0.5 (%) on the site's test images")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    ax.set_title(f"FedAvg detector, final checkpoint: BatchNorm statistics per site "
                 f"(seeds {', '.join(str(c['seed']) for c in cells)})", fontsize=9)
    return save_figure(fig, path)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--sites", type=int, default=3, help="as detection_strategies.py's (the runs are shared)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/detection_bn")
    p.add_argument("--runs", type=Path, default=None,
                   help="where detection_strategies.py's runs are (default: outputs/benchmarks/detection_strategies)")
    p.add_argument("--extra", nargs="*", default=[], help="Hydra overrides for every run (as detection_strategies.py's)")
    args = p.parse_args(argv)
    args.runs = args.runs or default_runs(ROOT / "benchmarks/results/detection_strategies")
    cells = [cell(seed, args) for seed in args.seeds]
    for c in cells:
        for s in c["sites"]:
            if abs(s["aggregated"]["map_50"] - s["run_map_50"]) > 1e-6:
                print(f"note: seed {c['seed']} site {s['site']}: mAP@0.5 {s['aggregated']['map_50']:.4f} here, "
                      f"{s['run_map_50']:.4f} in the run's summary", flush=True)
    text = table(cells)
    write_cells(args.out, "detection_bn.py", argv if argv is not None else sys.argv[1:], text, cells, plot,
                "bn_sites.png", f"; mean ± std over seeds. The runs: {STRATEGIES[STRATEGY][0]} of "
                f"benchmarks/detection_strategies.py, final checkpoint (round {cells[0]['round']}); re-estimated on "
                f"each site's own training images, scored on its test images")
    return cells


if __name__ == "__main__":
    main()
