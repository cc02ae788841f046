"""mode=export and mode=embed (issue 30): what a run learned, as safetensors, ONNX (checked with ONNX
Runtime), torchvision's ResNet-18 with the CIFAR stem, and features of images equal to the evaluator's."""

import json

import numpy as np
import pytest
import torch

from app.commands import run_command
from app.offline import evaluation_setup
from tasks.common.checkpoint import CheckpointError
from tasks.common.data import DataError
from tasks.common.export import ExportError, RTOL, batch_of, torchvision_resnet
from tasks.common.precision import compute_for
from tasks.common.training import resolve_device
from tests.conftest import initial_checkpoint, main_py, smoke_run

pytest.importorskip("onnxruntime")
pytest.importorskip("safetensors")

# one round of FedU at width 1.0 (ResNet-18, 512-d): the smoke preset, fewer and smaller batches
RUN = ["strategy=fedu", "dataset=cifar10", "model=resnet18", "model.width=1.0", "num_clients=2", "num_rounds=1",
       "examples_per_client=16", "batch_size=8", "eval.bank_size=100", "eval.test_size=50"]


@pytest.fixture(scope="module")
def ssl_run(tmp_path_factory, data_dir, cache_dir):
    """A one-round smoke FedU run of a ResNet-18 at width 1.0 (its directory), shared by this file's tests."""
    return smoke_run(tmp_path_factory.mktemp("fedu") / "run", data_dir, cache_dir, *RUN)


@pytest.fixture(scope="module")
def exported(ssl_run, data_dir, cache_dir, tmp_path_factory):
    """`python main.py mode=export` of that run into a folder of its own: (folder, model card, stdout)."""
    out = tmp_path_factory.mktemp("export")
    done = main_py("mode=export", f"checkpoint={ssl_run / 'checkpoint_final.pt'}", f"data_dir={data_dir}",
                   f"cache_dir={cache_dir}", f"output_dir={out}")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return out, json.loads((out / "encoder.json").read_text()), done.stdout


