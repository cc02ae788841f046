"""summary.json: its one owner. What a run's results look like, and the console line, the W&B
values and the closing line derived from them.

A run's summary holds: `status` (running, completed, failed) and `error`; the resolved
`config`; `task`, `strategy`, `ssl`, `dataset`, `partition`, `num_clients`, `num_rounds`;
`rounds` (one record per round, written by the strategy: selected, train_loss, wall_seconds,
bytes_sent, bytes_received, failures, rejected, clients.<partition id>.{loss, num_examples,
train_seconds, images_per_second, lr, state (kept | restored:<round> | new), and the strategy's
own CLIENT_FIELDS}, the strategy's ROUND_FIELDS, eval, checkpoint); `initial_eval` (round 0); the
task's history series (`knn`, `retrieval` or `detection`); `final`; `failures`, `rejected`; `wall_seconds`; `checkpoint`;
`output_dir`; `wandb`; `resumed`. Strategies and tasks add their own fields through their
declarations (protocol/fields.py): this module never asks which one is running.
"""

from __future__ import annotations

import math
import time

from protocol.fields import ClientField, RoundField, TaskMetrics
from protocol.messages import few

ROUND_KEYS = ("train_loss", "wall_seconds", "bytes_sent", "bytes_received", "eval_seconds")  # logged to W&B


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _finite(v) -> bool:
    return _number(v) and not math.isnan(v)


