"""The detection metric: COCO's figures from torchmetrics' MeanAveragePrecision (pycocotools
backend), with PASCAL VOC's "difficult" objects ignored as the VOC protocol ignores them.

The rule (Everingham et al. 2010, "The PASCAL Visual Object Classes (VOC) Challenge", §4.1, and
the VOC devkit's evaluation): a difficult object does not count among the positives (missing it
lowers no recall), and a detection matched to it (its highest-overlap object of its class in the
image, the devkit's argmax over all of them, is difficult with IoU >= the threshold) is neither a
true nor a false positive: it is left out. Any other detection is scored as COCO scores it.

Why not torchmetrics' `iscrowd`: pycocotools treats a crowd region differently from VOC's rule. Its
overlap with a crowd region is intersection over the *detection's* area, not IoU (a small box
inside a large difficult object would be ignored where VOC counts it false), and a detection goes
to an ignored region only when no ordinary object matches it (VOC: to the best overlap, difficult
or not). So the exclusion is done here, exactly, per IoU threshold: at each of COCO's thresholds
t (0.50:0.05:0.95) the detections VOC ignores at t are removed, the difficult objects are removed,
and torchmetrics scores the rest at t. COCO's figures are means over thresholds of the same valid
entries at every threshold (the classes that have objects), so `map`, `map_small|medium|large`
and `mar_100` are the means of the per-threshold figures, `map_50` and `map_75` those at 0.5 and
0.75. Without difficult objects (`detection.voc_difficult=include`, COCO folders, the synthetic set)
it is one torchmetrics evaluation, as before. IoU is torchvision's on continuous pixel boxes, the
same as COCO's (the devkit adds one pixel to widths; boxes here are already converted).
"""

from __future__ import annotations

import torch
from torchmetrics.detection import MeanAveragePrecision
from torchvision.ops import box_iou

METRICS = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_100")
IOU_THRESHOLDS = torch.linspace(0.5, 0.95, 10).tolist()  # COCO's, as torchmetrics builds them
MEANS = ("map", "map_small", "map_medium", "map_large", "mar_100")  # averaged over the thresholds


def coco_map(iou_thresholds: list[float] | None = None) -> MeanAveragePrecision:
    return MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="pycocotools",
                                iou_thresholds=iou_thresholds)


def voc_ignored(pred: dict, target: dict, threshold: float) -> torch.Tensor:
    """Which of an image's detections VOC ignores at IoU `threshold`: those whose highest-IoU
    object of the same class (the first of equals, in the annotation's order, as the devkit's
    argmax) is difficult and overlaps it by at least `threshold`."""
    boxes, labels = pred["boxes"].reshape(-1, 4).float(), pred["labels"]
    ignored = torch.zeros(len(labels), dtype=torch.bool)
    difficult = target["difficult"].bool()
    if not difficult.any() or len(labels) == 0:
        return ignored
    iou = box_iou(boxes, target["boxes"].reshape(-1, 4).float())
    iou[labels[:, None] != target["labels"][None, :]] = -1.0  # only objects of the detection's class
    best, which = iou.max(dim=1)
    return (best >= threshold) & difficult[which]


class DetectionMAP:
    """MeanAveragePrecision's update/compute with VOC's difficult objects ignored (targets may
    carry a bool `difficult` per box; without it every object counts)."""

    def __init__(self):
        self.preds: list[dict] = []
        self.targets: list[dict] = []

    def update(self, preds: list[dict], targets: list[dict]) -> None:
        if len(preds) != len(targets):
            raise ValueError(f"{len(preds)} predictions for {len(targets)} images")
        self.preds.extend(preds)
        for t in targets:
            flags = t.get("difficult")
            flags = torch.zeros(len(t["labels"]), dtype=torch.bool) if flags is None else torch.as_tensor(flags).bool()
            self.targets.append({"boxes": t["boxes"], "labels": t["labels"], "difficult": flags})

    def compute(self) -> dict:
        plain = [{"boxes": t["boxes"], "labels": t["labels"]} for t in self.targets]
        if not any(bool(t["difficult"].any()) for t in self.targets):
            metric = coco_map()
            metric.update(self.preds, plain)
            return {k: float(v) for k, v in metric.compute().items() if k in METRICS}
        kept = [{"boxes": t["boxes"][~t["difficult"]], "labels": t["labels"][~t["difficult"]]} for t in self.targets]
        per_threshold = []
        for threshold in IOU_THRESHOLDS:
            preds = []
            for p, t in zip(self.preds, self.targets):
                keep = ~voc_ignored(p, t, threshold)
                preds.append({k: p[k][keep] for k in ("boxes", "scores", "labels")})
            metric = coco_map([threshold])
            metric.update(preds, kept)
            out = metric.compute()
            per_threshold.append({k: float(out[k]) for k in MEANS})
        figures = {}
        for k in MEANS:
            valid = [f[k] for f in per_threshold if f[k] > -1]
            figures[k] = sum(valid) / len(valid) if valid else -1.0
        figures["map_50"] = per_threshold[0]["map"]
        figures["map_75"] = per_threshold[IOU_THRESHOLDS.index(min(IOU_THRESHOLDS, key=lambda t: abs(t - 0.75)))]["map"]
        return figures
