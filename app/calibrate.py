"""A few real training steps before a run starts, to say how long its rounds will take.

The task's own local round runs on partition 0, capped at three batches and one epoch, in the
threads a client will have; its measured images/s and the partitions' sizes give the first
round's estimate (app/progress.py). Best effort: a task without image partitions, or any error,
just leaves the estimate to the first clients that finish.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from app.progress import round_estimate
from protocol.instructions import Instructions
from tasks.common.federated_data import partitions
from tasks.common.sections import images_of
from tasks.common.local import LocalRound
from tasks.common.task_row import Task
from tasks.common.training import use_threads

log = logging.getLogger("fedssl")


def first_round_estimate(cfg: dict, task: Task, layout, initial: list, parallel: int, threads: int) -> float | None:
    """Seconds the first round's training should take, from three measured batches."""
    try:
        sizes = np.array([len(p) for p in partitions(images_of(cfg))], dtype=float)  # examples_per_client applied
        small = {**cfg, "local_epochs": 1, "examples_per_client": 3 * int(cfg["batch_size"])}
        ins = Instructions(server_round=1, layout=layout.fingerprint, layout_options=dict(layout.options))
        before = torch.get_num_threads()
        use_threads(threads)
        try:
            out = task.local_round(LocalRound(small, 0, ins, list(initial), None, settings=task.settings(small)))
        finally:
            torch.set_num_threads(before)
        rate = float(out.metrics["images_per_second"])
    except Exception as err:  # noqa: BLE001 - an estimate is optional
        log.debug("no time estimate before the first round: %s", err)
        return None
    return round_estimate(1.0 / max(rate, 1e-9), float(sizes.mean()), cfg, parallel)
