"""Server-side evaluation of the federated encoder(s) (docs/algorithms.md#evaluating-representations), given to strategies as a hook."""

from __future__ import annotations

import math

import numpy as np

from protocol.layout import Layout
from tasks.common.arrays import set_arrays
from tasks.common.evaluate import (
    class_balanced_fraction,
    features_on,
    finetune_accuracy,
    knn_scores,
    probe_score,
    recalibrate_batchnorm,
)
from tasks.common.federated_data import dataset_of, evaluation_sets
from tasks.common.training import resolve_device
from tasks.ssl.model import build_federated_method
from tasks.ssl.settings import SSLSettings


class RepresentationEvaluator:
    """kNN monitor (every call) and linear probe (final call) on the encoder's features.

    Several models (standalone: one per client) are evaluated one by one and averaged;
    the per-client values are kept under `per_client`.
    """

    def __init__(self, settings: SSLSettings, layout: Layout):
        self.settings, self.options = settings, dict(layout.options)
        self.ev = settings.evaluation
        self.device = resolve_device(settings.devices.device)
        self.compute = settings.devices.compute(self.device)
        self._sets = None

    def sets(self) -> dict:
        if self._sets is None:
            self._sets = evaluation_sets(self.settings.images, self.ev)
        return self._sets

    def encoder(self, arrays: list[np.ndarray]):
        """The evaluated encoder (backbone + projector) loaded with `arrays`."""
        method, plan, keys = build_federated_method(self.settings, self.options)
        set_arrays(method, keys, arrays)
        return getattr(method, plan.eval_encoder)

    def recalibrate(self, encoder) -> None:
        """BatchNorm statistics re-estimated on the bank's images (no labels read)."""
        recalibrate_batchnorm(encoder, self.sets()["x_bank"], self.device, self.ev.batch_size)

    def evaluate_one(self, arrays: list[np.ndarray], final: bool) -> dict:
        """kNN (and at the end linear probe, semi-supervised) of one model. BatchNorm statistics
        (eval.bn): `aggregated`, the ones the strategy averaged (the reference code's); `reestimated`
        on the bank's images; `both`, the aggregated ones as the result plus *_bn_reestimated keys.
        Under strategy.bn=local no statistics were uploaded: they are always re-estimated."""
        encoder = self.encoder(arrays)
        mode = "reestimated" if self.options.get("bn") == "local" else self.ev.bn
        if mode == "reestimated":
            self.recalibrate(encoder)
        out = self.scores(encoder, final)
        if final and self.ev.semi:
            out.update(self.semi_supervised(encoder.backbone, self.device))
        if mode == "both":
            self.recalibrate(encoder)
            out.update({f"{k}_bn_reestimated": v for k, v in self.scores(encoder, final).items()})
        return out

    def scores(self, encoder, final: bool) -> dict:
        """kNN accuracy, and on the final call the linear probe's, of the encoder as it is."""
        s = self.sets()
        net = encoder if self.ev.knn_features == "projector" else encoder.backbone
        bs, names = self.ev.batch_size, ("x_bank", "x_test")
        bank, test = features_on(net, s, names, self.device, bs, self.compute)
        out = knn_scores(bank, test, s["y_test"], s, self.ev.knn_k, self.ev.knn_temperature)
        if final and self.ev.linear:
            if self.ev.knn_features == "projector":  # the probe always reads backbone features
                bank, test = features_on(encoder.backbone, s, names, self.device, bs, self.compute)
            out["linear_accuracy"] = probe_score(bank, test, s, self.ev)
        return out

    def semi_supervised(self, backbone, device) -> dict:
        """Fine-tune (a copy of) the backbone with 1% / 10% of the training labels (docs/algorithms.md#semi-supervised-fine-tuning)."""
        ds, s, ev = dataset_of(self.settings.images), self.sets(), self.ev
        labels = np.asarray(ds.y_train)
        out = {}
        for fraction in ev.semi_fractions:
            idx = class_balanced_fraction(labels, fraction, ev.seed)
            out[f"semi_{100 * fraction:g}%"] = finetune_accuracy(
                backbone, np.asarray(ds.x_train[idx]), labels[idx], s["x_test"], s["y_test"], s["num_classes"],
                epochs=ev.semi_epochs, lr=ev.semi_lr, head_lr=ev.semi_head_lr,
                batch_size=ev.semi_batch_size, bn=ev.semi_bn, device=device, seed=ev.seed,
            )
        return out

    def __call__(self, server_round: int, models: dict[str, list[np.ndarray]], final: bool) -> dict:
        results = {name: self.evaluate_one(arrays, final) for name, arrays in models.items()}
        if list(results) == ["global"]:
            out = dict(results["global"])
        else:  # standalone: mean over clients of each client's own model (docs/algorithms.md#standalone-models)
            out = {key: float(np.mean([r[key] for r in results.values()])) for key in results[next(iter(results))]}
            out["per_client"] = results
        out["final"] = final
        out["bank_size"], out["test_size"] = len(self.sets()["y_bank"]), len(self.sets()["y_test"])
        if final and "linear_accuracy" not in out:
            out["linear_accuracy"] = math.nan
        return out
