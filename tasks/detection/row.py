"""The detection task's row (tasks/common/task_row.Task): FedVision's sites train an FCOS detector, scored by COCO mAP on the server or on the sites."""

from __future__ import annotations

from protocol.fields import Metric, Series, TaskMetrics
from tasks.common.task_row import Task
from tasks.detection import CONFIG, export
from tasks.detection.data import check_detection_data, check_simulated_sites
from tasks.detection.evaluator import DetectionEvaluator
from tasks.detection.local import local_evaluate, local_round
from tasks.detection.model import check_detection_config, detection_layout, detection_options, evaluated_by


def preflight(cfg: dict) -> None:
    check_detection_config(cfg)
    check_detection_data(cfg, sites_evaluate=evaluated_by(cfg, detection_options(cfg)) == "clients")


TASK = Task(
    "detection", "detection", detection_layout, local_round, DetectionEvaluator, preflight,
    TaskMetrics(headline=(Metric("map", "mAP"), Metric("map_50", "mAP@0.5")),
                final=(Metric("map_75", "mAP@0.75"), Metric("mar_100", "AR@100")),
                series=Series("detection", (("map", "map"), ("map_50", "map_50")), per_client=True)),
    config=CONFIG, layout_options=detection_options, local_evaluate=local_evaluate,
    learned=export.learned, learned_output=export.OUTPUT, simulation_preflight=check_simulated_sites)
