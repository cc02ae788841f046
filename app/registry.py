"""The task registry: the list of the tasks' rows, the only place that knows which task a run trains.

Each task package exports its row (tasks/<task>/row.py, a tasks/common/task_row.Task). A row says,
once, how to build the task's upload layout and initial weights, which local round its clients run
(clients/task_client.py is the same Flower client for every task), which evaluator scores it, what it refuses before training, its config types and its headline metrics
(console line, summary.json, closing line). Which row a run uses follows from what the config
declares: the strategy lists the tasks it can run (`strategy.tasks`) and the dataset its kind
(`dataset.kind`); the first of the strategy's tasks that trains on that kind is the run's task.

Adding a task: a package under tasks/ with its row.py, the row in TASKS here, its settings in
conf/task/<name>.yaml (and its name in conf/config.yaml's task list), and the datasets/strategies
that declare it.
"""

from __future__ import annotations

import strategies
import tasks.detection.row
import tasks.reid.row
import tasks.sdr.row
import tasks.ssl.row
from app.config import group_nodes
from protocol.checks import Choice, ConfigError, ListOf, Text
from tasks.common.task_row import Task
from tasks.ssl.methods import METHODS

TASKS: dict[str, Task] = {row.name: row for row in (tasks.ssl.row.TASK, tasks.reid.row.TASK, tasks.sdr.row.TASK,
                                                    tasks.detection.row.TASK)}


def strategy_targets() -> tuple[str, ...]:
    """The `_target_` values a config may name: the strategy classes the strategies package exports
    (`strategies.__all__`, its base and every subclass of it), each by its defining module's path.
    Nothing else is ever built from a config (a `_target_` is a Python callable: os.system would do)."""
    return tuple(sorted(_strategy_classes()))


def _strategy_classes() -> dict[str, type]:
    """`_target_` -> class, for the strategy classes the strategies package exports."""
    exported = (getattr(strategies, name) for name in strategies.__all__)
    return {f"{c.__module__}.{c.__qualname__}": c for c in exported
            if isinstance(c, type) and issubclass(c, strategies.FederatedAveraging)}


# `_target_`s that runs saved before a class was renamed name, and the class's name now
RENAMED_TARGETS = {"strategies.base.FedSSL": "strategies.base.FederatedAveraging"}


def current_target(target):
    """A saved run's `_target_` under its class's current name (RENAMED_TARGETS)."""
    return RENAMED_TARGETS.get(target, target)


def strategy_class(node: dict) -> type | None:
    """The class a strategy node builds (a run's `cfg["strategy"]`, or a conf/strategy/<name>.yaml): the one
    its `_target_` names (under its current name), or None when that is not a target a config may name."""
    return _strategy_classes().get(current_target(node.get("_target_")))


STRATEGY_TARGETS = strategy_targets()

# strategy.* keys that describe the strategy to this registry, not arguments of its constructor
STRATEGY_META = {"strategy._target_": Choice(options=STRATEGY_TARGETS), "strategy.name": Text(),
                 "strategy.tasks": ListOf(item=Choice(options=tuple(TASKS)), min_length=1),
                 "strategy.methods": ListOf(item=Choice(options=tuple(METHODS)))}


def not_constructor_args() -> set[str]:
    """Keys of a strategy node that its constructor does not take (meta keys, tasks' layout options)."""
    keys = {k.split(".", 1)[1] for k in STRATEGY_META if k != "strategy.name"}
    for task in TASKS.values():
        keys |= {k.split(".", 1)[1] for k in task.config if k.startswith("strategy.")}
    return keys


def task_of(cfg: dict) -> Task:
    """The run's task: the first of the strategy's tasks that trains on the dataset's kind."""
    strategy, dataset = cfg["strategy"], cfg["dataset"]
    declared = [TASKS[t] for t in strategy["tasks"]]
    for task in declared:
        if task.data_kind == dataset["kind"]:
            if task.method_section:
                _check_method(cfg, task.method_section)
            _check_refused(task, cfg)
            return task
    kinds = sorted({t.data_kind for t in declared})
    by_strategy = [s for s, node in group_nodes("strategy").items()
                   if any(TASKS[t].data_kind == dataset["kind"] for t in node.get("tasks", []))]
    by_dataset = [d for d, node in group_nodes("dataset").items() if node.get("kind") in kinds]
    use_strategy = (f"{_alternatives('strategy', by_strategy)}", f"with dataset={dataset['name']}")
    use_dataset = (f"{_alternatives('dataset', by_dataset)}", f"with strategy={strategy['name']}")
    first, second = sorted([use_strategy, use_dataset], key=lambda u: u[0].count("="))
    raise ConfigError(
        f"strategy={strategy['name']} trains task {' or '.join(strategy['tasks'])} on data sets of kind "
        f"{' or '.join(kinds)}; dataset={dataset['name']} is of kind {dataset['kind']}. "
        f"Use {first[0]} ({first[1]}), or {second[0]} ({second[1]})")


def _check_method(cfg: dict, section: str) -> None:
    """A strategy defined for some of a task's methods only (`strategy.methods`: FedBYOL, FedU for BYOL)
    refuses the others; `section`: the config group that names the run's method (Task.method_section)."""
    methods, method = cfg["strategy"].get("methods"), cfg[section]["name"]
    if methods and method not in methods:
        tasks = {t.name for t in TASKS.values() if t.method_section == section}
        others = [s for s, node in group_nodes("strategy").items()
                  if tasks & set(node.get("tasks", [])) and not node.get("methods")]
        raise ConfigError(f"strategy={cfg['strategy']['name']} is defined for {' or '.join(m.upper() for m in methods)} "
                          f"({section}={f' or {section}='.join(methods)}); run {section}={method} with "
                          f"{_alternatives('strategy', others)}")


def _check_refused(task: Task, cfg: dict) -> None:
    """A key of another section that the task declares it cannot run with (Task.refuses), when it is set."""
    for key, why in task.refuses.items():
        section, name = key.split(".", 1)
        value = (cfg.get(section) or {}).get(name)
        if value:
            shown = str(value).lower() if isinstance(value, bool) else value
            raise ConfigError(f"{key}={shown} is not for task {task.name}: {why}")


def _alternatives(group: str, options: list[str]) -> str:
    """"strategy=a, strategy=b or strategy=c" (or "another strategy" when there is none)."""
    names = [f"{group}={o}" for o in options] or [f"another {group}"]
    return " or ".join(filter(None, [", ".join(names[:-1]), names[-1]]))
