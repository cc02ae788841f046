"""What each round aggregated, kept on disk and checked from outside the server (issue 17).

With `audit_updates=true` the server writes, for every round, each update it received (decoded,
in the upload layout) with its number of examples and whether it was accepted or why it was
rejected, and the global model it made of them: `<run dir>/audit/round-<r>/client-<pid>.npz` and
`global.npz`. A round that is run again after a resume starts from an empty folder, so the files
are those of the round the run kept. `check(run_dir)` recomputes each round's global model from
the accepted updates alone, independently of the strategy's code (an example-weighted mean in
float64), and compares it with what the server kept, with the next step and with the final
checkpoint: an update lost or counted twice changes the mean. It also checks that every client
the summary lists is one whose update was accepted, and that no client started a round from a
blank state after it had trained (a restart that lost its state). Disk: one model per received
update per round (smoke preset: ~1 MB); for tests and benchmarks/deployment_chaos.py.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from app.config import group_nodes
from app.registry import strategy_class
from protocol.messages import few
from tasks.common.atomic import write_atomic
from tasks.common.checkpoint import checkpoint_models, load_checkpoint

# the server rule this audit recomputes: the example-weighted mean of the accepted uploads
# (docs/algorithms.md#upload-and-aggregation), as a strategy class declares it (`aggregates_by`, strategies/base.py)
WEIGHTED_MEAN = "weighted_mean"
TOLERANCE = 1e-5  # float32 mean (the server) against float64 (here); a lost or doubled update moves it far more


class UpdateAudit:
    """The server side: writes the round folders (a ServerHooks.audit)."""

    def __init__(self, run_dir: str | Path):
        self.root = Path(run_dir) / "audit"

    def _folder(self, server_round: int) -> Path:
        return self.root / f"round-{server_round}"

    def round_started(self, server_round: int) -> None:
        shutil.rmtree(self._folder(server_round), ignore_errors=True)  # a round run again after a resume
        self._folder(server_round).mkdir(parents=True)

    def update(self, server_round: int, pid: int, arrays, num_examples: int, rejected: str | None) -> None:
        _save(self._folder(server_round) / f"client-{pid}.npz", *[np.asarray(a) for a in arrays],
              num_examples=np.int64(num_examples), rejected=np.str_(rejected or ""))

    def aggregate(self, server_round: int, arrays) -> None:
        _save(self._folder(server_round) / "global.npz", *[np.asarray(a) for a in arrays])


def _save(path: Path, *arrays, **named) -> None:
    """np.savez, written whole or not at all."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, *arrays, **named)

    write_atomic(path, write)


def _arrays(npz) -> list[np.ndarray]:
    return [npz[f"arr_{i}"] for i in range(sum(k.startswith("arr_") for k in npz.files))]


def _declared(node: dict) -> str | None:
    return getattr(strategy_class(node), "aggregates_by", None)


def aggregates_by(summary: dict) -> str | None:
    """How the run's strategy class says it aggregates: the class its resolved config's `_target_` names (a
    summary without its config: the `_target_` of conf/strategy/<name>.yaml); None for a class no config may name."""
    node = (summary.get("config") or {}).get("strategy") or group_nodes("strategy").get(summary["strategy"], {})
    return _declared(node)


@dataclass
class AuditReport:
    rounds: int = 0
    aggregated: int = 0
    rejected: int = 0
    models_match: bool = True  # every round's global model and the final checkpoint as the accepted updates imply
    problems: list[str] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return len(self.problems)


def check(run_dir: str | Path) -> AuditReport:
    """Every kept round of a run with `audit_updates=true` against its accepted updates."""
    run_dir = Path(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    if aggregates_by(summary) != WEIGHTED_MEAN:
        usable = [name for name, node in group_nodes("strategy").items() if _declared(node) == WEIGHTED_MEAN]
        raise ValueError(f"the audit recomputes an example-weighted mean: strategy={summary['strategy']} "
                         f"aggregates otherwise (use one of {', '.join(usable)})")
    report, trained = AuditReport(), set()
    previous = None
    for record in summary["rounds"]:
        rnd = record["round"]
        folder = run_dir / "audit" / f"round-{rnd}"
        if not (folder / "global.npz").is_file():
            report.problems.append(f"round {rnd}: no audit of its aggregate")
            continue
        report.rounds += 1
        accepted, weights = [], []
        for path in sorted(folder.glob("client-*.npz"), key=lambda p: int(p.stem.split("-")[1])):
            with np.load(path) as npz:
                if str(npz["rejected"]):
                    report.rejected += 1
                    continue
                accepted.append((int(path.stem.split("-")[1]), _arrays(npz)))
                weights.append(int(npz["num_examples"]))
        report.aggregated += len(accepted)
        listed = sorted(int(p) for p in record["clients"])
        if listed != [pid for pid, _ in accepted]:
            report.problems.append(f"round {rnd}: summary lists clients {few(listed)}, accepted updates came from "
                                   f"{few(pid for pid, _ in accepted)}")
        with np.load(folder / "global.npz") as npz:
            kept = _arrays(npz)
        total = float(sum(weights))
        for i, layer in enumerate(kept):
            mean = sum(w * a[i].astype(np.float64) for w, (_, a) in zip(weights, accepted)) / total
            if layer.dtype.kind == "f" and not np.allclose(layer, mean, rtol=TOLERANCE, atol=TOLERANCE):
                report.models_match = False
                report.problems.append(f"round {rnd}: layer {i} of the global model is not the weighted mean "
                                       f"of the {len(accepted)} accepted updates (max difference "
                                       f"{float(np.max(np.abs(layer - mean))):.3g})")
                break
        for pid, c in record["clients"].items():
            if c.get("state") == "new" and int(pid) in trained:
                report.problems.append(f"round {rnd}: client {pid} started from a blank state after it had trained")
            trained.add(int(pid))
        previous = kept
    final = run_dir / "checkpoint_final.pt"
    if previous is not None and final.is_file():
        models = checkpoint_models(load_checkpoint(final))["global"]
        if len(models) != len(previous) or not all(np.array_equal(a, b) for a, b in zip(models, previous)):
            report.models_match = False
            report.problems.append("the final checkpoint is not the last round's aggregate")
    if len(summary["rounds"]) < summary["num_rounds"]:
        report.problems.append(f"{summary['num_rounds'] - len(summary['rounds'])} round(s) never completed")
    return report
