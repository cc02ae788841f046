"""The re-ID task's learned network for mode=export/embed: FedPav's backbone + embedding block."""

from __future__ import annotations

import numpy as np

from protocol.layout import Layout
from tasks.common.export import CHECK_IMAGES, FEATURES, Call, Learned
from tasks.reid.data import client_eval
from tasks.reid.evaluator import ReIDEvaluator
from tasks.reid.settings import ReIDSettings

OUTPUT = FEATURES


def learned(s: ReIDSettings, layout: Layout, arrays: list[np.ndarray]) -> Learned:
    """The shared part the server aggregates (`backbone.*`, `embedding.*`; the classifiers stay on the
    clients), loaded as the evaluator loads it; its forward is `embed` (the evaluator's retrieval
    feature also adds the mirror image's embedding when reid.eval_flip, then L2-normalises)."""
    net = ReIDEvaluator(s, layout).load(arrays).cpu().eval()
    query = client_eval(s.identities, 0).query
    rows = np.linspace(0, len(query) - 1, min(CHECK_IMAGES, len(query))).astype(np.int64)
    images = np.ascontiguousarray(query[rows])
    flip = "embed(x) + embed(flip(x)), L2-normalised" if s.eval_flip else "embed(x), L2-normalised"
    return Learned(
        name="encoder", what=f"backbone + embedding block of the FedPav re-ID model (retrieval feature: {flip})",
        method="fedpav re-identification (identity classification, local classifiers)", weights=net,
        runner=Call(net, "embed"), output=OUTPUT, input_size=tuple(images.shape[1:3]), batchnorm="aggregated",
        batchnorm_detail="the running statistics the strategy aggregated, as uploaded by the clients",
        check_images=images, check_source=f"client 0's query images {rows.tolist()} ({s.identities.dataset})",
        feature_dim=s.network.embedding_dim,
        rebuild="from tasks.reid.model import build_reid_net\nfrom tasks.reid.settings import reid_settings\n"
                "net = build_reid_net(reid_settings(card['config']).network)")
