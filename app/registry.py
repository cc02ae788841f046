"""The task registry: one row per task, the only place that knows which task a run trains.

A row says, once, how to build the task's upload layout and initial weights, which local round
its clients run (clients/task_client.py is the same Flower client for every task), which
evaluator scores it, what it refuses before training, its config types and its headline metrics
(console line, summary.json, closing line). Which row a run uses follows from what the config
declares: the strategy lists the tasks it can run (`strategy.tasks`) and the dataset its kind
(`dataset.kind`); the first of the strategy's tasks that trains on that kind is the run's task.

Adding a task: a package under tasks/, a row here, its settings in conf/task/<name>.yaml (and its
name in conf/config.yaml's task list), and the datasets/strategies that declare it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import strategies
import tasks.detection
import tasks.detection.export
import tasks.reid
import tasks.reid.export
import tasks.sdr
import tasks.sdr.export
import tasks.ssl.export
from app.config import group_nodes
from protocol.checks import Choice, ConfigError, ListOf, Text
from protocol.fields import Metric, Series, TaskMetrics
from protocol.layout import Layout
from tasks.common.federated_data import check_partitions, partitions
from tasks.common.local import LocalResult, LocalRound
from tasks.detection.data import check_detection_data, check_simulated_sites
from tasks.detection.evaluator import DetectionEvaluator
from tasks.detection.local import local_evaluate as detection_evaluate
from tasks.detection.local import local_round as detection_round
from tasks.detection.model import check_detection_config, detection_layout, detection_options, evaluated_by
from tasks.reid.data import check_reid_data
from tasks.reid.distill import make_distill
from tasks.reid.evaluator import ReIDEvaluator
from tasks.reid.local import local_round as reid_round
from tasks.reid.model import reid_layout
from tasks.sdr.evaluator import SDREvaluator
from tasks.sdr.local import local_round as sdr_round
from tasks.sdr.model import sdr_layout
from tasks.sdr.route import route as sdr_route
from tasks.ssl.evaluator import RepresentationEvaluator
from tasks.ssl.local import local_round as ssl_round
from tasks.ssl.methods import METHODS
from tasks.ssl.model import LAYOUT_OPTIONS, ssl_layout


@dataclass(frozen=True)
class Task:
    """A task's row.

    data_kind: the `dataset.kind` it trains on.
    layout(cfg, options) -> (upload Layout, initial global arrays), built the way clients build it.
    local_round: one client's round (tasks/<task>/local.py).
    evaluator(cfg, layout) -> the strategy's evaluate hook.
    preflight(cfg): raises what it refuses before training (data, sizes, combinations).
    metrics: what its evaluations report (console, summary.json, closing line).
    config: the types of its own config keys (protocol.checks specs).
    layout_options(cfg): the settings that shape its upload (sent to clients in their instructions).
    server_hooks(cfg): extra torch services for strategies (e.g. distill).
    route: mode=route for a task whose models have sub-networks, else None.
    local_evaluate: a client's scoring of its own model on its own test data, for layouts the
        clients evaluate (Layout.evaluated_by == "clients"), else None.
    client_fields(cfg): per-client values of its own that the round's console line shows.
    learned(cfg, layout, arrays) -> the network its evaluator uses, for mode=export, predict and embed
        (tasks/common/export.Learned); learned_output: what that network gives (features, detections).
    simulation_preflight(cfg): what a simulation refuses on top of preflight: it reads every client's
        data itself, where a deployment's SuperNodes may serve their own (local-data).
    """

    name: str
    data_kind: str
    layout: Callable[[dict, dict], tuple[Layout, list]]
    local_round: Callable[[LocalRound], LocalResult]
    evaluator: Callable[[dict, Layout], Callable]
    preflight: Callable[[dict], None]
    metrics: TaskMetrics
    config: dict = field(default_factory=dict)
    layout_options: Callable[[dict], dict] = lambda cfg: {}
    server_hooks: Callable[[dict], dict] = lambda cfg: {}
    route: Callable | None = None
    local_evaluate: Callable[[LocalRound], tuple[int, dict]] | None = None
    client_fields: Callable[[dict], tuple] = lambda cfg: ()
    learned: Callable | None = None
    learned_output: str | None = None
    simulation_preflight: Callable[[dict], None] = lambda cfg: None


REPRESENTATION = (Metric("knn_accuracy", "kNN"), Metric("linear_accuracy", "linear"),
                  Metric("knn_accuracy_bn_reestimated", "kNN (BN re-estimated)"),
                  Metric("linear_accuracy_bn_reestimated", "linear (BN re-estimated)"))
KNN_HISTORY = Series("knn", (("accuracy", "knn_accuracy"),), prefixed=(("accuracy_", "knn_accuracy_"),))


def _ssl_options(cfg: dict) -> dict:
    return {k: cfg["strategy"][k] for k in LAYOUT_OPTIONS if k in cfg["strategy"]}


def _ssl_preflight(cfg: dict) -> None:
    methods = cfg["strategy"].get("methods")
    if methods and cfg["ssl"]["name"] not in methods:
        others = [s for s, node in group_nodes("strategy").items()
                  if "ssl" in node.get("tasks", []) and not node.get("methods")]
        raise ConfigError(f"strategy={cfg['strategy']['name']} is defined for {' or '.join(m.upper() for m in methods)} "
                          f"(ssl={' or ssl='.join(methods)}); run ssl={cfg['ssl']['name']} with "
                          f"{_alternatives('strategy', others)}")
    check_partitions(cfg)
    k = cfg["ssl"].get("num_clusters")
    smallest = min(len(p) for p in partitions(cfg))
    if k is not None and int(k) > smallest:
        raise ConfigError(f"ssl.num_clusters={k} exceeds the {smallest} images of the smallest client; "
                          f"lower ssl.num_clusters (each client clusters its own images)")


def _sdr_preflight(cfg: dict) -> None:
    tasks.sdr.check_sizes(cfg)
    check_partitions(cfg)


def _detection_preflight(cfg: dict) -> None:
    check_detection_config(cfg)
    check_detection_data(cfg, sites_evaluate=evaluated_by(cfg, detection_options(cfg)) == "clients")


TASKS = {
    "ssl": Task(
        "ssl", "images", ssl_layout, ssl_round, RepresentationEvaluator, _ssl_preflight,
        TaskMetrics(headline=REPRESENTATION, final=(Metric("semi_*", "semi"), Metric("knn_accuracy_k*", "kNN, k =")),
                    series=KNN_HISTORY),
        config={f"strategy.{k}": spec for k, spec in LAYOUT_OPTIONS.items()}, layout_options=_ssl_options,
        client_fields=lambda cfg: getattr(METHODS.get(cfg["ssl"]["name"]), "CLIENT_FIELDS", ()),
        learned=tasks.ssl.export.learned, learned_output=tasks.ssl.export.OUTPUT),
    "reid": Task(
        "reid", "reid", reid_layout, reid_round, ReIDEvaluator,
        lambda cfg: check_reid_data(cfg, needs_public=bool(cfg["strategy"].get("kd"))),
        TaskMetrics(headline=(Metric("rank1", "rank-1"), Metric("mAP", "mAP")),
                    final=(Metric("rank5", "rank-5"), Metric("rank10", "rank-10")),
                    series=Series("retrieval", (("rank1", "rank1"), ("mAP", "mAP")), per_client=True)),
        config=tasks.reid.CONFIG, server_hooks=lambda cfg: {"distill": make_distill(cfg)},
        learned=tasks.reid.export.learned, learned_output=tasks.reid.export.OUTPUT),
    "sdr": Task(
        "sdr", "images", sdr_layout, sdr_round, SDREvaluator, _sdr_preflight,
        TaskMetrics(headline=REPRESENTATION, final=(Metric("mean_path_knn", "mean path kNN"),), series=KNN_HISTORY),
        config=tasks.sdr.CONFIG, route=sdr_route, learned=tasks.sdr.export.learned,
        learned_output=tasks.sdr.export.OUTPUT),
    "detection": Task(
        "detection", "detection", detection_layout, detection_round, DetectionEvaluator, _detection_preflight,
        TaskMetrics(headline=(Metric("map", "mAP"), Metric("map_50", "mAP@0.5")),
                    final=(Metric("map_75", "mAP@0.75"), Metric("mar_100", "AR@100")),
                    series=Series("detection", (("map", "map"), ("map_50", "map_50")), per_client=True)),
        config=tasks.detection.CONFIG, layout_options=detection_options, local_evaluate=detection_evaluate,
        learned=tasks.detection.export.learned, learned_output=tasks.detection.export.OUTPUT,
        simulation_preflight=check_simulated_sites),
}

def strategy_targets() -> tuple[str, ...]:
    """The `_target_` values a config may name: the strategy classes the strategies package exports
    (`strategies.__all__`, its base and every subclass of it), each by its defining module's path.
    Nothing else is ever built from a config (a `_target_` is a Python callable: os.system would do)."""
    return tuple(sorted(_strategy_classes()))


def _strategy_classes() -> dict[str, type]:
    """`_target_` -> class, for the strategy classes the strategies package exports."""
    exported = (getattr(strategies, name) for name in strategies.__all__)
    return {f"{c.__module__}.{c.__qualname__}": c for c in exported
            if isinstance(c, type) and issubclass(c, strategies.FedSSL)}


def strategy_class(node: dict) -> type | None:
    """The class a strategy node builds (a run's `cfg["strategy"]`, or a conf/strategy/<name>.yaml): the one
    its `_target_` names, or None when that is not a target a config may name."""
    return _strategy_classes().get(node.get("_target_"))


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


def _alternatives(group: str, options: list[str]) -> str:
    """"strategy=a, strategy=b or strategy=c" (or "another strategy" when there is none)."""
    names = [f"{group}={o}" for o in options] or [f"another {group}"]
    return " or ".join(filter(None, [", ".join(names[:-1]), names[-1]]))
