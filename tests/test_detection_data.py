"""Detection data (issue 16): VOC and COCO folders parsed and every bad annotation refused with
the file named; the synthetic set deterministic for a seed, with sites that differ as documented."""

import json

import numpy as np
import pytest
from PIL import Image

from tasks.common.data import DataError
from tasks.detection.annotations import read_coco, read_voc
from tasks.detection.synthetic import MAX_IOU, _iou, make_site, site_profile

VOC_XML = """<annotation><filename>{name}.jpg</filename><size><width>{w}</width><height>{h}</height><depth>3</depth></size>
{objects}</annotation>"""
VOC_OBJECT = ("<object><name>{cls}</name><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax>"
              "<ymax>{y2}</ymax></bndbox></object>")


def _voc(root, images):
    """images: {id: [(class, xmin, ymin, xmax, ymax), ...]} on 40x30 pictures."""
    for d in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for image_id, objects in images.items():
        Image.new("RGB", (40, 30)).save(root / "JPEGImages" / f"{image_id}.jpg")
        body = "".join(VOC_OBJECT.format(cls=c, x1=a, y1=b, x2=x, y2=y) for c, a, b, x, y in objects)
        (root / "Annotations" / f"{image_id}.xml").write_text(VOC_XML.format(name=image_id, w=40, h=30, objects=body))
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("\n".join(images) + "\n")


def test_voc_boxes_labels_and_an_image_without_objects(tmp_path):
    _voc(tmp_path, {"a": [("dog", 1, 1, 10, 20), ("person", 5, 6, 40, 30)], "b": []})
    a, b = read_voc(tmp_path)
    assert a.boxes.tolist() == [[0, 0, 10, 20], [4, 5, 40, 30]]  # VOC counts pixels from 1
    assert a.labels.tolist() == [12, 15] and a.size == (30, 40)
    assert b.boxes.shape == (0, 4) and b.labels.shape == (0,)


@pytest.mark.parametrize("objects, message", [
    ([("dog", 1, 1, 45, 20)], "lies outside its 40x30 image"),
    ([("dog", 5, 5, 3, 20)], "has zero area"),
    ([("unicorn", 1, 1, 10, 10)], "unknown class 'unicorn'"),
])
def test_voc_bad_boxes_are_refused_with_the_file(tmp_path, objects, message):
    _voc(tmp_path, {"a": objects})
    with pytest.raises(DataError, match=f"a.xml: .*{message}"):
        read_voc(tmp_path)


def test_voc_missing_image_and_malformed_xml(tmp_path):
    _voc(tmp_path, {"a": [("dog", 1, 1, 10, 10)], "b": []})
    (tmp_path / "JPEGImages" / "a.jpg").unlink()
    with pytest.raises(DataError, match="a.xml: its image .*a.jpg does not exist"):
        read_voc(tmp_path)
    _voc(tmp_path, {"a": [("dog", 1, 1, 10, 10)]})
    (tmp_path / "Annotations" / "a.xml").write_text("<annotation><size>")
    with pytest.raises(DataError, match="a.xml: cannot be read as VOC XML"):
        read_voc(tmp_path)
    with pytest.raises(DataError, match="not a PASCAL VOC folder"):
        read_voc(tmp_path / "JPEGImages")


def _coco(root, annotations, categories=((3, "cat"), (7, "car"))):
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    for name in ("x.png", "y.png"):
        Image.new("RGB", (50, 40)).save(root / "images" / name)
    doc = {"images": [{"id": 1, "file_name": "x.png", "width": 50, "height": 40},
                      {"id": 2, "file_name": "y.png", "width": 50, "height": 40}],
           "categories": [{"id": i, "name": n} for i, n in categories], "annotations": annotations}
    (root / "annotations" / "instances_train.json").write_text(json.dumps(doc))


def test_coco_boxes_categories_crowds_and_an_image_without_objects(tmp_path):
    _coco(tmp_path, [{"id": 10, "image_id": 1, "category_id": 7, "bbox": [2, 3, 10, 5]},
                     {"id": 11, "image_id": 1, "category_id": 3, "bbox": [0, 0, 50, 40]},
                     {"id": 12, "image_id": 1, "category_id": 3, "bbox": [1, 1, 5, 5], "iscrowd": 1}])
    (x, y), classes = read_coco(tmp_path)
    assert classes == ["cat", "car"]
    assert x.boxes.tolist() == [[2, 3, 12, 8], [0, 0, 50, 40]] and x.labels.tolist() == [2, 1]
    assert y.boxes.shape == (0, 4)


