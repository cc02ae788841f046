"""mode=predict (issue 30): the federated detector on a folder written by `python -m ops.detection_folders`,
its COCO results read back by torchmetrics against the folder's annotations; the detector's export;
and what predict refuses."""

import json

import numpy as np
import pytest
import torch

from app.commands import run_command
from app.config import recompose
from app.federation import build_layout
from tasks.common.checkpoint import CheckpointError, save_checkpoint
from tasks.common.data import DataError
from tests.conftest import main_py, smoke_run

pytest.importorskip("onnxruntime")

SITES = ["dataset=synthetic_detection", "num_clients=2", "dataset.train_images=16", "dataset.test_images=8"]
RUN = ["strategy=fedavg", *SITES, "num_rounds=1", "detection.lr_schedule=constant"]


@pytest.fixture(scope="module")
def detection_run(tmp_path_factory, data_dir, cache_dir):
    """A one-round smoke detection federation (FedAvg, two synthetic sites): its directory."""
    return smoke_run(tmp_path_factory.mktemp("detection") / "run", data_dir, cache_dir, *RUN)


@pytest.fixture(scope="module")
def site_folder(tmp_path_factory, data_dir, cache_dir):
    """Site 0 of the same synthetic set as a VOC folder, written by ops.detection_folders."""
    out = tmp_path_factory.mktemp("sites")
    done = main_py(str(out), "experiment=smoke", *SITES, f"data_dir={data_dir}", f"cache_dir={cache_dir}",
                   module="ops.detection_folders")
    assert done.returncode == 0, done.stderr[-3000:]
    return out / "site0"


def test_predict_writes_a_png_per_image_and_coco_results_torchmetrics_reads_back(detection_run, site_folder,
                                                                               data_dir, tmp_path):
    from torchvision.io import decode_image, read_file

    from app.offline import evaluation_setup
    from tasks.detection.annotations import read_voc
    from tasks.detection.data import DetectionSet
    from tasks.detection.evaluator import site_scores

    ckpt, images = detection_run / "checkpoint_final.pt", site_folder / "JPEGImages"
    done = main_py("mode=predict", f"checkpoint={ckpt}", f"images={images}", "predict.score=0.05",
                   f"data_dir={data_dir}", f"output_dir={tmp_path}")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    out = tmp_path / "predictions"
    files = sorted(p.name for p in images.iterdir())
    assert len(files) == 24 and sorted(p.name for p in out.glob("*.png")) == files  # one PNG per image
    drawn = decode_image(read_file(str(out / files[0])))
    assert drawn.shape == (3, 256, 256)  # the 64x64 images, drawn enlarged 4x
    results = json.loads((out / "detections.json").read_text())
    assert results and set(results[0]) == {"image_id", "file_name", "category_id", "category_name", "bbox", "score"}
    assert min(r["score"] for r in results) >= 0.05 and f"{len(results)} detections" in done.stdout
    # read back: COCO [x, y, w, h] results against the folder's VOC annotations, one entry per image
    setup = evaluation_setup([f"checkpoint={ckpt}", f"data_dir={data_dir}"])
    cfg, names = setup.cfg, setup.settings.detector.classes
    truth = {s.image.name: s for split in ("trainval", "test") for s in read_voc(site_folder, split, names)}
    preds, targets = [], []
    for name in files:
        mine = [r for r in results if r["file_name"] == name]
        assert all(names[r["category_id"] - 1] == r["category_name"] for r in mine)
        boxes = torch.tensor([r["bbox"] for r in mine], dtype=torch.float32).reshape(-1, 4)
        preds.append({"boxes": boxes, "scores": torch.tensor([r["score"] for r in mine]),
                      "labels": torch.tensor([r["category_id"] for r in mine], dtype=torch.int64)})
        targets.append({"boxes": torch.from_numpy(truth[name].boxes), "labels": torch.from_numpy(truth[name].labels)})
    from torchmetrics.detection import MeanAveragePrecision

    metric = MeanAveragePrecision(box_format="xywh", iou_type="bbox", backend="pycocotools")
    metric.update(preds, targets)
    read_back = float(metric.compute()["map"])
    # the same number as the evaluator's own scoring of the checkpoint's detector on those images
    net = setup.task.learned(setup.settings, setup.layout, setup.models["global"]).weights
    data = DetectionSet([np.asarray(decode_image(read_file(str(images / n))).permute(1, 2, 0)) for n in files],
                        [truth[n].boxes for n in files], [truth[n].labels for n in files])
    direct, _ = site_scores(net, data, torch.device("cpu"), int(cfg["detection"]["eval_batch_size"]))
    assert read_back == pytest.approx(direct["map"], abs=1e-6) and direct["detections"] == len(results)


