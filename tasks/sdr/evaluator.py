"""Server-side evaluation of a federated SDR network (the protocol of docs/algorithms.md#evaluating-representations, the paths of docs/algorithms.md#sdr).

Every evaluation: kNN accuracy of the full SDRnet's features. After the last round also the
kNN accuracy of every path (`path_knn`) and the linear probe of the full network.
"""

from __future__ import annotations

import numpy as np

from protocol.layout import Layout
from tasks.common.arrays import set_arrays
from tasks.common.evaluate import features_on, knn_score, probe_score
from tasks.common.federated_data import evaluation_sets
from tasks.common.sections import Evaluation
from tasks.common.training import resolve_device
from tasks.sdr.model import build_sdr_model
from tasks.sdr.settings import SDRSettings


class PathFeatures:
    """`net` restricted to one path (or the full network) as a plain feature extractor."""

    def __init__(self, net, path):
        self.net, self.path = net, path

    def to(self, device):
        self.net.to(device)
        return self

    def eval(self):
        self.net.eval()
        return self

    def __call__(self, x):
        return self.net(x, self.path)


def path_knn(net, sets: dict, path, device, ev: Evaluation, compute=None) -> float:
    bank, test = features_on(PathFeatures(net, path), sets, ("x_bank", "x_test"), device, ev.batch_size, compute)
    return knn_score(bank, test, sets["y_test"], sets, ev)


class SDREvaluator:
    def __init__(self, settings: SDRSettings, layout: Layout):
        self.settings, self._sets = settings, None

    def sets(self) -> dict:
        if self._sets is None:
            self._sets = evaluation_sets(self.settings.images, self.settings.evaluation)
        return self._sets

    def __call__(self, server_round: int, models: dict[str, list[np.ndarray]], final: bool) -> dict:
        model = build_sdr_model(self.settings.network)
        set_arrays(model, list(model.state_dict()), models["global"])
        net, ev, s = model.net, self.settings.evaluation, self.sets()
        device = resolve_device(self.settings.devices.device)
        compute = self.settings.devices.compute(device)
        bank, test = features_on(net, s, ("x_bank", "x_test"), device, ev.batch_size, compute)  # full SDRnet
        out = {"knn_accuracy": knn_score(bank, test, s["y_test"], s, ev), "final": final}
        if final:
            out["path_knn"] = {str(p): path_knn(net, s, p, device, ev, compute) for p in range(net.num_paths)}
            out["mean_path_knn"] = float(np.mean(list(out["path_knn"].values())))
            if ev.linear:
                out["linear_accuracy"] = probe_score(bank, test, s, ev)
        out["bank_size"], out["test_size"] = len(s["y_bank"]), len(s["y_test"])
        return out
