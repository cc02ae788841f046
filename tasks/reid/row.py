"""The re-identification task's row (tasks/common/task_row.Task): FedPav's clients train on their identities, scored by retrieval (rank-k, mAP)."""

from __future__ import annotations

from protocol.fields import Metric, Series, TaskMetrics
from tasks.common.task_row import Task
from tasks.reid import CONFIG, export
from tasks.reid.data import check_reid_data
from tasks.reid.distill import make_distill
from tasks.reid.evaluator import ReIDEvaluator
from tasks.reid.local import local_round
from tasks.reid.model import reid_layout
from tasks.reid.settings import reid_settings

TASK = Task(
    "reid", "reid", reid_layout, local_round, ReIDEvaluator, check_reid_data,
    TaskMetrics(headline=(Metric("rank1", "rank-1"), Metric("mAP", "mAP")),
                final=(Metric("rank5", "rank-5"), Metric("rank10", "rank-10")),
                series=Series("retrieval", (("rank1", "rank1"), ("mAP", "mAP")), per_client=True)),
    config=CONFIG, settings=reid_settings, server_hooks=lambda s: {"distill": make_distill(s)},
    learned=export.learned, learned_output=export.OUTPUT)
