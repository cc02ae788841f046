"""The SDR task's row (tasks/common/task_row.Task): SDRnet's paths trained on each client's images, scored as representations, routed by mode=route."""

from __future__ import annotations

from protocol.fields import Metric, TaskMetrics
from tasks.common.federated_data import check_partitions
from tasks.common.task_row import KNN_HISTORY, REPRESENTATION, Task
from tasks.sdr import CONFIG, export
from tasks.sdr.evaluator import SDREvaluator
from tasks.sdr.local import local_round
from tasks.sdr.model import sdr_layout
from tasks.sdr.route import route
from tasks.sdr.settings import SDRSettings, sdr_settings


def preflight(s: SDRSettings) -> None:
    check_partitions(s.images)


TASK = Task(
    "sdr", "images", sdr_layout, local_round, SDREvaluator, preflight,
    TaskMetrics(headline=REPRESENTATION, final=(Metric("mean_path_knn", "mean path kNN"),), series=KNN_HISTORY),
    config=CONFIG, settings=sdr_settings, route=route, learned=export.learned, learned_output=export.OUTPUT)
