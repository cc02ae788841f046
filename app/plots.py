"""PNG plots of one run, drawn from its summary.json and written next to it (issue 14).

Which plots a run gets follows from what its summary holds, not from the task's name:
- accuracy.png: the kNN history (and with `eval.bn=both` the BatchNorm-re-estimated one) against
  rounds, the untrained network's level (round 0, when evaluated) as a dashed line, the final
  linear probe as points at the last round; re-ID: rank-1 and mAP against rounds (mean and each
  client's); detection: mAP and mAP@0.5 (all sites' images and each site's); SDR: a second panel with each path's final kNN.
- loss.png: the mean training loss per round and each client's.
- divergence.png (FedU, FedEMA): each client's divergence per round with the DAPU threshold and
  each client's decision for its next round (filled: global predictor, open: local); FedEMA: a
  panel with each client's mu.
- bytes.png: megabytes sent and received per round.
- nmi.png (clustering methods): each client's NMI with the true labels and with its previous clusters.

    python -m app.plots <run directory> [...]   # (re)draw the plots of finished or running runs
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from tasks.common.atomic import write_atomic

# summary series drawn per client in accuracy.png: {name: ((key, label), ...)}
PER_CLIENT_CURVES = {"retrieval": (("rank1", "rank-1"), ("mAP", "mAP")),
                     "detection": (("map", "mAP@[.5:.95]"), ("map_50", "mAP@0.5"))}


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed); also the benchmarks'."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def client_series(rounds: list[dict], key: str) -> dict[str, list[tuple[int, object]]]:
    """{partition id: [(round, value), ...]} of one per-client value over the rounds that have it."""
    out: dict[str, list] = {}
    for rec in rounds:
        for pid, c in (rec.get("clients") or {}).items():
            if c.get(key) not in (None, ""):
                out.setdefault(pid, []).append((int(rec["round"]), c[key]))
    return dict(sorted(out.items(), key=lambda kv: int(kv[0])))


def save_figure(fig, path: Path, dpi: int = 110) -> Path:
    """Lay out, write and close `fig`; returns `path`."""
    try:
        fig.tight_layout()
        kind = Path(path).suffix.lstrip(".") or "png"  # the temp file's own suffix is .tmp
        write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format=kind))
    finally:
        pyplot().close(fig)
    return path


def _title(summary: dict) -> str:
    return (f"{summary.get('strategy')} / {summary.get('ssl')} on {summary.get('dataset')}, "
            f"{summary.get('partition')}, {summary.get('num_clients')} clients")


def accuracy_plot(summary: dict, path: Path) -> Path | None:
    plt = pyplot()
    knn = summary.get("knn") or []
    name = next((n for n in PER_CLIENT_CURVES if summary.get(n)), None)
    retrieval = summary.get(name) or []
    final = summary.get("final") or {}
    path_knn = final.get("path_knn") or {}
    if not knn and not retrieval:
        return None
    fig, axes = plt.subplots(1, 2 if path_knn else 1, figsize=(11 if path_knn else 6.5, 4.2), squeeze=False)
    ax = axes[0][0]
    last = max([e["round"] for e in knn + retrieval] or [0])
    if knn:
        for key, label, style in (("accuracy", "kNN", "-o"), ("accuracy_bn_reestimated", "kNN, BN re-estimated", "--s")):
            pts = [(e["round"], 100 * e[key]) for e in knn if _finite(e.get(key))]
            if pts:
                line, = ax.plot(*zip(*pts), style, markersize=3, label=label)
                if pts[0][0] == 0:  # the untrained network's level
                    ax.axhline(pts[0][1], color=line.get_color(), linestyle=":", linewidth=1,
                               label=f"{label} at random init ({pts[0][1]:.2f}%)")
        for key, label, marker in (("linear_accuracy", "linear probe (final)", "*"),
                                   ("linear_accuracy_bn_reestimated", "linear, BN re-est. (final)", "P")):
            if _finite(final.get(key)):
                ax.plot([last], [100 * final[key]], marker, markersize=10, linestyle="none", label=label)
        ax.set_ylabel("accuracy (%)")
    else:  # re-identification (rank-1, mAP) or detection (mAP, mAP@0.5): overall and per client
        for key, label in PER_CLIENT_CURVES[name]:
            pts = [(e["round"], 100 * e[key]) for e in retrieval if _finite(e.get(key))]
            if pts:
                line, = ax.plot(*zip(*pts), "-o", markersize=3, label=f"{label} (overall)")
                per_client: dict[str, list] = {}
                for e in retrieval:
                    for pid, v in (e.get("per_client") or {}).items():
                        if _finite(v.get(key)):
                            per_client.setdefault(pid, []).append((e["round"], 100 * v[key]))
                for series in per_client.values():
                    ax.plot(*zip(*series), color=line.get_color(), alpha=0.25, linewidth=1)
        ax.set_ylabel("% (faint: each client)")
    ax.set_xlabel("round")
    ax.set_title(_title(summary), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if path_knn:
        bx = axes[0][1]
        names = sorted(path_knn, key=int)
        bx.bar(names, [100 * path_knn[p] for p in names])
        if _finite(final.get("knn_accuracy")):
            bx.axhline(100 * final["knn_accuracy"], color="black", linestyle="--", linewidth=1, label="whole network")
            bx.legend(fontsize=7)
        bx.set_xlabel("path")
        bx.set_ylabel("kNN accuracy (%)")
        bx.set_title("SDR: each path's kNN (final)", fontsize=9)
    return save_figure(fig, path)


def loss_plot(summary: dict, path: Path) -> Path | None:
    rounds = summary.get("rounds") or []
    pts = [(r["round"], r["train_loss"]) for r in rounds if _finite(r.get("train_loss"))]
    if not pts:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.plot(*zip(*pts), "-o", color="black", markersize=3, label="mean over clients")
    for pid, series in client_series(rounds, "loss").items():
        series = [(r, v) for r, v in series if _finite(v)]
        if series:
            ax.plot(*zip(*series), alpha=0.4, linewidth=1, label=f"client {pid}")
    ax.set_xlabel("round")
    ax.set_ylabel("training loss")
    ax.set_title(_title(summary), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    return save_figure(fig, path)


def divergence_plot(summary: dict, path: Path) -> Path | None:
    """FedU: divergence per client with the threshold its rule used and the decisions; FedEMA: also mu."""
    rounds = summary.get("rounds") or []
    strategy = (summary.get("config") or {}).get("strategy") or {}
    relative = strategy.get("dapu_scale") == "relative"
    key = "divergence_relative" if relative else "divergence"
    divergence = client_series(rounds, key) or client_series(rounds, "divergence")
    if not divergence:
        return None
    decisions = client_series(rounds, "predictor_next")
    mu = client_series(rounds, "mu")
    plt = pyplot()
    fig, axes = plt.subplots(1, 2 if mu else 1, figsize=(11 if mu else 6.5, 4.2), squeeze=False)
    ax = axes[0][0]
    for pid, series in divergence.items():
        line, = ax.plot(*zip(*series), linewidth=1, label=f"client {pid}")
        chosen = dict(decisions.get(pid, []))
        for rnd, d in series:
            if rnd in chosen:
                glob = chosen[rnd] == "global"
                ax.plot([rnd], [d], "o", markersize=5, color=line.get_color(),
                        markerfacecolor=line.get_color() if glob else "none")
    threshold = strategy.get("mu_relative" if relative else "mu")
    if decisions and strategy.get("predictor") == "dapu" and _finite(threshold):
        ax.axhline(threshold, color="black", linestyle="--", linewidth=1,
                   label=f"DAPU threshold {'mu_relative' if relative else 'mu'} = {threshold:g}")
    ax.set_yscale("log")
    ax.set_xlabel("round")
    ax.set_ylabel(("relative " if relative else "") + "divergence d_k")
    note = "; filled: next predictor global, open: local" if decisions else ""
    ax.set_title(f"{_title(summary)}{note}", fontsize=8)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    if mu:
        bx = axes[0][1]
        for pid, series in mu.items():
            bx.plot(*zip(*series), "-o", markersize=3, label=f"client {pid}")
        bx.set_xlabel("round")
        bx.set_ylabel("FedEMA mu_k (1: keeps its local model)")
        bx.set_ylim(0, 1.05)
        bx.grid(alpha=0.3)
        bx.legend(fontsize=7)
    return save_figure(fig, path)


def bytes_plot(summary: dict, path: Path) -> Path | None:
    rounds = summary.get("rounds") or []
    pts = [(r["round"], r.get("bytes_sent", 0) / 1e6, r.get("bytes_received", 0) / 1e6) for r in rounds
           if "bytes_sent" in r]
    if not pts:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    xs = [p[0] for p in pts]
    ax.bar([x - 0.2 for x in xs], [p[1] for p in pts], width=0.4, label="sent (server to clients)")
    ax.bar([x + 0.2 for x in xs], [p[2] for p in pts], width=0.4, label="received (clients to server)")
    ax.set_xlabel("round")
    ax.set_ylabel("MB")
    ax.set_title(_title(summary), fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def nmi_plot(summary: dict, path: Path) -> Path | None:
    """Clustering methods: each client's NMI with the true labels and with its previous clusters."""
    rounds = summary.get("rounds") or []
    labels, previous = client_series(rounds, "nmi_labels"), client_series(rounds, "nmi_previous")
    if not labels and not previous:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for pid in sorted(set(labels) | set(previous), key=int):
        line = None
        if pid in labels:
            line, = ax.plot(*zip(*labels[pid]), "-o", markersize=3, label=f"client {pid}: vs true labels")
        if pid in previous:
            ax.plot(*zip(*previous[pid]), "--s", markersize=3, color=None if line is None else line.get_color(),
                    label=f"client {pid}: vs its previous clusters")
    ax.set_xlabel("round")
    ax.set_ylabel("NMI")
    ax.set_ylim(0, 1)
    ax.set_title(_title(summary), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    return save_figure(fig, path)


def write_plots(summary: dict, out_dir: Path) -> list[Path]:
    """Draw every plot the summary has data for into out_dir; returns the files written."""
    out_dir = Path(out_dir)
    drawn = [accuracy_plot(summary, out_dir / "accuracy.png"), loss_plot(summary, out_dir / "loss.png"),
             divergence_plot(summary, out_dir / "divergence.png"), bytes_plot(summary, out_dir / "bytes.png"),
             nmi_plot(summary, out_dir / "nmi.png")]
    return [p for p in drawn if p is not None]


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m app.plots <run directory with summary.json> [...]", file=sys.stderr)
        return 2
    for folder in map(Path, argv):
        summary_path = folder / "summary.json"
        if not summary_path.is_file():
            print(f"{folder}: no summary.json here; give the run's output directory", file=sys.stderr)
            return 1
        for p in write_plots(json.loads(summary_path.read_text()), folder):
            print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