def real_images(data_dir, n=16):
    with np.load(data_dir / "cifar10-sample.npz") as z:
        return z["x_test"][::1000 // n][:n]


def test_export_writes_safetensors_onnx_and_a_model_card_whose_onnx_equals_pytorch(exported, ssl_run, data_dir):
    import onnxruntime
    from safetensors.torch import load_file

    from tasks.common.models import build_backbone

    out, card, stdout = exported
    assert sorted(p.name for p in out.iterdir()) == ["encoder.json", "encoder.onnx", "encoder.safetensors",
                                                     "encoder_torchvision.safetensors"]
    summary = json.loads((ssl_run / "summary.json").read_text())
    assert card["task"] == "ssl" and card["method"] == "byol" and card["strategy"] == "fedu"
    assert card["dataset"] == "cifar10" and card["rounds"] == 1 and card["seed"] == 0
    assert card["what"].startswith("online.backbone of byol")
    assert card["summary"]["final"] == summary["final"] and card["summary"]["status"] == "completed"
    assert card["git_commit"] and card["config"]["model"] == {"arch": "resnet18", "width": 1.0}
    assert card["rebuild"]["command_line"] == summary["config"]["command_line"]
    assert card["input"]["size"] == [32, 32] and card["input"]["mean"] == [0, 0, 0] and card["input"]["std"] == [1, 1, 1]
    assert card["output"] == {"kind": "features", "feature_dim": 512}
    assert card["batchnorm"]["statistics"] == "aggregated"
    onnx = card["checks"]["onnx"]
    assert onnx["opset"] >= 17 and onnx["check"]["images"] == 8
    assert onnx["check"]["max_abs_diff"] <= onnx["check"]["tolerance"]
    assert "max |ONNX Runtime - PyTorch|" in stdout
    # what a user does: our model from the safetensors file, ONNX Runtime on the .onnx, same images
    net = build_backbone("resnet18", 1.0)
    net.load_state_dict(load_file(str(out / "encoder.safetensors")))
    x = batch_of(real_images(data_dir))
    with torch.no_grad():
        ref = net.eval()(x).numpy()
    session = onnxruntime.InferenceSession(str(out / "encoder.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": x.numpy()})[0]
    assert ref.shape == (16, 512)
    assert np.abs(got - ref).max() <= RTOL * max(1.0, np.abs(ref).max())
    # and those are the features of the checkpoint's own encoder, as the evaluator builds it
    setup = evaluation_setup([f"checkpoint={ssl_run / 'checkpoint_final.pt'}", f"data_dir={data_dir}"])
    from tasks.ssl.evaluator import RepresentationEvaluator

    backbone = RepresentationEvaluator(setup.settings, setup.layout).encoder(setup.models["global"]).backbone
    with torch.no_grad():
        assert torch.equal(backbone.eval()(x), torch.from_numpy(ref))


def test_torchvision_resnet18_with_the_cifar_stem_takes_the_weights_strictly_and_gives_the_same_features(
        exported, data_dir):
    import torchvision
    from safetensors.torch import load_file

    from tasks.common.models import build_backbone

    out, card, _ = exported
    net = torchvision.models.resnet18()
    net.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    net.maxpool = net.fc = torch.nn.Identity()
    net.load_state_dict(load_file(str(out / "encoder_torchvision.safetensors")), strict=True)
    ours = build_backbone("resnet18", 1.0)
    ours.load_state_dict(load_file(str(out / "encoder.safetensors")))
    x = batch_of(real_images(data_dir))
    with torch.no_grad():
        assert torch.allclose(net.eval()(x), ours.eval()(x), rtol=0, atol=1e-5)
    tv = card["checks"]["torchvision"]
    assert tv["constructor"] == "torchvision.models.resnet18(weights=None)" and tv["max_abs_diff"] <= tv["tolerance"]
    assert set(torchvision_resnet("resnet18").state_dict()) == set(load_file(str(out / "encoder_torchvision.safetensors")))


def test_an_existing_export_is_never_replaced(exported, ssl_run, data_dir):
    out, _, _ = exported
    before = (out / "encoder.onnx").stat().st_mtime_ns
    with pytest.raises(ExportError, match="encoder.safetensors.* already exist"):
        run_command(["mode=export", f"checkpoint={ssl_run / 'checkpoint_final.pt'}", f"data_dir={data_dir}",
                     f"output_dir={out}"])
    assert (out / "encoder.onnx").stat().st_mtime_ns == before and not list(out.glob(".export-*"))


def test_under_local_batchnorm_the_export_carries_statistics_reestimated_as_the_evaluator_does(tmp_path, data_dir):
    from safetensors.torch import load_file

    from tasks.ssl.evaluator import RepresentationEvaluator

    ckpt = initial_checkpoint(tmp_path / "bnlocal" / "checkpoint_final.pt", "strategy=fedu", "dataset=cifar10", "strategy.bn=local")
    run_command(["mode=export", f"checkpoint={ckpt}", f"data_dir={data_dir}"])
    card = json.loads((ckpt.parent / "encoder.json").read_text())
    assert card["batchnorm"]["statistics"] == "reestimated" and "evaluation bank (200 cifar10" in card["batchnorm"]["detail"]
    assert card["summary"] is None  # no summary.json next to this checkpoint
    setup = evaluation_setup([f"checkpoint={ckpt}", f"data_dir={data_dir}"])
    evaluator = RepresentationEvaluator(setup.settings, setup.layout)
    encoder = evaluator.encoder(setup.models["global"])
    evaluator.recalibrate(encoder)
    saved = load_file(str(ckpt.parent / "encoder.safetensors"))
    assert all(torch.equal(saved[k], v) for k, v in encoder.backbone.state_dict().items())
    assert not torch.equal(saved["bn1.running_var"], torch.ones_like(saved["bn1.running_var"]))


@pytest.mark.parametrize("line, rebuild", [
    (["strategy=fedpav", "dataset=cifar100_reid"], "reid"),
    (["strategy=sdr", "dataset=cifar10"], "sdr"),
])
def test_fedpav_and_sdr_export_the_network_their_evaluators_use(tmp_path, data_dir, line, rebuild):
    from safetensors.torch import load_file

    ckpt = initial_checkpoint(tmp_path / "run" / "checkpoint_final.pt", *line)
    run_command(["mode=export", f"checkpoint={ckpt}", f"data_dir={data_dir}"])
    card = json.loads((ckpt.parent / "encoder.json").read_text())
    assert card["checks"]["onnx"]["check"]["max_abs_diff"] <= card["checks"]["onnx"]["check"]["tolerance"]
    assert "torchvision" not in card["files"]  # width 0.125, and not a plain ResNet
    state = load_file(str(ckpt.parent / "encoder.safetensors"))
    if rebuild == "reid":
        from tasks.reid.model import build_reid_net
        from tasks.reid.settings import reid_settings

        net = build_reid_net(reid_settings(card["config"]).network)
        assert card["output"]["feature_dim"] == card["config"]["reid"]["embedding_dim"]
    else:
        from tasks.sdr.model import build_sdr_model

        from tasks.sdr.settings import sdr_settings

        net = build_sdr_model(sdr_settings(card["config"]).network).net
        assert "full SDRnet" in card["what"] and "mode=route" in card["what"]
    net.load_state_dict(state, strict=True)


def test_a_corrupt_or_wrong_kind_of_checkpoint_is_refused_in_one_line(tmp_path, ssl_run, data_dir):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"mode=export: checkpoint .*bad.pt is corrupt or not a checkpoint .*"
                                              r"expected a run's checkpoint_final.pt") as err:
        run_command(["mode=export", f"checkpoint={bad}", f"data_dir={data_dir}"])
    assert "\n" not in str(err.value)
    state = ssl_run / "state" / "server.pt"  # the federation state: a torch file, not a checkpoint
    with pytest.raises(CheckpointError, match=r"server.pt is not a fedssl-checkpoint-v1 file; expected a run's"):
        run_command(["mode=export", f"checkpoint={state}", f"data_dir={data_dir}"])
    with pytest.raises(CheckpointError, match="mode=embed needs checkpoint=<run>/checkpoint_final.pt"):
        run_command(["mode=embed", "checkpoint=init", "images=x"])
    done = main_py("mode=export", f"checkpoint={bad}", f"data_dir={data_dir}", timeout=300)
    assert done.returncode != 0 and done.stderr.startswith("error: mode=export: checkpoint ")
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


