"""The detection task's learned network for mode=export/predict: the whole federated FCOS detector."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from protocol.layout import Layout
from tasks.common.export import CHECK_IMAGES, DETECTIONS, Learned, OneImageDetector
from tasks.detection.data import site_test
from tasks.detection.evaluator import DetectionEvaluator
from tasks.detection.settings import DetectionSettings, Detector

OUTPUT = DETECTIONS


def input_size(d: Detector) -> tuple[int, int]:
    """The square image the detector's transform leaves as it is: side min(dataset.min_size, max_size)."""
    side = min(d.min_size, d.max_size)
    return side, side


def resized(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 H,W,3 -> uint8 size[0],size[1],3 (bilinear, antialiased; unchanged at that size)."""
    if tuple(image.shape[:2]) == tuple(size):
        return np.ascontiguousarray(image)
    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    t = F.interpolate(t, size=size, mode="bilinear", antialias=True, align_corners=False)
    return t.round().clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 0).contiguous().numpy()


def learned(s: DetectionSettings, layout: Layout, arrays: list[np.ndarray]) -> Learned:
    """The detector as the server evaluates it (DetectionEvaluator.load: a detector whose heads or
    BatchNorm stayed on the sites is refused, the server never held it whole)."""
    net = DetectionEvaluator(s, layout).load(arrays).cpu().eval()
    size = input_size(s.detector)
    test = site_test(s.sites, 0)
    rows = np.linspace(0, len(test) - 1, min(CHECK_IMAGES, len(test))).astype(np.int64)
    images = np.stack([resized(test.images[i], size) for i in rows])
    return Learned(
        name="detector", what=f"FCOS detector over the {s.detector.backbone} backbone with its FPN and heads (whole)",
        method="fcos (torchvision's losses, federated)", weights=net, runner=OneImageDetector(net), output=OUTPUT,
        input_size=size, batchnorm="aggregated",
        batchnorm_detail="the backbone's running statistics the strategy aggregated, as uploaded by the clients",
        check_images=images, check_source=f"site 0's test images {rows.tolist()} ({s.sites.dataset}), "
                                          f"resized to {size[0]}x{size[1]}",
        mean=tuple(float(v) for v in net.transform.image_mean), std=tuple(float(v) for v in net.transform.image_std),
        classes=s.detector.classes,
        rebuild="from tasks.detection.model import build_detector\nfrom tasks.detection.settings import "
                "detection_settings\nnet = build_detector(detection_settings(card['config']).detector)")
