"""The detection task's row (tasks/common/task_row.Task): FedVision's sites train an FCOS detector, scored by COCO mAP on the server or on the sites."""

from __future__ import annotations

from protocol.fields import Metric, Series, TaskMetrics
from tasks.common.task_row import Task
from tasks.detection import CONFIG, export
from tasks.detection.data import check_detection_data, check_simulated_sites
from tasks.detection.evaluator import DetectionEvaluator
from tasks.detection.local import local_evaluate, local_round
from tasks.detection.model import check_detection_config, detection_layout, evaluated_by
from tasks.detection.settings import DetectionSettings, detection_settings


def preflight(s: DetectionSettings) -> None:
    check_detection_config(s)
    check_detection_data(s, sites_evaluate=evaluated_by(s, s.layout_options()) == "clients")


TASK = Task(
    "detection", "detection", detection_layout, local_round, DetectionEvaluator, preflight,
    TaskMetrics(headline=(Metric("map", "mAP"), Metric("map_50", "mAP@0.5")),
                final=(Metric("map_75", "mAP@0.75"), Metric("mar_100", "AR@100")),
                series=Series("detection", (("map", "map"), ("map_50", "map_50")), per_client=True)),
    config=CONFIG, settings=detection_settings, layout_options=DetectionSettings.layout_options,
    refuses={"strategy.cdw": "FedPav's re-ID weighting (classifier outputs before and after training); detection "
                             "under strategy=fedpav averages by images: set strategy.cdw=false"},
    local_evaluate=local_evaluate, learned=export.learned, learned_output=export.OUTPUT,
    simulation_preflight=check_simulated_sites)
