"""The GPU path (issue 13), run by benchmarks/gpu_check.sh on a CUDA machine; skipped without CUDA.

auto precision on the GPU, a mixed-precision round that trains with fp32 weights, the round's
images and augmentation on the device with no host-device copy inside a step, evaluation on the
GPU, and fractional GPUs for simulated clients."""

import numpy as np
import pytest
import torch

from app.federation import client_resources
from tasks.common.augment import augmentation_generator, make_views, to_float
from tasks.common.evaluate import extract_features
from tasks.common.precision import choose_precision, compute_for
from tasks.ssl.methods.byol import BYOL
from tasks.ssl.train import train_one_round

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
GPU = torch.device("cuda")


def tiny_byol():
    torch.manual_seed(0)
    return BYOL(arch="resnet18", width=0.25, proj_hidden=128, proj_dim=64, pred_hidden=128)


def batch(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)


def test_auto_precision_on_this_gpu_follows_its_compute_capability():
    major, _ = torch.cuda.get_device_capability()
    precision, why = choose_precision("auto", GPU)
    assert precision == ("bf16" if major >= 8 else "fp16") and "compute capability" in why


def test_a_mixed_precision_round_on_the_gpu_trains_with_fp32_weights(make_cfg):
    compute = compute_for(make_cfg("precision=auto", "device=cuda"), GPU)
    method = tiny_byol()
    stats = train_one_round(method, batch(256), epochs=2, batch_size=64, lr=0.05, momentum=0.9, weight_decay=5e-4,
                            compute=compute, generator=torch.Generator().manual_seed(0), progress_start=0.0,
                            progress_span=1.0, who="client 0, round 1")
    assert np.isfinite(stats["loss"]) and stats["steps"] == 8
    assert all(p.is_cuda and p.dtype == torch.float32 for p in method.parameters())


def test_augmentation_draws_on_the_gpu_without_a_host_device_copy():
    g = augmentation_generator(torch.Generator().manual_seed(0), GPU)
    assert g.device.type == "cuda"
    x = to_float(torch.from_numpy(batch(32)).to(GPU), GPU)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any synchronising copy raises
    try:
        views = make_views(x, BYOL.views, g)
    except RuntimeError as err:
        pytest.fail(f"a host-device synchronisation inside the augmentation: {err}")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(v.is_cuda and v.shape == (32, 3, 32, 32) for v in views)


def test_a_non_finite_loss_on_the_gpu_still_stops_with_the_clear_error(make_cfg):
    from tasks.common.training import NonFiniteLossError

    compute = compute_for(make_cfg("precision=auto", "device=cuda"), GPU)
    with pytest.raises(NonFiniteLossError, match="client 1, round 4: non-finite loss"):
        train_one_round(tiny_byol(), batch(256), epochs=2, batch_size=64, lr=1e12, momentum=0.9, weight_decay=0.0,
                        compute=compute, generator=torch.Generator().manual_seed(0), progress_start=0.0,
                        progress_span=1.0, who="client 1, round 4")


def test_evaluation_features_on_the_gpu_match_the_cpus(make_cfg):
    net = tiny_byol().online.backbone
    on_cpu = extract_features(net, batch(64), torch.device("cpu"), 32)
    on_gpu = extract_features(net, batch(64), GPU, 32, compute_for(make_cfg("device=cuda"), GPU))
    assert on_gpu.device.type == "cpu" and on_gpu.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(on_cpu, on_gpu, dim=1).min() > 0.99


def test_simulated_clients_share_the_gpu(make_cfg):
    res = client_resources(make_cfg("device=auto", "num_clients=5"))
    assert 0 < res["num_gpus"] <= 1
