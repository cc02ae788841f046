"""The SSL task's row (tasks/common/task_row.Task): BYOL and its relatives trained on each client's images, scored by kNN and the linear probe."""

from __future__ import annotations

from protocol.checks import ConfigError
from protocol.fields import Metric, TaskMetrics
from tasks.common.federated_data import check_partitions, partitions
from tasks.common.task_row import KNN_HISTORY, REPRESENTATION, Task
from tasks.ssl import export
from tasks.ssl.evaluator import RepresentationEvaluator
from tasks.ssl.local import local_round
from tasks.ssl.methods import METHODS
from tasks.ssl.model import LAYOUT_OPTIONS, ssl_layout
from tasks.ssl.settings import SSLSettings, ssl_settings


def preflight(s: SSLSettings) -> None:
    check_partitions(s.images)
    k = s.method.get("num_clusters")
    smallest = min(len(p) for p in partitions(s.images))
    if k is not None and int(k) > smallest:
        raise ConfigError(f"ssl.num_clusters={k} exceeds the {smallest} images of the smallest client; "
                          f"lower ssl.num_clusters (each client clusters its own images)")


TASK = Task(
    "ssl", "images", ssl_layout, local_round, RepresentationEvaluator, preflight,
    TaskMetrics(headline=REPRESENTATION, final=(Metric("semi_*", "semi"), Metric("knn_accuracy_k*", "kNN, k =")),
                series=KNN_HISTORY),
    config={f"strategy.{k}": spec for k, spec in LAYOUT_OPTIONS.items()}, settings=ssl_settings, method_section="ssl",
    layout_options=SSLSettings.layout_options,
    client_fields=lambda s: getattr(METHODS.get(s.name), "CLIENT_FIELDS", ()),
    learned=export.learned, learned_output=export.OUTPUT)
