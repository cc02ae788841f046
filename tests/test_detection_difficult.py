"""PASCAL VOC's difficult objects at evaluation (tasks/detection/metric.py, `detection.voc_difficult`):
under `ignore` (the VOC protocol, Everingham et al. 2010) a difficult object is not a positive and a
detection matched to it is neither a true nor a false positive; under `include` both count. Read
from a tiny VOC folder written here, scored with the project's evaluation."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchmetrics.detection import MeanAveragePrecision

from app.schema import validate
from protocol.checks import ConfigError
from tasks.common.data import DataError
from tasks.detection.annotations import read_voc
from tasks.detection.data import site_test as site_test_of
from tasks.detection.settings import detection_settings
from tasks.detection.evaluator import mean_average_precision, scores, targets_of

CLASSES = ("dog", "cat")
# image a: a dog and a difficult dog far apart; image b: a cat and a large difficult cat (0-based x1 y1 x2 y2)
DOG, HARD_DOG = [2, 2, 22, 22], [40, 40, 60, 60]
CAT, HARD_CAT = [2, 2, 20, 20], [24, 24, 64, 64]


def site_test(cfg, site):
    """The test split of site `site` as the run builds it (its detection settings)."""
    return site_test_of(detection_settings(cfg).sites, site)


def _object(cls, box, difficult):
    x1, y1, x2, y2 = box
    flag = "" if difficult is None else f"<difficult>{difficult}</difficult>"
    return (f"<object><name>{cls}</name>{flag}<bndbox><xmin>{x1 + 1}</xmin><ymin>{y1 + 1}</ymin><xmax>{x2}</xmax>"
            f"<ymax>{y2}</ymax></bndbox></object>")


def _voc(root, images, split="test"):
    """images: {id: [(class, box, difficult flag or None), ...]} on 64x64 pictures."""
    for d in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for image_id, objects in images.items():
        Image.new("RGB", (64, 64)).save(root / "JPEGImages" / f"{image_id}.png")
        body = "".join(_object(*o) for o in objects)
        (root / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><filename>{image_id}.png</filename><size><width>64</width><height>64</height>"
            f"<depth>3</depth></size>{body}</annotation>")
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(images) + "\n")
    return root


@pytest.fixture
def site(tmp_path):
    return _voc(tmp_path / "site0", {"a": [("dog", DOG, 0), ("dog", HARD_DOG, 1)],
                                     "b": [("cat", CAT, None), ("cat", HARD_CAT, 1)]})


def _cfg(make_cfg, root, mode):
    cfg = make_cfg("strategy=fedavg", "dataset=voc", "num_clients=1", f"dataset.roots=[{root}]",
                   f"dataset.classes=[{','.join(CLASSES)}]", "dataset.max_size=64", f"detection.voc_difficult={mode}")
    validate(cfg)
    return cfg


def _pred(*detections):
    """detections: (box, score, class index 1..C)"""
    return {"boxes": torch.tensor([d[0] for d in detections], dtype=torch.float32).reshape(-1, 4),
            "scores": torch.tensor([d[1] for d in detections], dtype=torch.float32),
            "labels": torch.tensor([d[2] for d in detections], dtype=torch.int64)}


def _score(cfg, predictions):
    m = mean_average_precision()
    m.update(predictions, targets_of(site_test(cfg, 0)))
    return scores(m)


def test_the_difficult_flag_is_read_and_kept_for_evaluation_only_under_ignore(make_cfg, site):
    a, b = read_voc(site, "test", CLASSES)
    assert a.difficult.tolist() == [False, True] and b.difficult.tolist() == [False, True]  # absent: 0
    assert a.boxes.tolist() == [DOG, HARD_DOG] and a.labels.tolist() == [1, 1]  # still objects of the image
    ignore = site_test(_cfg(make_cfg, site, "ignore"), 0)
    assert [d.tolist() for d in ignore.difficult] == [[False, True], [False, True]]
    assert site_test(_cfg(make_cfg, site, "include"), 0).difficult is None
    assert make_cfg("strategy=fedavg", "dataset=voc")["detection"]["voc_difficult"] == "ignore"  # the default


def test_a_missed_difficult_object_lowers_recall_only_under_include(make_cfg, site):
    found = [_pred((DOG, 0.9, 1)), _pred((CAT, 0.9, 2))]  # the ordinary objects only
    ignore = _score(_cfg(make_cfg, site, "ignore"), found)
    assert ignore["map"] == pytest.approx(1.0) and ignore["map_50"] == pytest.approx(1.0)
    assert ignore["mar_100"] == pytest.approx(1.0)
    include = _score(_cfg(make_cfg, site, "include"), found)
    assert include["mar_100"] == pytest.approx(0.5) and include["map_50"] < 0.6  # 1 of 2 objects per class


def test_detections_matched_to_a_difficult_object_are_neither_true_nor_false_under_ignore(make_cfg, site):
    shifted = [42, 41, 61, 61]  # a second detection of the difficult dog (IoU ~0.8 with it)
    preds = [_pred((HARD_DOG, 0.95, 1), (shifted, 0.93, 1), (DOG, 0.9, 1)), _pred((CAT, 0.9, 2), (HARD_CAT, 0.8, 2))]
    ignore = _score(_cfg(make_cfg, site, "ignore"), preds)
    # as if they were not there, at every threshold up to the duplicate's IoU (0.78): at 0.8 and above it
    # matches nothing, and is a false positive there as VOC's rule says
    assert ignore["map_50"] == pytest.approx(1.0) and ignore["map_75"] == pytest.approx(1.0)
    include = _score(_cfg(make_cfg, site, "include"), preds)
    # dog: TP, FP (the duplicate), TP: COCO's 101-point AP (51 x 1 + 50 x 2/3) / 101; cat: both found
    assert include["map_50"] == pytest.approx(((51 + 50 * 2 / 3) / 101 + 1.0) / 2, abs=1e-4)


def test_a_small_detection_inside_a_difficult_object_is_still_a_false_positive(make_cfg, site):
    """VOC matches by IoU: a box inside the large difficult cat with IoU < 0.5 matches nothing and is
    a false positive (pycocotools' crowd regions, by intersection over the detection's area, would
    ignore it: why `iscrowd` is not used)."""
    inside = [30, 30, 40, 40]  # IoU with HARD_CAT 100/1600
    preds = [_pred((DOG, 0.9, 1)), _pred((inside, 0.95, 2), (CAT, 0.9, 2))]
    ignore = _score(_cfg(make_cfg, site, "ignore"), preds)
    assert ignore["map_50"] == pytest.approx((1.0 + 0.5) / 2, abs=1e-4)  # cat: FP then TP, precision 1/2
    crowd = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="pycocotools")
    t = targets_of(site_test(_cfg(make_cfg, site, "include"), 0))
    crowd.update(preds, [dict(x, iscrowd=torch.tensor([0, 1])) for x in t])
    assert float(crowd.compute()["map_50"]) == pytest.approx(1.0)  # COCO's crowd rule hides it


def test_the_per_threshold_figures_equal_coco_without_the_difficult_objects():
    """A difficult object nothing overlaps: the figures are COCO's own on the rest, at every
    threshold (jittered boxes: APs that differ between thresholds), by size and for recall."""
    rng = np.random.default_rng(0)
    targets, preds, plain_targets = [], [], []
    for i in range(6):
        boxes = rng.uniform(0, 40, (3, 2)).repeat(2, axis=1)[:, [0, 2, 1, 3]] + np.array([0, 0, 8, 8]) * (1 + i % 3)
        labels = np.array([1, 2, 1 + i % 2])
        hard = np.array([[100, 100, 140, 130]])  # far from everything
        targets.append({"boxes": torch.tensor(np.vstack([boxes, hard]), dtype=torch.float32),
                        "labels": torch.tensor([*labels, 2]), "difficult": torch.tensor([False] * 3 + [True])})
        plain_targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels)})
        jitter = rng.normal(0, 2.0, boxes.shape)
        preds.append({"boxes": torch.tensor(boxes + jitter, dtype=torch.float32), "scores": torch.tensor(rng.uniform(0, 1, 3),
                      dtype=torch.float32), "labels": torch.tensor(labels)})
    ours = mean_average_precision()
    ours.update(preds, targets)
    coco = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="pycocotools")
    coco.update(preds, plain_targets)
    expected = {k: float(v) for k, v in coco.compute().items() if k in scores(ours)}
    assert 0 < expected["map"] < expected["map_50"]  # the thresholds differ
    assert scores(ours) == pytest.approx(expected, abs=1e-6)


def test_a_bad_difficult_flag_and_setting_are_refused(tmp_path, make_cfg):
    root = _voc(tmp_path / "bad", {"a": [("dog", DOG, "yes")]})
    with pytest.raises(DataError, match="a.xml: object 'dog' has <difficult>yes</difficult>, expected 0 or 1"):
        read_voc(root, "test", CLASSES)
    with pytest.raises(ConfigError, match="detection.voc_difficult"):
        validate(make_cfg("strategy=fedavg", "dataset=voc", "detection.voc_difficult=maybe"))