def test_the_detector_exports_to_onnx_that_onnx_runtime_runs_like_pytorch(detection_run, data_dir, tmp_path):
    run_command(["mode=export", f"checkpoint={detection_run / 'checkpoint_final.pt'}", f"data_dir={data_dir}",
                 f"output_dir={tmp_path}"])
    card = json.loads((tmp_path / "detector.json").read_text())
    assert card["task"] == "detection" and card["output"]["kind"] == "detections"
    assert card["output"]["classes"] == [f"class{i}" for i in range(1, 11)] and card["input"]["size"] == [64, 64]
    check = card["checks"]["onnx"]["check"]
    assert check["matched"] > 0 and check["max_abs_diff"] <= check["tolerance"]
    assert card["checks"]["onnx"]["exporter"] == "torch.onnx (TorchScript)"
    assert sorted(card["files"]) == ["card", "onnx", "safetensors"]


def test_predict_refuses_another_tasks_checkpoint_an_empty_folder_and_a_corrupt_checkpoint(
        detection_run, data_dir, tmp_path):
    line = ["experiment=smoke", "strategy=fedu", "dataset=cifar10"]
    cfg = dict(recompose(line, []), command_line=line)
    layout, arrays = build_layout(cfg)
    ssl = save_checkpoint(tmp_path / "ssl.pt", cfg, layout.keys, {"global": arrays}, 1)
    (tmp_path / "empty").mkdir()
    unreadable = tmp_path / "unreadable"
    unreadable.mkdir()
    (unreadable / "a.png").write_bytes(b"not a png")
    with pytest.raises(CheckpointError, match=r"ssl.pt is a checkpoint of task ssl \(strategy=fedu, dataset=cifar10\), "
                                              r"whose network gives features; mode=predict needs a checkpoint of task "
                                              r"detection \(a network that gives detections\)"):
        run_command(["mode=predict", f"checkpoint={ssl}", f"images={tmp_path / 'empty'}", f"data_dir={data_dir}"])
    argv = ["mode=predict", f"checkpoint={detection_run / 'checkpoint_final.pt'}", f"data_dir={data_dir}",
            f"output_dir={tmp_path / 'out'}"]
    with pytest.raises(DataError, match=r"empty: no image files \(.*\) in it or below it"):
        run_command([*argv, f"images={tmp_path / 'empty'}"])
    with pytest.raises(DataError, match="unreadable: none of its 1 image files could be read"):
        run_command([*argv, f"images={unreadable}"])
    assert not (tmp_path / "out" / "predictions").exists() and not list((tmp_path / "out").glob(".predictions-*"))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x80\x02truncated")
    with pytest.raises(CheckpointError, match="mode=predict: checkpoint .*bad.pt is corrupt or not a checkpoint"):
        run_command(["mode=predict", f"checkpoint={bad}", f"images={unreadable}", f"data_dir={data_dir}"])
    with pytest.raises(CheckpointError, match=r"is a checkpoint of task detection .* whose network gives detections; "
                                              r"mode=embed needs a checkpoint of task ssl or reid or sdr"):
        run_command(["mode=embed", f"checkpoint={detection_run / 'checkpoint_final.pt'}", f"images={unreadable}",
                     f"data_dir={data_dir}"])
