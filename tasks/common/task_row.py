"""A task's row: everything the rest of the project needs to know of a task, exported by the task's own package (`TASK` in tasks/<task>/row.py).

app/registry.py lists the rows and picks the run's; the federation carries the row it picked, so
the server, the clients and the offline commands use one row and never look the task up again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from protocol.fields import Metric, Series, TaskMetrics
from protocol.layout import Layout
from tasks.common.local import LocalResult, LocalRound


@dataclass(frozen=True)
class Task:
    """A task's row.

    settings(cfg) -> the task's own typed section of the run's config (tasks/<task>/settings.py),
        built and checked once: the federation carries it, every callable below that takes
        `settings` gets it, and a client's LocalRound holds it. The task's code reads nothing else
        of the config (tests/test_layers.py).
    data_kind: the `dataset.kind` it trains on.
    layout(settings, options) -> (upload Layout, initial global arrays), built the way clients build it.
    local_round: one client's round (tasks/<task>/local.py).
    evaluator(settings, layout) -> the strategy's evaluate hook.
    preflight(settings): raises what it refuses before training (data, sizes, combinations).
    metrics: what its evaluations report (console, summary.json, closing line).
    config: the types of its own config keys (protocol.checks specs).
    method_section: the config group naming the task's method (ssl: `ssl`), which a strategy that
        is defined for some methods only (`strategy.methods`) restricts; None when it has none.
    refuses: keys of another section (a strategy's) that the task cannot run with when they are set,
        each with why and what to set instead; refused before anything is built (app/registry.task_of).
    layout_options(settings): the settings that shape its upload (sent to clients in their instructions).
    server_hooks(settings): extra torch services for strategies (e.g. distill).
    route(settings, keys, arrays, cfg, out_dir): mode=route for a task whose models have sub-networks
        (settings: the trained run's section; cfg: the routing command's config), else None.
    local_evaluate: a client's scoring of its own model on its own test data, for layouts the
        clients evaluate (Layout.evaluated_by == "clients"), else None.
    client_fields(settings): per-client values of its own that the round's console line shows.
    learned(settings, layout, arrays) -> the network its evaluator uses, for mode=export, predict and
        embed (tasks/common/export.Learned); learned_output: what that network gives (features, detections).
    simulation_preflight(settings): what a simulation refuses on top of preflight: it reads every
        client's data itself, where a deployment's SuperNodes may serve their own (local-data).
    """

    name: str
    data_kind: str
    layout: Callable[[Any, dict], tuple[Layout, list]]
    local_round: Callable[[LocalRound], LocalResult]
    evaluator: Callable[[Any, Layout], Callable]
    preflight: Callable[[Any], None]
    metrics: TaskMetrics
    settings: Callable[[dict], Any]
    config: dict = field(default_factory=dict)
    method_section: str | None = None
    refuses: dict[str, str] = field(default_factory=dict)
    layout_options: Callable[[Any], dict] = lambda settings: {}
    server_hooks: Callable[[Any], dict] = lambda settings: {}
    route: Callable | None = None
    local_evaluate: Callable[[LocalRound], tuple[int, dict]] | None = None
    client_fields: Callable[[Any], tuple] = lambda settings: ()
    learned: Callable | None = None
    learned_output: str | None = None
    simulation_preflight: Callable[[Any], None] = lambda settings: None


# what a representation is scored by (tasks ssl and sdr): kNN and the linear probe, with both BatchNorm readings
REPRESENTATION = (Metric("knn_accuracy", "kNN"), Metric("linear_accuracy", "linear"),
                  Metric("knn_accuracy_bn_reestimated", "kNN (BN re-estimated)"),
                  Metric("linear_accuracy_bn_reestimated", "linear (BN re-estimated)"))
KNN_HISTORY = Series("knn", (("accuracy", "knn_accuracy"),), prefixed=(("accuracy_", "knn_accuracy_"),))
