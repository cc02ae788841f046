"""The SSL task's learned network for mode=export/embed: the backbone of the encoder its evaluator scores."""

from __future__ import annotations

import numpy as np

from protocol.layout import Layout
from tasks.common.export import FEATURES, Learned, check_images
from tasks.ssl.evaluator import RepresentationEvaluator
from tasks.ssl.model import build_federated_method
from tasks.ssl.settings import SSLSettings

OUTPUT = FEATURES


def batchnorm_mode(s: SSLSettings, layout: Layout) -> str:
    """The statistics the evaluator's headline numbers use (RepresentationEvaluator.evaluate_one):
    re-estimated under strategy.bn=local (none were uploaded) or eval.bn=reestimated, else aggregated."""
    if dict(layout.options).get("bn") == "local":
        return "reestimated"
    return "reestimated" if s.evaluation.bn == "reestimated" else "aggregated"


def learned(s: SSLSettings, layout: Layout, arrays: list[np.ndarray]) -> Learned:
    """`<eval_encoder>.backbone` with the run's weights (build_federated_method + set_arrays, as the
    evaluator's `encoder()`), its BatchNorm statistics as the evaluator's headline result reads them."""
    evaluator = RepresentationEvaluator(s, layout)
    _, plan, _ = build_federated_method(s, dict(layout.options))
    encoder = evaluator.encoder(arrays)
    mode = batchnorm_mode(s, layout)
    if mode == "reestimated":
        evaluator.recalibrate(encoder)
        why = ("strategy.bn=local: the global model has no statistics" if dict(layout.options).get("bn") == "local"
               else "eval.bn=reestimated")
        detail = (f"re-estimated on the evaluation bank ({len(evaluator.sets()['x_bank'])} {s.images.dataset} "
                  f"training images, eval.bank_size, seed {s.seed}) as the evaluator does ({why})")
    else:
        detail = "the running statistics the strategy aggregated, as uploaded by the clients"
    backbone = encoder.backbone.cpu().eval()
    images, source = check_images(s.images)
    m = s.model
    return Learned(
        name="encoder", what=f"{plan.eval_encoder}.backbone of {s.name} (the encoder the evaluator scores)",
        method=s.name, weights=backbone, runner=backbone, output=OUTPUT,
        input_size=tuple(images.shape[1:3]), batchnorm=mode, batchnorm_detail=detail, check_images=images,
        check_source=source, feature_dim=int(backbone.out_dim),
        rebuild=f"from tasks.common.models import build_backbone\nnet = build_backbone({m['arch']!r}, {float(m['width'])!r})")
