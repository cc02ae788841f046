"""Combinations that cannot work are refused before anything starts, naming what was given to what.

A folder detection set without its folders (before Ray and before a run folder exists), a
checkpoint of one task given to a command or dataset of another (what the file is, read from
the config it recorded), fp16 on a CPU (a warning: it runs, slowly), and messages about many
clients that name the first few and count the rest.
"""

from __future__ import annotations

import logging

import pytest

from app.simulation import preflight
from protocol.messages import few, grouped
from tasks.common.checkpoint import CheckpointError
from tests.conftest import one_line_error, refused_by_main_py


@pytest.mark.parametrize("dataset", [["dataset=voc"], ["dataset=coco_folders", "dataset.classes=[car,person]"]])
def test_a_folder_detection_set_without_roots_is_refused_before_ray_and_before_a_run_folder(
        dataset, data_dir, cache_dir, tmp_path):
    out = tmp_path / "run"
    message = refused_by_main_py("experiment=smoke", "strategy=fedavg", "num_clients=2", *dataset,
                                 f"data_dir={data_dir}", f"cache_dir={cache_dir}", f"output_dir={out}")
    name = dataset[0].split("=")[1]
    assert message == (f"error: dataset={name} needs dataset.roots, one folder per site (num_clients=2), e.g. "
                       f"'dataset.roots=[/data/site0,/data/site1]': a simulation reads every site's images from them "
                       f"(a deployment's SuperNodes may serve their own with --node-config local-data=<folder>)")
    assert not out.exists() and not (tmp_path / "outputs").exists()


def test_the_same_set_in_a_deployment_is_left_to_the_supernodes(make_cfg):
    from app.federation import prepare

    prepare(make_cfg("strategy=fedavg", "dataset=voc", "num_clients=2"), deployed=True)  # local-data serves each site


def test_a_detection_checkpoint_on_an_ssl_dataset_says_what_the_file_is(detection_checkpoint, tmp_path):
    message = one_line_error(["mode=evaluate", f"checkpoint={detection_checkpoint}", "dataset=cifar10",
                              f"output_dir={tmp_path / 'out'}"])
    assert message == (f"error: {detection_checkpoint} is a checkpoint of task detection (strategy=fedavg, "
                       f"dataset=synthetic_detection, a detector on resnet10 width 0.125); dataset=cifar10 is of kind "
                       f"images, which task detection does not evaluate on: evaluate it on dataset=coco_folders or "
                       f"dataset=synthetic_detection or dataset=voc, or give checkpoint=<a checkpoint of task ssl or "
                       f"sdr> for dataset=cifar10")
    assert not (tmp_path / "out").exists()


def test_an_ssl_checkpoint_on_a_detection_dataset_says_what_the_file_is_not_to_change_strategy(ssl_checkpoint):
    message = one_line_error(["mode=evaluate", f"checkpoint={ssl_checkpoint}", "dataset=synthetic_detection"])
    assert message.startswith(f"error: {ssl_checkpoint} is a checkpoint of task ssl (strategy=fedu, ssl=byol, "
                              f"dataset=cifar10, resnet10 width 0.125); dataset=synthetic_detection is of kind detection")
    assert "give checkpoint=<a checkpoint of task detection>" in message and "strategy=fedavg" not in message
    assert f"train one with detection.backbone_init={ssl_checkpoint}" in message


def test_a_detection_checkpoint_as_backbone_init_is_named_a_detector(detection_checkpoint, make_cfg):
    cfg = make_cfg("strategy=fedavg", "dataset=synthetic_detection", "num_clients=2",
                   f"detection.backbone_init={detection_checkpoint}")
    with pytest.raises(CheckpointError) as err:
        preflight(cfg)
    assert str(err.value) == (f"detection.backbone_init={detection_checkpoint} is a checkpoint of task detection "
                              f"(strategy=fedavg, dataset=synthetic_detection): a whole detector, not an SSL encoder; "
                              f"give an SSL run's checkpoint_final.pt (e.g. of strategy=fedu dataset=cifar100), or "
                              f"detection.backbone_init=random")


def test_the_wrong_tasks_checkpoint_in_export_predict_and_embed_is_one_line(ssl_checkpoint, detection_checkpoint,
                                                                            tmp_path):
    assert one_line_error(["mode=predict", f"checkpoint={ssl_checkpoint}", f"images={tmp_path}"]).startswith(
        f"error: {ssl_checkpoint} is a checkpoint of task ssl (strategy=fedu, dataset=cifar10), whose network gives "
        f"features; mode=predict needs a checkpoint of task detection")
    assert one_line_error(["mode=embed", f"checkpoint={detection_checkpoint}", f"images={tmp_path}"]).startswith(
        f"error: {detection_checkpoint} is a checkpoint of task detection")
    assert one_line_error(["mode=route", f"checkpoint={detection_checkpoint}", "dataset=cifar10"]).startswith(
        f"error: {detection_checkpoint} is a checkpoint of task detection (strategy=fedavg), which has no sub-networks")


def test_fp16_on_a_cpu_warns_once_that_bf16_is_the_fast_choice(make_cfg, caplog):
    with caplog.at_level(logging.WARNING, logger="fedssl"):
        preflight(make_cfg("device=cpu", "precision=fp16"))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert warnings[0].startswith("precision=fp16 on a CPU runs about 8x slower than bf16") and "precision=bf16" in warnings[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fedssl"):
        preflight(make_cfg("device=cpu", "precision=bf16"))
    assert not [r for r in caplog.records if "precision" in r.getMessage()]


def test_many_clients_are_named_by_the_first_few_and_a_count(make_cfg):
    assert few(range(3)) == "[0, 1, 2]"
    assert few(range(1000)) == "[0, 1, 2, 3, 4, 5, 6, 7, ... and 992 more]"
    assert grouped([(i, "out of memory") for i in range(1000)] + [(7, "NaN loss")]) == (
        "clients [0, 1, 2, 3, 4, 5, 6, 7, ... and 992 more]: out of memory; client 7: NaN loss")
    assert grouped([(1, "a"), (2, "b")]) == "client 1: a; client 2: b"
    with pytest.raises(Exception) as err:  # 1,000 clients of 50 images each, batch_size 128
        preflight(make_cfg("num_clients=1000", "partition=iid", "examples_per_client=null", "batch_size=128"))
    assert "clients [0, 1, 2, 3, 4, 5, 6, 7, ... and 992 more] hold fewer examples than batch_size=128" in str(err.value)
    assert len(str(err.value)) < 300


def test_the_console_line_of_a_round_with_many_failures_stays_short():
    from app.summary import SummarySchema

    record = {"round": 1, "clients": {}, "selected": list(range(1000)),
              "failures": [{"partition_id": i, "error": "x"} for i in range(1000)]}
    from app.registry import TASKS

    line = SummarySchema(TASKS["ssl"].metrics).progress_line(record, 3)
    assert "FAILED clients [0, 1, 2, 3, 4, 5, 6, 7, ... and 992 more]" in line and len(line) < 200
