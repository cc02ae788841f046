"""Server-side detection evaluation (issue 16, docs/algorithms.md#federated-object-detection-fedvision), given to the strategy as a hook: COCO
mAP@[.5:.95] (`map`) and mAP@0.5 (`map_50`) per site and over all sites, with torchmetrics'
MeanAveragePrecision (pycocotools backend, COCO's own evaluation) rather than code of ours; VOC's
difficult objects are ignored as the VOC protocol does (tasks/detection/metric.py,
`detection.voc_difficult`).

The global model is evaluated on every site's test images (`per_client`); the overall figure
pools every site's images into one COCO evaluation (not the mean of the sites'). Under
standalone, site k's own model on site k's images, pooled the same way. Where the sites score
their own models (`detection.evaluate=clients`, and partial averaging, whose heads never leave
the sites), each client runs `site_scores` on its test split (tasks/detection/local.py) and the
server merges the reports (strategies/site_evaluation.py).
"""

from __future__ import annotations

import numpy as np
import torch

from protocol.layout import Layout
from tasks.common.arrays import set_arrays
from tasks.common.checkpoint import CheckpointError
from tasks.common.training import resolve_device
from tasks.detection.data import DetectionSet, site_test
from tasks.detection.metric import METRICS, DetectionMAP
from tasks.detection.model import build_detector, sites_keep_parts, upload_keys
from tasks.detection.settings import DetectionSettings
from tasks.detection.train import predict


def mean_average_precision() -> DetectionMAP:
    return DetectionMAP()


def targets_of(data: DetectionSet) -> list[dict]:
    """The evaluation's targets; `difficult` (bool per box) where the data marks VOC's difficult objects."""
    out = [{"boxes": torch.from_numpy(np.asarray(b, np.float32)).reshape(-1, 4),
            "labels": torch.from_numpy(np.asarray(y, np.int64))} for b, y in zip(data.boxes, data.labels)]
    for t, d in zip(out, data.difficult or []):
        t["difficult"] = torch.from_numpy(np.asarray(d, bool))
    return out


def scores(metric: DetectionMAP) -> dict:
    """The metric's COCO figures as floats (-1, COCO's "no such objects", stays -1)."""
    out = metric.compute()
    return {k: float(out[k]) for k in METRICS}


def site_scores(net, data: DetectionSet, device: torch.device, batch_size: int) -> tuple[dict, list[dict]]:
    """(COCO figures with images and detections, the predictions) of `net` on one site's test set."""
    predictions = predict(net, data, device, batch_size)
    metric = mean_average_precision()
    metric.update(predictions, targets_of(data))
    return ({**scores(metric), "images": len(data), "detections": int(sum(len(p["boxes"]) for p in predictions))},
            predictions)


class DetectionEvaluator:
    def __init__(self, settings: DetectionSettings, layout: Layout):
        self.settings = settings
        self.options = dict(layout.options)
        self._sets: dict[int, DetectionSet] = {}

    def test_set(self, site: int) -> DetectionSet:
        if site not in self._sets:
            self._sets[site] = site_test(self.settings.sites, site)
        return self._sets[site]

    def load(self, arrays: list[np.ndarray]):
        if sites_keep_parts(self.options):
            raise CheckpointError("parts of this detector stayed on the sites (its heads under partial averaging, or "
                             "its BatchNorm under strategy.bn=local), so the server cannot score it; the sites' own "
                             "scores of each evaluated round are in the run's summary.json (detection, per_client)")
        net = build_detector(self.settings.detector)
        set_arrays(net, upload_keys(net, self.options), arrays)
        return net

    def __call__(self, server_round: int, models: dict[str, list[np.ndarray]], final: bool) -> dict:
        device = resolve_device(self.settings.device)
        bs = self.settings.eval_batch_size
        sites = range(self.settings.sites.count)
        if list(models) == ["global"]:
            net = self.load(models["global"])
            nets = {site: net for site in sites}
        else:  # standalone: each site's own model
            nets = {int(name): self.load(arrays) for name, arrays in models.items()}
        overall, per_client = mean_average_precision(), {}
        for site, net in nets.items():
            data = self.test_set(site)
            per_client[str(site)], predictions = site_scores(net, data, device, bs)
            overall.update(predictions, targets_of(data))
        return {**scores(overall), "per_client": per_client, "final": final,
                "images": int(sum(c["images"] for c in per_client.values()))}
