"""Mixed precision (issue 13): what `auto` picks and why, bad values, and that a bf16/fp16 step
trains like fp32 while losses, updates and BatchNorm statistics stay fp32."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from app.schema import validate
from protocol.checks import ConfigError
from tasks.common.augment import make_views, to_float
from tasks.common.evaluate import extract_features
from tasks.common.precision import Compute, choose_precision, compute_for
from tasks.common.training import NonFiniteLossError
from tasks.ssl.methods.byol import BYOL
from tasks.ssl.train import train_one_round
from tests.conftest import DATA_DIR, ROOT

CPU = torch.device("cpu")


def test_auto_picks_bf16_only_on_a_cpu_that_computes_it_natively():
    assert choose_precision("auto", CPU, {"avx512f", "avx512_bf16"}) == (
        "bf16", "the CPU computes bf16 natively (avx512_bf16)")
    assert choose_precision("auto", CPU, {"amx_bf16"})[0] == "bf16"
    precision, why = choose_precision("auto", CPU, {"avx2", "avx512f"})
    assert precision == "fp32" and "no native bf16" in why
    for explicit in ("bf16", "fp16", "fp32"):
        assert choose_precision(explicit, CPU, set()) == (explicit, "requested")
    with pytest.raises(ValueError, match="precision must be one of auto, bf16, fp16, fp32, got 'fp64'"):
        choose_precision("fp64", CPU)


def test_a_bad_precision_or_transfer_dtype_in_the_config_names_the_choices(make_cfg):
    cfg = make_cfg()
    with pytest.raises(ConfigError, match=r"precision='half' is not valid; choose one of \['auto', 'bf16', 'fp16', 'fp32'\]"):
        validate({**cfg, "precision": "half"})
    with pytest.raises(ConfigError, match=r"transfer_dtype='int8' is not valid; choose one of \['float32', 'float16', 'bfloat16'\]"):
        validate({**cfg, "transfer_dtype": "int8"})


def tiny_byol():
    torch.manual_seed(0)
    return BYOL(arch="resnet18", width=0.125, proj_hidden=64, proj_dim=32, pred_hidden=64)


def batch(n=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_a_mixed_precision_loss_is_fp32_and_close_to_fp32s_on_the_same_batch(precision):
    g = torch.Generator().manual_seed(1)
    views = make_views(to_float(torch.from_numpy(batch()), CPU), tiny_byol().views, g)
    losses = {}
    for p in ("fp32", precision):
        method = Compute(CPU, p, channels_last=True).prepare(tiny_byol()).train()
        losses[p] = method.loss([v.contiguous(memory_format=torch.channels_last) for v in views], g)
        assert losses[p].dtype == torch.float32
    assert torch.isfinite(losses[precision])
    assert abs(losses[precision].item() - losses["fp32"].item()) < 0.03 * abs(losses["fp32"].item())


def test_a_bf16_round_trains_and_keeps_weights_statistics_and_target_in_fp32():
    method = tiny_byol()
    before = {k: v.clone() for k, v in method.state_dict().items()}
    stats = train_one_round(method, batch(32), epochs=1, batch_size=16, lr=0.05, momentum=0.9, weight_decay=5e-4,
                            compute=Compute(CPU, "bf16", channels_last=True), generator=torch.Generator().manual_seed(0),
                            progress_start=0.0, progress_span=1.0, who="client 0, round 1")
    assert np.isfinite(stats["loss"]) and stats["steps"] == 2
    sd = method.state_dict()
    assert all(v.dtype in (torch.float32, torch.int64) for v in sd.values())
    bn = "online.backbone.bn1.running_mean"
    assert sd[bn].dtype == torch.float32 and not torch.equal(sd[bn], before[bn])  # statistics moved, in fp32
    assert not torch.equal(sd["target.backbone.conv1.weight"], before["target.backbone.conv1.weight"])  # EMA ran


def test_a_non_finite_loss_under_bf16_still_stops_with_the_clear_error():
    with pytest.raises(NonFiniteLossError, match=r"client 3, round 2: non-finite loss .* lower the learning rate"):
        train_one_round(tiny_byol(), batch(64), epochs=3, batch_size=16, lr=1e12, momentum=0.9, weight_decay=0.0,
                        compute=Compute(CPU, "bf16"), generator=torch.Generator().manual_seed(0),
                        progress_start=0.0, progress_span=1.0, who="client 3, round 2")


def test_evaluation_features_in_bf16_are_fp32_and_close_to_fp32s():
    net = tiny_byol().online.backbone
    images = batch(24)
    f32 = extract_features(net, images, CPU, batch_size=8)
    f16 = extract_features(net, images, CPU, batch_size=8, compute=Compute(CPU, "bf16", channels_last=True))
    assert f16.dtype == torch.float32
    cos = torch.nn.functional.cosine_similarity(f16, f32, dim=1)
    assert cos.min() > 0.99


def test_compute_for_reads_the_run_keys(make_cfg):
    cfg = make_cfg("precision=fp32", "channels_last=false")
    assert compute_for(cfg, CPU) == Compute(CPU, "fp32", "requested", False, False)
    assert compute_for(make_cfg("precision=auto"), CPU, flags={"amx_bf16"}).precision == "bf16"
    bf16 = compute_for(make_cfg("precision=bf16", "channels_last=true"), CPU)
    assert bf16.channels_last and "channels_last_note" not in bf16.describe()


def test_at_fp32_on_a_cpu_the_networks_stay_nchw_and_the_detector_trains(make_cfg, tmp_path):
    """oneDNN's fp32 NHWC 1x1 stride-2 convolution backward corrupts the heap (torch 2.14.1, AVX-512):
    at fp32 on a CPU channels_last is off, said so; the detector's step that crashed then runs."""
    fp32 = compute_for(make_cfg("precision=fp32", "channels_last=true"), CPU)
    assert not fp32.channels_last and "oneDNN" in fp32.describe()["channels_last_note"]
    script = tmp_path / "step.py"
    script.write_text(f"""
import sys, torch
sys.path.insert(0, {str(ROOT)!r})
from app.config import compose, to_plain
from tasks.common.precision import compute_for
from tasks.detection.data import site_split
from tasks.detection.model import build_detector
from tasks.detection.settings import detection_settings
from tasks.detection.train import batch, prepare
cfg = to_plain(compose(["experiment=smoke", "dataset=synthetic_detection", "strategy=fedavg", "num_clients=3",
                        "precision=fp32", "channels_last=true", "data_dir={DATA_DIR}"]))
settings = detection_settings(cfg)
net = prepare(build_detector(settings.detector), compute_for(cfg, torch.device("cpu"))).train()
images, targets = batch(site_split(settings.sites, 0, "train"), list(range(8)), torch.device("cpu"))
sum(net(images, targets).values()).backward()
print("trained")
""")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "trained" in done.stdout, done.stderr[-2000:]


def test_a_mixed_precision_model_is_freed_when_its_round_drops_it():
    """No reference cycle through the autocast wrappers: the memory goes back at once, not at the
    next garbage collection (many clients trained one after another in one process)."""
    import gc
    import weakref

    method = Compute(CPU, "bf16").prepare(tiny_byol()).train()
    method.loss([torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32)], torch.Generator())
    ref = weakref.ref(method)
    gc.disable()
    try:
        del method
        assert ref() is None
    finally:
        gc.enable()