@pytest.mark.parametrize("annotation, message", [
    ({"id": 5, "image_id": 1, "category_id": 3, "bbox": [45, 0, 10, 10]}, "annotation 5: box .* outside its 50x40"),
    ({"id": 6, "image_id": 1, "category_id": 3, "bbox": [4, 4, 0, 10]}, "annotation 6: box .* zero area"),
    ({"id": 7, "image_id": 1, "category_id": 9, "bbox": [4, 4, 5, 5]}, "annotation 7: unknown category_id 9"),
    ({"id": 8, "image_id": 4, "category_id": 3, "bbox": [4, 4, 5, 5]}, "annotation 8: image_id 4 is not among"),
])
def test_coco_bad_annotations_are_refused_with_the_file(tmp_path, annotation, message):
    _coco(tmp_path, [annotation])
    with pytest.raises(DataError, match=f"instances_train.json: {message}"):
        read_coco(tmp_path)


def test_coco_missing_image_and_malformed_json(tmp_path):
    _coco(tmp_path, [])
    (tmp_path / "images" / "y.png").unlink()
    with pytest.raises(DataError, match=r"image 2 \(y.png\): its image .*y.png does not exist"):
        read_coco(tmp_path)
    (tmp_path / "annotations" / "instances_train.json").write_text("{not json")
    with pytest.raises(DataError, match="instances_train.json: not a COCO instances file"):
        read_coco(tmp_path)


def test_synthetic_sites_are_deterministic_and_differ_as_documented():
    rng = np.random.default_rng(0)
    objects, labels = rng.integers(0, 256, (200, 32, 32, 3), dtype=np.uint8), np.repeat(np.arange(10), 20)
    profiles = [site_profile(s, 3, 10, 4, 12, 40, seed=0) for s in range(3)]
    assert [p.classes for p in profiles] == [(0, 1, 2, 3), (3, 4, 5, 6), (6, 7, 8, 9)]  # windows from s*C/S
    assert [p.background for p in profiles] == ["field", "gradient", "stripes"]
    assert profiles[0].size_range[1] > profiles[1].size_range[1] > profiles[2].size_range[1]  # near to far
    sites = [make_site(objects, labels, p, 30, seed=0, site=s) for s, p in enumerate(profiles)]
    again = make_site(objects, labels, profiles[1], 30, seed=0, site=1)
    assert np.array_equal(again[0], sites[1][0]) and all(np.array_equal(a, b) for a, b in zip(again[1], sites[1][1]))
    assert not np.array_equal(make_site(objects, labels, profiles[1], 30, seed=1, site=1)[0], sites[1][0])
    sides = []
    for (images, boxes, labs), p in zip(sites, profiles):
        assert images.shape == (30, 64, 64, 3) and images.dtype == np.uint8
        for b, lab in zip(boxes, labs):
            assert 1 <= len(b) <= 3 and set(lab.tolist()) <= {c + 1 for c in p.classes}
            assert (b[:, :2] >= 0).all() and (b[:, 2:] <= 64).all() and (b[:, 2:] > b[:, :2]).all()
            assert all(_iou(b[i], [b[j] for j in range(len(b)) if j != i]) <= MAX_IOU for i in range(len(b)))
        sides.append(np.mean([float(x[2] - x[0]) for b in boxes for x in b]))
        lo, hi = p.size_range
        assert all(lo <= x[2] - x[0] <= hi for b in boxes for x in b)
    assert sides[0] > sides[1] > sides[2]
    # the pixels of a box are the object picture resized: the test split draws other pictures
    test_images = make_site(objects, labels, profiles[0], 5, seed=0, site=0, split="test")[0]
    assert not np.array_equal(test_images, sites[0][0][:5])


def test_a_synthetic_site_exported_as_voc_reads_back_the_same(tmp_path, make_cfg):
    from tasks.detection.data import site_split
    from tasks.detection.settings import detection_settings
    from ops.detection_folders import export

    cfg = make_cfg("dataset=synthetic_detection", "num_clients=2", "dataset.train_images=12", "dataset.test_images=5")
    site1 = export(cfg, tmp_path)[1]
    sites = detection_settings(cfg).sites
    train = site_split(sites, 1, "train")
    back = read_voc(site1, "trainval", sites.classes)
    assert len(back) == 12 and len(read_voc(site1, "test", sites.classes)) == 5
    for s, image, boxes, labels in zip(back, train.images, train.boxes, train.labels):
        assert np.array_equal(np.asarray(Image.open(s.image)), image)  # PNG: lossless
        assert np.array_equal(s.boxes, boxes) and np.array_equal(s.labels, labels)
