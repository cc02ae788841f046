"""benchmarks/detection_bn.py on a smoke FedAvg detection run (issue 28): every site scored with the
aggregated BatchNorm statistics and with them re-estimated on its own images; re-estimation changes
the BatchNorm buffers and nothing else, and every site starts from the checkpoint's model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import smoke_run

import benchmarks.detection_bn as bn  # noqa: E402 (tests.conftest puts the repository on sys.path)
from tasks.common.arrays import batchnorm_keys  # noqa: E402
from tasks.common.checkpoint import checkpoint_models, load_checkpoint  # noqa: E402

SITES = 3


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, data_dir, cache_dir):
    out = smoke_run(tmp_path_factory.mktemp("detection_bn") / "run", data_dir, cache_dir, "dataset=synthetic_detection",
                    "strategy=fedavg", f"num_clients={SITES}", "num_rounds=1", "progress=false")
    return out / "checkpoint_final.pt"


def state(net) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}


def test_every_site_is_scored_from_the_checkpoint_with_its_own_batchnorm_statistics(checkpoint, data_dir, cache_dir,
                                                                                     monkeypatch):
    payload = load_checkpoint(checkpoint)
    saved = dict(zip(payload["keys"], checkpoint_models(payload)["global"]))
    scored = []  # the state of every network scored, in order: site 0 aggregated, site 0 re-estimated, site 1 ...
    real = bn.site_scores

    def spy(net, data, device, batch_size):
        scored.append((state(net), batchnorm_keys(net)))
        return real(net, data, device, batch_size)

    monkeypatch.setattr(bn, "site_scores", spy)
    result = bn.checkpoint_bn_scores(checkpoint, [f"data_dir={data_dir}", f"cache_dir={cache_dir}"])

    # a score per site, both ways, and the sites named by their synthetic background
    assert [s["site"] for s in result["sites"]] == list(range(SITES))
    assert [s["name"].split(",")[0] for s in result["sites"]] == ["field", "gradient", "stripes"]
    for s in result["sites"]:
        for variant in bn.VARIANTS:
            assert 0 <= s[variant]["map"] <= 1 and 0 <= s[variant]["map_50"] <= 1 and s[variant]["images"] == 16
    assert set(result[bn.MEAN]) == set(bn.VARIANTS) and result["round"] == 1

    assert len(scored) == 2 * SITES
    reestimated_stats = []
    for site in range(SITES):
        (aggregated, bn_keys), (reestimated, _) = scored[2 * site], scored[2 * site + 1]
        # the global model as the checkpoint holds it, at every site: nothing carried over from the last site
        assert aggregated.keys() == saved.keys()
        for k, v in saved.items():
            assert torch.equal(aggregated[k], torch.from_numpy(np.array(v))), (site, k)
        # re-estimation moves the BatchNorm running statistics and no weight
        running = [k for k in bn_keys if k.endswith(("running_mean", "running_var"))]
        assert running and any(not torch.equal(aggregated[k], reestimated[k]) for k in running)
        for k in aggregated:
            if k not in bn_keys or k.endswith((".weight", ".bias")):
                assert torch.equal(aggregated[k], reestimated[k]), (site, k)
        reestimated_stats.append(torch.cat([reestimated[k].flatten() for k in sorted(running)]))
    # each site's statistics are its own images'
    assert not torch.equal(reestimated_stats[0], reestimated_stats[1])
    assert not torch.equal(reestimated_stats[1], reestimated_stats[2])


def test_reestimation_leaves_the_given_detector_as_it_was(checkpoint, data_dir, cache_dir):
    from app.offline import evaluation_setup
    from tasks.detection.data import client_train
    from tasks.detection.evaluator import DetectionEvaluator
    from tasks.detection.settings import detection_settings

    setup = evaluation_setup(["mode=evaluate", f"checkpoint={checkpoint}", f"data_dir={data_dir}",
                              f"cache_dir={cache_dir}"])
    settings = setup.settings
    assert settings == detection_settings(setup.cfg)  # the checkpoint's own section, built once by the setup
    net = DetectionEvaluator(settings, setup.layout).load(setup.models["global"])
    before = state(net)
    new = bn.reestimate_batchnorm(net, client_train(settings.sites, 0).take(range(16)), torch.device("cpu"), 8)
    assert new is not net and not new.training and not any(m.training for m in new.modules())
    assert all(torch.equal(before[k], v) for k, v in state(net).items())
    assert all(m.momentum is None for m in bn.batchnorms(new))
    assert all(int(m.num_batches_tracked) == 2 for m in bn.batchnorms(new))  # 16 images in batches of 8
