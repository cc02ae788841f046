"""Speed, memory and bytes (issue 13): one command, one table, resumable.

    python benchmarks/speed.py                      # every section not measured yet
    python benchmarks/speed.py --only local knn     # some sections; --redo measures them again

Sections (each saved to results.json as soon as it is measured, so an interrupted table resumes):
- local: the local BYOL round's images/s (median of --repeats, interleaved) in fp32, bf16, bf16 + channels_last and compiled, at
  width 0.25 (cpu preset heads) and 1.0 (paper heads), each as a ratio to a bare PyTorch loop in
  fp32 on the same model, batch and augmentation (benchmarks/speed_parts.py);
- compile: compile=true against false in real rounds of the cpu preset (the model is rebuilt
  every round, so compilation is paid again unless torch's cache holds);
- busy: `experiment=cpu` rounds' images/s (images trained by the round's clients / its fit time)
  against strategy=centralised on the same machine, for 5 clients and 100 clients at fraction 0.1;
- knn: kNN monitor seconds per 10,000 images at width 1.0, fp32 and bf16;
- memory: peak resident memory of a 100-client run of the paper's model (process tree and machine);
- bytes: bytes per round for each transfer_dtype (cpu preset and paper model), as the server counts them;
- easyfl: the FedU reference code's work (5 clients x 1,000 CIFAR-10 images x 1 epoch, width 1.0,
  batch 128) on our side, against the reference's figures measured on this kind of machine;
- accuracy: kNN at the cpu preset, fp32 against bf16 and each transfer_dtype, seeds 0 and 1.
Writes results.json, table.md, table.json and speed.png to --out; the runs go under --runs (default
outputs/benchmarks/speed, not committed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

import numpy as np
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.compare import default_runs, run_resumable  # noqa: E402
from benchmarks.speed_parts import (  # noqa: E402
    bare_byol,
    knn_seconds,
    project_round,
    run_with_memory,
)
from benchmarks.speed_table import write_outputs  # noqa: E402

EASYFL = {"round_seconds": 320.0, "knn_seconds_per_60k": 570.0}  # FedU reference (EasyFL), this machine kind
COMMON = ["wandb.mode=disabled", "dataset=cifar100", "strategy=fedu"]
# The CPU preset these sections measured (issue 13), before issue 14 narrowed experiment=cpu: kept
# so that the speed table keeps measuring the same model and round.
CPU_PRESET = ["experiment=cpu", "model.width=0.25", "batch_size=128", "num_rounds=10", "local_epochs=2",
              "eval_every=5", "ssl.warmup_rounds=0", "eval.bn=aggregated"]
LOCAL_MODES = {"fp32": ("fp32", False, False), "bf16": ("bf16", False, False),
               "bf16+channels_last": ("bf16", True, False), "bf16+channels_last+compile": ("bf16", True, True)}


def round_rates(summary: dict, skip_first: bool = True) -> dict:
    """Images trained per second of fit time, over the rounds after the first (warm-up). Images
    trained = each client's own rate x its training time (whole batches only: a client of 500
    images with batch 128 trains 384 per epoch)."""
    rounds = summary["rounds"][1:] if skip_first and len(summary["rounds"]) > 1 else summary["rounds"]
    images = sum(c["images_per_second"] * c["train_seconds"] for r in rounds for c in r["clients"].values())
    seconds = sum(r["fit_seconds"] for r in rounds)
    return {"images": images, "fit_seconds": seconds, "images_per_second": images / seconds,
            "rounds": [r["round"] for r in rounds]}


def section_local(args) -> dict:
    """Each mode measured `--repeats` times, interleaved with the bare loop; medians."""
    out = {}
    for width, steps in ((0.25, args.local_steps), (1.0, max(2, args.local_steps // 3))):
        rates = {"bare_fp32": [], **{name: [] for name in LOCAL_MODES}}
        for _ in range(args.repeats):
            rates["bare_fp32"].append(bare_byol(width, steps))
            for name, (precision, cl, comp) in LOCAL_MODES.items():
                rates[name].append(project_round(width, steps, precision, cl, comp))
        bare = float(np.median(rates["bare_fp32"]))
        row = {"bare_fp32": bare, "bare_fp32_all": rates["bare_fp32"]}
        for name in LOCAL_MODES:
            rate = float(np.median(rates[name]))
            row[name] = {"images_per_second": rate, "ratio_to_bare": rate / bare, "all": rates[name]}
            print(f"local width={width} {name}: {rate:.1f} img/s ({rate / bare:.2f}x bare fp32 {bare:.1f})", flush=True)
        out[str(width)] = row
    return out


def section_compile(args) -> dict:
    """compile=true in real rounds (the model is rebuilt every round): fit time per round."""
    quick = [*CPU_PRESET, "eval.linear=false", "eval.at_start=false", "eval_every=0", "num_rounds=3",
             "checkpoint_every=0", "num_clients=5"]
    out = {}
    for flag in ("false", "true"):
        s = run(f"compile_{flag}", [*quick, f"compile={flag}"], args)
        out[flag] = {**round_rates(s), "round_fit_seconds": [r["fit_seconds"] for r in s["rounds"]]}
    return out


def run(name: str, overrides: list[str], args) -> dict:
    return run_resumable(args.runs / name, [*COMMON, *overrides])


def section_busy(args) -> dict:
    quick = [*CPU_PRESET, "eval.linear=false", "eval.at_start=false", "eval_every=0", "num_rounds=3",
             "checkpoint_every=0"]
    cases = {
        "5_clients": (["num_clients=5"], ["num_clients=5"]),
        "100_clients": (["num_clients=100", "fraction_fit=0.1", "examples_per_client=500", "local_epochs=1"],
                        ["num_clients=100", "examples_per_client=50", "local_epochs=1"]),
    }
    out = {}
    for case, (fed, central) in cases.items():
        f = round_rates(run(f"busy_{case}_federated", [*quick, *fed], args))
        c = round_rates(run(f"busy_{case}_centralised", [*quick, *central, "strategy=centralised"], args))
        out[case] = {"federated": f, "centralised": c, "ratio": f["images_per_second"] / c["images_per_second"]}
        print(f"busy {case}: {out[case]['ratio']:.3f}x centralised", flush=True)
    return out


def section_knn(args) -> dict:
    return {p: knn_seconds(1.0, args.knn_images * 5 // 6, args.knn_images // 6, p) for p in ("fp32", "bf16")}


def section_memory(args) -> dict:
    folder = args.runs / "memory_100_clients"
    if folder.exists():  # measured again (--redo): the earlier run's figures are in results.json already
        shutil.rmtree(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "main.py", *COMMON, "experiment=paper", "num_clients=100", "fraction_fit=0.1",
           "examples_per_client=64", "batch_size=32", "num_rounds=10", "local_epochs=1", "eval_every=0",
           "eval.linear=false", "eval.bank_size=2000", "eval.test_size=1000", "checkpoint_every=0",
           f"output_dir={folder}"]
    mem = run_with_memory(cmd, ROOT, folder.parent / "memory_100_clients.log")
    s = json.loads((folder / "summary.json").read_text())
    mem["distinct_clients_trained"] = len({p for r in s["rounds"] for p in r["clients"]})
    mem["compute"] = s["compute"]
    return mem


def section_bytes(args) -> dict:
    """Bytes a round carries each way with 5 clients, for each transfer_dtype: the real layout's
    arrays encoded and serialised exactly as the strategy sends them and counts them (the cpu
    preset's runs in `accuracy` record the same counts in their summary.json)."""
    from flwr.common import ndarrays_to_parameters

    from app.config import compose, to_plain
    from app.federation import build_layout
    from protocol.transfer import encode

    out = {}
    for model, preset in (("cpu preset (ResNet-18 width 0.25)", CPU_PRESET),
                          ("paper (ResNet-18 width 1.0)", ["experiment=paper"])):
        _, arrays = build_layout(to_plain(compose([*COMMON, *preset, "num_clients=5"])))
        for dtype in ("float32", "float16", "bfloat16"):
            per_client = sum(len(t) for t in ndarrays_to_parameters(encode(arrays, dtype)).tensors)
            out.setdefault(model, {})[dtype] = {"bytes_sent": 5 * per_client, "bytes_received": 5 * per_client,
                                                "clients": 5}
    return out


def section_easyfl(args) -> dict:
    s = run("easyfl_work", ["experiment=paper", "dataset=cifar10", "num_clients=5", "examples_per_client=1000",
                            "local_epochs=1", "num_rounds=1", "partition=iid", "eval.linear=false",
                            "checkpoint_every=0"], args)
    r = s["rounds"][0]
    images = s["final"]["bank_size"] + s["final"]["test_size"]
    return {"round_seconds": r["fit_seconds"], "eval_seconds": r["eval_seconds"], "eval_images": images,
            "knn_seconds_per_60k": r["eval_seconds"] * 60_000 / images, "reference": EASYFL,
            "round_ratio": r["fit_seconds"] / EASYFL["round_seconds"],
            "knn_ratio": (r["eval_seconds"] * 60_000 / images) / EASYFL["knn_seconds_per_60k"], "compute": s["compute"]}


def section_accuracy(args) -> dict:
    out = {}
    variants = {"fp32": ["precision=fp32"], "bf16": ["precision=bf16"],
                "bf16+float16 transfer": ["precision=bf16", "transfer_dtype=float16"],
                "bf16+bfloat16 transfer": ["precision=bf16", "transfer_dtype=bfloat16"]}
    for name, extra in variants.items():
        if args.variants and name not in args.variants:
            continue
        for seed in args.seeds:
            tag = f"accuracy_{name.replace('+', '_').replace(' ', '_')}_seed{seed}"
            s = run(tag, [*CPU_PRESET, f"seed={seed}", "eval.linear=false", *extra], args)
            out.setdefault(name, {})[str(seed)] = {"knn": s["final"]["knn_accuracy"], "wall_seconds": s["wall_seconds"],
                                                   "fit_seconds": sum(r["fit_seconds"] for r in s["rounds"]),
                                                   "bytes_per_round": s["rounds"][-1]["bytes_sent"] + s["rounds"][-1]["bytes_received"]}
    return out


SECTIONS = {"local": section_local, "compile": section_compile, "busy": section_busy, "knn": section_knn, "memory": section_memory,
            "bytes": section_bytes, "easyfl": section_easyfl, "accuracy": section_accuracy}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "speed")
    ap.add_argument("--only", nargs="*", choices=list(SECTIONS), default=list(SECTIONS))
    ap.add_argument("--redo", action="store_true", help="measure the chosen sections again")
    ap.add_argument("--local-steps", type=int, default=9)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--knn-images", type=int, default=3000)
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1])
    ap.add_argument("--variants", nargs="*", help="accuracy: only these variants (e.g. fp32 bf16)")
    ap.add_argument("--runs", type=Path, default=None, help="where the runs go (default: outputs/benchmarks/<--out's "
                                                             "path under benchmarks/results>)")
    args = ap.parse_args(argv)
    args.runs = args.runs or default_runs(args.out)
    os.environ.setdefault("FEDSSL_DATA_DIR", str(ROOT.parent / "shared" / "data"))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    for name in args.only:
        if name in results and not args.redo:
            print(f"{name}: measured earlier (--redo to measure again)", flush=True)
            continue
        measured = SECTIONS[name](args)
        if name == "accuracy":  # runs accumulate: several calls with different --variants/--seeds
            for variant, per_seed in measured.items():
                measured[variant] = {**results.get(name, {}).get(variant, {}), **per_seed}
            measured = {**results.get(name, {}), **measured}
        results[name] = measured
        results.setdefault("machine", {})[name] = {"cores": os.cpu_count()}
        path.write_text(json.dumps(results, indent=2))
    print(write_outputs(results, args.out))


if __name__ == "__main__":
    main()
