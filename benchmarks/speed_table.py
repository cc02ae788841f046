"""benchmarks/speed.py's results as a Markdown table, table.json and a bar chart (speed.png)."""

from __future__ import annotations

import json
from pathlib import Path

MB = 1e6


def _f(x, fmt=".1f") -> str:
    return "-" if x is None else format(x, fmt)


def header(*columns: str) -> list[str]:
    """A Markdown table's first two lines."""
    return ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]


def local_rows(local: dict) -> list[str]:
    rows = header("width", "bare PyTorch fp32 (img/s)", "mode", "project round (img/s)", "x bare fp32", "x project fp32")
    for width, row in local.items():
        fp32 = row["fp32"]["images_per_second"]
        for mode, v in row.items():
            if not isinstance(v, dict):
                continue
            rows.append(f"| {width} | {row['bare_fp32']:.1f} | {mode} | {v['images_per_second']:.1f} | "
                        f"{v['ratio_to_bare']:.2f} | {v['images_per_second'] / fp32:.2f} |")
    return rows


def busy_rows(busy: dict) -> list[str]:
    rows = header("case", "federated img/s", "centralised img/s", "ratio", "rounds timed")
    for case, v in busy.items():
        rows.append(f"| {case.replace('_', ' ')} | {v['federated']['images_per_second']:.1f} | "
                    f"{v['centralised']['images_per_second']:.1f} | {v['ratio']:.3f} | {v['federated']['rounds']} |")
    return rows


def bytes_rows(b: dict) -> list[str]:
    rows = header("model", "transfer_dtype", "MB sent / round", "MB received / round", "x float32")
    for model, per in b.items():
        base = per["float32"]["bytes_sent"] + per["float32"]["bytes_received"]
        for dtype, v in per.items():
            total = v["bytes_sent"] + v["bytes_received"]
            rows.append(f"| {model} | {dtype} | {v['bytes_sent'] / MB:.2f} | {v['bytes_received'] / MB:.2f} | "
                        f"{total / base:.3f} |")
    return rows


def accuracy_rows(acc: dict) -> list[str]:
    seeds = sorted({s for per in acc.values() for s in per})
    rows = header("variant", *(f"kNN seed {s} (%)" for s in seeds), "mean (%)", "vs fp32 (points)", "fit s (mean)",
                  "MB / round")
    mean = {k: sum(v[s]["knn"] for s in v) / len(v) for k, v in acc.items()}
    for name, per in acc.items():
        cells = " | ".join(_f(100 * per[s]["knn"], ".2f") if s in per else "-" for s in seeds)
        fit = sum(v["fit_seconds"] for v in per.values()) / len(per)
        mb = next(iter(per.values()))["bytes_per_round"] / MB
        delta = 100 * (mean[name] - mean["fp32"]) if "fp32" in mean else None
        rows.append(f"| {name} | {cells} | {100 * mean[name]:.2f} | {_f(delta, '+.2f')} | {fit:.0f} | {mb:.1f} |")
    return rows


def markdown(r: dict) -> str:
    out = ["# Speed, memory and bytes (benchmarks/speed.py)", ""]
    if "local" in r:
        out += ["## Local BYOL round (batch 128, 2 threads)", "", *local_rows(r["local"]), ""]
    if "compile" in r:
        c = r["compile"]
        out += ["## compile=true in real rounds (cpu preset, 5 clients, 3 rounds)", "",
                *header("compile", "fit s per round", "img/s (rounds 2-3)")]
        out += [f"| {flag} | {', '.join(f'{x:.1f}' for x in v['round_fit_seconds'])} | {v['images_per_second']:.1f} |"
                for flag, v in c.items()]
        out.append("")
    if "busy" in r:
        out += ["## Busy cores: a federated round against centralised training (experiment=cpu)", "",
                *busy_rows(r["busy"]), ""]
    if "knn" in r:
        out += ["## kNN monitor at width 1.0", "", *header("precision", "images", "seconds", "s per 10k images")]
        out += [f"| {p} | {v['images']} | {v['seconds']:.1f} | {v['seconds_per_10k']:.1f} |" for p, v in r["knn"].items()]
        out.append("")
    if "memory" in r:
        m = r["memory"]
        out += ["## 100 clients, paper model (width 1.0, heads 4096/2048), fraction 0.1, 10 rounds", "",
                f"- distinct clients trained: {m['distinct_clients_trained']}",
                f"- peak resident memory of the run's process tree: {m['peak_tree_gb']:.2f} GB",
                f"- peak rise of the machine's used memory: {m['peak_machine_rise_gb']:.2f} GB",
                f"- wall time: {m['seconds']:.0f} s", ""]
    if "bytes" in r:
        out += ["## Bytes per round (5 clients, FedU; the real layout serialised as the strategy sends and counts it)", "",
                *bytes_rows(r["bytes"]), ""]
    if "easyfl" in r:
        e = r["easyfl"]
        out += ["## Against the FedU reference code (EasyFL): same work", "",
                *header("", "reference", "this project", "ratio"),
                f"| round: 5 clients x 1,000 CIFAR-10 images x 1 epoch, ResNet-18, batch 128 (s) | "
                f"{e['reference']['round_seconds']:.0f} | {e['round_seconds']:.0f} | {e['round_ratio']:.2f} |",
                f"| kNN evaluation per 60,000 images (s) | {e['reference']['knn_seconds_per_60k']:.0f} | "
                f"{e['knn_seconds_per_60k']:.0f} | {e['knn_ratio']:.2f} |", "",
                f"Our side ran with: {e['compute']['precision']} ({e['compute']['precision_reason']}), "
                f"channels_last={e['compute']['channels_last']}.", ""]
    if "accuracy" in r:
        out += ["## Accuracy at the cpu preset (FedU, 5 clients, 10 rounds)", "", *accuracy_rows(r["accuracy"]), ""]
    return "\n".join(out)


def plot(r: dict, path: Path) -> None:
    if "local" not in r:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(r["local"]), figsize=(5 * len(r["local"]), 3.5))
    for ax, (width, row) in zip(axes if len(r["local"]) > 1 else [axes], r["local"].items()):
        modes = {k: v for k, v in row.items() if isinstance(v, dict)}
        names = ["bare fp32", *modes]
        values = [row["bare_fp32"], *[v["images_per_second"] for v in modes.values()]]
        ax.barh(names, values)
        ax.set_title(f"local BYOL round, width {width}")
        ax.set_xlabel("images / s")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(results: dict, out: Path) -> str:
    text = markdown(results)
    (out / "table.md").write_text(text + "\n")
    (out / "table.json").write_text(json.dumps(results, indent=2))
    try:
        plot(results, out / "speed.png")
    except ImportError:
        pass
    return text