# ---------------------------------------------------------------------------------------- mode=embed
def test_embed_gives_the_evaluators_features_of_the_same_images(ssl_run, data_dir, cache_dir, tmp_path):
    from tasks.common.evaluate import features_on
    from tasks.common.federated_data import evaluation_sets
    from tasks.ssl.evaluator import RepresentationEvaluator

    argv = [f"checkpoint={ssl_run / 'checkpoint_final.pt'}", f"data_dir={data_dir}", f"cache_dir={cache_dir}"]
    setup = evaluation_setup(argv)
    cfg = setup.cfg
    sets = evaluation_sets(setup.settings.images, setup.settings.evaluation)
    np.savez(tmp_path / "test.npz", x=sets["x_test"], y=sets["y_test"])
    run_command(["mode=embed", *argv, f"images={tmp_path / 'test.npz'}", f"output_dir={tmp_path / 'out'}"])
    device = resolve_device(str(cfg["device"]))
    encoder = RepresentationEvaluator(setup.settings, setup.layout).encoder(setup.models["global"])
    (expected,) = features_on(encoder.backbone, sets, ("x_test",), device, int(cfg["eval"]["batch_size"]),
                              compute_for(cfg, device))
    with np.load(tmp_path / "out" / "embeddings.npz") as z:
        assert list(z["names"]) == [str(i) for i in range(50)] and z["labels"].tolist() == sets["y_test"].tolist()
        assert str(z["precision"]) == compute_for(cfg, device).precision
        np.testing.assert_array_equal(z["features"], expected.numpy())


def test_embed_a_folder_skips_an_unreadable_file_and_refuses_an_empty_one(ssl_run, data_dir, tmp_path):
    from PIL import Image

    folder = tmp_path / "pictures"
    (folder / "sub").mkdir(parents=True)
    for i, image in enumerate(real_images(data_dir, 3)):
        Image.fromarray(np.kron(image, np.ones((3, 2, 1), np.uint8))).save(folder / ("sub" if i else "") / f"{i}.png")
    (folder / "broken.jpg").write_bytes(b"no image")
    argv = ["mode=embed", f"checkpoint={ssl_run / 'checkpoint_final.pt'}", f"data_dir={data_dir}"]
    run_command([*argv, f"images={folder}", f"output_dir={tmp_path / 'out'}"])
    with np.load(tmp_path / "out" / "embeddings.npz") as z:
        assert list(z["names"]) == ["0.png", "sub/1.png", "sub/2.png"] and z["features"].shape == (3, 512)
        assert "labels" not in z.files
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image files"):
        run_command([*argv, f"images={tmp_path / 'empty'}", f"output_dir={tmp_path / 'out2'}"])
    with pytest.raises(DataError, match="embeddings.npz already exists"):
        run_command([*argv, f"images={folder}", f"output_dir={tmp_path / 'out'}"])


def test_retrieval_on_the_cifar10_sample_draws_a_query_and_its_five_nearest(ssl_run, data_dir, tmp_path):
    from app.embed import nearest

    out = tmp_path / "out"
    run_command(["mode=embed", f"checkpoint={ssl_run / 'checkpoint_final.pt'}", f"data_dir={data_dir}",
                 f"images={data_dir / 'cifar10-sample.npz'}", "embed.max_images=120", "embed.query=7",
                 f"output_dir={out}"])
    assert (out / "retrieval.png").stat().st_size > 10_000
    with np.load(out / "embeddings.npz") as z:
        assert list(z["classes"])[:2] == ["airplane", "automobile"] and len(z["names"]) == 120
        idx, sims = nearest(z["features"], 7, 5)
        f = z["features"] / np.linalg.norm(z["features"], axis=1, keepdims=True)
        best = np.argsort(-(f @ f[7]))[1:6]
    assert 7 not in idx and sorted(idx.tolist()) == sorted(best.tolist()) and list(sims) == sorted(sims, reverse=True)
