"""The federated detector on a user's image files (mode=predict): detect, draw, COCO results.

Each image is read as it is (any size), shrunk as the detection folders are read for training when
its longer side exceeds `dataset.max_size` (tasks/detection/data.py), and given to the detector,
whose own transform then resizes it to `dataset.min_size`/`max_size` as in training and maps the
boxes back; the boxes are returned in the original image's pixels.
"""

from __future__ import annotations

import colorsys

import torch
import torch.nn.functional as F
from torchvision.models.detection import FCOS


def shrunk(image: torch.Tensor, max_side: int) -> tuple[torch.Tensor, float]:
    """float 3,H,W in [0, 1] of a uint8 image, shrunk so that its longer side is at most `max_side`
    (bilinear, antialiased), and the scale applied."""
    x = image.float().div(255.0)
    scale = min(1.0, max_side / max(x.shape[1:]))
    if scale < 1.0:
        size = [max(1, round(x.shape[1] * scale)), max(1, round(x.shape[2] * scale))]
        x = F.interpolate(x[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0].clamp(0, 1)
    return x, scale


@torch.no_grad()
def detect(net: FCOS, images: list[torch.Tensor], max_side: int, device: torch.device) -> list[dict]:
    """Boxes (x1, y1, x2, y2 in each original image's pixels), scores and labels 1..C of uint8 3,H,W
    images, in one batch (eval mode, fp32), on the CPU."""
    net.to(device).eval()
    inputs = [shrunk(image, max_side) for image in images]
    out = net([x.to(device) for x, _ in inputs])
    return [{"boxes": p["boxes"].cpu() / scale, "scores": p["scores"].cpu(), "labels": p["labels"].cpu()}
            for p, (_, scale) in zip(out, inputs)]


def colours(n: int) -> list[tuple[int, int, int]]:
    """One bright colour per class, evenly spaced in hue."""
    return [tuple(int(255 * c) for c in colorsys.hsv_to_rgb(i / max(1, n), 0.9, 1.0)) for i in range(n)]


DRAW_MIN_SIDE = 256  # smaller images are drawn enlarged (integer factor, nearest), so that labels stay legible


def draw(image: torch.Tensor, detections: dict, names: tuple[str, ...]) -> torch.Tensor:
    """uint8 3,H,W with each box drawn in its class's colour and labelled "<class> <score>"; an image
    whose longer side is under DRAW_MIN_SIDE pixels is first enlarged by an integer factor."""
    from torchvision.utils import draw_bounding_boxes

    factor = max(1, -(-DRAW_MIN_SIDE // max(image.shape[1:])))
    if factor > 1:
        image = image.repeat_interleave(factor, dim=1).repeat_interleave(factor, dim=2)
    if not len(detections["boxes"]):
        return image
    palette = colours(len(names))
    labels = [int(v) for v in detections["labels"]]
    text = [f"{names[c - 1]} {float(s):.2f}" for c, s in zip(labels, detections["scores"])]
    width = max(1, round(min(image.shape[1:]) / 160))
    return draw_bounding_boxes(image, detections["boxes"] * factor, labels=text,
                               colors=[palette[c - 1] for c in labels], width=width)


def coco_results(image_id: int, file_name: str, detections: dict, names: tuple[str, ...]) -> list[dict]:
    """COCO results entries of one image: bbox [x, y, width, height] in pixels, category by id 1..C and name."""
    out = []
    for (x1, y1, x2, y2), score, label in zip(detections["boxes"].tolist(), detections["scores"].tolist(),
                                              detections["labels"].tolist()):
        out.append({"image_id": image_id, "file_name": file_name, "category_id": int(label),
                    "category_name": names[int(label) - 1], "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score})
    return out
