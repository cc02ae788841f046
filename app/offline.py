"""The commands that run no federation: `mode=evaluate` and `mode=route`, each composing once.

- `mode=evaluate checkpoint=<run>/checkpoint_final.pt`: the checkpoint's models (global, or one
  per client for standalone) evaluated as at the end of its run, with its own config (rebuilt
  from its command line, as resume does), so the numbers equal the run's, except what this
  command gives explicitly: `eval.*` keys, `dataset=` (transfer) and `seed=`; `device`,
  `data_dir` and `cache_dir` are always this machine's. Writes evaluation.json.
- `mode=evaluate checkpoint=init`: the model this command's config starts from (same seed), the
  random-initialisation baseline every trained number should be compared with.
- `mode=route checkpoint=<run>/checkpoint_final.pt dataset=<downstream>`: a task with
  sub-networks (SDR) ranks them on the downstream set and exports the best (tasks/sdr/route.py).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from app.config import centralise, compose, key_of, override_value, recompose, to_plain
from app.federation import build_layout
from app.registry import TASKS, task_of
from app.summary import SummarySchema
from protocol.layout import Layout
from tasks.common.checkpoint import CheckpointError, checkpoint_models, load_checkpoint

INIT = "init"
MAY_CHANGE = ("eval", "dataset", "seed")  # the evaluation protocol: changed only when the command says so
THIS_MACHINE = ("device", "data_dir", "cache_dir", "output_dir", "mode", "checkpoint", "images", "predict", "embed")


def _top(override: str) -> str:
    return key_of(override).split(".")[0]


def evaluation_setup(argv: list[str]) -> tuple[dict, dict, Layout, object]:
    """(config to evaluate with, {name: arrays}, their layout, the composed config with Hydra's node)
    for the command line of `mode=evaluate`; the config is composed once, the model built once."""
    source = override_value(argv, "checkpoint")
    if not source:
        raise CheckpointError("mode=evaluate needs checkpoint=<run>/checkpoint_final.pt, or checkpoint=init "
                              "for the model the config starts from")
    if source == INIT:
        composed = compose(argv, with_hydra=True)
        cfg = dict(to_plain(composed), command_line=list(argv))
        layout, initial = build_layout(cfg)
        return cfg, {"global": initial}, layout, composed
    payload = load_checkpoint(source)
    trained = [o for o in payload["config"].get("command_line") or [] if _top(o) not in THIS_MACHINE]
    composed = compose(trained + [o for o in argv if _top(o) in MAY_CHANGE + THIS_MACHINE], with_hydra=True)
    cfg = dict(centralise(to_plain(composed)), command_line=list(argv))
    layout, _ = build_layout(cfg)
    models = checkpoint_models(payload)
    shapes = [a.shape for a in next(iter(models.values()))]
    if list(payload["keys"]) != list(layout.keys) or shapes != [tuple(s) for s in layout.shapes]:
        raise CheckpointError(f"checkpoint {source}: its keys do not match the model its own config builds "
                              f"(written by a different code version?)")
    return cfg, models, layout, composed


def evaluate_offline(cfg: dict, models: dict, layout: Layout, out_dir: str | Path) -> dict:
    """Evaluate the models once, as at the end of a run; writes evaluation.json."""
    t0 = time.perf_counter()
    task = task_of(cfg)
    result = task.evaluator(cfg, layout)(0, models, final=True)
    report = {"status": "completed", "checkpoint": str(cfg["checkpoint"]), "task": task.name,
              "dataset": cfg["dataset"]["name"], "strategy": cfg["strategy"]["name"], "ssl": cfg["ssl"]["name"],
              "final": result, "eval_seconds": time.perf_counter() - t0}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "evaluation.json").write_text(json.dumps(report, indent=2, default=float))
    return report


def evaluation_line(cfg: dict, report: dict) -> str:
    schema = SummarySchema(task_of(cfg).metrics)
    return f"{report['checkpoint']} on {report['dataset']}: " + " | ".join(schema.scores(report["final"], final=True))


def route_offline(cfg: dict, out_dir: str | Path) -> dict:
    """mode=route: the checkpoint's task ranks its sub-networks on this command's data set."""
    if not cfg.get("checkpoint"):
        raise CheckpointError("mode=route needs checkpoint=<path to an SDR run's checkpoint_final.pt>")
    payload = load_checkpoint(cfg["checkpoint"])
    trained = recompose(payload["config"].get("command_line") or [], [])  # as this code version builds it
    task = task_of(trained)
    if task.route is None:
        routable = [name for name, t in TASKS.items() if t.route is not None]
        raise CheckpointError(f"{cfg['checkpoint']} is a checkpoint of task {task.name} (strategy="
                              f"{trained['strategy']['name']}), which has no sub-networks to route; routing needs "
                              f"one of task {' or '.join(routable)}")
    return task.route(trained, payload["keys"], checkpoint_models(payload)["global"], cfg, out_dir)
