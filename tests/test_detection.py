"""Federated object detection (issue 16): COCO mAP on hand-made boxes, the detector built from an
SSL checkpoint, refusals before training, and smoke federations (FedAvg, standalone, centralised)
writing mAP per site into summary.json."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from app.federation import prepare
from protocol.checks import ConfigError
from tasks.common.checkpoint import CheckpointError, save_checkpoint
from tasks.common.data import DataError
from tasks.detection.data import DetectionSet, client_train, site_split
from tasks.detection.evaluator import mean_average_precision, scores, targets_of
from tasks.detection.model import build_detector, detection_layout, upload_keys
from tasks.detection.settings import detection_settings as settings_of
from tasks.detection.train import batch
from tasks.ssl.model import build_federated_method
from tasks.ssl.settings import ssl_settings
from tests.conftest import ROOT

DET = ["strategy=fedavg", "dataset=synthetic_detection", "num_clients=2"]


def _truth() -> DetectionSet:
    boxes = [np.array([[2, 2, 20, 20], [30, 30, 60, 50]], np.float32), np.array([[10, 5, 40, 35]], np.float32)]
    labels = [np.array([1, 2]), np.array([2])]
    return DetectionSet([np.zeros((64, 64, 3), np.uint8)] * 2, boxes, labels)


def _map(predictions, truth):
    m = mean_average_precision()
    m.update(predictions, targets_of(truth))
    return scores(m)


def test_map_of_a_perfect_prediction_is_one_and_of_an_empty_one_zero():
    truth = _truth()
    perfect = [dict(t, scores=torch.ones(len(t["labels"]))) for t in targets_of(truth)]
    assert _map(perfect, truth)["map"] == pytest.approx(1.0) and _map(perfect, truth)["map_50"] == pytest.approx(1.0)
    empty = [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}] * 2
    assert _map(empty, truth)["map"] == 0.0 and _map(empty, truth)["map_50"] == 0.0
    # the right boxes with the wrong classes find nothing; one of three objects found: recall 1/3
    wrong = [dict(p, labels=3 - p["labels"]) for p in perfect]
    assert _map(wrong, truth)["map_50"] == 0.0
    one = [{"boxes": perfect[0]["boxes"][:1], "scores": torch.ones(1), "labels": perfect[0]["labels"][:1]}, empty[0]]
    assert _map(one, truth)["mar_100"] == pytest.approx((1.0 + 0.0) / 2)  # class 1: 1/1, class 2: 0/2


def test_flipped_batch_mirrors_its_boxes():
    truth = _truth()
    truth.images[0] = np.arange(64 * 64 * 3, dtype=np.uint8).reshape(64, 64, 3)
    (x,), (t,) = batch(truth, [0], torch.device("cpu"), torch.tensor([True]))
    assert torch.equal(x, torch.flip(torch.from_numpy(truth.images[0]).permute(2, 0, 1).float() / 255, dims=[2]))
    assert t["boxes"].tolist() == [[44, 2, 62, 20], [4, 30, 34, 50]]


def _ssl_checkpoint(path, cfg, noise_seed=1):
    method, _, keys = build_federated_method(ssl_settings(cfg))
    g = torch.Generator().manual_seed(noise_seed)
    arrays = [(t + torch.randn(t.shape, generator=g) if t.is_floating_point() else t).numpy()
              for t in (method.state_dict()[k] for k in keys)]
    save_checkpoint(path, cfg, keys, {"global": arrays}, 3)
    return dict(zip(keys, arrays))


def test_a_detector_from_an_ssl_checkpoint_holds_its_encoder(tmp_path, make_cfg):
    saved = _ssl_checkpoint(tmp_path / "ssl.pt", make_cfg("strategy=fedu"))
    cfg = make_cfg(*DET, f"detection.backbone_init={tmp_path / 'ssl.pt'}")
    layout, initial = detection_layout(settings_of(cfg), {})
    got = dict(zip(layout.keys, initial))
    body = [k for k in layout.keys if k.startswith("backbone.body.")]
    assert body and all(np.array_equal(got[k], saved["online.backbone." + k[len("backbone.body."):]]) for k in body)
    plain_layout, plain = detection_layout(settings_of(make_cfg(*DET)), {})
    random = dict(zip(plain_layout.keys, plain))
    assert not np.array_equal(random[body[0]], got[body[0]])  # not the random init
    head = [k for k in layout.keys if k.startswith("head.")]
    assert all(np.array_equal(random[k], got[k]) for k in head)  # the heads start as they would


def test_backbone_init_refuses_another_width_and_a_corrupt_file(tmp_path, make_cfg):
    _ssl_checkpoint(tmp_path / "wide.pt", make_cfg("strategy=fedu", "model.width=0.25"))
    with pytest.raises(CheckpointError, match=r"wide.pt: backbone.body.conv1.weight has shape \(16, 3, 3, 3\) in the "
                                              r"checkpoint but \(8, 3, 3, 3\) in this detector; .*model.width"):
        detection_layout(settings_of(make_cfg(*DET, f"detection.backbone_init={tmp_path / 'wide.pt'}")), {})
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pt is corrupt"):
        detection_layout(settings_of(make_cfg(*DET, f"detection.backbone_init={tmp_path / 'bad.pt'}")), {})


@pytest.mark.parametrize("overrides, message", [
    (["detection.fpn_channels=48"], "detection.fpn_channels must be a multiple of 32"),
    (["dataset=coco_folders", "dataset.roots=[a,b]"], "dataset.classes is required"),
    (["detection.backbone=resnet18", "detection.backbone_init=x.pt"], "needs detection.backbone=project"),
    (["dataset.max_object=80"], "dataset.max_object <= dataset.canvas"),
    (["detection.batch_size=100"], "site 0 has 64 training images, fewer than detection.batch_size=100"),
    (["dataset=voc", "detection.evaluate=server"], "dataset.roots lists 0 folders but the federation has 2 sites"),
    (["strategy=fedu"], "dataset=synthetic_detection is of kind detection"),
    (["strategy=fedpav", "strategy.cdw=true"], "strategy.cdw=true is not for task detection: FedPav's re-ID weighting"),
])
def test_bad_detection_settings_are_refused_before_training(make_cfg, overrides, message):
    with pytest.raises((ConfigError, DataError), match=message):
        prepare(make_cfg(*DET, *overrides), "/nonexistent")


def test_sites_and_the_centralised_client(make_cfg):
    cfg = make_cfg(*DET)
    sites = settings_of(cfg).sites
    a, b = site_split(sites, 0, "train"), site_split(sites, 1, "train")
    assert {int(y) for ys in a.labels for y in ys} != {int(y) for ys in b.labels for y in ys}  # non-IID classes
    assert len(client_train(sites, 0)) == 64  # examples_per_client caps a site
    pooled = client_train(settings_of(dict(cfg, num_clients=1, centralised_from_clients=2, examples_per_client=128)).sites, 0)
    from_a, from_b = {id(x) for x in a.images}, {id(x) for x in b.images}
    assert len(pooled) == 128 and sum(id(x) in from_a for x in pooled.images) == 64
    assert sum(id(x) in from_b for x in pooled.images) == 64



def test_the_settings_are_built_once_and_reach_the_layout_the_evaluator_and_the_clients(make_cfg):
    from app.federation import build_client

    cfg = make_cfg(*DET, "strategy.bn=local", "detection.lr=0.02", "model.width=0.125")
    fed = prepare(cfg, "/nonexistent")
    s = fed.settings
    assert (s.training.lr, s.detector.width, s.sites.count, s.bn, s.shared) == (0.02, 0.125, 2, "local", "all")
    assert s.detector.classes == tuple(f"class{c}" for c in range(1, 11)) and s.sites.classes == s.detector.classes
    assert fed.strategy.layout.options == {"shared": "all", "bn": "local"}  # sent to the clients in instructions
    assert fed.strategy.hooks.evaluate.settings is s
    client = build_client(cfg, 0, None, task=fed.task, settings=s)
    assert client.settings is s


def test_a_centralised_detector_is_scored_by_the_server_not_by_its_one_client(make_cfg):
    from app.simulation import preflight

    fed = preflight(make_cfg("strategy=centralised", "dataset=synthetic_detection", "num_clients=2"))
    assert fed.settings.sites.pooled and fed.settings.sites.count == 2
    with pytest.raises(ConfigError, match="strategy=centralised holds every site's images on one client"):
        preflight(make_cfg("strategy=centralised", "dataset=synthetic_detection", "num_clients=2",
                           "detection.evaluate=clients"))

def test_what_travels_whole_detector_backbone_only_or_without_batchnorm(make_cfg):
    net = build_detector(settings_of(make_cfg(*DET)).detector)
    every = list(net.state_dict())
    assert upload_keys(net, {}) == every  # FedVision: the whole detector
    backbone = upload_keys(net, {"shared": "backbone"})
    assert backbone == [k for k in every if k.startswith("backbone.")]
    assert any(k.startswith("backbone.fpn.") for k in backbone)
    no_bn = upload_keys(net, {"bn": "local"})
    assert "backbone.body.bn1.running_mean" not in no_bn and "backbone.body.conv1.weight" in no_bn
    assert "head.classification_head.conv.1.weight" in no_bn  # GroupNorm in the head travels
    assert len(no_bn) == len(every) - sum(".bn" in k or "shortcut.1." in k for k in every)


def main_py(tmp_path, data_dir, cache_dir, *overrides, out="run"):
    cmd = [sys.executable, "main.py", "experiment=smoke", f"data_dir={data_dir}", f"cache_dir={cache_dir}",
           f"output_dir={tmp_path / out}", "wandb.mode=offline", *overrides]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("strategy", ["fedavg", pytest.param("standalone", marks=pytest.mark.slow),
                                      pytest.param("centralised", marks=pytest.mark.slow)])
def test_a_two_site_smoke_federation_writes_map_per_site(tmp_path, data_dir, cache_dir, strategy):
    done = main_py(tmp_path, data_dir, cache_dir, f"strategy={strategy}", "dataset=synthetic_detection",
                   "num_clients=2", "detection.lr_schedule=constant")
    assert done.returncode == 0, done.stderr[-3000:]
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["status"] == "completed" and s["task"] == "detection"
    assert [e["round"] for e in s["detection"]] == [1, 2]
    for entry in s["detection"]:
        assert sorted(entry["per_client"]) == ["0", "1"]  # every site, also under centralised
        assert all(0 <= v["map"] <= 1 and 0 <= v["map_50"] <= 1 for v in entry["per_client"].values())
    assert 0 <= s["final"]["map"] <= 1 and s["final"]["images"] == 32
    assert len(s["rounds"][0]["clients"]) == (1 if strategy == "centralised" else 2)
    assert (tmp_path / "run" / "accuracy.png").is_file()
    evaluated = subprocess.run([sys.executable, "main.py", "mode=evaluate",
                                f"checkpoint={tmp_path / 'run' / 'checkpoint_final.pt'}", f"data_dir={data_dir}",
                                f"cache_dir={cache_dir}", f"output_dir={tmp_path / 'eval'}"],
                               cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    report = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert report["task"] == "detection" and report["final"]["map"] == pytest.approx(s["final"]["map"])


@pytest.mark.slow
def test_a_loopback_deployment_whose_supernodes_serve_their_own_detection_folders(tmp_path, data_dir, cache_dir,
                                                                                  make_cfg, capsys):
    from ops.detection_folders import export
    from ops.local_federation import main as local_federation
    from tasks.detection.settings import class_names

    cfg = make_cfg("dataset=synthetic_detection", "num_clients=2", "dataset.train_images=40", "dataset.test_images=8")
    sites = export(cfg, tmp_path / "sites")  # each SuperNode's own VOC folder; the server reads none
    code = local_federation([
        "--nodes", "2", "--workdir", str(tmp_path / "fed"), "--data-dir", str(data_dir),
        "--local-data", f"0={sites[0]}", "--local-data", f"1={sites[1]}", "--timeout", "900",
        "experiment=smoke", "strategy=fedavg", "dataset=voc", f"dataset.classes=[{','.join(class_names(cfg['dataset']))}]",
        "dataset.min_size=64", "dataset.max_size=64", f"cache_dir={cache_dir}", "wandb.mode=disabled"])
    out = capsys.readouterr().out
    assert code == 0, out
    s = json.loads((tmp_path / "fed" / "run" / "summary.json").read_text())
    assert s["status"] == "completed" and s["task"] == "detection"
    assert all(sorted(r["clients"]) == ["0", "1"] and not r["failures"] for r in s["rounds"])
    assert [r["clients"]["0"]["num_examples"] for r in s["rounds"]] == [40, 40]  # its own folder's trainval
    final = s["final"]
    assert final["evaluated_by"] == "clients" and sorted(final["per_client"]) == ["0", "1"]
    assert all(c["images"] == 8 for c in final["per_client"].values()) and final["evaluation_failures"] == []
    assert [e["round"] for e in s["detection"]] == [1, 2]


def test_the_server_cannot_score_a_detector_whose_heads_stayed_on_the_sites(make_cfg):
    from tasks.detection.evaluator import DetectionEvaluator

    cfg = make_cfg("strategy=fedpav", "dataset=synthetic_detection", "num_clients=2")
    options = {"shared": "backbone", "bn": "global"}
    layout, arrays = detection_layout(settings_of(cfg), options)
    assert layout.evaluated_by == "clients"  # auto: the sites score their own detectors
    with pytest.raises(CheckpointError, match="its heads under partial averaging"):
        DetectionEvaluator(settings_of(cfg), layout)(2, {"global": arrays}, final=True)
    with pytest.raises(ConfigError, match="detection.evaluate=server cannot score"):
        prepare(make_cfg("strategy=fedpav", "dataset=synthetic_detection", "num_clients=2",
                         "detection.evaluate=server"), "/nonexistent")


def test_a_torchvision_backbone_detector_trains_and_predicts(make_cfg):
    cfg = make_cfg(*DET, "detection.backbone=resnet18", "dataset.min_size=64", "dataset.max_size=64")
    net = build_detector(settings_of(cfg).detector)
    assert "backbone.body.layer4.1.conv2.weight" in net.state_dict() and net.transform.image_mean[0] > 0  # ImageNet's
    data = site_split(settings_of(cfg).sites, 0, "train").take(range(2))
    images, targets = batch(data, [0, 1], torch.device("cpu"))
    losses = net.train()(images, targets)
    assert set(losses) == {"classification", "bbox_regression", "bbox_ctrness"}
    assert all(torch.isfinite(v) for v in losses.values())
    assert len(net.eval()(images)) == 2
