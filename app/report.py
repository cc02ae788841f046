"""What a run leaves behind: summary.json, a progress line per round, W&B, checkpoints.

One `RunReport` per experiment lives on the server side (DESIGN.md conv. 8). The strategy
hands it one record per round; the report keeps the history, rewrites summary.json
atomically after every round (so a crash still leaves every finished round on disk) and logs
the same numbers to W&B under `client/<partition-id>/...` for per-client values.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path

log = logging.getLogger("fedssl")


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


class RunReport:
    def __init__(self, cfg: dict, out_dir: Path, resume_state: dict | None = None):
        self.cfg, self.out_dir = cfg, Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.out_dir / "summary.json"
        self.t0 = time.perf_counter()
        if resume_state is not None:
            self.summary = self._resumed(resume_state)
            self.t0 -= self.summary["wall_seconds"]
            self.wandb = self._start_wandb(resume_id=resume_state.get("wandb_run_id"))
            self._save()
            return
        self.summary = {
            "status": "running",
            "error": None,
            "strategy": cfg["strategy"]["name"],
            "ssl": cfg["ssl"]["name"],
            "dataset": cfg["dataset"]["name"],
            "partition": cfg["partition"]["name"],
            "num_clients": cfg["num_clients"],
            "num_rounds": cfg["num_rounds"],
            "config": cfg,
            "rounds": [],
            "initial_eval": None,
            "knn": [],
            "retrieval": [],
            "final": {},
            "failures": [],
            "rejected": [],
            "wall_seconds": 0.0,
            "checkpoint": None,
            "output_dir": str(self.out_dir),
            "wandb": {"mode": cfg["wandb"]["mode"], "run_id": None, "dir": None},
        }
        self.wandb = self._start_wandb()
        self._save()

    def _resumed(self, state: dict) -> dict:
        """The saved summary up to the checkpoint round; anything after it is discarded."""
        k = int(state["round"])
        summary = dict(state["summary"])
        summary.update(status="running", error=None, config=self.cfg, num_rounds=self.cfg["num_rounds"],
                       output_dir=str(self.out_dir), checkpoint=None, final={})
        summary["rounds"] = [r for r in summary["rounds"] if r["round"] <= k]
        summary["knn"] = [e for e in summary["knn"] if e["round"] <= k]
        summary["retrieval"] = [e for e in summary.get("retrieval", []) if e["round"] <= k]
        summary["failures"] = [f for f in summary["failures"] if f["round"] <= k]
        summary["rejected"] = [r for r in summary["rejected"] if r["round"] <= k]
        summary.setdefault("resumed", []).append({"from_round": k, "at": time.strftime("%Y-%m-%d %H:%M:%S")})
        log.info("resuming %s from round %d of %d", self.out_dir, k, self.cfg["num_rounds"])
        return summary

    # ------------------------------------------------------------------ W&B
    def _start_wandb(self, resume_id: str | None = None):
        wb = self.cfg["wandb"]
        if wb["mode"] == "disabled":
            return None
        os.environ.setdefault("WANDB_DIR", str(self.out_dir))
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        run = wandb.init(
            mode=wb["mode"], project=wb["project"], entity=wb.get("entity"), name=wb.get("name"),
            group=wb.get("group"), tags=list(wb.get("tags") or []), config=self.cfg, dir=str(self.out_dir),
            reinit="finish_previous", id=resume_id, resume="allow" if resume_id else None,
        )
        self.summary["wandb"].update({"run_id": run.id, "dir": str(getattr(run, "dir", self.out_dir))})
        return run

    def _wandb_log(self, record: dict) -> None:
        if self.wandb is None:
            return
        flat = {}
        for key in ("train_loss", "wall_seconds", "bytes_sent", "bytes_received", "eval_seconds", "kd_loss"):
            if key in record:
                flat[key] = record[key]
        for key, value in (record.get("eval") or {}).items():
            if isinstance(value, (int, float)):
                flat[f"eval/{key}"] = value
        for pid, values in ((record.get("eval") or {}).get("per_client") or {}).items():
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    flat[f"client/{pid}/eval/{key}"] = value
        for pid, c in record.get("clients", {}).items():
            for key, value in c.items():
                if key.startswith("predictor"):
                    value = 1.0 if value == "global" else 0.0 if value == "local" else None
                if isinstance(value, (int, float)):
                    flat[f"client/{pid}/{key}"] = value
        flat["failures"] = len(record.get("failures", []))
        flat["rejected"] = len(record.get("rejected", []))
        self.wandb.log(flat, step=int(record["round"]))

    # ------------------------------------------------------------------ rounds
    def report(self, record: dict) -> None:
        """Hook for the strategy: store one round's record, print a line, save, log."""
        rnd = int(record["round"])
        ev = record.get("eval")
        if rnd == 0:
            self.summary["initial_eval"] = ev
        else:
            rounds = self.summary["rounds"]
            if rounds and rounds[-1]["round"] == rnd:
                rounds[-1] = record
            else:
                rounds.append(record)
            self.summary["failures"].extend(f for f in record.get("failures", []) if f not in self.summary["failures"])
            self.summary["rejected"].extend(r for r in record.get("rejected", []) if r not in self.summary["rejected"])
        if ev and "knn_accuracy" in ev:
            self.summary["knn"] = [k for k in self.summary["knn"] if k["round"] != rnd]
            self.summary["knn"].append({"round": rnd, "accuracy": ev["knn_accuracy"]})
        if ev and "rank1" in ev:  # re-ID: rank-1 / mAP against rounds (convergence)
            self.summary["retrieval"] = [e for e in self.summary["retrieval"] if e["round"] != rnd]
            self.summary["retrieval"].append({"round": rnd, "rank1": ev["rank1"], "mAP": ev["mAP"],
                                              "per_client": {p: {"rank1": c["rank1"], "mAP": c["mAP"]}
                                                             for p, c in ev.get("per_client", {}).items()}})
        if ev and ev.get("final"):
            self.summary["final"] = ev
        if record.get("checkpoint"):
            self.summary["checkpoint"] = record["checkpoint"]
            if rnd == self.cfg["num_rounds"] and self.summary["status"] == "running":
                self.summary["status"] = "completed"
        if record.get("fatal_error"):
            self.fail(record["fatal_error"])
        self.summary["wall_seconds"] = time.perf_counter() - self.t0
        log.info(self.progress_line(record))
        self._save()
        self._wandb_log(record)

    def progress_line(self, record: dict) -> str:
        rnd, total = record["round"], self.cfg["num_rounds"]
        parts = [f"[round {rnd}/{total}]"]
        if "train_loss" in record:
            parts.append(f"loss {record['train_loss']:.4f}")
        if "clients" in record:
            parts.append(f"clients {len(record['clients'])}/{len(record.get('selected', []))}")
            decisions = [c.get("predictor_next") for c in record["clients"].values() if c.get("predictor_next")]
            if decisions:
                parts.append(f"next predictor global/local {decisions.count('global')}/{decisions.count('local')}")
            divs = [c["divergence"] for c in record["clients"].values() if "divergence" in c]
            if divs:
                parts.append(f"divergence {min(divs):.3f}-{max(divs):.3f}")
            mus = [c["mu"] for c in record["clients"].values() if "mu" in c]
            if mus:
                parts.append(f"EMA mu {min(mus):.2f}-{max(mus):.2f}")
            weights = [c["weight"] for c in record["clients"].values() if "weight" in c]
            if weights:
                parts.append(f"weights {min(weights):.2f}-{max(weights):.2f}")
        if "kd_loss" in record:
            parts.append(f"KD loss {record['kd_loss']:.4f}")
        ev = record.get("eval") or {}
        if "knn_accuracy" in ev:
            parts.append(f"kNN {100 * ev['knn_accuracy']:.2f}%")
        if "rank1" in ev:
            parts.append(f"rank-1 {100 * ev['rank1']:.2f}% mAP {100 * ev['mAP']:.2f}%")
        if ev.get("linear_accuracy") is not None:
            parts.append(f"linear {100 * ev['linear_accuracy']:.2f}%")
        if "wall_seconds" in record:
            parts.append(f"{record['wall_seconds']:.1f}s")
        if "bytes_sent" in record:
            parts.append(f"sent {_mb(record['bytes_sent'])} recv {_mb(record.get('bytes_received', 0))}")
        if record.get("failures"):
            parts.append(f"FAILED clients {[f['partition_id'] for f in record['failures']]}")
        if record.get("rejected"):
            parts.append(f"REJECTED {[r['partition_id'] for r in record['rejected']]}")
        if record.get("fatal_error"):
            parts.append(f"STOPPED: {record['fatal_error']}")
        return " | ".join(parts)

    # ------------------------------------------------------------------ end of run
    def fail(self, error: str) -> None:
        self.summary["status"] = "failed"
        self.summary["error"] = error
        self._save()

    def finish(self) -> dict:
        if self.summary["status"] == "running":
            self.summary["status"] = "failed"
            self.summary["error"] = self.summary["error"] or (
                f"the federation stopped after {len(self.summary['rounds'])} of "
                f"{self.cfg['num_rounds']} rounds; see the log above"
            )
        self.summary["wall_seconds"] = time.perf_counter() - self.t0
        self._save()
        if self.wandb is not None:
            final = self.summary["final"] or {}
            for key in ("knn_accuracy", "linear_accuracy", "rank1", "rank5", "rank10", "mAP"):
                if isinstance(final.get(key), float) and not math.isnan(final[key]):
                    self.wandb.summary[f"final/{key}"] = final[key]
            self.wandb.summary["status"] = self.summary["status"]
            self.wandb.finish(exit_code=0 if self.summary["status"] == "completed" else 1)
            self.wandb = None
        return self.summary

    def _save(self) -> None:
        write_json_atomic(self.path, self.summary)
