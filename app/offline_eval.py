"""Evaluation without training: `python main.py mode=evaluate checkpoint=<path>|init ...`.

- `checkpoint=<run>/checkpoint_final.pt`: the checkpoint's models (global, or one per client for
  standalone) evaluated as at the end of its run (kNN, linear probe, semi-supervised if
  `eval.semi=true`; re-ID retrieval; SDR paths), with the checkpoint's own config, so the
  numbers equal the run's, except what this command gives explicitly: `eval.*` keys,
  `dataset=` (evaluate on another data set: transfer) and `seed=`; `device`, `data_dir` and
  `cache_dir` are always this machine's.
- `checkpoint=init`: the model this command's config would start from (same seed), i.e. the
  random-initialisation baseline every trained number should be compared with.

Writes evaluation.json into the output directory.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from app.config import recompose
from app.federation import EVALUATORS, build_layout, task_of
from tasks.checkpoint import CheckpointError, load_checkpoint

INIT = "init"
MAY_CHANGE = ("eval", "dataset", "seed")  # the evaluation protocol: changed only when the command says so
THIS_MACHINE = ("device", "data_dir", "cache_dir", "output_dir", "command_line", "mode", "checkpoint")


def checkpoint_config(trained: dict, cfg: dict) -> dict:
    """The checkpoint's run config (rebuilt from its command line, as resume does) with this
    command's `eval.*` / `dataset` / `seed` overrides on top and this machine's paths and device."""
    wanted = [o for o in cfg.get("command_line", []) if o.split("=", 1)[0].lstrip("+~").split(".")[0] in MAY_CHANGE]
    out = recompose(trained.get("command_line") or [], wanted)
    out.update({k: cfg[k] for k in THIS_MACHINE if k in cfg})
    return out


def models_to_evaluate(cfg: dict) -> tuple[dict, dict]:
    """(config to evaluate with, {name: arrays}) for `cfg["checkpoint"]`."""
    source = cfg.get("checkpoint")
    if not source:
        raise CheckpointError("mode=evaluate needs checkpoint=<run>/checkpoint_final.pt, or checkpoint=init "
                              "for the model the config starts from")
    if str(source) == INIT:
        return cfg, {"global": build_layout(cfg)[1]}
    payload = load_checkpoint(source)
    trained = checkpoint_config(payload["config"], cfg)
    layout, _ = build_layout(trained)
    models = {name: [t.numpy() for t in weights.values()] for name, weights in payload["models"].items()}
    shapes = [a.shape for a in next(iter(models.values()))]
    if list(payload["keys"]) != list(layout.keys) or shapes != [tuple(s) for s in layout.shapes]:
        raise CheckpointError(f"checkpoint {source}: its keys do not match the model its own config builds "
                              f"(written by a different code version?)")
    return trained, models


def evaluate_offline(cfg: dict, out_dir: str | Path) -> dict:
    """Evaluate the checkpoint (or the initial model) once, as at the end of a run."""
    t0 = time.perf_counter()
    run_cfg, models = models_to_evaluate(cfg)
    result = EVALUATORS[task_of(run_cfg)](run_cfg)(0, models, final=True)
    report = {"status": "completed", "checkpoint": str(cfg["checkpoint"]), "dataset": run_cfg["dataset"]["name"],
              "strategy": run_cfg["strategy"]["name"], "ssl": run_cfg["ssl"]["name"], "final": result,
              "eval_seconds": time.perf_counter() - t0}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "evaluation.json").write_text(json.dumps(report, indent=2, default=float))
    return report


def summary_line(report: dict) -> str:
    f = report["final"]
    names = {"knn_accuracy": "kNN", "linear_accuracy": "linear", "semi_1%": "semi 1%", "semi_10%": "semi 10%",
             "rank1": "rank-1", "mAP": "mAP", "mean_path_knn": "mean path kNN"}
    parts = [f"{label} {100 * f[key]:.2f}%" for key, label in names.items()
             if isinstance(f.get(key), float) and not math.isnan(f[key])]
    return f"{report['checkpoint']} on {report['dataset']}: " + " | ".join(parts)
