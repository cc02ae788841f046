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

import time
from dataclasses import dataclass
from pathlib import Path

from app.config import (ConfigError, centralise, compose, group_nodes, key_of, override_value, recompose,
                        saved_command_line, to_plain)
from app.environment import writable_folder
from app.federation import build_layout
from app.outputs import RunFolderTaken
from app.registry import TASKS, task_of
from tasks.common.task_row import Task
from app.summary import SummarySchema
from protocol.layout import Layout
from tasks.common.atomic import write_json_atomic
from tasks.common.checkpoint import CheckpointError, checkpoint_models, load_checkpoint
from tasks.common.export import DETECTIONS, FEATURES

INIT = "init"
MAY_CHANGE = ("eval", "dataset", "seed")  # the evaluation protocol: changed only when the command says so
THIS_MACHINE = ("device", "data_dir", "cache_dir", "output_dir", "mode", "checkpoint", "images", "predict", "embed")


def _top(override: str) -> str:
    return key_of(override).split(".")[0]


@dataclass
class OfflineSetup:
    """What mode=evaluate/export/predict/embed work on, composed and built once: the config to
    evaluate with, the composed config (with Hydra's node, for the run folder), the run's task row
    and its section (Task.settings), the model layout, {name: arrays} (global, or one per client)
    and the checkpoint as read (None for checkpoint=init)."""

    cfg: dict
    composed: object
    task: Task
    settings: object
    layout: Layout
    models: dict
    payload: dict | None = None


def evaluation_setup(argv: list[str]) -> OfflineSetup:
    """The setup of `mode=evaluate` (and export/predict/embed) for its command line: the config is
    composed once, the task's section built once, the model built once."""
    source = override_value(argv, "checkpoint")
    if not source:
        raise CheckpointError("mode=evaluate needs checkpoint=<run>/checkpoint_final.pt, or checkpoint=init "
                              "for the model the config starts from")
    if source == INIT:
        payload, composed = None, compose(argv, with_hydra=True)
        cfg = dict(to_plain(composed), command_line=list(argv))
    else:
        payload = load_checkpoint(source)
        refuse_other_kind(source, payload["config"], override_value(argv, "dataset"))
        trained = [o for o in saved_command_line(payload["config"]) if _top(o) not in THIS_MACHINE]
        composed = compose(trained + [o for o in argv if _top(o) in MAY_CHANGE + THIS_MACHINE], with_hydra=True)
        cfg = dict(centralise(to_plain(composed)), command_line=list(argv))
    task = task_of(cfg)
    settings = task.settings(cfg)
    layout, initial = build_layout(cfg, task, settings)
    if payload is None:
        return OfflineSetup(cfg, composed, task, settings, layout, {"global": initial})
    models = checkpoint_models(payload)
    shapes = [a.shape for a in next(iter(models.values()))]
    if list(payload["keys"]) != list(layout.keys) or shapes != [tuple(s) for s in layout.shapes]:
        raise CheckpointError(f"{describe_checkpoint(source, payload['config'])}: its keys do not match the model its "
                              f"own config builds in this code version ({len(payload['keys'])} arrays in the file, "
                              f"{len(layout.keys)} in the model; written by a different code version?)")
    return OfflineSetup(cfg, composed, task, settings, layout, models, payload)


def checkpoint_task(config: dict) -> Task | None:
    """The task a checkpoint's recorded config trains (None when this code version cannot place it)."""
    try:
        return task_of(config)
    except (ConfigError, KeyError, TypeError, AttributeError):
        return None


def describe_checkpoint(source: str, config: dict) -> str:
    """"<file> is a checkpoint of task ssl (strategy=fedu, ssl=byol, dataset=cifar10, resnet18 width 0.25)",
    from the config the checkpoint recorded."""
    task, model = checkpoint_task(config), config.get("model") or {}
    net = f"{model.get('arch', '?')} width {model.get('width', '?')}"
    detector = task is not None and task.learned_output == DETECTIONS
    if detector:
        backbone = (config.get("detection") or {}).get("backbone", "project")
        net = f"a detector on {net if backbone == 'project' else backbone}"
    parts = [f"strategy={(config.get('strategy') or {}).get('name', '?')}",
             *([f"ssl={config['ssl']['name']}"] if task is not None and not detector and config.get("ssl") else []),
             f"dataset={(config.get('dataset') or {}).get('name', '?')}", net]
    return f"{source} is a checkpoint of task {task.name if task else '?'} ({', '.join(parts)})"