class SummarySchema:
    """The summary of a run of one task under one strategy."""

    def __init__(self, metrics: TaskMetrics, client_fields: tuple[ClientField, ...] = (),
                 round_fields: tuple[RoundField, ...] = ()):
        self.metrics, self.client_fields, self.round_fields = metrics, client_fields, round_fields

    # ------------------------------------------------------------------ the document
    def new(self, cfg: dict, task: str, out_dir: str) -> dict:
        return {
            "status": "running", "error": None, "task": task, "preset": cfg.get("preset"), "strategy": cfg["strategy"]["name"],
            "ssl": cfg["ssl"]["name"], "dataset": cfg["dataset"]["name"], "partition": cfg["partition"]["name"],
            "num_clients": cfg["num_clients"], "num_rounds": cfg["num_rounds"], "config": cfg, "rounds": [],
            "initial_eval": None, self.metrics.series.name: [], "final": {}, "failures": [], "rejected": [],
            "wall_seconds": 0.0, "checkpoint": None, "output_dir": out_dir, "compute": None,
            "wandb": {"mode": cfg["wandb"]["mode"], "run_id": None, "dir": None},
        }

    def resumed(self, saved: dict, cfg: dict, out_dir: str, k: int) -> dict:
        """The saved summary up to the checkpoint round `k`; anything after it is discarded."""
        summary = dict(saved)
        summary.update(status="running", error=None, config=cfg, num_rounds=cfg["num_rounds"], output_dir=out_dir,
                       checkpoint=None, final={})
        series = self.metrics.series.name
        for key in ("rounds", series, "failures", "rejected"):
            summary[key] = [r for r in summary.get(key, []) if r["round"] <= k]
        summary.setdefault("resumed", []).append({"from_round": k, "at": time.strftime("%Y-%m-%d %H:%M:%S")})
        return summary

    def add(self, summary: dict, record: dict, num_rounds: int) -> None:
        """Store one round's record (round 0: the initial evaluation) and what derives from it."""
        rnd, ev = int(record["round"]), record.get("eval")
        if rnd == 0:
            summary["initial_eval"] = ev
        else:
            rounds = summary["rounds"]
            if rounds and rounds[-1]["round"] == rnd:
                rounds[-1] = record
            else:
                rounds.append(record)
            for key in ("failures", "rejected"):
                summary[key].extend(f for f in record.get(key, []) if f not in summary[key])
        entry = self.metrics.series.entry(rnd, ev) if ev else None
        if entry is not None:
            name = self.metrics.series.name
            summary[name] = [e for e in summary[name] if e["round"] != rnd] + [entry]
        if ev and ev.get("final"):
            summary["final"] = ev
        if record.get("checkpoint"):
            summary["checkpoint"] = record["checkpoint"]
            if rnd == num_rounds and summary["status"] == "running":
                summary["status"] = "completed"
        if record.get("fatal_error"):
            fail(summary, record["fatal_error"])

    # ------------------------------------------------------------------ what is shown
    def scores(self, results: dict, final: bool = False) -> list[str]:
        """"kNN 12.30%"-style parts of the task's headline metrics (and its final ones if asked)."""
        metrics = self.metrics.headline + (self.metrics.final if final else ())
        return [f"{label} {100 * results[key]:.2f}%" for m in metrics for key, label in m.present(results)
                if _finite(results[key])]

    def progress_line(self, record: dict, num_rounds: int) -> str:
        parts = [f"[round {record['round']}/{num_rounds}]"]
        if "train_loss" in record:
            parts.append(f"loss {record['train_loss']:.4f}")
        clients = record.get("clients")
        if clients is not None:
            parts.append(f"clients {len(clients)}/{len(record.get('selected', []))}")
            for f in self.client_fields:
                values = [c[f.key] for c in clients.values() if c.get(f.key) not in (None, "")]
                if f.console and values:
                    parts.append(f"{f.label} {'/'.join(str(values.count(v)) for v in f.values)}" if f.style == "tally"
                                 else f"{f.label} {min(values):{f.fmt}}-{max(values):{f.fmt}}")
        parts += [f"{f.label} {record[f.key]:{f.fmt}}" for f in self.round_fields if _finite(record.get(f.key))]
        parts += self.scores(record.get("eval") or {})
        if "wall_seconds" in record:
            parts.append(f"{record['wall_seconds']:.1f}s")
        if "bytes_sent" in record:
            parts.append(f"sent {_mb(record['bytes_sent'])} recv {_mb(record.get('bytes_received', 0))}")
        restored = {pid: c["state"].split(":")[1] for pid, c in (clients or {}).items()
                    if str(c.get("state", "")).startswith("restored:")}
        if restored:
            parts.append("restarted clients " + ", ".join(f"{p} (state of round {r})" for p, r in restored.items()))
        if record.get("failures"):
            parts.append(f"FAILED clients {few(f['partition_id'] for f in record['failures'])}")
        if record.get("rejected"):
            parts.append(f"REJECTED {few(_who(r) for r in record['rejected'])}")
        if record.get("fatal_error"):
            parts.append(f"STOPPED: {record['fatal_error']}")
        return " | ".join(parts)

    def wandb_values(self, record: dict) -> dict:
        """One round's numbers for W&B: round values, eval/<metric>, client/<pid>/<value>."""
        flat = {k: record[k] for k in ROUND_KEYS + tuple(f.key for f in self.round_fields) if k in record}
        ev = record.get("eval") or {}
        flat.update({f"eval/{k}": v for k, v in ev.items() if _number(v)})
        for k, values in ev.items():  # a dict of numbers (SDR's path_knn): eval/<k>/<name>
            if k != "per_client" and isinstance(values, dict):
                flat.update({f"eval/{k}/{name}": v for name, v in values.items() if _number(v)})
        for pid, values in (ev.get("per_client") or {}).items():
            flat.update({f"client/{pid}/eval/{k}": v for k, v in values.items() if _number(v)})
        tallies = {f.key: f.values for f in self.client_fields if f.style == "tally"}
        for pid, c in record.get("clients", {}).items():
            for key, value in c.items():
                if key in tallies and value in tallies[key]:
                    value = 1.0 if value == tallies[key][0] else 0.0
                if _number(value):
                    flat[f"client/{pid}/{key}"] = value
        flat["failures"] = len(record.get("failures", []))
        flat["rejected"] = len(record.get("rejected", []))
        return flat

    def wandb_final(self, summary: dict) -> dict:
        final = summary["final"] or {}
        metrics = self.metrics.headline + self.metrics.final
        return {f"final/{key}": final[key] for m in metrics for key, _ in m.present(final) if _finite(final[key])}

    def closing_line(self, summary: dict) -> str:
        cfg = summary["config"]
        k = cfg["num_clients"]
        return " | ".join([f"done: {summary['strategy']} on {summary['dataset']}, {k} client{'s' * (k != 1)}, "
                           f"{cfg['num_rounds']} rounds", *self.scores(summary["final"] or {}),
                           f"{summary['wall_seconds']:.0f}s", f"{summary['output_dir']}/summary.json"])


def fail(summary: dict, error: str) -> None:
    summary["status"] = "failed"
    summary["error"] = error


def _who(rejected: dict):
    """A rejected answer's partition id, or its node where no partition was bound (a refused claim)."""
    pid = rejected.get("partition_id")
    return pid if pid is not None else f"node {rejected.get('node')}"
