"""The SDR task's learned network for mode=export/embed: the full SDRnet its evaluator scores."""

from __future__ import annotations

import numpy as np

from protocol.layout import Layout
from tasks.common.arrays import set_arrays
from tasks.common.export import FEATURES, Learned, check_images
from tasks.sdr.model import build_sdr_model
from tasks.sdr.settings import SDRSettings

OUTPUT = FEATURES


def learned(s: SDRSettings, layout: Layout, arrays: list[np.ndarray]) -> Learned:
    """The whole super-network (every group of every block, `forward(x)` with path=None), as the
    run's evaluator scores it. Choosing one path needs a downstream set: `mode=route` ranks the
    paths on one and exports the best as backbone_path<p>.pt (tasks/sdr/route.py)."""
    model = build_sdr_model(s.network)
    set_arrays(model, list(model.state_dict()), arrays)
    net = model.net.cpu().eval()
    images, source = check_images(s.images)
    return Learned(
        name="encoder", what=f"the full SDRnet ({net.num_paths} paths, all groups; one path: mode=route)",
        method="sdr (SimSiam per path, routed by clustering)", weights=net, runner=net, output=OUTPUT,
        input_size=tuple(images.shape[1:3]), batchnorm="aggregated",
        batchnorm_detail="the running statistics the strategy aggregated group by group, as uploaded by the clients",
        check_images=images, check_source=source, feature_dim=int(net.out_dim),
        rebuild="from tasks.sdr.model import build_sdr_model\nfrom tasks.sdr.settings import sdr_settings\n"
                "net = build_sdr_model(sdr_settings(card['config']).network).net")