def refuse_other_kind(source: str, config: dict, dataset: str | None) -> None:
    """Refuse evaluating a checkpoint on `dataset=` of a kind its task does not train on (a detector on
    CIFAR, an SSL encoder on a detection set), naming what the file is and what fits it."""
    task, nodes = checkpoint_task(config), group_nodes("dataset")
    if task is None or dataset not in nodes or nodes[dataset].get("kind") == task.data_kind:
        return
    kind = nodes[dataset].get("kind")
    fits = [d for d, node in nodes.items() if node.get("kind") == task.data_kind]
    others = [name for name, t in TASKS.items() if t.data_kind == kind]
    start = (f" (to start a detector from this encoder, train one with detection.backbone_init={source})"
             if task.learned_output == FEATURES and any(t.learned_output == DETECTIONS for t in TASKS.values()
                                                        if t.data_kind == kind) else "")
    raise CheckpointError(f"{describe_checkpoint(source, config)}; dataset={dataset} is of kind {kind}, which task "
                          f"{task.name} does not evaluate on: evaluate it on dataset={' or dataset='.join(fits)}, or "
                          f"give checkpoint=<a checkpoint of task {' or '.join(others)}> for dataset={dataset}{start}")


def refuse_existing(out_dir: str | Path, names: tuple[str, ...], mode: str) -> None:
    """An earlier result of `mode` in `out_dir` is never replaced: refused before any work."""
    out = Path(out_dir)
    taken = [str(out / n) for n in names if (out / n).exists()]
    if taken:
        raise RunFolderTaken(f"mode={mode}: {', '.join(taken)} already exist(s) (an earlier {mode}); remove it or "
                             f"pass output_dir=<another folder> (or leave output_dir out for a new folder)")


def evaluate_offline(setup: OfflineSetup, out_dir: str | Path) -> dict:
    """Evaluate the models once, as at the end of a run; writes evaluation.json (never over an earlier one)."""
    refuse_existing(out_dir, ("evaluation.json",), "evaluate")
    writable_folder(out_dir)
    t0 = time.perf_counter()
    cfg, task = setup.cfg, setup.task
    result = task.evaluator(setup.settings, setup.layout)(0, setup.models, final=True)
    report = {"status": "completed", "checkpoint": str(cfg["checkpoint"]), "task": task.name,
              "dataset": cfg["dataset"]["name"], "strategy": cfg["strategy"]["name"], "ssl": cfg["ssl"]["name"],
              "final": result, "eval_seconds": time.perf_counter() - t0}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "evaluation.json", report, default=float)
    return report


def evaluation_line(cfg: dict, report: dict) -> str:
    schema = SummarySchema(task_of(cfg).metrics)
    return f"{report['checkpoint']} on {report['dataset']}: " + " | ".join(schema.scores(report["final"], final=True))


def route_offline(cfg: dict, out_dir: str | Path) -> dict:
    """mode=route: the checkpoint's task ranks its sub-networks on this command's data set."""
    if not cfg.get("checkpoint"):
        raise CheckpointError("mode=route needs checkpoint=<path to an SDR run's checkpoint_final.pt>")
    refuse_existing(out_dir, ("route.json", *sorted(p.name for p in Path(out_dir).glob("backbone_path*.pt"))), "route")
    writable_folder(out_dir)
    payload = load_checkpoint(cfg["checkpoint"])
    trained = recompose(saved_command_line(payload["config"]), [])  # as this code version builds it
    task = task_of(trained)
    if task.route is None:
        routable = [name for name, t in TASKS.items() if t.route is not None]
        raise CheckpointError(f"{cfg['checkpoint']} is a checkpoint of task {task.name} (strategy="
                              f"{trained['strategy']['name']}), which has no sub-networks to route; routing needs "
                              f"one of task {' or '.join(routable)}")
    return task.route(task.settings(trained), payload["keys"], checkpoint_models(payload)["global"], cfg, out_dir)
