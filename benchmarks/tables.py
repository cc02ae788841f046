"""What every benchmark's table shares: mean and spread over seeds, a cell's text, the commit, the files written."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def mean_std(values: list) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n - 1) of the values reported; std None for one value."""
    xs = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not xs:
        return None, None
    mean = sum(xs) / len(xs)
    if len(xs) < 2:
        return mean, None
    return mean, math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))


def fmt(mean, std, scale: float = 100.0, digits: int = 2) -> str:
    """A cell: mean ± std scaled (fractions to % by default); the mean alone for one seed, "-" for none."""
    if mean is None:
        return "-"
    text = f"{scale * mean:.{digits}f}"
    return text if std is None else f"{text} ± {scale * std:.{digits}f}"


def commit() -> str:
    """The commit the cells ran on ("+ local changes" when the tree differs from it)."""
    def git(*a):
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    sha = git("rev-parse", "--short", "HEAD") or "unknown"
    return sha + (" + local changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def write_cells(out: Path, script: str, argv: list[str], text: str, cells: list[dict], plot_fn, png: str,
                note: str = "") -> None:
    """Print the table; write <out>/table.md (the table, then the command that made it, its commit and
    `note`), table.json (command, commit, per-seed cells) and the plot."""
    at, command = commit(), f"python benchmarks/{script} " + " ".join(argv)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(f"{text}\n`{command}` (commit {at}){note}.\n")
    (out / "table.json").write_text(json.dumps({"command": command, "commit": at, "cells": cells}, indent=2))
    plot_fn(cells, out / png)
    print(text)


def write_results(args, rows: list[dict], table: str, plot_fn, png: str, cells: list[dict] | None = None) -> None:
    """Print the table; write table.md, table.json (settings, rows, per-seed cells) and the plot into args.out."""
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text(table)
    doc = {"settings": {k: str(v) for k, v in vars(args).items()}, "rows": rows}
    if cells is not None:
        doc["cells"] = cells
    (args.out / "table.json").write_text(json.dumps(doc, indent=2))
    plot_fn(rows, args.out / png)
    print(f"written: {args.out}/table.md, table.json, {png}")
